"""A run as one HTML page (`treerpo report RUN --html FILE`, `serve`'s run pages).

- train runs: curves of the step metrics the trainer records (inline SVG, see `charts`), the
  greedy accuracy of the evaluations it made while training (`--eval-dataset`), the step
  table, and links to the trees each step trained on;
- generate runs: counts, a histogram of per-tree mean reward, the trees;
- eval runs: accuracy per mode, a histogram of completion lengths, the failures with their
  completions.

Everything is read through `treerpo.store.repository`; links to trees and runs come from the
caller (`tree_href`), so the same page serves a saved file and the web app.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from treerpo.errors import BadInputError
from treerpo.store import repository
from treerpo.store.database import Store
from treerpo.store.models import RunRow, TrainStepRow
from treerpo.web.charts import Series, format_number, histogram, line_chart
from treerpo.web.markup import attr, esc, page

TreeHref = Callable[[int], "str | None"]
RunHref = Callable[[str], "str | None"]
# Failures listed with their completions on an eval page; the rest are counted.
MAX_FAILURES = 200
# Records listed (one line each) on an eval page.
MAX_RECORD_ROWS = 5000
# Trees listed on a generate page.
MAX_TREE_ROWS = 1000


@dataclass(frozen=True)
class Curve:
    """One chart of a train report: one series per (label, metric) pair."""

    chart_id: str
    title: str
    unit: str
    series: tuple[tuple[str, str], ...]


# The step metrics (`trainer.PolicyUpdater.update`, `rollout_stats`) drawn as curves. A metric
# a run did not record (an older run, `kl` at beta 0) is simply not drawn.
CURVES = (
    Curve("reward", "Reward", "mean leaf reward",
          (("on-policy leaves", "on_policy_reward"), ("all leaves", "mean_reward"))),
    Curve("loss", "Loss", "clipped surrogate loss", (("loss", "loss"),)),
    Curve("advantage", "Mean |advantage|", "|advantage| per node",
          (("mean |A|", "mean_abs_advantage"),)),
    Curve("no-signal", "No-signal share", "fraction (0-1)",
          (("groups with all-equal values", "no_signal_group_share"),
           ("tokens with zero advantage", "no_signal_token_share"))),
    Curve("clip", "Clip fraction", "fraction of trained tokens", (("clipped", "clip_fraction"),)),
    Curve("grad-norm", "Gradient norm", "L2 norm before clipping", (("grad norm", "grad_norm"),)),
    Curve("lr", "Learning rate", "learning rate", (("lr", "learning_rate"),)),
    Curve("throughput", "Update throughput", "trained tokens / s",
          (("tokens/s", "tokens_per_second"),)),
    Curve("seconds", "Time per step", "seconds",
          (("update", "seconds"), ("tree growth", "growth_seconds"),
           ("scoring", "scoring_seconds"), ("waiting for trees", "wait_seconds"),
           ("whole step", "step_seconds"))),
    Curve("kl", "KL to the reference", "nats per token", (("kl", "kl"),)),
    # `train --follow`: how old the trained trees' policies were, and what was skipped.
    Curve("staleness", "Staleness of the trained trees", "optimizer steps",
          (("mean", "staleness_mean"), ("max", "staleness_max"))),
    Curve("skipped", "Trees skipped", "trees per step",
          (("stale", "stale_trees_skipped"), ("off-policy", "off_policy_trees_skipped"))),
)
# Columns of the step table: (header, metric, digits).
STEP_COLUMNS = (
    ("on-policy r", "on_policy_reward", 3), ("all-leaf r", "mean_reward", 3),
    ("loss", "loss", 4), ("mean |A|", "mean_abs_advantage", 3),
    ("no-signal", "no_signal_group_share", 2), ("clip", "clip_fraction", 3),
    ("grad norm", "grad_norm", 3), ("lr", "learning_rate", None),
    ("tok/s", "tokens_per_second", 0), ("update s", "seconds", 2),
    ("growth s", "growth_seconds", 2), ("scoring s", "scoring_seconds", 2),
)


@dataclass(frozen=True)
class TrainEvaluation:
    """One evaluation during training (`train --eval-dataset`): an eval run of its own, named
    `TRAIN_RUN-eval-step-S` (`training.train_eval`)."""

    step: int
    run_name: str
    accuracy: float
    num_problems: int


def train_evaluations(store: Store, run_name: str) -> list[TrainEvaluation]:
    """The evaluations a train run made while training, by step; greedy accuracy of each."""
    prefix = f"{run_name}-eval-step-"
    found = []
    for run in repository.list_runs(store, kind="eval"):
        suffix = run.name[len(prefix):] if run.name.startswith(prefix) else ""
        if not suffix.isdigit():
            continue
        eval_run = repository.find_run(store, run.name)
        records = [record for record in repository.list_eval_results(store, run_id=eval_run.id)
                   if record.mode == "greedy"]
        if records:
            found.append(TrainEvaluation(
                step=int(suffix), run_name=run.name, num_problems=len(records),
                accuracy=sum(record.correct for record in records) / len(records)))
    return sorted(found, key=lambda evaluation: evaluation.step)


def step_metrics(step: TrainStepRow) -> dict[str, Any]:
    """A step's recorded metrics plus the derived no-signal shares (1 − the shares of groups and
    tokens that carry a non-zero advantage)."""
    metrics = dict(step.metrics)
    for share, derived in (("nonzero_group_share", "no_signal_group_share"),
                           ("nonzero_token_share", "no_signal_token_share")):
        if isinstance(metrics.get(share), int | float):
            metrics[derived] = 1.0 - metrics[share]
    return metrics


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(value: Any, digits: int | None) -> str:
    number = _number(value)
    if number is None:
        return "–"
    return format_number(number) if digits is None else f"{number:.{digits}f}"


def _tree_links(tree_ids: Sequence[int], tree_href: TreeHref, *, limit: int = 12) -> str:
    links = []
    for tree_id in tree_ids[:limit]:
        href = tree_href(tree_id)
        links.append(f'<a href="{attr(href)}">{tree_id}</a>' if href else str(tree_id))
    more = f" … +{len(tree_ids) - limit}" if len(tree_ids) > limit else ""
    return ", ".join(links) + more


def _run_facts(run: RunRow, extra: Sequence[tuple[str, str]] = ()) -> str:
    finished = run.finished_at.strftime("%Y-%m-%d %H:%M:%S") if run.finished_at else "–"
    facts = [("kind", esc(run.kind)), ("model", esc(run.model)), ("status", esc(run.status)),
             ("started", esc(run.started_at.strftime("%Y-%m-%d %H:%M:%S"))),
             ("finished", esc(finished)), *extra]
    config = json.dumps(run.config, indent=2, sort_keys=True, ensure_ascii=False)
    return ('<dl class="facts">'
            + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
            + "</dl><details><summary>configuration</summary>"
            f'<pre class="usertext">{esc(config)}</pre></details>')


def train_report_body(run: RunRow, steps: Sequence[TrainStepRow], *,
                      evaluations: Sequence[TrainEvaluation], tree_href: TreeHref,
                      run_href: RunHref) -> str:
    rows = [(step.step, step_metrics(step), step) for step in steps]
    charts = []
    for curve in CURVES:
        series = [Series(label, [(number, _number(metrics.get(key)))
                                 for number, metrics, _ in rows
                                 if _number(metrics.get(key)) is not None])
                  for label, key in curve.series]
        series = [one for one in series if one.points]
        if series:
            charts.append(line_chart(title=curve.title, unit=curve.unit, series=series,
                                     chart_id=f"chart-{curve.chart_id}"))
    if evaluations:
        charts.append(line_chart(
            title="Eval accuracy (greedy, during training)", unit="accuracy",
            chart_id="chart-eval", x_range=(rows[0][0], rows[-1][0]) if rows else None,
            series=[Series("eval accuracy", [(evaluation.step, evaluation.accuracy)
                                             for evaluation in evaluations])]))
    last = rows[-1][1] if rows else {}
    extra = [("steps recorded", str(len(rows))),
             ("last on-policy reward", _cell(last.get("on_policy_reward"), 3))]
    head = "".join(f"<th>{esc(name)}</th>" for name, _, _ in STEP_COLUMNS)
    table_rows = []
    for number, metrics, step in rows:
        cells = "".join(f"<td>{_cell(metrics.get(key), digits)}</td>"
                        for _, key, digits in STEP_COLUMNS)
        checkpoint = esc(step.checkpoint) if step.checkpoint else ""
        table_rows.append(f'<tr id="step-{number}"><td>{number}</td>{cells}'
                          f'<td class="text">{_tree_links(step.tree_ids, tree_href)}</td>'
                          f'<td class="text mono">{checkpoint}</td></tr>')
    charts_html = "".join(charts) or '<p class="muted">no steps recorded yet</p>'
    eval_html = ""
    if evaluations:
        eval_rows = []
        for evaluation in evaluations:
            href = run_href(evaluation.run_name)
            name = esc(evaluation.run_name)
            link = f'<a href="{attr(href)}">{name}</a>' if href else name
            eval_rows.append(f"<tr><td>{evaluation.step}</td><td>{evaluation.accuracy:.1%}</td>"
                             f'<td>{evaluation.num_problems}</td><td class="text">{link}</td>'
                             "</tr>")
        eval_html = ('<h2>Evaluations during training</h2><table class="data" id="evals">'
                     "<thead><tr><th>step</th><th>accuracy</th><th>problems</th>"
                     f'<th class="text">eval run</th></tr></thead><tbody>{"".join(eval_rows)}'
                     "</tbody></table>")
    return (
        f"{_run_facts(run, extra)}<h2>Curves</h2><div class=\"charts\">{charts_html}</div>"
        f"{eval_html}"
        "<h2>Steps</h2><p class=\"muted\">Rewards are means over the step's leaves "
        "(on-policy: leaves below no forced first token); no-signal: share of sibling groups "
        "whose children all have the same value; update s: the policy update, growth s: "
        "growing the step's trees (chained training).</p>"
        f'<table class="data" id="steps"><thead><tr><th>step</th>{head}<th class="text">'
        'trees</th><th class="text">checkpoint</th></tr></thead>'
        f"<tbody>{''.join(table_rows)}</tbody></table>"
    )


def generate_report_body(run: RunRow, trees: Sequence[repository.TreeSummary], *,
                         tree_href: TreeHref) -> str:
    scored = [tree for tree in trees if tree.scored]
    rewards = [tree.mean_reward for tree in scored if tree.mean_reward is not None]
    extra = [
        ("trees", f"{len(trees)} ({len(scored)} scored)"),
        ("nodes", str(sum(tree.num_nodes for tree in trees))),
        ("leaves", str(sum(tree.num_leaves for tree in trees))),
        ("completion tokens", str(sum(tree.num_tokens for tree in trees))),
        ("mean tree reward", f"{sum(rewards) / len(rewards):.3f}" if rewards else "– (not scored)"),
    ]
    charts = [
        histogram(title="Mean leaf reward per tree", unit="mean reward of a tree's leaves",
                  values=rewards, bins=10, low=0.0, high=1.0, chart_id="chart-reward"),
        histogram(title="Leaves per tree", unit="leaves",
                  values=[float(tree.num_leaves) for tree in trees], bins=10,
                  chart_id="chart-leaves"),
    ]
    rows = []
    for tree in trees[:MAX_TREE_ROWS]:
        reward = "–" if tree.mean_reward is None else f"{tree.mean_reward:.3f}"
        rows.append(f"<tr><td>{_tree_links([tree.tree_id], tree_href)}</td>"
                    f'<td class="text usertext">{esc(_short(tree.problem))}</td>'
                    f"<td>{tree.num_nodes}</td><td>{tree.num_leaves}</td><td>{tree.max_depth}"
                    f"</td><td>{tree.num_tokens}</td><td>{reward}</td></tr>")
    more = (f'<p class="muted">first {MAX_TREE_ROWS} of {len(trees)} trees</p>'
            if len(trees) > MAX_TREE_ROWS else "")
    return (
        f"{_run_facts(run, extra)}<h2>Rewards</h2><div class=\"charts\">{''.join(charts)}</div>"
        f'<h2>Trees</h2>{more}<table class="data" id="trees"><thead><tr><th>tree</th>'
        '<th class="text">problem</th><th>nodes</th><th>leaves</th><th>depth</th>'
        f"<th>tokens</th><th>mean reward</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _short(text: str, limit: int = 110) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def eval_report_body(run: RunRow, records: Sequence[repository.StoredEvalResult]) -> str:
    modes = sorted({record.mode for record in records})
    mode_rows = []
    for mode in modes:
        of_mode = [record for record in records if record.mode == mode]
        correct = sum(record.correct for record in of_mode)
        boxed = sum(record.vote is not None for record in of_mode)
        tokens = sum(record.num_tokens for record in of_mode)
        mode_rows.append(
            f'<tr data-mode="{attr(mode)}"><td class="text">{esc(mode)}</td>'
            f"<td>{len(of_mode)}</td><td>{correct}</td>"
            f'<td class="accuracy">{correct / len(of_mode):.1%}</td>'
            f"<td>{boxed / len(of_mode):.1%}</td><td>{tokens / len(of_mode):.1f}</td></tr>")
    failures = [record for record in records if not record.correct]
    failure_rows = []
    for record in failures[:MAX_FAILURES]:
        answers = ", ".join("–" if answer is None else answer for answer in record.answers)
        completions = "".join(f'<pre class="usertext">{esc(text)}</pre>'
                              for text in record.completions or [])
        failure_rows.append(
            f'<tr class="failure"><td>{record.row_index}</td><td class="text">{esc(record.mode)}'
            f'</td><td class="text usertext">{esc(record.problem)}</td>'
            f'<td class="text usertext mono">{esc(record.reference)}</td>'
            f'<td class="text usertext mono">{esc("–" if record.vote is None else record.vote)}'
            f'</td><td class="text"><details class="completions"><summary>'
            f"{len(record.completions or [])} completion(s); answers: "
            f'<span class="usertext mono">{esc(answers)}</span></summary>{completions}'
            "</details></td></tr>")
    more = (f'<p class="muted">first {MAX_FAILURES} of {len(failures)} failures</p>'
            if len(failures) > MAX_FAILURES else "")
    record_rows = "".join(
        f'<tr><td>{record.row_index}</td><td class="text">{esc(record.mode)}</td>'
        f'<td class="text usertext">{esc(_short(record.problem))}</td>'
        f'<td class="text usertext mono">{esc(record.reference)}</td>'
        f'<td class="text usertext mono">{esc("–" if record.vote is None else record.vote)}</td>'
        f'<td>{"<span class=ok>yes</span>" if record.correct else "<span class=bad>no</span>"}'
        f"</td><td>{record.num_tokens}</td></tr>"
        for record in records[:MAX_RECORD_ROWS])
    more_records = (f'<p class="muted">first {MAX_RECORD_ROWS} of {len(records)} records</p>'
                    if len(records) > MAX_RECORD_ROWS else "")
    chart = histogram(title="Completion tokens per record", unit="completion tokens",
                      values=[float(record.num_tokens) for record in records], bins=12,
                      chart_id="chart-tokens")
    return (
        f"{_run_facts(run, [('records', str(len(records)))])}<h2>Accuracy</h2>"
        '<table class="data" id="modes"><thead><tr><th class="text">mode</th><th>problems</th>'
        "<th>correct</th><th>accuracy</th><th>boxed answer</th><th>mean tokens</th></tr>"
        f"</thead><tbody>{''.join(mode_rows)}</tbody></table>"
        f'<div class="charts">{chart}</div><h2>Failures ({len(failures)})</h2>{more}'
        '<table class="data" id="failures"><thead><tr><th>row</th><th class="text">mode</th>'
        '<th class="text">problem</th><th class="text">reference</th><th class="text">vote</th>'
        f'<th class="text">completions</th></tr></thead><tbody>{"".join(failure_rows)}'
        f"</tbody></table><h2>Records ({len(records)})</h2>{more_records}"
        '<table class="data" id="records"><thead><tr><th>row</th><th class="text">mode</th>'
        '<th class="text">problem</th><th class="text">reference</th><th class="text">vote'
        f"</th><th>correct</th><th>tokens</th></tr></thead><tbody>{record_rows}</tbody></table>"
    )


def render_run_report(store: Store, run_name: str, *,
                      tree_href: TreeHref = lambda tree_id: None,
                      run_href: RunHref = lambda name: None, nav: str = "") -> str:
    """The page of the run called `run_name` (BadInputError if there is none). `tree_href`
    and `run_href` link trees and other runs (None: not linked)."""
    run = repository.find_run(store, run_name)
    if run.kind == "train":
        body = train_report_body(run, repository.list_train_steps(store, run_id=run.id),
                                 evaluations=train_evaluations(store, run.name),
                                 tree_href=tree_href, run_href=run_href)
    elif run.kind == "eval":
        body = eval_report_body(run, repository.list_eval_results(
            store, run_id=run.id, include_completions=True))
    else:
        body = generate_report_body(run, repository.list_trees(store, run_id=run.id),
                                    tree_href=tree_href)
    title = f"{run.kind} run {run.name}"
    return page(title=f"treerpo · {title}", nav=nav,
                body=f"<h1>{esc(run.kind)} run <span class=\"usertext\">{esc(run.name)}</span>"
                     f"</h1>{body}")


def train_step_tree_ids(store: Store, run_name: str, steps: Sequence[int] | None) -> list[int]:
    """The trees of the chosen steps of a train run (default: its first and last step)."""
    run = repository.find_run(store, run_name)
    recorded = repository.list_train_steps(store, run_id=run.id)
    if not recorded:
        return []
    by_step = {step.step: step for step in recorded}
    chosen = sorted({recorded[0].step, recorded[-1].step}) if steps is None else list(steps)
    missing = [step for step in chosen if step not in by_step]
    if missing:
        raise BadInputError(f"run {run_name!r} has no step {missing[0]} "
                            f"(steps {recorded[0].step}..{recorded[-1].step})")
    return list(dict.fromkeys(tree_id for step in chosen for tree_id in by_step[step].tree_ids))
