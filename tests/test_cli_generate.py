"""`treerpo generate` end to end with the tiny model on real GSM8K rows: storage, resume, errors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli

from treerpo.store import repository

SMALL_TREE = ["--max-new-tokens", "40", "--min-segment-len", "8", "--max-depth", "3",
              "--coverage-min-chars", "10", "--entropy-threshold", "0.5"]


def _generate(model_dir, gsm8k_dir, db_url, *extra):
    return run_cli("generate", "--model", str(model_dir), "--dataset",
                   str(gsm8k_dir / "test.jsonl"), "--db", db_url, *SMALL_TREE, *extra)


def _tree_rows(db_path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(db_path) as connection:
        try:
            return connection.execute("SELECT problem_id, num_nodes FROM trees").fetchall()
        except sqlite3.OperationalError:  # the store is still being created
            return []


def test_generate_stores_complete_trees(tiny_model_dir, gsm8k_dir, db_url, tmp_path):
    result = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "3", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["trees"] == 3 and summary["tokens_decoded"] == summary["unique_tokens"]
    listed = run_cli("trees", "--db", db_url, "--json").json()
    assert len(listed) == 3
    tree = run_cli("inspect", str(listed[0]["tree_id"]), "--db", db_url, "--json").json()
    assert tree["reference"] == "18" and tree["problem"].startswith("Janet")
    root = tree["root"]
    assert root["text"].endswith("<|im_start|>assistant\n") and "Janet" in root["text"]
    assert len(root["children"]) == 4  # resample branching: 4 free samples at the root
    assert not any(child["forced"] for child in root["children"])

    def paths(node, used):
        used = used + node["num_tokens"]
        if not node["children"]:
            return [used]
        return [p for child in node["children"] for p in paths(child, used)]

    assert max(p - root["num_tokens"] for p in paths(root, 0)) <= 40


def test_forced_branching_is_the_original_rule(tiny_model_dir, gsm8k_dir, db_url):
    result = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "1", "--branching",
                       "forced", "--json")
    assert result.exit_code == 0, result.stderr
    (listed,) = run_cli("trees", "--db", db_url, "--json").json()
    root = run_cli("inspect", str(listed["tree_id"]), "--db", db_url, "--json").json()["root"]
    assert [child["forced"] for child in root["children"]] == [False, True]
    assert len({child["token_ids"][0] for child in root["children"]}) == 2
    bad = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "1", "--branching", "fork")
    assert bad.exit_code == 2 and "branching" in bad.stderr


def test_same_command_resumes_without_duplicates(tiny_model_dir, gsm8k_dir, db_url, tmp_path,
                                                 monkeypatch):
    from treerpo.store import repository as repo_module

    real_insert = repo_module._insert_nodes
    calls = {"n": 0}

    def crash_on_second_batch(connection, rows):
        calls["n"] += 1
        if calls["n"] == 2:  # dies inside the transaction, after the tree rows went in
            raise RuntimeError("simulated crash")
        real_insert(connection, rows)

    monkeypatch.setattr(repo_module, "_insert_nodes", crash_on_second_batch)
    crashed = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "4", "--batch-size", "2")
    assert crashed.exit_code == 1 and "simulated crash" in crashed.stderr
    rows = _tree_rows(tmp_path / "store.db")
    assert len(rows) == 2  # the second batch's trees are not visible, not even their rows
    monkeypatch.setattr(repo_module, "_insert_nodes", real_insert)
    resumed = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "4", "--batch-size", "2",
                        "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["already_done"] == 2 and resumed.json()["trees"] == 2
    problems = [problem_id for problem_id, _ in _tree_rows(tmp_path / "store.db")]
    assert sorted(problems) == sorted(set(problems)) and len(problems) == 4
    with sqlite3.connect(tmp_path / "store.db") as connection:
        orphans = connection.execute(
            "SELECT count(*) FROM nodes WHERE tree_id NOT IN (SELECT id FROM trees)").fetchone()
        assert orphans == (0,)


def test_kill_9_then_same_command(tiny_model_dir, gsm8k_dir, tmp_path):
    db_path = tmp_path / "killed.db"
    command = [sys.executable, "-m", "treerpo.cli", "generate", "--model", str(tiny_model_dir),
               "--dataset", str(gsm8k_dir / "test.jsonl"), "--db", f"sqlite:///{db_path}",
               "--limit", "6", "--batch-size", "1", *SMALL_TREE]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if db_path.exists() and len(_tree_rows(db_path)) >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(_tree_rows(db_path)) < 6, "the run finished before it could be killed"
    finished = subprocess.run(command + ["--json"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr
    rows = _tree_rows(db_path)
    assert len(rows) == 6 and len({problem for problem, _ in rows}) == 6
    with sqlite3.connect(db_path) as connection:
        per_tree = dict(connection.execute("SELECT tree_id, count(*) FROM nodes GROUP BY tree_id"))
        sizes = dict(connection.execute("SELECT id, num_nodes FROM trees"))
    assert per_tree == sizes


def test_flat_rollout(tiny_model_dir, gsm8k_dir, db_url):
    result = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "2", "--rollout", "flat",
                       "--num-generations", "3", "--json")
    assert result.exit_code == 0, result.stderr
    for row in run_cli("trees", "--db", db_url, "--json").json():
        assert row["num_nodes"] == 4 and row["num_leaves"] == 3 and row["rollout"] == "flat"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "missing.jsonl"], "missing.jsonl"),
        (["--temperature", "0"], "--temperature"),
        (["--top-p", "1.5"], "--top-p"),
        (["--engine", "tpu"], "engine"),
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--limit", "0"], "--limit"),
        (["--logprob-temperature", "hot"], "--logprob-temperature"),
        (["--branching", "forced", "--logprob-temperature", "sampling"],
         "--branching forced needs --logprob-temperature raw"),
        (["--engine", "vllm", "--logprob-temperature", "sampling"], "--engine hf"),
        (["--split-delimiters", ".", "--split-delimiter", "= "], "contradict"),
        (["--split-delimiters", "\\"], "--split-delimiters: bad backslash escape"),
        (["--split-delimiter", "\\x4"], "--split-delimiter: bad backslash escape"),
        (["--split-delimiter", ""], "empty string"),
    ],
)
def test_bad_input_exit_2_store_unchanged(tiny_model_dir, gsm8k_dir, tmp_path, args, message):
    db_path = tmp_path / "store.db"
    run_cli("db", "upgrade", "--db", f"sqlite:///{db_path}")
    before = db_path.read_bytes()
    base = {"--model": str(tiny_model_dir), "--dataset": str(gsm8k_dir / "test.jsonl")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    flat_args = [item for pair in base.items() for item in pair]
    result = run_cli("generate", *flat_args, "--db", f"sqlite:///{db_path}", "--limit",
                     base.get("--limit", "2"), *SMALL_TREE)
    assert result.exit_code == 2, result.stderr
    # one error line, after at most the `store: URL` line of a command that opened the store
    lines = result.stderr.splitlines()
    assert lines[:-1] in ([], [f"store: sqlite:///{db_path}"]) and len(lines) <= 2
    assert message in lines[-1] and lines[-1].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert db_path.read_bytes() == before


def test_empty_dataset_and_no_problem_column(tiny_model_dir, tmp_path, db_url):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_column = tmp_path / "odd.jsonl"
    no_column.write_text('{"text": "hi", "answer": "1"}\n')
    for path, message in [(empty, "no rows"), (no_column, "text")]:
        result = run_cli("generate", "--model", str(tiny_model_dir), "--dataset", str(path),
                         "--db", db_url)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "store.db").exists()  # refused before the store is opened


def test_run_config_is_stored_whole(tiny_model_dir, gsm8k_dir, db_url):
    result = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "1", "--run", "cfg")
    assert result.exit_code == 0
    from treerpo.store.database import open_store

    store = open_store(db_url)
    try:
        run = repository.find_run(store, "cfg")
    finally:
        store.close()
    assert run.kind == "generate" and run.status == "finished"
    assert run.config["tree"]["max_depth"] == 3 and run.config["sampling"]["top_p"] == 0.85
    assert run.config["tree"]["split_delimiters"] == ["\n", "!", ".", "?", ";", ":"]


def test_split_delimiters_of_several_characters_and_beyond_ascii(tiny_model_dir, gsm8k_dir,
                                                                 db_url):
    """`--split-delimiter` (repeated) takes delimiters of any length; escapes are decoded and
    every other character, ASCII or not, is kept as typed."""
    from treerpo.store.database import open_store

    runs = {"several": ["--split-delimiter", "= ", "--split-delimiter", "\\n\\n",
                        "--split-delimiter", "。", "--split-delimiter", "= "],
            "characters": ["--split-delimiters", "。é\\n\\u00b7"]}
    for run_name, flags in runs.items():
        result = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "1", "--run", run_name,
                           *flags)
        assert result.exit_code == 0, result.stderr
    store = open_store(db_url)
    try:
        stored = {name: repository.find_run(store, name).config["tree"]["split_delimiters"]
                  for name in runs}
    finally:
        store.close()
    assert stored == {"several": ["= ", "\n\n", "。"], "characters": ["。", "é", "\n", "·"]}


def stored_and_recomputed_logprobs(*, db_url: str, model, logprob_temperature: float):
    """For every stored tree: its logprob_temperature, its stored behaviour logprobs (trained
    tokens, pack order) and `model`'s log_softmax(logits / logprob_temperature) of them as the
    trainer's packed forward computes it."""
    import numpy as np
    import torch

    from treerpo.store.database import open_store
    from treerpo.training.packed_forward import packed_token_logprobs
    from treerpo.training.packing import pack_tree

    store = open_store(db_url)
    try:
        trees = repository.load_trees(store, [row.tree_id for row in repository.list_trees(store)])
    finally:
        store.close()
    found = []
    for tree in trees:
        (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
        with torch.no_grad():
            (recomputed,) = packed_token_logprobs(model=model, packs=[pack],
                                                  logprob_temperature=logprob_temperature)
        nodes = pack.trained_nodes.numpy()  # (N,)
        stored = np.zeros(len(nodes), dtype=np.float64)  # (N,)
        for node_index in np.unique(nodes):
            stored[nodes == node_index] = tree.nodes[node_index].logprobs
        found.append((tree.logprob_temperature, stored, recomputed.double().numpy()))
    return found


@pytest.mark.parametrize(("flags", "expected_temperature"), [
    ([], 1.0),  # raw stays the default
    (["--logprob-temperature", "sampling"], 0.7),
    (["--logprob_temperature", "raw"], 1.0),
])
def test_logprob_temperature_is_stored_and_is_what_the_trainer_recomputes(
        tiny_model_dir, gsm8k_dir, db_url, flags, expected_temperature):
    from treerpo.engines.loading import load_policy

    result = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "2", "--temperature",
                       "0.7", *flags)
    assert result.exit_code == 0, result.stderr
    model = load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")
    found = stored_and_recomputed_logprobs(db_url=db_url, model=model,
                                           logprob_temperature=expected_temperature)
    assert len(found) == 2
    for logprob_temperature, stored, recomputed in found:
        assert logprob_temperature == expected_temperature
        assert abs(stored - recomputed).max() <= 1e-5  # PPO ratio 1 for the unchanged policy
    if expected_temperature != 1.0:  # and they are not the raw logprobs
        raw = stored_and_recomputed_logprobs(db_url=db_url, model=model, logprob_temperature=1.0)
        assert max(abs(stored - recomputed).max() for _, stored, recomputed in raw) > 1e-2
