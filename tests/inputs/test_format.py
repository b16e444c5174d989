"""Conversation formatting (SPEC §3): named FastChat templates and jinja chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmbench_fast.errors import TemplateError
from rmbench_fast.inputs.format import FASTCHAT_TEMPLATES, NAMED_TEMPLATES, Formatter, render_chat_template
from rmbench_fast.inputs.tokenization import read_tokenizer_config

# SPEC §3 table: prompt "Hi?", answer "Yes.".
SPEC_TABLE = [
    ("tulu", "<|user|>\nHi?\n", "<|user|>\nHi?\n<|assistant|>\nYes.\n"),
    (
        "zephyr",
        "<|system|>\n</s>\n<|user|>\nHi?</s>\n",
        "<|system|>\n</s>\n<|user|>\nHi?</s>\n<|assistant|>\nYes.</s>\n",
    ),
    ("llama-2", "[INST] Hi? ", "[INST] Hi? [/INST] Yes. </s><s>"),
    ("mistral", "[INST] Hi? ", "[INST] Hi? [/INST] Yes.</s>"),
]

# Rendered by FastChat 0.2.36 itself: an empty message counts as no message (`if message:`).
FASTCHAT_EDGE_CASES = [
    ("tulu", "", "", "<|user|>\n", "<|user|>\n<|assistant|>\n"),
    (
        "tulu",
        "line1\nline2\n",
        "a\n\nb",
        "<|user|>\nline1\nline2\n\n",
        "<|user|>\nline1\nline2\n\n<|assistant|>\na\n\nb\n",
    ),
    ("tulu", "Hi?", "", "<|user|>\nHi?\n", "<|user|>\nHi?\n<|assistant|>\n"),
    ("zephyr", "", "", "<|system|>\n</s>\n<|user|>\n", "<|system|>\n</s>\n<|user|>\n<|assistant|>\n"),
    (
        "zephyr",
        "line1\nline2\n",
        "a\n\nb",
        "<|system|>\n</s>\n<|user|>\nline1\nline2\n</s>\n",
        "<|system|>\n</s>\n<|user|>\nline1\nline2\n</s>\n<|assistant|>\na\n\nb</s>\n",
    ),
    (
        "zephyr",
        "Hi?",
        "",
        "<|system|>\n</s>\n<|user|>\nHi?</s>\n",
        "<|system|>\n</s>\n<|user|>\nHi?</s>\n<|assistant|>\n",
    ),
    ("llama-2", "", "", "[INST] [INST]", "[INST] [INST][/INST]"),
    (
        "llama-2",
        "line1\nline2\n",
        "a\n\nb",
        "[INST] line1\nline2\n ",
        "[INST] line1\nline2\n [/INST] a\n\nb </s><s>",
    ),
    ("llama-2", "Hi?", "", "[INST] Hi? ", "[INST] Hi? [/INST]"),
    ("mistral", "", "", "[INST] [INST]", "[INST] [INST][/INST]"),
    (
        "mistral",
        "line1\nline2\n",
        "a\n\nb",
        "[INST] line1\nline2\n ",
        "[INST] line1\nline2\n [/INST] a\n\nb</s>",
    ),
    ("mistral", "Hi?", "", "[INST] Hi? ", "[INST] Hi? [/INST]"),
]


@pytest.mark.parametrize(("name", "prompt_text", "full_text"), SPEC_TABLE)
def test_spec_table_exact(name: str, prompt_text: str, full_text: str) -> None:
    f = Formatter.named(name)
    assert f.prompt_text("Hi?") == prompt_text
    assert f.full_text("Hi?", "Yes.") == full_text
    assert f.description == f"named:{name}"


@pytest.mark.parametrize(("name", "prompt", "response", "prompt_text", "full_text"), FASTCHAT_EDGE_CASES)
def test_fastchat_edge_cases(name: str, prompt: str, response: str, prompt_text: str, full_text: str) -> None:
    f = Formatter.named(name)
    assert f.prompt_text(prompt) == prompt_text
    assert f.full_text(prompt, response) == full_text


def test_llama2_inst_close_tag_falls_in_answer() -> None:
    # SPEC §3: for llama-2 and mistral, "[/INST]" is not part of the prompt text.
    for name in ("llama-2", "mistral"):
        f = Formatter.named(name)
        assert f.full_text("Q", "A").replace(f.prompt_text("Q"), "").startswith("[/INST] A")


def test_extra_named_templates() -> None:
    assert set(FASTCHAT_TEMPLATES) < set(NAMED_TEMPLATES)
    chatml = Formatter.named("chatml")
    assert chatml.prompt_text("Hi?") == "<|im_start|>user\nHi?<|im_end|>\n"
    assert (
        chatml.full_text("Hi?", "Yes.")
        == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n"
    )
    l3 = Formatter.named("llama-3")
    assert (
        l3.prompt_text("Hi?") == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
    )
    assert l3.full_text(" Hi? ", "Yes.\n") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nYes.<|eot_id|>"
    )


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(TemplateError, match="unknown chat template 'vicuna'.*tulu, zephyr, llama-2, mistral"):
        Formatter.named("vicuna")


def _write_tok_config(d: Path, **cfg: object) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_no_chat_template_needs_a_name(tmp_path: Path) -> None:
    d = _write_tok_config(tmp_path / "m", bos_token="<s>", eos_token="</s>")
    with pytest.raises(TemplateError, match="has no chat template; pass --chat-template NAME \\(one of tulu"):
        Formatter.from_model_dir(d, None)
    assert Formatter.from_model_dir(d, "zephyr").full_text("Hi?", "Yes.") == SPEC_TABLE[1][2]
    with pytest.raises(TemplateError, match="unknown chat template"):
        Formatter.from_model_dir(d, "nope")


def test_chat_template_wins_over_name(smollm2_dir: Path) -> None:
    f = Formatter.from_model_dir(smollm2_dir, "tulu")
    assert f.uses_chat_template and f.description == "chat_template"
    assert f.prompt_text("Hi?") == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi?<|im_end|>\n"
    )
    assert f.full_text("Hi?", "Yes.") == f.prompt_text("Hi?") + "<|im_start|>assistant\nYes.<|im_end|>\n"


def test_template_sources(tmp_path: Path) -> None:
    # A list of named templates: "default" is used.
    d = _write_tok_config(
        tmp_path / "list",
        chat_template=[
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D{{ bos_token }}"},
        ],
        bos_token={"content": "<s>", "lstrip": False},
    )
    assert Formatter.from_model_dir(d, None).prompt_text("x") == "D<s>"
    # chat_template.jinja beats the config entry.
    d2 = _write_tok_config(tmp_path / "jinja", chat_template="CONFIG")
    (d2 / "chat_template.jinja").write_text("FILE{{ messages[0]['content'] }}")
    assert Formatter.from_model_dir(d2, None).prompt_text("x") == "FILEx"
    # Several templates, none default: error.
    d3 = _write_tok_config(tmp_path / "nodefault", chat_template=[{"name": "a", "template": "A"}])
    with pytest.raises(TemplateError, match="none named 'default'"):
        Formatter.from_model_dir(d3, None)
    # special_tokens_map.json overrides legacy configs (no added_tokens_decoder).
    d4 = _write_tok_config(tmp_path / "stm", chat_template="{{ eos_token }}", eos_token="</s>")
    (d4 / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|eot|>"}}))
    assert Formatter.from_model_dir(d4, None).prompt_text("x") == "<|eot|>"
    assert read_tokenizer_config(d4).special_tokens["eos_token"] == "<|eot|>"


ZEPHYR_STYLE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
LLAMA3_STYLE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Exercises raise_exception, namespace, loopcontrols, tojson (no HTML escaping), strftime_now, dict.
FEATURES = (
    "{%- set ns = namespace(n=0) -%}"
    "{%- for m in messages -%}{%- if m['role'] not in ['user', 'assistant'] -%}{{ raise_exception('bad role') }}{%- endif -%}"
    "{%- if m['content'] == 'skip' -%}{% continue %}{%- endif -%}{%- set ns.n = ns.n + 1 -%}"
    "[{{ ns.n }}|{{ m['role'] }}|{{ m['content'] | tojson }}|{{ dict(a=1) | tojson }}]"
    "{%- endfor -%}{{ strftime_now('%Y')[:2] }}{{ pad_token }}{{ unk_token }}"
)


@pytest.fixture(scope="module")
def hf_tok(smollm2_dir: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.mark.parametrize(
    "template", [ZEPHYR_STYLE, LLAMA3_STYLE, FEATURES], ids=["zephyr", "llama3", "features"]
)
@pytest.mark.parametrize(
    ("prompt", "response"),
    [("Hi?", "Yes."), ("  <b>x</b> & 'q' \"d\"\n", "ünï 日本 🤖\n\n"), ("skip", "")],
)
def test_jinja_matches_transformers(
    smollm2_dir: Path, hf_tok: object, template: str, prompt: str, response: str
) -> None:
    hf = hf_tok
    cfg = read_tokenizer_config(smollm2_dir)
    f = Formatter(chat_template=template, special_tokens=tuple(cfg.special_tokens.items()))
    user = [{"role": "user", "content": prompt}]
    full = [*user, {"role": "assistant", "content": response}]
    assert f.prompt_text(prompt) == hf.apply_chat_template(user, chat_template=template, tokenize=False)
    assert f.full_text(prompt, response) == hf.apply_chat_template(
        full, chat_template=template, tokenize=False
    )


def test_smollm2_template_matches_transformers(smollm2_dir: Path, hf_tok: object) -> None:
    hf = hf_tok
    f = Formatter.from_model_dir(smollm2_dir, None)
    for prompt, response in [("Hi?", "Yes."), ("a\nb\n", ""), ("", "x")]:
        user = [{"role": "user", "content": prompt}]
        assert f.prompt_text(prompt) == hf.apply_chat_template(user, tokenize=False)
        full = [*user, {"role": "assistant", "content": response}]
        assert f.full_text(prompt, response) == hf.apply_chat_template(full, tokenize=False)


def test_template_errors_are_template_errors() -> None:
    with pytest.raises(TemplateError, match="failed to render: boom"):
        render_chat_template("{{ raise_exception('boom') }}", [{"role": "user", "content": "x"}], {})
    with pytest.raises(TemplateError, match="does not compile"):
        render_chat_template("{% for %}", [], {})
    with pytest.raises(TemplateError):  # the sandbox refuses underscore attributes
        render_chat_template("{{ messages.__class__.__mro__ }}{% set ns = namespace(_x=1) %}", [], {})
