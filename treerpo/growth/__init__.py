"""Tree growth: grow TreeRPO trees (or flat GRPO groups) over any engine (DESIGN steps 1–6).

`settings` holds the typed flags, `rules` the pure branching rules, `grower` the wave loop.
The grower (and with it torch) is imported on first use of its names, so that importing the
settings (the CLI's option parsing does) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from treerpo.growth.settings import SamplingConfig, TreeSettings

if TYPE_CHECKING:
    from treerpo.growth.grower import GrowthStats, WaveProgress, grow_trees

_LAZY = {"GrowthStats": "treerpo.growth.grower", "WaveProgress": "treerpo.growth.grower",
         "grow_trees": "treerpo.growth.grower"}

__all__ = ["GrowthStats", "SamplingConfig", "TreeSettings", "WaveProgress", "grow_trees"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
