"""Commands that look at the store: `trees`, `inspect`, `db upgrade`, `db current`.

`trees` and `inspect` only read: on a store that does not exist yet they say so (exit 2) rather
than create it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from treerpo.cli.common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    print_json,
    stdout_console,
    store_at,
)
from treerpo.limits import INT64_MAX
from treerpo.store import database, repository
from treerpo.views import tree_lines, tree_to_json, trees_json, trees_table

db_app = typer.Typer(help="Manage the store's schema (Alembic migrations).", no_args_is_help=True)


def trees(
    db: DbOption = DEFAULT_DB,
    run: Annotated[str | None, typer.Option("--run", help="Only trees of this run.")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, max=INT64_MAX, help="At most N trees.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List stored trees: id, run, problem, nodes, leaves, depth, tokens, scored, created.

    Examples:

        treerpo trees

        treerpo trees --run my-run --json
    """
    with store_at(db, read_only=True) as store:
        run_id = repository.find_run(store, run).id if run is not None else None
        summaries = repository.list_trees(store, run_id=run_id, limit=limit)
    if json_output:
        print_json(trees_json(summaries))
    else:
        stdout_console().print(trees_table(summaries))


def inspect(
    tree_id: Annotated[int, typer.Argument(
        min=1, max=INT64_MAX, help="Id of a stored tree (see `treerpo trees`).")],
    db: DbOption = DEFAULT_DB,
    max_depth: Annotated[
        int | None, typer.Option("--max-depth", min=0, max=INT64_MAX,
                                 help="Fold nodes below this depth.")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Show whole texts, not snippets.")] = False,
    json_output: JsonOption = False,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write the tree as one self-contained HTML page to this file instead.")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="With --html: tokenizer for the token texts of logprob shading "
        "(local folder or cached hub id, never downloaded; default: the run's model; `none`: "
        "token positions).")] = None,
) -> None:
    """Show one stored tree: each node's kind, tokens, reward / value / advantage, text.

    Every node shows its depth, kind, token count, reward (leaves), value and advantage
    coloured by sign, the split entropy of nodes that split, `forced` when its first token was
    forced as an alternative (--branching forced), and a text snippet (--full: the whole text).

    `--json` prints the stable interchange format: {"tree_id", "problem", "reference",
    "logprob_temperature", "root": NODE} with NODE = {"id", "depth", "kind", "text",
    "num_tokens", "token_ids", "logprobs", "split_entropy", "reward", "value", "advantage",
    "forced", "children": [NODE...]}; unscored fields are null.

    `--html FILE` writes a page to open in a browser (no network needed): the tree drawn as
    collapsible rows coloured by value, with reward, advantage, split entropy, tokens,
    forced/sampled and finish reason; click a node to read its whole completion from the root
    (a leaf: with the extracted answer and the reference), tokens shaded by behaviour logprob
    on demand. `FILE#node=N` opens with node N selected.

    Examples:

        treerpo inspect 1

        treerpo inspect 1 --max-depth 2

        treerpo inspect 1 --json > tree1.json

        treerpo inspect 1 --html tree1.html && xdg-open tree1.html
    """
    if html is not None:
        from treerpo.web.export import write_tree_page

        with store_at(db, read_only=True) as store:
            path = write_tree_page(store, tree_id=tree_id, path=html, tokenizer=tokenizer)
        typer.echo(f"tree page: {path}")
        return
    with store_at(db, read_only=True) as store:
        tree = repository.load_tree(store, tree_id)
    if json_output:
        print_json(tree_to_json(tree))
    else:
        console = stdout_console()
        terminal = console.is_terminal
        lines = tree_lines(tree, max_depth=max_depth, full=full,
                           color=terminal and not console.no_color,
                           width=console.width if terminal else None)
        typer.echo("\n".join(lines))


@db_app.command("upgrade")
def db_upgrade(db: DbOption = DEFAULT_DB) -> None:
    """Create the store or migrate it to the newest schema (every command also does this).

    Example:

        treerpo db upgrade --db sqlite:///data/treerpo.db
    """
    with store_at(db):
        pass
    typer.echo(f"store at revision {database.head_revision()} (head)")


@db_app.command("current")
def db_current(db: DbOption = DEFAULT_DB) -> None:
    """Print the store's schema revision id (without migrating it); `none` for a new store.

    Example:

        treerpo db current
    """
    revision = database.current_revision(db)
    if revision is None:
        typer.echo("none")
        return
    head = database.head_revision()
    typer.echo(revision if revision == head else f"{revision} (head is {head})")


def register(app: typer.Typer) -> None:
    app.command("trees")(trees)
    app.command("inspect")(inspect)
    app.add_typer(db_app, name="db")

