r"""Majority voting over the final answers of k samples (maj@k), as pure functions.

Rules (the original TreeRPO evaluation):

- a sample's vote is its extracted `\boxed{…}` answer; a sample without one casts no vote;
- votes are grouped by mathematical equivalence (`18`, `18.0` and `\$18` are one answer), through
  `treerpo.scoring.answers_equivalent` unless another `equivalent` is passed. A vote joins the
  first group, in order of first appearance, whose representative (its first vote) it equals;
- the largest group wins and its representative is the vote; a tie between the largest groups is
  broken at random with the caller's `rng` (seed it for reproducible votes);
- no votes at all gives `None` (the problem counts as incorrect).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from treerpo.scoring.verify import answers_equivalent

Equivalence = Callable[[str, str], bool]


@dataclass(frozen=True)
class AnswerGroup:
    """Equivalent votes: the first one as written, and how many samples cast one of them."""

    representative: str
    count: int


def group_answers(
    *, answers: Sequence[str | None], equivalent: Equivalence = answers_equivalent
) -> list[AnswerGroup]:
    """The groups of equivalent votes in order of first appearance; `None` answers are skipped."""
    representatives: list[str] = []
    counts: list[int] = []
    for answer in answers:
        if answer is None:
            continue
        for index, representative in enumerate(representatives):
            if equivalent(representative, answer):
                counts[index] += 1
                break
        else:
            representatives.append(answer)
            counts.append(1)
    return [
        AnswerGroup(representative=representative, count=count)
        for representative, count in zip(representatives, counts, strict=True)
    ]


def majority_vote(
    *,
    answers: Sequence[str | None],
    rng: random.Random,
    equivalent: Equivalence = answers_equivalent,
) -> str | None:
    """The representative of the largest group of equivalent answers; ties drawn with `rng`.

    `rng` is consulted only when there is a tie, so an untied vote never depends on it.
    """
    groups = group_answers(answers=answers, equivalent=equivalent)
    if not groups:
        return None
    top_count = max(group.count for group in groups)
    tied = [group.representative for group in groups if group.count == top_count]
    if len(tied) == 1:
        return tied[0]
    return rng.choice(tied)
