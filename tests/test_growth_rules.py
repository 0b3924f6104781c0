"""The branching rules (entropy, alternatives, split and coverage positions) and growth settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from treerpo.engines.base import SamplingSettings
from treerpo.growth.rules import (
    find_coverage_cut,
    find_entropy_split,
    sample_alternative,
    topk_entropy,
)
from treerpo.growth.settings import SamplingConfig, TreeSettings

DELIMITERS = ["\n", "!", ".", "?", ";", ":"]

# --- topk_entropy -------------------------------------------------------------------------------


def test_entropy_of_uniform_topk_is_log_k():
    assert topk_entropy(np.log(np.full(20, 1 / 20))) == pytest.approx(math.log(20))


def test_entropy_renormalises_over_the_topk():
    # Top 4 of a larger distribution: mass 0.4 in total, spread evenly -> ln 4 after renormalising.
    assert topk_entropy(np.log(np.full(4, 0.1))) == pytest.approx(math.log(4))


def test_entropy_ignores_impossible_candidates_and_batches():
    rows = np.array([[0.0, -np.inf, -np.inf], np.log([0.5, 0.25, 0.25])])  # (2, 3)
    entropies = topk_entropy(rows)
    assert entropies.shape == (2,)
    assert entropies[0] == pytest.approx(0.0)
    assert entropies[1] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


# --- sample_alternative -------------------------------------------------------------------------

TOPK_IDS = np.array([7, 3, 11, 5, 9, 2])
TOPK_PROBS = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])


def tempered_distribution(*, exclude: set[int], temperature: float) -> np.ndarray:
    weights = np.where(np.isin(TOPK_IDS, list(exclude)), 0.0, TOPK_PROBS ** (1 / temperature))
    return weights / weights.sum()


def draw_counts(*, exclude: set[int], temperature: float, draws: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    counts = np.zeros(len(TOPK_IDS))
    for _ in range(draws):
        token, logprob = sample_alternative(
            topk_token_ids=TOPK_IDS,
            topk_logprobs=np.log(TOPK_PROBS),
            exclude=exclude,
            temperature=temperature,
            generator=generator,
        )
        position = int(np.flatnonzero(TOPK_IDS == token)[0])
        assert logprob == pytest.approx(math.log(TOPK_PROBS[position]))  # the raw logprob
        counts[position] += 1
    return counts


def chi_square(*, counts: np.ndarray, expected_probs: np.ndarray) -> float:
    expected = expected_probs * counts.sum()
    support = expected > 0
    return float(np.sum((counts[support] - expected[support]) ** 2 / expected[support]))


CHI_SQUARE_CRITICAL_DF4_P001 = 18.467  # 4 degrees of freedom (5 candidates left), p = 0.001


@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_alternatives_follow_the_tempered_renormalised_topk(temperature):
    exclude = {3}  # the sampled token
    counts = draw_counts(exclude=exclude, temperature=temperature, draws=20_000, seed=1)
    assert counts[1] == 0  # never the excluded token
    expected = tempered_distribution(exclude=exclude, temperature=temperature)
    assert chi_square(counts=counts, expected_probs=expected) < CHI_SQUARE_CRITICAL_DF4_P001


def test_the_chi_square_check_rejects_the_wrong_temperature():
    counts = draw_counts(exclude={3}, temperature=0.6, draws=20_000, seed=1)
    untempered = tempered_distribution(exclude={3}, temperature=1.0)
    assert chi_square(counts=counts, expected_probs=untempered) > CHI_SQUARE_CRITICAL_DF4_P001


def test_no_alternative_when_every_candidate_is_used_or_impossible():
    drawn = sample_alternative(
        topk_token_ids=np.array([4, 5, 6]),
        topk_logprobs=np.array([-0.1, -2.0, -np.inf]),
        exclude={4, 5},
        temperature=0.6,
        generator=np.random.default_rng(0),
    )
    assert drawn is None


def test_temperature_zero_takes_the_most_likely_candidate_left():
    drawn = sample_alternative(
        topk_token_ids=TOPK_IDS,
        topk_logprobs=np.log(TOPK_PROBS),
        exclude={7},
        temperature=0.0,
        generator=np.random.default_rng(0),
    )
    assert drawn == (3, pytest.approx(math.log(0.25)))


@settings(max_examples=200, deadline=None)
@given(
    logprobs=st.lists(st.floats(min_value=-30, max_value=0), min_size=2, max_size=8),
    excluded_positions=st.sets(st.integers(min_value=0, max_value=7), max_size=7),
    temperature=st.sampled_from([0.0, 0.3, 0.6, 1.0, 2.0]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_an_alternative_is_never_an_excluded_token(logprobs, excluded_positions, temperature, seed):
    token_ids = np.arange(100, 100 + len(logprobs))
    exclude = {int(token_ids[i]) for i in excluded_positions if i < len(logprobs)}
    drawn = sample_alternative(
        topk_token_ids=token_ids,
        topk_logprobs=np.array(logprobs),
        exclude=exclude,
        temperature=temperature,
        generator=np.random.default_rng(seed),
    )
    if len(exclude) == len(logprobs):
        assert drawn is None
    else:
        token, logprob = drawn
        assert token not in exclude
        assert logprob == logprobs[token - 100]


# --- find_entropy_split -------------------------------------------------------------------------


def reference_entropy_split(*, texts, entropies, min_segment_len, delimiters, threshold):
    """DESIGN step 4 read literally, on the joined text."""
    for position in range(min_segment_len, len(texts)):
        text_so_far = "".join(texts[:position])
        if (
            text_so_far.endswith(tuple(delimiters))
            and not texts[position].endswith(tuple(delimiters))
            and entropies[position] > threshold
        ):
            return position
    return None


def test_split_lands_at_the_first_qualifying_position():
    texts = ["a", ".", "b", "c", ".", "d", "e", ":", "f"]
    entropies = np.array([2.0, 2.0, 2.0, 2.0, 0.5, 0.9, 2.0, 2.0, 2.0])
    # 2: too early (2 tokens < 3). 5: after "." but entropy 0.9 <= 1.0. 8: after ":" and high.
    split = find_entropy_split(
        token_texts=texts,
        entropies=entropies,
        min_segment_len=3,
        delimiters=DELIMITERS,
        threshold=1.0,
    )
    assert split == 8


def test_split_never_lands_before_min_segment_len():
    texts = ["a", ".", "b", ".", "c"]
    entropies = np.full(5, 3.0)
    for min_segment_len, expected in [(1, 2), (2, 2), (3, 4), (4, 4), (5, None)]:
        split = find_entropy_split(
            token_texts=texts,
            entropies=entropies,
            min_segment_len=min_segment_len,
            delimiters=DELIMITERS,
            threshold=1.0,
        )
        assert split == expected, min_segment_len


def test_split_looks_through_empty_tokens_and_not_before_a_delimiter_token():
    texts = ["a", ".", "", "", "!", "b"]
    entropies = np.full(6, 3.0)
    # 2 and 3: the text so far ends with "." (empty tokens add nothing), tokens are "": qualify.
    split = find_entropy_split(
        token_texts=texts,
        entropies=entropies,
        min_segment_len=2,
        delimiters=DELIMITERS,
        threshold=1.0,
    )
    assert split == 2
    # From 4 on: token 4 ("!") itself ends with a delimiter, so only 5 qualifies.
    split = find_entropy_split(
        token_texts=texts,
        entropies=entropies,
        min_segment_len=4,
        delimiters=DELIMITERS,
        threshold=1.0,
    )
    assert split == 5


def test_entropy_equal_to_the_threshold_or_unknown_does_not_split():
    texts = ["a", ".", "b", ".", "c"]
    split = find_entropy_split(
        token_texts=texts,
        entropies=np.array([0.0, 0.0, 1.0, 0.0, np.nan]),
        min_segment_len=1,
        delimiters=DELIMITERS,
        threshold=1.0,
    )
    assert split is None


def test_a_delimiter_spanning_two_tokens_counts():
    split = find_entropy_split(
        token_texts=["a", "\n", "\n", "b"],
        entropies=np.full(4, 3.0),
        min_segment_len=1,
        delimiters=["\n\n"],
        threshold=1.0,
    )
    assert split == 3


TEXTS = st.sampled_from(["a", "bb", " c", ".", "\n", "d;", "", "e?", "x.y", "!!", "q:", "\n\n"])


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(TEXTS, max_size=25),
    data=st.data(),
    min_segment_len=st.integers(min_value=1, max_value=6),
    delimiters=st.sampled_from([DELIMITERS, ["."], ["\n\n", ";"]]),
)
def test_entropy_split_matches_design_read_literally(texts, data, min_segment_len, delimiters):
    entropies = np.array(
        data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0]), min_size=len(texts),
                           max_size=len(texts))),
        dtype=np.float64,
    )  # fmt: skip
    arguments = dict(min_segment_len=min_segment_len, delimiters=delimiters, threshold=1.0)
    expected = reference_entropy_split(texts=texts, entropies=entropies, **arguments)
    assert find_entropy_split(token_texts=texts, entropies=entropies, **arguments) == expected


# --- find_coverage_cut --------------------------------------------------------------------------


def reference_coverage_cut(*, texts, delimiters, coverage_min_chars, min_segment_len):
    """DESIGN step 6 on the joined text, restricted to cuts right after a non-empty token."""
    total_chars = len("".join(texts))
    for kept in range(len(texts) - 1, 0, -1):
        kept_text = "".join(texts[:kept])
        delimiter_ends_here = texts[kept - 1] != "" and kept_text.endswith(tuple(delimiters))
        if delimiter_ends_here and len(kept_text) <= total_chars - coverage_min_chars:
            return kept if kept >= min_segment_len else None
    return None


def test_coverage_cut_after_the_last_delimiter_far_enough_from_the_end():
    texts = ["aa", ".", "bb", ";", "cc", ".", "dd", "e"]  # 11 chars
    # With 4 chars required after the cut: "." at char 7 leaves "dde" (3): too close; ";" at
    # char 4 leaves "cc.dde" (6): cut after token 3.
    cut = find_coverage_cut(
        token_texts=texts, delimiters=DELIMITERS, coverage_min_chars=4, min_segment_len=2
    )
    assert cut == 4
    cut = find_coverage_cut(
        token_texts=texts, delimiters=DELIMITERS, coverage_min_chars=3, min_segment_len=2
    )
    assert cut == 6


def test_no_coverage_cut_when_the_kept_part_is_too_short_or_no_delimiter_fits():
    texts = ["aa", ".", "bb", ";", "cc", ".", "dd", "e"]
    cut = find_coverage_cut(
        token_texts=texts, delimiters=DELIMITERS, coverage_min_chars=4, min_segment_len=5
    )
    assert cut is None  # the last fitting delimiter keeps 4 tokens: an earlier one keeps fewer
    cut = find_coverage_cut(
        token_texts=texts, delimiters=DELIMITERS, coverage_min_chars=10, min_segment_len=1
    )
    assert cut is None  # "." at char 2 leaves 8 characters, fewer than 10


def test_coverage_cut_ignores_a_delimiter_inside_a_token():
    texts = ["a.b", "cc", "dd", "ee"]
    cut = find_coverage_cut(
        token_texts=texts, delimiters=DELIMITERS, coverage_min_chars=1, min_segment_len=1
    )
    assert cut is None


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(TEXTS, max_size=25),
    coverage_min_chars=st.integers(min_value=1, max_value=12),
    min_segment_len=st.integers(min_value=1, max_value=6),
    delimiters=st.sampled_from([DELIMITERS, ["."], ["\n\n", ";"]]),
)
def test_coverage_cut_matches_design_read_literally(
    texts, coverage_min_chars, min_segment_len, delimiters
):
    arguments = dict(
        delimiters=delimiters,
        coverage_min_chars=coverage_min_chars,
        min_segment_len=min_segment_len,
    )
    cut = find_coverage_cut(token_texts=texts, **arguments)
    assert cut == reference_coverage_cut(texts=texts, **arguments)
    if cut is not None:
        assert min_segment_len <= cut < len(texts)
        assert len("".join(texts[cut:])) >= coverage_min_chars


# --- settings -----------------------------------------------------------------------------------


def test_defaults_are_designs():
    tree_settings = TreeSettings()
    assert (tree_settings.max_depth, tree_settings.min_segment_len) == (7, 150)
    assert (tree_settings.entropy_threshold, tree_settings.entropy_topk) == (1.0, 20)
    assert (tree_settings.coverage_min_chars, tree_settings.coverage_children_max) == (150, 4)
    assert tree_settings.max_new_tokens == 1300
    assert (tree_settings.branching, tree_settings.resolved_root_children) == ("resample", 4)
    assert TreeSettings(branching="forced").resolved_root_children == 2
    assert TreeSettings(branching="forced", root_children=3).resolved_root_children == 3
    assert tree_settings.split_delimiters == ["\n", "!", ".", "?", ";", ":"]
    assert tree_settings.rollout == "tree"
    assert SamplingConfig().to_settings() == SamplingSettings(
        temperature=0.6, top_p=0.85, top_k=25, min_p=None, repetition_penalty=1.1
    )


@pytest.mark.parametrize(
    "invalid",
    [
        {"max_depth": 0},
        {"min_segment_len": 0},
        {"entropy_threshold": -0.1},
        {"entropy_threshold": float("nan")},
        {"entropy_topk": 1},
        {"coverage_min_chars": 0},
        {"coverage_children_max": 0},
        {"root_children": 1},
        {"root_children": 5, "entropy_topk": 4, "branching": "forced"},
        {"branching": "sideways"},
        {"split_delimiters": []},
        {"split_delimiters": [".", ""]},
        {"num_generations": 1},
        {"max_new_tokens": 0},
        {"rollout": "forest"},
        {"unknown_flag": 1},
    ],
)
def test_invalid_tree_settings_are_rejected(invalid):
    with pytest.raises(ValidationError):
        TreeSettings(**invalid)


@pytest.mark.parametrize(
    "invalid",
    [
        {"temperature": 0.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": 0},
        {"min_p": 1.0},
        {"min_p": -0.1},
        {"repetition_penalty": 0.0},
        {"beam_width": 2},
    ],
)
def test_invalid_sampling_config_is_rejected(invalid):
    with pytest.raises(ValidationError):
        SamplingConfig(**invalid)


def test_optional_sampling_transforms_can_be_turned_off():
    settings_off = SamplingConfig(top_k=None, min_p=0.05).to_settings()
    assert settings_off.top_k is None
    assert settings_off.min_p == 0.05
