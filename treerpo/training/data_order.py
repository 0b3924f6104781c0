"""The order in which a run visits its trees (replay) or problems (chained).

Its own module, below both `trainer` and `chained`, so that neither imports the other for it.
"""

from __future__ import annotations

import numpy as np


def tree_order(*, num_trees: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of an epoch: a permutation that depends only on (seed, epoch), so a resumed
    run needs nothing but the step to find its place."""
    return np.random.default_rng([seed, epoch]).permutation(num_trees)
