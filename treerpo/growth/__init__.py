"""Tree growth: grow TreeRPO trees (or flat GRPO groups) over any engine (DESIGN steps 1–6).

`settings` holds the typed flags, `rules` the pure branching rules, `grower` the wave loop.
"""

from treerpo.growth.grower import GrowthStats, WaveProgress, grow_trees
from treerpo.growth.settings import SamplingConfig, TreeSettings

__all__ = ["GrowthStats", "SamplingConfig", "TreeSettings", "WaveProgress", "grow_trees"]
