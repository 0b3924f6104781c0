"""`treerpo bench generate`: tree growth against flat sampling of as many leaves, same engine.

What it measures (DESIGN, "Performance targets"): tree paths share their prefixes and growth
decodes each shared token once ("generate, then cut"), so a tree leaf should cost well under a
flat sample of the same budget. Two figures, from one run:

- waste = tokens decoded / unique tree tokens; 1.00 means no decoded token was thrown away;
- seconds per leaf, tree ÷ flat; the goal is ≤ 0.6.

Procedure: build a random Qwen2 model and the byte-level tokenizer of `treerpo.tiny_model`, render
`problems` GSM8K questions through the tokenizer's chat template, and warm the engine up with one
short request per problem. Then, with a fresh `HFEngine` of the same seed each time:

1. grow one tree per problem, all problems in flight in the same waves, timed; L = its leaves;
2. sample `rollout="flat"` with G = round(L / problems) (at least 2) samples per problem, all in
   one batch as GRPO would, timed. Both use the same sampling settings and `max_new_tokens`.

Both run `rounds` times (3 by default), interleaved: tree then flat in the first round, flat then
tree in the second, and so on, so that neither always runs first or under the same neighbours'
load. A fresh engine of the same seed grows the same trees and samples the same tokens every
round. Seconds per leaf divides each time by its own number of leaves (P·G differs from L by
rounding); the reported ratio is the median over rounds of each round's tree ÷ flat ratio, and
the reported times are the medians of the rounds.
Wall time is the goal's measure; the CPU time of this process is reported beside it because it
barely moves when other processes share the cores. Tokens per leaf, tree ÷ flat, is what the time
ratio would be if a run cost exactly the tokens it decodes. It does not: a tree decodes in several
waves of smaller batches than the one flat batch, and a step of few rows costs more per token.
The engine runs with its prefix cache (`HFEngine(prefix_cache=True)`, the default): an
alternative or coverage request reuses the KV of the row it extends and forwards one context
token, not its whole path (without the cache the tree costs about 1.1× flat per leaf, since on a
CPU a forwarded context token costs about half a decoded one). Flat samples of one prompt share
its prefill the same way.

A random model never samples EOS (one token in 400 with nearly flat logits), so every path and
every flat sample runs to `max_new_tokens`.

Why a random model of a few million parameters: below that, a decoding step costs about the same
with 1 row or 16 (Python and per-operator overhead), and the benchmark would count steps, not
tokens. At hidden size 256 and 4 layers (4M parameters, one thread) a step of 16 rows costs about
3× a step of one, and a step of 64 rows about 8×: the cost follows the tokens decoded.

Tree settings are DESIGN's defaults scaled to the shorter budget: `min_segment_len` and
`coverage_min_chars` are 150 · max_new_tokens / 1300, as the default 150 is to the default 1300;
depth, top-k, root and coverage children are unchanged. The entropy threshold cannot be: a random
model's next-token distribution is nearly flat, so its top-20 entropy sits just under
log 20 ≈ 3.0 nats at every position and DESIGN's 1.0 would split at every delimiter past
`min_segment_len`, growing trees far bushier than a trained model's. The bench therefore sets the
threshold to the median of the top-k entropies the warm-up decoded: about half the candidate split
points split, and trees come out seed-shaped (a few entropy splits per path, a coverage split at
each path's end).

`threads` fixes torch's intra-op threads for the run (restored afterwards): with other processes
on the cores, several threads wait on each other at every small matrix product and the timings
turn to noise; one thread gives a per-token cost that does not depend on the neighbours.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from treerpo.engines.base import GenerationRequest, SamplingSettings
from treerpo.errors import BadInputError
from treerpo.growth.grower import GrowthStats, grow_trees
from treerpo.growth.rules import topk_entropy
from treerpo.growth.settings import TreeSettings

# The first questions of the GSM8K test split (openai/gsm8k, MIT licence), so that the default
# run needs no download and no file.
GSM8K_TEST_QUESTIONS = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' market "
    "daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' "
    "market?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total "
    "does it take?",
    "Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 "
    "in repairs.  This increased the value of the house by 150%.  How much profit did he make?",
    "James decides to run 3 sprints 3 times a week.  He runs 60 meters each sprint.  How many "
    "total meters does he run a week?",
    "Every day, Wendi feeds each of her chickens three cups of mixed chicken feed, containing "
    "seeds, mealworms and vegetables to help keep them healthy.  She gives the chickens their "
    "feed in three separate meals. In the morning, she gives her flock of chickens 15 cups of "
    "feed.  In the afternoon, she gives her chickens another 25 cups of feed.  How many cups of "
    "feed does she need to give her chickens in the final meal of the day if the size of Wendi's "
    "flock is 20 chickens?",
    "Kylar went to the store to buy glasses for his new apartment. One glass costs $5, but every "
    "second glass costs only 60% of the price. Kylar wants to buy 16 glasses. How much does he "
    "need to pay for them?",
    "Toulouse has twice as many sheep as Charleston. Charleston has 4 times as many sheep as "
    "Seattle. How many sheep do Toulouse, Charleston, and Seattle have together if Seattle has "
    "20 sheep?",
    "Carla is downloading a 200 GB file. Normally she can download 2 GB/minute, but 40% of the way "
    "through the download, Windows forces a restart to install updates, which takes 20 minutes. "
    "Then Carla has to restart the download from the beginning. How load does it take to "
    "download the file?",
)

DESIGN_MAX_NEW_TOKENS = 1300
DESIGN_SEGMENT_SCALE = 150  # DESIGN's min_segment_len and coverage_min_chars at 1300 tokens
WARMUP_TOKENS = 32  # per problem: enough positions for a stable median entropy


@dataclass(frozen=True)
class GenerateBenchResult:
    problems: int
    model_parameters: int
    tree_settings: TreeSettings
    tree: GrowthStats
    tree_seconds: float  # wall clock
    tree_cpu_seconds: float  # this process's CPU time: what the run cost, whatever else ran
    flat: GrowthStats
    flat_seconds: float
    flat_cpu_seconds: float
    round_ratios: tuple[float, ...]  # per round: tree s per leaf ÷ flat s per leaf (wall)
    round_cpu_ratios: tuple[float, ...]

    @property
    def waste_ratio(self) -> float:
        return self.tree.decoded_tokens / self.tree.unique_tokens

    @property
    def tree_seconds_per_leaf(self) -> float:
        return self.tree_seconds / self.tree.num_leaves

    @property
    def flat_seconds_per_leaf(self) -> float:
        return self.flat_seconds / self.flat.num_leaves

    @property
    def seconds_per_leaf_ratio(self) -> float:
        """Median over rounds of tree s per leaf ÷ flat s per leaf (wall clock)."""
        return statistics.median(self.round_ratios)

    @property
    def cpu_seconds_per_leaf_ratio(self) -> float:
        return statistics.median(self.round_cpu_ratios)

    @property
    def tokens_per_leaf_ratio(self) -> float:
        """What the time ratio would be if a run cost exactly its decoded tokens."""
        tree_per_leaf = self.tree.decoded_tokens / self.tree.num_leaves
        return tree_per_leaf / (self.flat.decoded_tokens / self.flat.num_leaves)


def scaled_tree_settings(*, max_new_tokens: int, entropy_threshold: float) -> TreeSettings:
    """DESIGN's tree defaults with the segment lengths scaled to `max_new_tokens` (module doc)."""
    segment_scale = max(1, round(DESIGN_SEGMENT_SCALE * max_new_tokens / DESIGN_MAX_NEW_TOKENS))
    return TreeSettings(
        rollout="tree",
        max_new_tokens=max_new_tokens,
        min_segment_len=segment_scale,
        coverage_min_chars=segment_scale,
        entropy_threshold=entropy_threshold,
    )


