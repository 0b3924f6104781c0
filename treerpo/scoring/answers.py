r"""Final answers as text: the last `\boxed{…}` of a completion, and the reference of a problem.

A completion's answer is the content of its LAST `\boxed{…}` (or `\fbox{…}`), read with balanced
braces so `\boxed{\frac{1}{2}}` gives `\frac{1}{2}`; an escaped brace (`\{`, `\}`) is a literal
character and does not count. `\boxed 5` (a space, then a bare token) is accepted too: its
content runs to the next whitespace or `$`, less a trailing `.`, `,`, `;` or `:` (the end of the
sentence: "the answer is \boxed 5.").

Only the last box counts: when it is unbalanced (typically a completion cut off by the token
budget in the middle of its answer) the completion has no answer, and an earlier box, usually an
intermediate result, is NOT used instead. An empty box is no answer either.
"""

from __future__ import annotations

import re

from treerpo.errors import BadInputError

# `\boxed` / `\fbox` as whole command names: `\boxedanswer` is some other macro.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_TOKEN = re.compile(r"[^\s$]+")
_GSM8K_MARKER = "####"


def extract_boxed(text: str) -> str | None:
    r"""The stripped content of the last `\boxed{…}`/`\fbox{…}` in `text`; None if there is none,
    if that last box is unbalanced, or if it is empty."""
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    last_match = matches[-1]
    position = last_match.end()
    while position < len(text) and text[position] in " \t":
        position += 1
    if position < len(text) and text[position] == "{":
        content = balanced_group(text, position)
    elif position > last_match.end():
        bare = _BARE_TOKEN.match(text, position)
        content = bare.group(0).rstrip(".,;:") if bare else None
    else:
        content = None
    if content is None or not content.strip():
        return None
    return content.strip()


def balanced_group(text: str, open_position: int) -> str | None:
    """Content between the `{` at `open_position` and its matching `}`; None if it never closes."""
    depth = 0
    position = open_position
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2  # `\{` and `\}` are literal braces, not grouping
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_position + 1 : position]
        position += 1
    return None


def reference_from_gsm8k(answer_text: str) -> str:
    """The reference answer of a GSM8K row: the text after the last `####`, commas removed.

    GSM8K answers end in `#### 1,080`; the thousands separators are dropped so references are
    plain numbers (`1080`).
    """
    if _GSM8K_MARKER not in answer_text:
        raise BadInputError(f"GSM8K answer has no '{_GSM8K_MARKER}' line: {answer_text[-80:]!r}")
    reference = answer_text.rsplit(_GSM8K_MARKER, 1)[1].replace(",", "").strip()
    if not reference:
        raise BadInputError(f"GSM8K answer is empty after '{_GSM8K_MARKER}': {answer_text[-80:]!r}")
    return reference


def reference_from_solution(solution: str) -> str:
    r"""The reference answer of a worked solution (NuminaMath, MATH): its last `\boxed{…}`."""
    reference = extract_boxed(solution)
    if reference is None:
        raise BadInputError(f"solution has no complete \\boxed{{}} answer: {solution[-80:]!r}")
    return reference
