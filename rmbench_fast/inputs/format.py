"""Turning a prompt and a response into the texts that get tokenized (SPEC §3).

Two texts per (prompt, response):
    prompt text = render([user: prompt])
    full text   = render([user: prompt, assistant: response])
both without a generation prompt.

With a chat template (the tokenizer's own, which always wins), rendering reproduces
`transformers`' `apply_chat_template(messages, tokenize=False, add_generation_prompt=False)`
without importing transformers: same sandboxed jinja2 environment (trim_blocks, lstrip_blocks,
loopcontrols, `raise_exception`, `strftime_now`, a non-escaping `tojson`, `dict`, a
`namespace` that refuses underscore names) and the same variables (`messages`, `tools=None`,
`documents=None`, `add_generation_prompt=False`, and the named special tokens `bos_token`,
`eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`, `mask_token` as strings).

Without one, a named conversation template renders the way FastChat 0.2.36 does (empty system
message): `tulu`, `zephyr`, `llama-2`, `mistral`. `chatml` and `llama-3` are rmbench_fast
additions; FastChat 0.2.36 has no templates by those names, so the official scripts fail on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from rmbench_fast.errors import TemplateError
from rmbench_fast.inputs.tokenization import TokenizerConfig, read_tokenizer_config

Message = dict[str, str]

# FastChat 0.2.36 renderers. Each takes [(role_index, text)] with role 0 = user, 1 = assistant.
# FastChat treats an empty message ("") like a missing one (`if message:`), and so do we.


def _render_tulu(msgs: list[tuple[int, str]]) -> str:
    # SeparatorStyle.ADD_NEW_LINE_SINGLE, sep "\n", empty system message -> no system block.
    roles = ("<|user|>", "<|assistant|>")
    return "".join(f"{roles[r]}\n{m}\n" if m else f"{roles[r]}\n" for r, m in msgs)


def _render_zephyr(msgs: list[tuple[int, str]]) -> str:
    # SeparatorStyle.CHATML, sep "</s>"; the system template "<|system|>\n{msg}" is non-empty even
    # for an empty message, so the system block is always written.
    roles = ("<|user|>", "<|assistant|>")
    out = "<|system|>\n</s>\n"
    return out + "".join(f"{roles[r]}\n{m}</s>\n" if m else f"{roles[r]}\n" for r, m in msgs)


def _llama2_style(sep2: str) -> Callable[[list[tuple[int, str]]], str]:
    # SeparatorStyle.LLAMA2 with an empty system message: "[INST] " then the first message
    # + " ", later messages "tag message sep" with seps (" ", sep2) alternating by index.
    def render(msgs: list[tuple[int, str]]) -> str:
        roles, seps = ("[INST]", "[/INST]"), (" ", sep2)
        out = "[INST] "
        for i, (_, m) in enumerate(msgs):
            tag = roles[i % 2]
            if not m:
                out += tag
            elif i == 0:
                out += m + " "
            else:
                out += f"{tag} {m}{seps[i % 2]}"
        return out

    return render


def _render_chatml(msgs: list[tuple[int, str]]) -> str:
    roles = ("user", "assistant")
    return "".join(f"<|im_start|>{roles[r]}\n{m}<|im_end|>\n" for r, m in msgs)


def _render_llama3(msgs: list[tuple[int, str]]) -> str:
    roles = ("user", "assistant")
    body = "".join(
        f"<|start_header_id|>{roles[r]}<|end_header_id|>\n\n{m.strip()}<|eot_id|>" for r, m in msgs
    )
    return "<|begin_of_text|>" + body


NAMED_TEMPLATES: dict[str, Callable[[list[tuple[int, str]]], str]] = {
    "tulu": _render_tulu,
    "zephyr": _render_zephyr,
    "llama-2": _llama2_style(" </s><s>"),
    "mistral": _llama2_style("</s>"),
    "chatml": _render_chatml,
    "llama-3": _render_llama3,
}
# Names the official scripts (FastChat 0.2.36) also accept.
FASTCHAT_TEMPLATES = ("tulu", "zephyr", "llama-2", "mistral")
DEFAULT_TEMPLATE = "tulu"


# ---------------------------------------------------------------------------------------------
# Jinja chat templates, rendered like transformers' apply_chat_template
# ---------------------------------------------------------------------------------------------


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson HTML-escapes '<', '>', '&', "'"; transformers replaces it with plain json.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> Any:
    """Compile a chat template in a jinja2 environment set up like transformers'."""
    import jinja2  # start-up cost: jinja2
    import jinja2.ext  # start-up cost: jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # start-up cost: jinja2

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    class Namespace(jinja2.utils.Namespace):
        # Like transformers: refuse underscore attributes (sandbox hardening); otherwise jinja's.
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _generation_extension()]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not compile: {e} (line {e.lineno})") from None


