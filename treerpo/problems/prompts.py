"""Prompt rendering: a problem becomes the root of its tree, as text and as token ids.

The root is the problem as a single user message, optionally preceded by a system message, through
the tokenizer's chat template with the generation prompt (DESIGN, step 1). A base model without a
chat template needs `--prompt-template`, a plain text holding `{problem}` (and `{system_prompt}`
where a system prompt goes). When a tokenizer has a chat template *and* a prompt template is
given, the prompt template wins: it is the user's explicit choice, and it lets an instruct model
be trained on a plain prompt.

Special tokens are never added twice. A chat template writes its own (`<|im_start|>`, and
`{{ bos_token }}` in Llama or Gemma templates), so its text is encoded with
`add_special_tokens=False`, as `transformers`' own `apply_chat_template(tokenize=True)`, TRL
and vLLM's `chat` do. A prompt-template text is plain text: it gets the leading BOS the tokenizer
adds by default (Llama, Mistral), as `tokenizer(text)` and vLLM's `generate(text)` would, unless
the text already starts with it. Nothing is appended: a prompt never ends with an
end-of-sequence token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from treerpo.errors import BadInputError

PROBLEM_PLACEHOLDER = "{problem}"
SYSTEM_PROMPT_PLACEHOLDER = "{system_prompt}"
_PLACEHOLDER = re.compile(r"\{(problem|system_prompt)\}")
# A conversational row: (role, content) pairs, e.g. (("system", ...), ("user", ...)).
Messages = tuple[tuple[str, str], ...]


class PromptSettings(BaseModel):
    """How problems are rendered into prompts; saved with every run's configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system_prompt: str | None = None
    # Plain text with `{problem}` (and optionally `{system_prompt}`); replaces the chat template.
    prompt_template: str | None = None

    def build(
        self, tokenizer: Any, problem: str, *, messages: Messages | None = None
    ) -> RenderedPrompt:
        return build_prompt(
            tokenizer,
            problem,
            system_prompt=self.system_prompt,
            prompt_template=self.prompt_template,
            messages=messages,
        )


@dataclass(frozen=True)
class RenderedPrompt:
    """A tree's root: the rendered prompt text and the token ids the policy sees."""

    text: str
    token_ids: list[int]


def build_prompt(
    tokenizer: Any,
    problem: str,
    *,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    messages: Messages | None = None,
) -> RenderedPrompt:
    """Render `problem` (see module doc) and encode it once, without doubled special tokens.
    `messages` (a conversational row) replace the single user message."""
    if messages is not None:
        if prompt_template is not None:
            raise BadInputError("--prompt-template cannot render conversational rows (a list "
                                "of messages): they need the tokenizer's chat template")
        text = _apply_chat_template(tokenizer, problem, system_prompt=system_prompt,
                                    messages=messages)
        return RenderedPrompt(text=text, token_ids=_encode(tokenizer, text))
    if prompt_template is not None:
        text = _fill_prompt_template(prompt_template, problem=problem, system_prompt=system_prompt)
        return RenderedPrompt(text=text, token_ids=_encode_plain_text(tokenizer, text))
    text = _apply_chat_template(tokenizer, problem, system_prompt=system_prompt)
    return RenderedPrompt(text=text, token_ids=_encode(tokenizer, text))


def render_prompt(
    tokenizer: Any,
    problem: str,
    *,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
) -> str:
    """The prompt text of `problem`: the chat template's (generation prompt included), or the
    prompt template filled in."""
    if prompt_template is not None:
        return _fill_prompt_template(prompt_template, problem=problem, system_prompt=system_prompt)
    return _apply_chat_template(tokenizer, problem, system_prompt=system_prompt)


def encode_prompt(
    tokenizer: Any,
    problem: str,
    *,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
) -> list[int]:
    """The token ids of `render_prompt(...)`, each special token once."""
    return build_prompt(
        tokenizer, problem, system_prompt=system_prompt, prompt_template=prompt_template
    ).token_ids


def _fill_prompt_template(template: str, *, problem: str, system_prompt: str | None) -> str:
    # Not str.format: math prompts are full of braces (`\boxed{}`) that are not placeholders.
    if PROBLEM_PLACEHOLDER not in template:
        raise BadInputError(
            f"--prompt-template must contain {PROBLEM_PLACEHOLDER} where the problem goes"
        )
    if system_prompt is not None and SYSTEM_PROMPT_PLACEHOLDER not in template:
        raise BadInputError(
            f"--system-prompt needs {SYSTEM_PROMPT_PLACEHOLDER} in --prompt-template to say where "
            "it goes"
        )
    values = {"problem": problem, "system_prompt": system_prompt or ""}
    # One pass, so a placeholder inside the problem or the system prompt is left as written.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _apply_chat_template(
    tokenizer: Any, problem: str, *, system_prompt: str | None, messages: Messages | None = None
) -> str:
    import jinja2

    if not getattr(tokenizer, "chat_template", None):
        raise BadInputError(
            "the tokenizer has no chat template; pass --prompt-template '…{problem}…'"
        )
    if messages is None:
        messages = (("user", problem),)
    chat = [{"role": role, "content": content} for role, content in messages]
    # --system-prompt goes first unless the conversation brings its own system message.
    if system_prompt is not None and chat[0]["role"] != "system":
        chat.insert(0, {"role": "system", "content": system_prompt})
    messages = chat
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError as exc:
        # e.g. Gemma's template refuses a system message.
        reason = " ".join(str(exc).split())
        raise BadInputError(f"the tokenizer's chat template rejected the prompt: {reason}") from exc


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode_plain_text(tokenizer: Any, text: str) -> list[int]:
    token_ids = _encode(tokenizer, text)
    bos_token_id = tokenizer.bos_token_id
    if bos_token_id is None or token_ids[:1] == [bos_token_id]:
        return token_ids
    adds_leading_bos = tokenizer.encode("", add_special_tokens=True)[:1] == [bos_token_id]
    return [bos_token_id, *token_ids] if adds_leading_bos else token_ids
