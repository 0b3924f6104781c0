"""How stored trees look to users: the stable JSON of `inspect --json` and rich renderables.

Builds objects only; the CLI prints them. Model text is never parsed as rich markup (it goes in
`rich.text.Text` objects or plain strings), and control characters are escaped, so a completion
containing `[bold]`, `[/]` or a terminal escape sequence is shown as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from treerpo.store.repository import TreeSummary
from treerpo.trees import Tree, TreeNode

SNIPPET_CHARS = 80


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def node_to_json(tree: Tree, node: TreeNode) -> dict[str, Any]:
    return {
        "id": node.index,
        "depth": node.depth,
        "kind": node.kind,
        "text": node.text,
        "num_tokens": node.num_tokens,
        "token_ids": node.token_ids.tolist(),
        "logprobs": node.logprobs.tolist(),
        "split_entropy": _float_or_none(node.split_entropy),
        "reward": _float_or_none(node.reward),
        "value": _float_or_none(node.value),
        "advantage": _float_or_none(node.advantage),
        "forced": node.forced,
        "children": [node_to_json(tree, tree.nodes[child]) for child in node.children],
    }


def tree_to_json(tree: Tree) -> dict[str, Any]:
    """The `inspect --json` contract (DESIGN, "CLI contract"): a stable interface."""
    return {
        "tree_id": tree.tree_id,
        "problem": tree.problem,
        "reference": tree.reference,
        "logprob_temperature": tree.logprob_temperature,
        "root": node_to_json(tree, tree.root),
    }


_ANSI = {"bold": "1", "dim": "2", "italic": "3", "red": "31", "green": "32", "cyan": "36",
         "magenta": "35", "white": "37"}
# Control characters in model text would drive the user's terminal (colours, cursor moves):
# show them as visible escapes instead. Newlines become ⏎ in snippets.
_CONTROL_CHARS = {code: f"\\x{code:02x}" for code in [*range(0, 32), 127] if code not in (9, 10)}


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def safe_text(text: str) -> str:
    """Model text made inert for a terminal: control characters shown as \\xNN."""
    return text.translate(_CONTROL_CHARS)


def snippet(text: str, *, full: bool, limit: int = SNIPPET_CHARS) -> str:
    if full:
        return text
    flat = text.replace("\n", "⏎")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _signed(value: float | None, label: str, paint) -> str:
    if value is None:
        return paint(f"{label}=–", "dim")
    return paint(f"{label}={value:+.3f}", "green" if value > 0 else "red" if value < 0 else "white")


def _node_head(node: TreeNode, *, paint) -> str:
    """Everything on a node's line before its text."""
    parts = [paint(f"#{node.index}", "bold"), paint(f"d{node.depth} {node.kind}", "cyan"),
             f"{node.num_tokens} tok"]
    if node.forced:
        parts.append(paint("forced", "yellow"))
    if node.kind != "root":
        if node.is_leaf:
            parts.append(_signed(node.reward, "r", paint))
        parts.append(_signed(node.value, "v", paint))
        parts.append(_signed(node.advantage, "A", paint))
    if node.split_entropy is not None:
        parts.append(paint(f"H={node.split_entropy:.2f}", "magenta"))
    if node.finish_reason is not None:
        parts.append(paint(f"[{node.finish_reason}]", "dim"))
    return " ".join(parts) + "  "


def _painter(color: bool):
    if not color:
        return lambda text, _style: text
    return lambda text, style: f"\x1b[{_ANSI[style]}m{text}\x1b[0m"


def tree_lines(
    tree: Tree,
    *,
    max_depth: int | None = None,
    full: bool = False,
    color: bool = False,
    width: int | None = None,
) -> list[str]:
    """The stored tree as lines with tree guides, one per node (kind, tokens, reward / value /
    advantage coloured by sign, split entropy, text snippet). Nodes deeper than `max_depth` are
    folded into a count. With `width` (and not `full`), snippets are cut so each line fits.

    Plain strings (with ANSI colours when `color`) rather than rich renderables: rich renders a
    10,000-node tree in seconds, this in a few hundredths. Model text passes through
    `safe_text`, so it cannot inject terminal escapes.
    """
    paint = _painter(color)
    header = (paint(f"tree {tree.tree_id}:", "bold") + " "
              + safe_text(snippet(tree.problem, full=full, limit=120))
              + paint(f"  (reference: {safe_text(tree.reference)})", "dim"))
    lines = [header]
    # Depth-first, children in order; each stack entry carries the guide prefix of its line.
    stack: list[tuple[int, str, bool]] = [(tree.root.index, "", True)]
    while stack:
        index, prefix, is_last = stack.pop()
        node = tree.nodes[index]
        guide = paint(prefix + ("└── " if is_last else "├── "), "dim")
        child_prefix = prefix + ("    " if is_last else "│   ")
        head = guide + _node_head(node, paint=paint)
        if full:  # whole multi-line texts, kept inside their branch
            text = safe_text(node.text).replace("\n", "\n" + child_prefix + "    ")
        else:
            limit = SNIPPET_CHARS
            if width is not None:
                limit = max(12, width - len(_ANSI_ESCAPE.sub("", head)))
            text = safe_text(snippet(node.text, full=False, limit=limit))
        lines.append(head + paint(text, "italic"))
        children = node.children
        if max_depth is not None and node.depth >= max_depth and children:
            hidden = _count_subtree(tree, index) - 1
            lines.append(paint(f"{child_prefix}└── … {hidden} node(s) below depth {max_depth}",
                               "dim"))
            continue
        for position in range(len(children) - 1, -1, -1):
            stack.append((children[position], child_prefix, position == len(children) - 1))
    return lines


def _count_subtree(tree: Tree, index: int) -> int:
    count, stack = 0, [index]
    while stack:
        current = stack.pop()
        count += 1
        stack.extend(tree.nodes[current].children)
    return count


def trees_table(summaries: Sequence[TreeSummary]) -> Table:
    table = Table(title=f"{len(summaries)} stored tree(s)")
    for column, justify in [("id", "right"), ("run", "left"), ("problem", "left"),
                            ("nodes", "right"), ("leaves", "right"), ("depth", "right"),
                            ("tokens", "right"), ("scored", "center"), ("mean reward", "right"),
                            ("created", "left")]:
        table.add_column(column, justify=justify)
    for summary in summaries:
        table.add_row(
            str(summary.tree_id),
            Text(safe_text(summary.run_name)),
            Text(safe_text(snippet(summary.problem, full=False, limit=50))),
            str(summary.num_nodes),
            str(summary.num_leaves),
            str(summary.max_depth),
            str(summary.num_tokens),
            "yes" if summary.scored else "no",
            "–" if summary.mean_reward is None else f"{summary.mean_reward:.3f}",
            summary.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table


def trees_json(summaries: Sequence[TreeSummary]) -> list[dict[str, Any]]:
    return [
        {
            "tree_id": summary.tree_id,
            "run": summary.run_name,
            "problem_id": summary.problem_id,
            "num_nodes": summary.num_nodes,
            "num_leaves": summary.num_leaves,
            "max_depth": summary.max_depth,
            "num_tokens": summary.num_tokens,
            "scored": summary.scored,
            "mean_reward": summary.mean_reward,
            "rollout": summary.rollout,
            "created_at": summary.created_at.isoformat(),
        }
        for summary in summaries
    ]
