"""HTML pages without a browser: escaping, the data a tree page carries, reports of every run
kind, the charts' scales, and the CLI commands that write pages."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from cli_runner import run_cli
from web_store import MARKER, PAYLOAD, build_web_store, injection_tree

from treerpo.store import repository
from treerpo.store.database import open_store
from treerpo.web.charts import Series, histogram, line_chart, nice_ticks
from treerpo.web.markup import esc, script_json
from treerpo.web.report import render_run_report
from treerpo.web.tree_page import (
    LOGPROB_STEPS_PER_NAT,
    TokenPieces,
    auto_collapse_depth,
    quantized_logprobs,
    render_tree_page,
    tree_data,
)


@pytest.fixture
def web(db_url):
    store = open_store(db_url)
    yield build_web_store(store)
    store.close()


def _tree_json(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="tree-data">(.*?)</script>', page,
                      re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_esc_leaves_no_markup_and_shows_hidden_characters():
    escaped = esc(PAYLOAD)
    assert "<script" not in escaped and "<img" not in escaped and "<svg" not in escaped
    without_badges = re.sub(r'<span class="ctl">U\+[0-9A-F]{4}</span>', "", escaped)
    assert '"' not in without_badges and "'" not in without_badges and "<" not in without_badges
    assert "\x00" not in escaped and "\u202e" not in escaped
    assert "U+0000" in escaped and "U+202E" in escaped


def test_script_json_cannot_close_its_script_element_and_round_trips():
    payload = {"text": PAYLOAD + "</script><!-- \u2028"}
    encoded = script_json(payload)
    assert "<" not in encoded and ">" not in encoded and "&" not in encoded
    assert json.loads(encoded) == payload


def test_tree_page_carries_every_node_and_the_payload_only_as_data(web):
    tree = web.injection_tree
    page = render_tree_page(tree)
    # Outside the JSON data, the payload appears only escaped.
    outside = re.sub(r'<script type="application/json".*?</script>', "", page, flags=re.S)
    assert MARKER not in outside.replace(esc(PAYLOAD), "")
    data = _tree_json(page)
    fields = data["fields"]
    assert len(data["nodes"]) == len(tree.nodes)
    for node, row in zip(tree.nodes, data["nodes"], strict=True):
        assert row[fields.index("text")] == node.text
        assert row[fields.index("parent")] == node.parent
        assert row[fields.index("reward")] == node.reward
        assert row[fields.index("advantage")] == node.advantage
    answers = [row[fields.index("answer")] for row in data["nodes"]]
    assert answers[2] == "42" and answers[1] is None  # a leaf's graded answer; none inside


def test_logprobs_are_quantized_to_sixteenths_of_a_nat():
    rng = np.random.default_rng(1)
    logprobs = -rng.exponential(2.0, size=200).astype(np.float32)
    steps = np.frombuffer(base64.b64decode(quantized_logprobs(logprobs)), dtype=np.uint8)
    recovered = -steps.astype(np.float64) / LOGPROB_STEPS_PER_NAT
    inside = logprobs > -255 / LOGPROB_STEPS_PER_NAT
    assert np.abs(recovered[inside] - logprobs[inside]).max() <= 0.5 / LOGPROB_STEPS_PER_NAT
    assert (recovered[~inside] == -255 / LOGPROB_STEPS_PER_NAT).all()


def test_collapse_depth_keeps_the_first_view_small():
    from treerpo.bench.synthetic import synthetic_tree

    tree = synthetic_tree(rng=np.random.default_rng(0), num_nodes=2000)
    depth = auto_collapse_depth(tree, max_rows=300)
    shown = sum(node.depth <= depth for node in tree.nodes)
    assert shown <= 300 or depth == 1
    assert sum(node.depth <= depth + 1 for node in tree.nodes) > 300
    data = tree_data(tree, pieces=TokenPieces(pieces=None, note=""), collapse_depth=depth)
    assert data["collapse_depth"] == depth


def test_line_chart_draws_one_marked_point_per_value_and_skips_missing_ones():
    svg = line_chart(title="t", unit="u", series=[
        Series("a", [(1, 0.5), (2, float("nan")), (3, 0.75)]), Series("b", [(1, 2.0)])])
    points = re.findall(r'<circle class="pt" data-series="(\w)" data-x="([\d.]+)" '
                        r'data-y="([^"]+)"', svg)
    assert points == [("a", "1", "0.5"), ("a", "3", "0.75"), ("b", "1", "2.0")]
    assert "no values" in line_chart(title="t", unit="u", series=[Series("a", [])])


def test_step_axes_have_whole_ticks_over_the_whole_run():
    svg = line_chart(title="t", unit="u", series=[Series("a", [(2, 0.5), (4, 1.0)])],
                     x_range=(1, 5))
    labels = re.findall(r'y="\d+" text-anchor="middle">([^<]+)</text>', svg)
    assert labels == ["1", "2", "3", "4", "5", "step"]
    one = line_chart(title="t", unit="u", series=[Series("a", [(1, 0.5)])])
    labels = re.findall(r'y="\d+" text-anchor="middle">([^<]+)</text>', one)
    assert labels == ["0", "1", "2", "step"]


def test_histogram_counts_every_value_once():
    values = [0.0, 0.05, 0.5, 0.99, 1.0, 1.0]
    svg = histogram(title="h", unit="u", values=values, bins=10, low=0.0, high=1.0)
    counts = [int(count) for count in re.findall(r'data-count="(\d+)"', svg)]
    assert len(counts) == 10 and sum(counts) == len(values)
    assert counts[0] == 2 and counts[5] == 1 and counts[9] == 3
    whole = histogram(title="h", unit="u", values=[3, 3, 4, 30], bins=10)
    edges = [float(edge) for edge in re.findall(r'data-low="([^"]+)"', whole)]
    counts = [int(count) for count in re.findall(r'data-count="(\d+)"', whole)]
    assert all(edge.is_integer() for edge in edges) and sum(counts) == 4
    assert counts[0] == 3 and counts[-1] == 1  # 3..5 together, 30 in the last bin


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (0.0002, 0.0002), (-3.2, 17.0),
                                           (5.0, 5.0), (0.0, 0.0)])
def test_nice_ticks_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and len(ticks) >= 2
    gaps = np.diff(ticks)
    assert np.allclose(gaps, gaps[0])


def test_train_report_has_one_point_per_step_and_links_trees(web):
    page = render_run_report(web.store, web.train_run, tree_href=lambda tree_id: f"/t/{tree_id}")
    rewards = re.findall(r'data-series="on-policy leaves" data-x="(\d+)"', page)
    assert rewards == ["1", "2", "3", "4", "5"]
    assert len(re.findall(r'<tr id="step-\d+">', page)) == 5
    assert f'href="/t/{web.plain_tree.tree_id}"' in page
    for chart in ("reward", "loss", "advantage", "no-signal", "clip", "grad-norm", "lr",
                  "throughput", "seconds", "eval"):
        assert f'id="chart-{chart}"' in page
    # Evaluations during training: one point per eval run `train-run-eval-step-S`, at the
    # share of its greedy records that are correct.
    expected = []
    for run in repository.list_runs(web.store, kind="eval"):
        if run.name.startswith(f"{web.train_run}-eval-step-"):
            records = repository.list_eval_results(
                web.store, run_id=repository.find_run(web.store, run.name).id)
            expected.append((int(run.name.rsplit("-", 1)[1]),
                             sum(record.correct for record in records) / len(records)))
    eval_chart = page[page.index('id="chart-eval"'):]
    points = re.findall(r'data-x="(\d+)" data-y="([^"]+)"', eval_chart.split("</figure>")[0])
    assert [(int(x), float(y)) for x, y in points] == sorted(expected)
    assert len(expected) == 2


def test_generate_and_eval_reports_escape_model_and_dataset_text(web):
    for run in (web.generate_run, web.eval_run):
        page = render_run_report(web.store, run)
        assert f"&lt;script&gt;document.documentElement.dataset.{MARKER}" in page
        assert "<script>document" not in page and "<img" not in page
    eval_page = render_run_report(web.store, web.eval_run)
    assert len(re.findall(r'<tr class="failure">', eval_page)) == 1
    records = re.search(r'<table class="data" id="records">.*?</table>', eval_page, re.S)
    assert records is not None and records.group(0).count("<tr>") == 3  # head + 2 records
    assert re.search(r'<td class="accuracy">50\.0%</td>', eval_page)


def test_cli_writes_tree_page_and_report(web, db_url, tmp_path):
    tree_file = tmp_path / "pages" / "tree.html"
    result = run_cli("inspect", str(web.injection_tree.tree_id), "--html", str(tree_file),
                     "--tokenizer", "none", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"tree page: {tree_file}"
    assert len(_tree_json(tree_file.read_text(encoding="utf-8"))["nodes"]) == 5
    report_file = tmp_path / "pages" / "report.html"
    result = run_cli("report", web.train_run, "--html", str(report_file), "--tree-step", "1",
                     "--tokenizer", "none", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    linked = tmp_path / "pages" / "report-trees" / f"tree-{web.plain_tree.tree_id}.html"
    assert linked.is_file()
    assert f'href="report-trees/tree-{web.plain_tree.tree_id}.html"' in report_file.read_text()


def test_cli_refuses_unknown_runs_trees_and_steps(web, db_url, tmp_path):
    out = tmp_path / "x.html"
    for args in (("report", "no-such-run", "--html", out),
                 ("report", web.train_run, "--html", out, "--tree-step", "99"),
                 ("inspect", "999", "--html", out)):
        result = run_cli(*args, "--db", db_url)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not out.exists()


def test_tree_page_without_tokenizer_says_why(web):
    page = render_tree_page(injection_tree(np.random.default_rng(0)))
    assert _tree_json(page)["pieces"] is None


def test_page_commands_read_a_missing_store_without_creating_it(tmp_path):
    missing = tmp_path / "none.db"
    for args in (("report", "a-run", "--html", tmp_path / "r.html"),
                 ("inspect", "1", "--html", tmp_path / "t.html"),
                 ("serve", "--port", "0")):
        result = run_cli(*args, "--db", f"sqlite:///{missing}")
        assert result.exit_code == 2, (args, result.stderr)
        assert not missing.exists()
