"""`treerpo report RUN --html FILE` and `treerpo serve`: runs and trees as web pages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from treerpo.cli.common import DEFAULT_DB, DbOption, store_at

TokenizerOption = Annotated[str | None, typer.Option(
    "--tokenizer", help="Tokenizer for the token texts of logprob shading: a local folder or a "
    "cached hub id (never downloaded). Default: the run's model; `none`: token positions.")]


def report(
    run: Annotated[str, typer.Argument(help="Name of a train, generate or eval run.")],
    html: Annotated[Path, typer.Option(
        "--html", help="Write the report to this file (one self-contained page).")],
    tree_step: Annotated[list[int] | None, typer.Option(
        "--tree-step", help="Train runs: also write the pages of this step's trees (repeat "
        "for several steps); default: the first and the last step.")] = None,
    tokenizer: TokenizerOption = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write a run's report as one HTML page (no network needed to view it).

    Train runs: curves of the on-policy and all-leaf reward, loss, mean |advantage|,
    no-signal share, clip fraction, grad norm, learning rate, tokens/s and seconds per step
    (inline SVG with axes and units), the greedy accuracy of evaluations made during training
    (--eval-dataset), the step table, and the tree pages of the chosen steps
    written beside the report into `FILE-stem-trees/` and linked from the table. Generate runs:
    counts, a histogram of per-tree mean reward, the trees. Eval runs: accuracy per mode, a
    histogram of completion lengths, the failures (first 200) with their completions.

    Open the file in a browser (`xdg-open FILE`, `open FILE` on macOS), or browse the whole
    store with `treerpo serve`.

    Examples:

        treerpo report demo-1733100000-train --html report.html

        treerpo report my-run --html out/report.html --tree-step 1 --tree-step 50
    """
    from treerpo.web.export import write_run_report

    with store_at(db, read_only=True) as store:
        paths = write_run_report(store, run_name=run, path=html, tree_steps=tree_step,
                                 tokenizer=tokenizer)
    typer.echo(f"report: {paths[0]}")
    if len(paths) > 1:
        typer.echo(f"tree pages: {len(paths) - 1} in {paths[1].parent}")


def serve(
    db: DbOption = DEFAULT_DB,
    host: Annotated[str, typer.Option(
        "--host", help="Interface to listen on; the default answers this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="Port (0: any free port).")] = 8000,
    quiet: Annotated[bool, typer.Option("--quiet", help="Do not log requests.")] = False,
) -> None:
    """Browse the store in a web browser: runs → steps → trees → tree pages, eval records.

    A read-only local web app: `/` lists the runs, `/runs/NAME` shows a run's report
    (curves and steps, trees, or eval records), `/trees` the stored trees, `/trees/ID` a tree
    page. Only GET is answered; nothing is written. Binds to 127.0.0.1 unless --host says
    otherwise (anyone who can reach that address can then read the store). Ctrl-C stops it.

    Examples:

        treerpo serve                  # then open http://127.0.0.1:8000/

        treerpo serve --db sqlite:///runs/store.db --port 8080
    """
    from treerpo.errors import BadInputError
    from treerpo.store.database import display_url
    from treerpo.web.server import make_server

    log = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
    with store_at(db, read_only=True) as store:
        try:
            server = make_server(store, host=host, port=port, log=log)
        except OSError as error:
            raise BadInputError(f"cannot listen on {host}:{port}: {error.strerror}") from error
        bound_host, bound_port = server.server_address[:2]
        shown_host = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        typer.echo(f"serving {display_url(db)} read-only at "
                   f"http://{shown_host}:{bound_port}/  (Ctrl-C stops)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            typer.echo(f"warning: listening on {host}: anyone who can reach it can read the "
                       "store", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            typer.echo("stopped")
        finally:
            server.server_close()


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("serve")(serve)
