"""Other spellings of flags, rewritten to treerpo's own before Click parses the line.

**Aliases** (`ALIASES`): the original release's and TRL's names for an option a command has
under another name, e.g. `--model_name_or_path` for `--model`. They are rewritten rather than
declared so that `--help` lists each option once, readable at 80 columns; `train --help`
names them in its description and the README lists them. An alias is only rewritten for a
command that has its target and no option of the alias's own name.

**Boolean flags that also take a value**: `--gradient-checkpointing true`, `--bf16=false`.
TRL and transformers' argument parsers accept `--flag`, `--flag true` and `--flag false`; Click's
flags take no value. Before Click parses the line, `normalise_args` rewrites a true/false
value after a boolean flag of the command being run: `--flag true` becomes `--flag`, and
`--flag false` becomes the flag's negative form (`--no-flag`) when it has one, else it is
dropped (the flag's default is off). A negative form is a flag's `/--no-x` half or a (hidden)
`--no-x` option of its own. Only flags of the command named on the line are touched,
and nothing after a `--` (one in front of the command, as `torchrun ... -m treerpo.cli -- train`
may pass on, is not an end of options).
"""

from __future__ import annotations

from collections.abc import Sequence

ALIASES = {
    "--model-id": "--model",  # the original release's spelling
    "--model-name-or-path": "--model",  # TRL's ModelConfig
    "--dataset-name": "--dataset",  # TRL's ScriptArguments
    "--max-completion-length": "--max-new-tokens",  # GRPOConfig
    "--vllm-gpu-memory-utilization": "--gpu-memory-utilization",  # GRPOConfig
}

# As a separate token only true/false count: `inspect --json 1` keeps its tree id.
TRUE_WORDS = frozenset({"true"})
FALSE_WORDS = frozenset({"false"})
# After `=` the value is unambiguous, so transformers' other spellings are accepted too.
INLINE_TRUE_WORDS = TRUE_WORDS | {"yes", "1", "on", "t", "y"}
INLINE_FALSE_WORDS = FALSE_WORDS | {"no", "0", "off", "f", "n"}


def _normalise(token: str) -> str:
    return token.replace("_", "-")


def _target_command(root, args: Sequence[str]):
    """The (sub)command the line runs: follow command names through the groups."""
    command = root
    for token in args:
        if token == "--" and command is not root:
            break
        commands = getattr(command, "commands", None)
        if commands is None:
            break
        if not token.startswith("-") and _normalise(token) in commands:
            command = commands[_normalise(token)]
    return command


def _bool_flags(command) -> dict[str, str | None]:
    """Each boolean flag's spelling → its negative spelling (None when it has none)."""
    flags: dict[str, str | None] = {}
    for parameter in getattr(command, "params", []):
        if not (getattr(parameter, "is_flag", False) and getattr(parameter, "is_bool_flag", False)):
            continue
        for name in parameter.opts:
            if name.startswith("--") and name != "--help":
                flags[name] = (parameter.secondary_opts[0] if parameter.secondary_opts
                               else f"--no-{name[2:]}")
    names = _option_names(command)
    return {name: negative if negative in names else None for name, negative in flags.items()}


def _option_names(command) -> set[str]:
    return {name for parameter in getattr(command, "params", [])
            for name in (*getattr(parameter, "opts", ()),
                         *getattr(parameter, "secondary_opts", ()))}


def normalise_args(root, args: Sequence[str]) -> list[str]:
    """`args` with aliases and boolean values rewritten (module docstring)."""
    command = _target_command(root, args)
    return _expand_bool_values(command, _expand_aliases(command, args))


def _expand_aliases(command, args: Sequence[str]) -> list[str]:
    names = _option_names(command)
    aliases = {alias: target for alias, target in ALIASES.items()
               if target in names and alias not in names}
    rewritten: list[str] = []
    for index, token in enumerate(args):
        if token == "--" and index > 0:
            rewritten.extend(args[index:])
            break
        name, has_equals, value = token.partition("=")
        target = aliases.get(_normalise(name)) if name.startswith("--") else None
        rewritten.append(token if target is None else target + has_equals + value)
    return rewritten


def _expand_bool_values(command, args: Sequence[str]) -> list[str]:
    flags = _bool_flags(command)
    if not flags:
        return list(args)
    rewritten: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--" and index > 0:
            rewritten.extend(args[index:])
            break
        name, has_equals, inline = token.partition("=")
        name = _normalise(name)
        if name in flags:
            if has_equals:
                value = inline
                consumed = 1
            elif index + 1 < len(args) and args[index + 1].lower() in TRUE_WORDS | FALSE_WORDS:
                value = args[index + 1]
                consumed = 2
            else:
                value, consumed = "true", 1
            if value.lower() in INLINE_TRUE_WORDS:
                rewritten.append(name)
            elif value.lower() in INLINE_FALSE_WORDS:
                if flags[name] is not None:
                    rewritten.append(flags[name])
            else:  # let Click report the bad value in its own words
                rewritten.append(token)
            index += consumed
            continue
        rewritten.append(token)
        index += 1
    return rewritten
