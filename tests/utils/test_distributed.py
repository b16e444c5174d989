"""utils.distributed's one home of "am I rank 0" and of the rank prefix of error lines."""

from __future__ import annotations

import pytest

from rmbench_fast.utils import distributed


def test_is_main_and_rank_prefix_follow_the_launcher_before_the_world_is_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before `init` joins the process group, rank 1 of a torchrun launch is not the main rank
    (it must not check or write the outputs), and its error lines say which rank it is."""
    assert distributed.world().backend is None  # this process never joined a world
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.is_main() and distributed.rank_prefix() == ""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.is_main()
    assert distributed.rank_prefix() == "rank 1: "
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main() and distributed.rank_prefix() == "rank 0: "
    monkeypatch.setenv("WORLD_SIZE", "two")  # malformed: an error line must still print
    assert distributed.rank_prefix() == ""
