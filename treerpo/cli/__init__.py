"""The `treerpo` command line: a Typer app over the library.

Every flag is accepted in --dash-case and --snake_case (Click normalises `_` to `-` in option and
command names). Errors are one line on stderr: exit 2 for bad input or usage, 1 for a failure at
run time; `--debug` (anywhere on the line, or TREERPO_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

import typer
from typer.exceptions import Abort, TyperException

try:  # Typer ≥ 0.20 vendors Click; older releases use the click package itself
    from typer._click.exceptions import NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError

from treerpo.cli import (
    bench_commands,
    demo_command,
    eval_command,
    generate_command,
    runs_command,
    score_command,
    store_commands,
    train_command,
    web_commands,
)
from treerpo.cli.spellings import normalise_args
from treerpo.errors import TreerpoError
from treerpo.store.database import mask_password
from treerpo.views import safe_text

app = typer.Typer(
    name="treerpo",
    help="Train language models to reason with TreeRPO: GRPO grown into a tree.\n\n"
    "Stages share one tree store (--db): generate grows trees, score fills rewards, values and "
    "advantages, train replays trees into policy updates, inspect/trees show what is stored.",
    context_settings={
        "token_normalize_func": lambda token: token.replace("_", "-"),
        "help_option_names": ["-h", "--help"],
    },
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
) -> None:
    """Global options."""


generate_command.register(app)
score_command.register(app)
store_commands.register(app)
runs_command.register(app)
bench_commands.register(app)
demo_command.register(app)
eval_command.register(app)
train_command.register(app)
web_commands.register(app)


def _error_line(text: str) -> str:
    """An error message as one inert line: newlines joined, control characters (a dataset's or a
    model's text may carry terminal escapes) shown as \\xNN, URL passwords masked."""
    return safe_text(mask_password(" ".join(text.splitlines())))


def _wants_debug(args: Sequence[str]) -> bool:
    return "--debug" in args or os.environ.get("TREERPO_DEBUG", "") not in ("", "0")


def _quiet_libraries() -> None:
    """treerpo draws its own progress bars: silence transformers' and datasets' own bars and
    info logs, which would interleave with them on the terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:  # already imported (tests): switch it off directly
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    # The hundreds of thousands of objects created by importing torch, transformers and the rest
    # live as long as the process: moving them out of the cyclic GC's view stops every full
    # collection from re-walking them during allocation-heavy work (tree growth, store writes
    # ran ~1.6x slower without this).
    gc.freeze()
    command = typer.main.get_command(app)
    args = normalise_args(command, args)  # TRL's spellings: `--bf16 true`, `--model_name_or_path`
    try:
        result = command.main(args=args, prog_name="treerpo", standalone_mode=False)
    except NoArgsIsHelpError:  # Typer has already printed the help
        return 2
    except TyperException as error:  # usage errors: unknown command or flag, bad value
        if _wants_debug(args):
            raise
        typer.echo(_error_line(f"error: {error.format_message()}"), err=True)
        return 2
    except Abort:
        typer.echo("aborted", err=True)
        return 130
    except TreerpoError as error:
        if _wants_debug(args):
            raise
        typer.echo(_error_line(f"error: {error}"), err=True)
        return error.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as error:  # the last line of defence: one line, never a traceback
        if _wants_debug(args):
            raise
        detail = " ".join(str(error).split())
        if len(detail) > 300:  # driver errors can quote whole statements and their parameters
            detail = detail[:300] + "…"
        typer.echo(_error_line(f"error: unexpected {type(error).__name__}: {detail} "
                               "(rerun with --debug)"), err=True)
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
