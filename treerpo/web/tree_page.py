"""One stored tree as a self-contained HTML page (`treerpo inspect ID --html FILE`, `serve`).

The page carries the tree as JSON data and a small inline script (`static/tree.js`) that draws
it: collapsible rows coloured by value, each with reward, value, advantage, split entropy,
token count, forced/sampled and finish reason; clicking a node shows its whole root-to-node
completion (for a leaf with the answer the grader extracted and the reference), optionally
with every token shaded by its behaviour logprob. Rows below `collapse_depth` are built only
when opened, so a 10,000-node tree opens in well under a second.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from treerpo.scoring.answers import extract_boxed
from treerpo.store.browse import TreeOrigin
from treerpo.trees import Tree
from treerpo.web.markup import esc, page, script_json, static_text

# The node fields the page's script reads, in the order of each node's JSON array (arrays,
# not objects: no key names repeated for every node).
NODE_FIELDS = ("parent", "depth", "kind", "num_tokens", "text", "reward", "value",
               "advantage", "split_entropy", "finish_reason", "forced", "answer", "leaves")
# Behaviour logprobs travel as one byte per token, -logprob in 1/16 nat steps (clamped at
# -15.9): 1.33 base64 characters a token instead of ~8 for a JSON number, and shading needs
# no more precision.
LOGPROB_STEPS_PER_NAT = 16
# Token texts are embedded only for trees up to this many tokens (they are ~6 bytes a token).
MAX_PIECE_TOKENS = 200_000
# Rows drawn when the page opens: the tree is expanded down to the deepest level that keeps
# at most this many rows (at least the root's children).
OPEN_ROWS = 300


@dataclass(frozen=True)
class TokenPieces:
    """Per node, the text of each token (from the tokenizer), or why there is none."""

    pieces: list[list[str]] | None
    note: str


def auto_collapse_depth(tree: Tree, *, max_rows: int = OPEN_ROWS) -> int:
    """The deepest level d such that the nodes at depth ≤ d number at most `max_rows`
    (at least 1): nodes shallower than d start expanded."""
    per_depth: dict[int, int] = {}
    for node in tree.nodes:
        per_depth[node.depth] = per_depth.get(node.depth, 0) + 1
    rows, depth = 0, 0
    for level in sorted(per_depth):
        rows += per_depth[level]
        if rows > max_rows:
            break
        depth = level
    return max(1, depth)


def quantized_logprobs(logprobs: np.ndarray) -> str:
    """`logprobs` (≤ 0) as base64 bytes of round(-logprob × LOGPROB_STEPS_PER_NAT), max 255."""
    steps = np.clip(np.rint(-logprobs.astype(np.float64) * LOGPROB_STEPS_PER_NAT), 0, 255)
    return base64.b64encode(steps.astype(np.uint8).tobytes()).decode("ascii")


def tree_data(tree: Tree, *, pieces: TokenPieces, collapse_depth: int) -> dict:
    """What the page's script reads: the tree's header, one array per node (`NODE_FIELDS`),
    the behaviour logprobs per node and, when a tokenizer was at hand, the token texts."""
    leaf_counts = tree.leaf_counts()
    rows = []
    for node in tree.nodes:
        is_leaf = node.is_leaf and node.parent is not None
        answer = extract_boxed(tree.completion_text(node.index)) if is_leaf else None
        rows.append([
            node.parent, node.depth, node.kind, node.num_tokens, node.text, node.reward,
            node.value, node.advantage, node.split_entropy, node.finish_reason, node.forced,
            answer, leaf_counts[node.index],
        ])
    return {
        "tree_id": tree.tree_id,
        "reference": tree.reference,
        "collapse_depth": collapse_depth,
        "fields": list(NODE_FIELDS),
        "nodes": rows,
        "logprobs": [quantized_logprobs(node.logprobs) for node in tree.nodes],
        "logprob_scale": LOGPROB_STEPS_PER_NAT,
        "pieces": pieces.pieces,
        "pieces_note": pieces.note,
    }


def _facts(tree: Tree, origin: TreeOrigin | None,
           run_href: Callable[[str], str | None]) -> str:
    leaves = tree.leaves()
    rewards = [leaf.reward for leaf in leaves if leaf.reward is not None]
    mean = f"{sum(rewards) / len(rewards):.3f}" if rewards else "– (not scored)"
    facts = []
    if origin is not None:
        href = run_href(origin.run_name)
        run = (f'<a href="{esc(href)}">{esc(origin.run_name)}</a>' if href
               else esc(origin.run_name))
        facts += [("run", f"{run} <span class=\"muted\">({esc(origin.run_kind)})</span>"),
                  ("model", esc(origin.model)), ("policy version", esc(origin.policy_version)),
                  ("scored by", esc(origin.reward_fn or "– (not scored)"))]
    facts += [
        ("size", f"{len(tree.nodes)} nodes · {len(leaves)} leaves · depth {tree.max_depth} · "
                 f"{tree.num_completion_tokens} completion tokens · {esc(tree.rollout)} rollout"),
        ("mean leaf reward", mean),
        ("logprobs", f"behaviour log-softmax of logits / {tree.logprob_temperature:g}"),
        ("reference", f'<span class="usertext mono">{esc(tree.reference)}</span>'),
    ]
    return ('<dl class="facts">'
            + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>")


LEGEND = (
    '<div class="legend">'
    '<span><span class="scale"></span> node colour: value 0 → 1 '
    '(mean reward of the leaves below; grey: not scored)</span>'
    '<span><b>r</b> reward (leaves)</span><span><b>v</b> value</span>'
    '<span><b>A</b> advantage (value − mean of its sibling group)</span>'
    '<span><b>H</b> entropy where the node split</span><span><b>tok</b> segment tokens</span>'
    '<span><span class="flag">forced</span> first token forced as an alternative</span>'
    '<span><span class="flag eos">eos</span> / <span class="flag budget">budget</span> '
    'how a leaf finished</span>'
    '<span>kinds: root (prompt) · split · coverage · leaf</span></div>'
)


def render_tree_page(
    tree: Tree,
    *,
    origin: TreeOrigin | None = None,
    pieces: TokenPieces | None = None,
    collapse_depth: int | None = None,
    nav: str = "",
    run_href: Callable[[str], str | None] = lambda name: None,
) -> str:
    """The whole page for `tree`. `run_href` links the run's name (the server's run page)."""
    pieces = pieces or TokenPieces(pieces=None, note="no tokenizer given")
    depth = auto_collapse_depth(tree) if collapse_depth is None else collapse_depth
    body = (
        f"<h1>Tree {tree.tree_id}</h1>"
        f'<div class="problem usertext">{esc(tree.problem)}</div>'
        f"{_facts(tree, origin, run_href)}{LEGEND}"
        '<pre id="page-errors" class="errors"></pre>'
        '<div class="layout"><section><div class="controls">'
        '<button id="expand-all" type="button">expand all</button>'
        f'<button id="collapse" type="button">collapse below depth {depth}</button>'
        '<button id="first-correct" type="button">first correct leaf</button>'
        '<label><input id="shade" type="checkbox"> shade tokens by behaviour logprob '
        '(darker = lower; darkest at −4 nats or below)</label></div>'
        '<div id="tree" class="treebox"></div></section>'
        '<aside id="panel" class="panel"><p class="muted">Click a node to read its completion '
        "from the root; a leaf shows the answer the grader extracted and the reference."
        "</p></aside></div>"
        '<script type="application/json" id="tree-data">'
        f"{script_json(tree_data(tree, pieces=pieces, collapse_depth=depth))}</script>"
    )
    return page(title=f"treerpo · tree {tree.tree_id}", body=body, script=static_text("tree.js"),
                nav=nav)


def token_pieces_from(tokenizer, tree: Tree) -> TokenPieces:
    """Each node's tokens decoded one by one (a character split over two byte-level tokens
    shows as U+FFFD on each)."""
    pieces: list[list[str]] = []
    for node in tree.nodes:
        ids: Sequence[int] = node.token_ids.tolist() if node.logprobs.size else []
        pieces.append(tokenizer.batch_decode([[token] for token in ids]) if ids else [])
    return TokenPieces(pieces=pieces, note="decoded with the run's tokenizer")


@cache
def _offline_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, local_files_only=True)


def load_token_pieces(tree: Tree, *, tokenizer_name: str | None) -> TokenPieces:
    """Token texts from `tokenizer_name` (a local folder or a hub id already in the cache;
    nothing is downloaded; loaded once per process). Without one, or if it cannot load, the
    page shows token positions."""
    if not tokenizer_name:
        return TokenPieces(pieces=None, note="no tokenizer given")
    if tree.num_completion_tokens > MAX_PIECE_TOKENS:
        return TokenPieces(pieces=None, note=f"more than {MAX_PIECE_TOKENS} tokens")
    try:
        tokenizer = _offline_tokenizer(tokenizer_name)
    except (OSError, ValueError, ImportError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        return TokenPieces(pieces=None, note=f"tokenizer {tokenizer_name!r} not loadable "
                                             f"offline: {reason}")
    return token_pieces_from(tokenizer, tree)
