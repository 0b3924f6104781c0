"""`treerpo serve` over HTTP (no browser): every page answers, unknown ids are 404, writes are
refused, and the command stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from web_store import MARKER, build_web_store

from treerpo.store.database import Store, open_store
from treerpo.web.markup import content_security_policy, static_text
from treerpo.web.server import make_server, run_href

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serving(store: Store) -> Iterator[str]:
    """The app over `store` on a free port, in a thread; yields its base URL."""
    server = make_server(store, host="127.0.0.1", port=0, tokenizers=False,
                         log=lambda line: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


@pytest.fixture
def web(db_url):
    store = open_store(db_url)
    yield build_web_store(store)
    store.close()


def test_every_page_answers_and_unknown_ids_are_404(web):
    with serving(web.store) as url:
        status, index, _ = fetch(url + "/")
        assert status == 200
        for run in (web.generate_run, web.train_run, web.eval_run):
            assert f'href="{run_href(run)}"' in index
            status, page, headers = fetch(url + run_href(run))
            assert status == 200, run
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in headers["Content-Security-Policy"]
        status, trees, _ = fetch(url + "/trees")
        assert status == 200
        for tree in (web.injection_tree, web.plain_tree):
            assert f'href="/trees/{tree.tree_id}"' in trees
            status, page, headers = fetch(url + f"/trees/{tree.tree_id}")
            assert status == 200 and 'id="tree-data"' in page
            # The header allows the page's own script (by its hash) and nothing else.
            policy = headers["Content-Security-Policy"]
            assert policy == content_security_policy(static_text("tree.js"))
            assert f"<script>document.documentElement.dataset.{MARKER}" not in page
        for missing in ("/trees/999999", "/runs/no-such-run", "/trees/abc", "/nothing",
                        "/runs", "/trees/1/extra", "/trees/%C2%B2"):
            assert fetch(url + missing)[0] == 404, missing
        assert fetch(url + "/", method="HEAD")[0] == 200


def test_writes_are_refused_and_the_store_is_unchanged(web):
    from treerpo.store import repository

    before = [tree.tree_id for tree in repository.list_trees(web.store)]
    with serving(web.store) as url:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, _, headers = fetch(url + f"/trees/{before[0]}", method=method)
            assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert [tree.tree_id for tree in repository.list_trees(web.store)] == before


def test_serve_command_listens_on_localhost_and_stops_on_ctrl_c(web, db_url):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "treerpo.cli", "serve", "--db", db_url, "--port", "0", "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as in a terminal: a test run started in the background by a shell without job
        # control inherits SIGINT ignored, and Python then leaves it ignored in the child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        assert " read-only at http://127.0.0.1:" in line, (line, process.stderr.read())
        url = line.split(" read-only at ")[1].split()[0].rstrip("/")
        assert fetch(url + "/")[0] == 200
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stdout.strip() == "stopped"
    assert stderr == ""


def test_serve_refuses_a_port_in_use(web, db_url):
    from cli_runner import run_cli

    with serving(web.store) as url:
        port = url.rsplit(":", 1)[1]
        result = run_cli("serve", "--db", db_url, "--port", port)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
