"""Steps that cannot teach anything: every advantage of their trees is zero.

That happens when the leaves of every sibling group score alike, most often because every
reward is 0 (a reward function that never matches, references in another format, answers never
boxed) or 1 (problems too easy). Such a step's loss and gradient are exactly zero, so the run
would go on without learning and without a word; `NoSignalWatch` turns a streak of them into a
warning.
"""

from __future__ import annotations

from typing import Any


class NoSignalWatch:
    """Counts consecutive steps whose trees carried no signal (every advantage zero, e.g. all
    rewards 0) and says so every `patience` of them: such steps update nothing, silently."""

    def __init__(self, *, patience: int) -> None:
        self.patience = patience
        self.streak = 0
        self.rewards: list[float] = []

    def observe(self, metrics: dict[str, Any]) -> str | None:
        if metrics.get("nonzero_token_share"):  # None (no trained token) counts as no signal
            self.streak, self.rewards = 0, []
            return None
        self.streak += 1
        if metrics.get("mean_reward") is not None:
            self.rewards.append(metrics["mean_reward"])
        if self.streak % self.patience:
            return None
        rewards = (f"mean leaf reward {min(self.rewards):.3f}–{max(self.rewards):.3f}"
                   if self.rewards else "no scored leaves")
        return (f"warning: steps {metrics['step'] - self.streak + 1}–{metrics['step']} had no "
                f"learning signal (every advantage 0: the leaves of every sibling group scored "
                f"alike; {rewards}). Check the reward function and the answers, or grow more "
                "varied trees (--temperature, --root-children)")
