"""What `--db` may point at (issue 16): FIFOs, devices, damaged or foreign files, read-only
folders, typos. Each is one line, exit 2, and nothing is created or changed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import error_lines, run_cli
from sqlalchemy.exc import OperationalError
from test_validation_before_writes import store_with_one_tree

from treerpo.store import database, repository
from treerpo.training.checkpoints import remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[1]


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "unexpected" not in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "store.fifo"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "treerpo.cli", "trees", "--db",
                             f"sqlite:///{fifo}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "not a regular file" in result.stderr


def test_a_device_is_refused_and_nothing_is_created_beside_it():
    journal = Path("/dev/null-journal")
    existed = journal.exists()
    line = _one_line_exit_2(run_cli("trees", "--db", "sqlite:////dev/null"))
    assert "not a regular file" in line
    assert journal.exists() == existed


def test_a_typo_in_db_creates_no_store(tmp_path):
    typo = tmp_path / "sotre.db"
    for args in (["inspect", "1"], ["trees"], ["eval", "show", "x"]):
        line = _one_line_exit_2(run_cli(*args, "--db", f"sqlite:///{typo}"))
        assert "no store at" in line
    assert not typo.exists() and list(tmp_path.iterdir()) == []


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE photos (id INTEGER)")
    before = path.read_bytes()
    assert "not a treerpo store" in _one_line_exit_2(run_cli("trees", "--db", f"sqlite:///{path}"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["tail", "middle"])
def test_a_damaged_store_is_refused_before_any_write(tmp_path, gsm8k_dir, tiny_model_dir,
                                                     damage):
    path = tmp_path / "store.db"
    store_with_one_tree(path, num_nodes=300)
    data = bytearray(path.read_bytes())
    if damage == "tail":
        data = data[: len(data) * 2 // 3]
    else:  # overwrite pages after the schema page with noise
        data[8192:8192 + 16384] = np.random.default_rng(0).bytes(16384)
    path.write_bytes(bytes(data))
    line = _one_line_exit_2(run_cli(
        "generate", "--model", str(tiny_model_dir), "--dataset", str(gsm8k_dir / "test.jsonl"),
        "--limit", "1", "--max-new-tokens", "8", "--db", f"sqlite:///{path}"))
    assert "damaged" in line or "malformed" in line
    assert path.read_bytes() == bytes(data)
    for args in (["trees"], ["inspect", "1"], ["score"]):
        result = run_cli(*args, "--db", f"sqlite:///{path}")
        assert result.exit_code == 2 and "unexpected" not in result.stderr, result.stderr
    assert path.read_bytes() == bytes(data)


def test_read_only_commands_open_the_store_read_only(tmp_path):
    path = tmp_path / "store.db"
    store_with_one_tree(path, num_nodes=300)
    store = database.open_store(f"sqlite:///{path}", read_only=True)
    try:
        with pytest.raises(OperationalError, match="readonly"):
            with store.engine.begin() as connection:
                connection.exec_driver_sql("DELETE FROM nodes")
        assert repository.count_trees(store) == 1
    finally:
        store.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_store_in_a_read_only_folder_can_be_listed(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    store_with_one_tree(folder / "store.db", num_nodes=300)
    folder.chmod(0o555)
    try:
        result = run_cli("trees", "--db", f"sqlite:///{folder / 'store.db'}", "--json")
        assert result.exit_code == 0, result.stderr
        assert len(result.json()) == 1
    finally:
        folder.chmod(0o755)


def test_stray_temporary_checkpoints_are_removed_on_the_next_start(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = int(finished.stdout)
    (tmp_path / f".tmp-checkpoint-4-{dead}").mkdir()
    (tmp_path / f".tmp-checkpoint-4-{dead}" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / f".tmp-checkpoint-6-{os.getpid()}").mkdir()  # a live writer's: kept
    # Killed between the two renames: the stale folder is the last complete checkpoint-2.
    (tmp_path / f".tmp-stale-checkpoint-2-{dead}").mkdir()
    (tmp_path / f".tmp-checkpoint-2-{dead}").mkdir()
    (tmp_path / "checkpoint-1").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in removed) == [f".tmp-checkpoint-2-{dead}",
                                                     f".tmp-checkpoint-4-{dead}"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f".tmp-checkpoint-6-{os.getpid()}", "checkpoint-1", "checkpoint-2"]