def load_questions(*, data_file: Path | None, problems: int) -> list[str]:
    """`problems` question texts: the built-in GSM8K ones, or the first rows of `data_file`."""
    if data_file is None:
        if problems > len(GSM8K_TEST_QUESTIONS):
            raise BadInputError(
                f"--problems {problems}: the built-in questions are "
                f"{len(GSM8K_TEST_QUESTIONS)}; pass --data-file for more"
            )
        return list(GSM8K_TEST_QUESTIONS[:problems])
    from treerpo.problems.sources import load_problems

    problem_set = load_problems(dataset=str(data_file), split="test", limit=problems)
    if len(problem_set.problems) < problems:
        raise BadInputError(
            f"--problems {problems}: {data_file} has {len(problem_set.problems)} usable problems"
        )
    return [problem.problem for problem in problem_set.problems]


def run_generate_bench(
    *,
    problems: int = 8,
    max_new_tokens: int = 200,
    hidden_size: int = 256,
    num_layers: int = 4,
    seed: int = 0,
    data_file: Path | None = None,
    threads: int = 1,
    batch_size: int = 64,
    rounds: int = 3,
) -> GenerateBenchResult:
    """Grow trees, then flat-sample as many leaves, with the same engine (see module doc)."""
    import torch

    from treerpo.engines.hf import HFEngine
    from treerpo.problems.prompts import build_prompt
    from treerpo.tiny_model import build_random_model, build_tokenizer

    if hidden_size % 8:
        # 4 attention heads of an even size: rotary embeddings rotate pairs of dimensions.
        raise BadInputError(f"--hidden-size must be a multiple of 8, got {hidden_size}")
    questions = load_questions(data_file=data_file, problems=problems)
    threads_before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        tokenizer = build_tokenizer()
        model = build_random_model(
            tokenizer,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=4 * hidden_size,
            seed=seed,
        )
        prompts = [build_prompt(tokenizer, question).token_ids for question in questions]
        sampling = SamplingSettings()  # DESIGN step 3's defaults

        def fresh_engine() -> HFEngine:
            return HFEngine(model, tokenizer, seed=seed, batch_size=batch_size)

        warmup_results = fresh_engine().generate(
            [GenerationRequest(prompt, min(WARMUP_TOKENS, max_new_tokens)) for prompt in prompts],
            sampling=sampling,
            topk=TreeSettings().entropy_topk,
        )
        warmup_entropies = np.concatenate(
            [topk_entropy(result.topk_logprobs) for result in warmup_results]
        )
        settings = scaled_tree_settings(
            max_new_tokens=max_new_tokens,
            entropy_threshold=float(np.median(warmup_entropies)),
        )

        def timed(rollout_settings: TreeSettings) -> tuple[float, float, GrowthStats]:
            started, cpu_started = time.perf_counter(), time.process_time()
            _, stats = grow_trees(engine=fresh_engine(), tokenizer=tokenizer, prompts=prompts,
                                  settings=rollout_settings, sampling=sampling, seed=seed)
            return time.perf_counter() - started, time.process_time() - cpu_started, stats

        tree_runs: list[tuple[float, float, GrowthStats]] = []
        flat_runs: list[tuple[float, float, GrowthStats]] = []
        flat_settings = None
        for round_number in range(rounds):
            for rollout in (("tree", "flat") if round_number % 2 == 0 else ("flat", "tree")):
                if rollout == "tree":
                    tree_runs.append(timed(settings))
                    continue
                if flat_settings is None:
                    flat_settings = settings.model_copy(update={
                        "rollout": "flat",
                        "num_generations": max(2, round(tree_runs[0][2].num_leaves
                                                        / len(prompts))),
                    })
                flat_runs.append(timed(flat_settings))
    finally:
        torch.set_num_threads(threads_before)
    tree_stats, flat_stats = tree_runs[0][2], flat_runs[0][2]

    def per_leaf_ratios(clock: int) -> tuple[float, ...]:
        return tuple((tree[clock] / tree[2].num_leaves) / (flat[clock] / flat[2].num_leaves)
                     for tree, flat in zip(tree_runs, flat_runs, strict=True))

    return GenerateBenchResult(
        problems=len(prompts),
        model_parameters=sum(parameter.numel() for parameter in model.parameters()),
        tree_settings=settings,
        tree=tree_stats,
        tree_seconds=statistics.median(run[0] for run in tree_runs),
        tree_cpu_seconds=statistics.median(run[1] for run in tree_runs),
        flat=flat_stats,
        flat_seconds=statistics.median(run[0] for run in flat_runs),
        flat_cpu_seconds=statistics.median(run[1] for run in flat_runs),
        round_ratios=per_leaf_ratios(0),
        round_cpu_ratios=per_leaf_ratios(1),
    )
