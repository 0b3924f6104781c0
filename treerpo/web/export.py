"""Pages written to files: `inspect --html`, `report --html` and the demo's two pages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from treerpo.store import browse, repository
from treerpo.store.database import Store
from treerpo.web.report import render_run_report, train_step_tree_ids
from treerpo.web.tree_page import load_token_pieces, render_tree_page

NO_TOKENIZER = "none"


def write_tree_page(store: Store, *, tree_id: int, path: Path, tokenizer: str | None = None,
                    run_href: str | None = None) -> Path:
    """Write tree `tree_id`'s page to `path`. Token texts come from `tokenizer` (default: the
    run's model, when it loads without the network; `none`: token positions only); `run_href`
    links the run's name (a report page)."""
    tree = repository.load_tree(store, tree_id)
    origin = browse.tree_origin(store, tree_id)
    name = origin.model if tokenizer is None else tokenizer
    pieces = load_token_pieces(tree, tokenizer_name=None if name == NO_TOKENIZER else name)
    page = render_tree_page(tree, origin=origin, pieces=pieces,
                            run_href=lambda name: run_href)
    return _write(path, page)


def write_run_report(store: Store, *, run_name: str, path: Path,
                     tree_steps: Sequence[int] | None = None,
                     tokenizer: str | None = None) -> list[Path]:
    """Write the run's report to `path`; for a train run also the pages of the trees of
    `tree_steps` (default: the first and last step) into `<path stem>-trees/`, linked from the
    step table. Returns every file written, the report first."""
    tree_ids = train_step_tree_ids(store, run_name, tree_steps) \
        if repository.find_run(store, run_name).kind == "train" else []
    folder = path.parent / f"{path.stem}-trees"
    written = set(tree_ids)

    def tree_href(tree_id: int) -> str | None:
        return f"{folder.name}/tree-{tree_id}.html" if tree_id in written else None

    paths = [_write(path, render_run_report(store, run_name, tree_href=tree_href))]
    for tree_id in tree_ids:
        paths.append(write_tree_page(store, tree_id=tree_id,
                                     path=folder / f"tree-{tree_id}.html", tokenizer=tokenizer,
                                     run_href=f"../{path.name}"))
    return paths


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
