"""The pages in a real headless Chromium: they load with no console message or exception,
the DOM holds the tree's nodes and the report's curve points, a click on a leaf shows its whole
completion, the injection tree runs nothing and shows its payload as text, `serve` answers
every page, and a 10,000-node tree opens fast. Screenshots land in TREERPO_SCREENSHOTS (a
folder) when that is set, to be looked at."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, chromium_or_skip
from test_web_serve import serving
from web_store import MARKER, build_web_store

from treerpo.bench.synthetic import synthetic_tree
from treerpo.scoring.values import apply_scores
from treerpo.store import repository
from treerpo.store.database import open_store
from treerpo.web.export import write_run_report, write_tree_page
from treerpo.web.markup import esc
from treerpo.web.server import run_href
from treerpo.web.tree_page import render_tree_page

HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e"
                    "\u2060-\u2069\ufeff]")


def shown(text: str) -> str:
    """Text as the page displays it: hidden characters as their U+XXXX badges."""
    return HIDDEN.sub(lambda match: f"U+{ord(match.group(0)):04X}", text)


@pytest.fixture(scope="module")
def browser():
    chromium_or_skip()
    instance = Browser()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    store = open_store(f"sqlite:///{folder / 'store.db'}")
    yield build_web_store(store), folder
    store.close()


def screenshot(browser: Browser, name: str) -> None:
    folder = os.environ.get("TREERPO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.screenshot(Path(folder) / name)


def assert_clean(browser: Browser) -> None:
    assert browser.evaluate("document.documentElement.dataset.treerpoErrors || ''") == ""
    assert browser.problems() == []


def test_tree_page_draws_every_node_and_a_click_on_a_leaf_shows_its_completion(browser, web):
    built, folder = web
    tree = repository.load_tree(built.store, built.injection_tree.tree_id)  # NUL stored as U+FFFD
    path = write_tree_page(built.store, tree_id=tree.tree_id, path=folder / "tree.html",
                           tokenizer="none")
    browser.open(path.as_uri())
    assert browser.evaluate("document.documentElement.dataset.treerpoReady") == "1"
    drawn = browser.evaluate("[...document.querySelectorAll('#tree .row')]"
                             ".map(row => Number(row.dataset.node))")
    assert sorted(drawn) == [node.index for node in tree.nodes]
    leaf = 3  # the forced leaf under the split, whose boxed answer is the payload
    assert tree.nodes[leaf].is_leaf
    browser.click(f'#tree .row[data-node="{leaf}"]')
    assert browser.evaluate("location.hash") == f"#node={leaf}"
    completion = browser.evaluate("document.getElementById('completion').textContent")
    assert completion == shown(tree.completion_text(leaf))
    panel = browser.evaluate("document.getElementById('panel').innerText")
    assert "forced alternative" in panel and "budget" in panel
    assert f"reference\n{tree.reference}" in panel
    assert_clean(browser)
    screenshot(browser, "tree-injection.png")


def test_the_injection_tree_runs_nothing_and_shows_its_payload_as_text(browser, web):
    built, folder = web
    tree = repository.load_tree(built.store, built.injection_tree.tree_id)
    path = write_tree_page(built.store, tree_id=tree.tree_id, path=folder / "tree.html",
                           tokenizer="none")
    browser.open(path.as_uri() + "#node=3&tokens=1")
    time.sleep(0.2)  # an onerror handler of a broken image would have fired by now
    assert browser.evaluate(f"document.documentElement.dataset.{MARKER} || ''") == ""
    assert browser.evaluate("document.querySelectorAll('#panel img, #panel script, "
                            "#tree img, #tree svg, main > .problem *:not(.ctl)').length") == 0
    problem = browser.evaluate("document.querySelector('.problem').textContent")
    assert problem == shown(tree.problem)
    assert browser.evaluate("document.querySelectorAll('#completion .tok').length") == sum(
        node.num_tokens for node in tree.path(3)[1:])
    assert_clean(browser)
    # The same payload in a report (run name, config, eval failures) is inert too.
    for run in (built.generate_run, built.eval_run):
        report = write_run_report(built.store, run_name=run, path=folder / "r.html",
                                  tokenizer="none")[0]
        browser.open(report.as_uri())
        assert browser.evaluate(f"document.documentElement.dataset.{MARKER} || ''") == ""
        assert browser.evaluate("document.querySelectorAll('main img, main script').length") == 0
        assert_clean(browser)
    assert "&lt;script&gt;" in esc(browser.evaluate("document.body.innerText"))


def test_report_shows_one_curve_point_per_recorded_step(browser, web):
    built, folder = web
    paths = write_run_report(built.store, run_name=built.train_run, path=folder / "report.html",
                             tokenizer="none")
    browser.open(paths[0].as_uri())
    points = browser.evaluate(
        "[...document.querySelectorAll('#chart-loss circle.pt')].map(c => "
        "[Number(c.dataset.x), Number(c.dataset.y)])")
    run = repository.find_run(built.store, built.train_run)
    steps = repository.list_train_steps(built.store, run_id=run.id)
    assert points == [[step.step, step.metrics["loss"]] for step in steps]
    assert browser.evaluate("document.querySelectorAll('#steps tbody tr').length") == len(steps)
    assert_clean(browser)
    screenshot(browser, "report.png")
    # The step table links the trees of the first and last step to their pages, which load.
    browser.click("#steps tbody tr:last-child a", navigates=True)
    assert browser.evaluate("document.documentElement.dataset.treerpoReady") == "1"
    assert_clean(browser)


@pytest.fixture(scope="module")
def server(web):
    built, _ = web
    with serving(built.store) as url:
        yield url


def test_served_pages_load_clean_and_link_runs_to_trees(browser, web, server):
    built, _ = web
    pages = ["/", "/trees", *(run_href(run) for run in
                              (built.generate_run, built.train_run, built.eval_run)),
             f"/trees/{built.injection_tree.tree_id}", f"/trees/{built.plain_tree.tree_id}"]
    for page in pages:
        browser.open(server + page)
        assert browser.evaluate("document.querySelector('h1').textContent") != "500 error"
        assert_clean(browser)
    browser.open(server + "/trees/999999")
    assert browser.evaluate("document.querySelector('h1').textContent") == "404 not found"
    # runs → run → tree, by clicking
    browser.open(server + "/")
    browser.click(f'#runs a[href="{run_href(built.generate_run)}"]', navigates=True)
    assert_clean(browser)
    browser.click("#trees tbody tr:first-child a", navigates=True)
    assert browser.evaluate("document.documentElement.dataset.treerpoReady") == "1"
    assert_clean(browser)


def test_a_10000_node_tree_opens_fast(browser, tmp_path):
    tree = synthetic_tree(rng=np.random.default_rng(0), num_nodes=10_000)
    rng = np.random.default_rng(1)
    apply_scores(tree, {leaf.index: float(rng.random() < 0.5) for leaf in tree.leaves()})
    tree.tree_id, tree.problem, tree.reference = 1, "synthetic", "1"
    started = time.perf_counter()
    path = tmp_path / "big.html"
    path.write_text(render_tree_page(tree), encoding="utf-8")
    render_seconds = time.perf_counter() - started
    load_seconds = browser.open(path.as_uri() + "#node=9999")
    script_ms = float(browser.evaluate("document.documentElement.dataset.renderMs"))
    rows = browser.evaluate("document.querySelectorAll('#tree .row').length")
    print(f"10,000-node tree: page {path.stat().st_size / 1e6:.1f} MB written in "
          f"{render_seconds:.2f} s; browser load {load_seconds:.2f} s; script {script_ms:.0f} ms;"
          f" {rows} rows drawn")
    assert load_seconds < 2.0
    assert rows < 1000  # collapsed below a depth: not 10,000 rows
    assert browser.evaluate("document.documentElement.dataset.selected") == "9999"
    screenshot(browser, "tree-10000.png")
    started = time.perf_counter()
    browser.click("#expand-all")
    all_rows = browser.evaluate("document.querySelectorAll('#tree .row').length")
    expand_seconds = time.perf_counter() - started
    print(f"expand all: {all_rows} rows in {expand_seconds:.2f} s")
    assert all_rows == len(tree.nodes)
    assert_clean(browser)
