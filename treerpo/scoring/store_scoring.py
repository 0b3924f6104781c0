"""`treerpo score` as a library call: score stored trees and write the results back.

Selection: the given tree ids (already scored ones only with `rescore`), else every unscored tree
(every tree with `rescore`), optionally within one run. All or nothing: every selected tree is
scored in memory first, then all scores are written in one transaction, so a failing reward
function leaves the store exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

from treerpo.errors import BadInputError
from treerpo.scoring.isolation import DEFAULT_REWARD_TIMEOUT_S
from treerpo.scoring.rewards import DEFAULT_REWARD_FN, resolve_reward_fn
from treerpo.scoring.scorer import ProgressFn, ScoreStats, score_trees
from treerpo.store import repository
from treerpo.store.database import Store


def select_trees_to_score(
    store: Store,
    *,
    tree_ids: Sequence[int] | None = None,
    run_id: int | None = None,
    rescore: bool = False,
) -> list[int]:
    if tree_ids:
        found = {s.tree_id: s for s in repository.list_trees(store, tree_ids=tree_ids)}
        unknown = [tree_id for tree_id in tree_ids if tree_id not in found]
        if unknown:
            raise BadInputError(f"no tree with id {unknown[0]} in the store")
        return [tree_id for tree_id in dict.fromkeys(tree_ids)
                if rescore or not found[tree_id].scored]
    summaries = repository.list_trees(store, run_id=run_id, scored=None if rescore else False)
    return [summary.tree_id for summary in summaries]


def score_stored_trees(
    store: Store,
    *,
    tree_ids: Sequence[int],
    reward_fn_spec: str | None = None,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    reward_timeout: float = DEFAULT_REWARD_TIMEOUT_S,
) -> ScoreStats:
    """Score the stored trees `tree_ids` and write rewards, values and advantages back."""
    resolve_reward_fn(reward_fn_spec)  # an unloadable function is refused before any work
    trees = repository.load_trees(store, list(tree_ids))
    stats = score_trees(trees, reward_fn_spec=reward_fn_spec, workers=workers,
                        on_progress=on_progress, reward_timeout=reward_timeout)
    repository.update_scores(store, trees=trees, reward_fn=reward_fn_spec or DEFAULT_REWARD_FN)
    return stats