def _generation_extension() -> Any:
    """`{% generation %}...{% endgeneration %}` (used by some templates to mark assistant text):
    transformers renders its body unchanged when not tracking assistant masks."""
    import jinja2  # start-up cost: jinja2
    from jinja2.ext import Extension  # start-up cost: jinja2

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    return Generation


def render_chat_template(
    source: str,
    messages: list[Message],
    special_tokens: dict[str, str],
    *,
    add_generation_prompt: bool = False,
) -> str:
    """transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt=...)."""
    import jinja2  # start-up cost: jinja2

    template = compile_chat_template(source)
    try:
        return str(
            template.render(
                messages=[dict(m) for m in messages],
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **special_tokens,
            )
        )
    except jinja2.exceptions.TemplateError as e:
        raise TemplateError(f"chat template failed to render: {e}") from None


# ---------------------------------------------------------------------------------------------
# Formatter
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Formatter:
    """Renders prompt text and full text for one model (SPEC §3).

    Exactly one of `chat_template` (a jinja source) and `template_name` is set.
    """

    chat_template: str | None = None
    template_name: str | None = None
    special_tokens: tuple[tuple[str, str], ...] = ()

    @property
    def uses_chat_template(self) -> bool:
        return self.chat_template is not None

    @property
    def description(self) -> str:
        """For run metadata: 'chat_template' or 'named:<name>'."""
        return "chat_template" if self.chat_template is not None else f"named:{self.template_name}"

    def prompt_text(self, prompt: str) -> str:
        return self._render([("user", prompt)])

    def full_text(self, prompt: str, response: str, *, generation_prompt: bool = False) -> str:
        """The user turn and the assistant's response; `generation_prompt` appends the template's
        next-assistant-turn header after it (a causal-logit reward model reads the logit there)."""
        return self._render([("user", prompt), ("assistant", response)], generation_prompt=generation_prompt)

    def _render(self, turns: list[tuple[str, str]], *, generation_prompt: bool = False) -> str:
        if self.chat_template is not None:
            messages = [{"role": role, "content": text} for role, text in turns]
            return render_chat_template(
                self.chat_template,
                messages,
                dict(self.special_tokens),
                add_generation_prompt=generation_prompt,
            )
        if generation_prompt:
            raise TemplateError("a causal-logit reward needs the model's own chat template (none was found)")
        render = NAMED_TEMPLATES[self.template_name or ""]
        return render([(0 if role == "user" else 1, text) for role, text in turns])

    @classmethod
    def named(cls, name: str) -> Formatter:
        if name not in NAMED_TEMPLATES:
            raise TemplateError(f"unknown chat template {name!r}; valid names: {', '.join(NAMED_TEMPLATES)}")
        return cls(template_name=name)

    @classmethod
    def from_config(cls, config: TokenizerConfig, template_name: str | None) -> Formatter:
        """The model's chat template if it has one (it wins over `template_name`), else the
        named template; neither -> TemplateError."""
        if config.chat_template is not None:
            return cls(
                chat_template=config.chat_template, special_tokens=tuple(config.special_tokens.items())
            )
        if template_name is None:
            raise TemplateError(
                f"{config.model_dir}: tokenizer has no chat template; pass --chat-template NAME "
                f"(one of {', '.join(NAMED_TEMPLATES)})"
            )
        return cls.named(template_name)

    @classmethod
    def from_model_dir(cls, model_dir: Path | str, template_name: str | None) -> Formatter:
        return cls.from_config(read_tokenizer_config(Path(model_dir)), template_name)
