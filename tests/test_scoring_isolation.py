"""Reward plug-ins run isolated (issue 16): one that exits, crashes or hangs fails `score` with
exit 1 and one line naming it, never ends treerpo with its own exit code or hangs it, and the
store is left byte-identical."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import error_lines, run_cli

from treerpo.bench.synthetic import synthetic_tree
from treerpo.store import database, repository

PLUGINS = {
    "exits": "import sys\ndef f(*, completion, reference, problem):\n    sys.exit(3)\n",
    "hard_exits": "import os\ndef f(*, completion, reference, problem):\n    os._exit(4)\n",
    "crashes": "import ctypes\ndef f(*, completion, reference, problem):\n"
               "    return ctypes.string_at(0)\n",
    "hangs": "import time\ndef f(*, completion, reference, problem):\n    time.sleep(3600)\n",
    "interrupts": "def f(*, completion, reference, problem):\n    raise KeyboardInterrupt\n",
    "fine": "def f(*, completion, reference, problem):\n    return len(completion) % 2\n",
}
EXPECTED = {
    "exits": "called sys.exit(3)",
    "hard_exits": "exited with code 4",
    "crashes": "killed by signal",
    "hangs": "took longer than 1 s on one leaf (--reward-timeout)",
    "interrupts": "raised KeyboardInterrupt",
}


@pytest.fixture
def store_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "store.db"
    store = database.open_store(f"sqlite:///{path}")
    try:
        run = repository.get_or_create_run(store, name="hand", kind="generate", model="m",
                                           config={})
        ids = repository.upsert_problems(
            store, [(repository.ProblemKey("ds", "train", row), f"problem {row}", "2")
                    for row in range(3)])
        trees = [synthetic_tree(rng=np.random.default_rng(row), num_nodes=15) for row in range(3)]
        repository.write_trees(store, trees=trees, run_id=run.id, problem_ids=ids,
                               policy_version="v")
    finally:
        store.close()
    suffix = tmp_path.name.replace("-", "_")
    for name, source in PLUGINS.items():
        (tmp_path / f"plug_{name}_{suffix}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    return path


def _dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return list(connection.iterdump())


@pytest.mark.parametrize("workers", [None, 2])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_misbehaving_plugin_is_reported_as_its_own_failure(store_path, name, workers):
    spec = f"plug_{name}_{store_path.parent.name.replace('-', '_')}:f"
    before = _dump(store_path)
    started = time.monotonic()
    extra = [] if workers is None else ["--workers", str(workers)]
    result = run_cli("score", "--db", f"sqlite:///{store_path}", "--reward-fn", spec,
                     "--reward-timeout", "1", *extra)
    assert time.monotonic() - started < 60
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and spec in lines[0] and EXPECTED[name] in lines[0], lines
    assert _dump(store_path) == before
    sys.modules.pop(spec.split(":")[0], None)


def test_a_well_behaved_plugin_scores_every_tree(store_path):
    spec = f"plug_fine_{store_path.parent.name.replace('-', '_')}:f"
    result = run_cli("score", "--db", f"sqlite:///{store_path}", "--reward-fn", spec, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["trees"] == 3
    listed = run_cli("trees", "--db", f"sqlite:///{store_path}", "--json").json()
    assert all(tree["scored"] for tree in listed)
