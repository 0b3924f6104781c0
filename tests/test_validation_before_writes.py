"""Bad input is refused before any write (issue 16): every failing command below exits 2 with one
line and no traceback, and the store's SQL dump is byte-identical before and after."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from cli_runner import error_lines, run_cli

from treerpo.bench.synthetic import synthetic_tree
from treerpo.store import database, repository

SMALL_TREE = ["--max-new-tokens", "16", "--min-segment-len", "8", "--max-depth", "2",
              "--coverage-min-chars", "10", "--root-children", "2", "--engine", "hf"]


def store_with_one_tree(path: Path, *, num_nodes: int = 12) -> Path:
    """A SQLite store at `path` holding one unscored synthetic tree of about `num_nodes` nodes."""
    store = database.open_store(f"sqlite:///{path}")
    try:
        run = repository.get_or_create_run(store, name="hand", kind="generate", model="m",
                                           config={})
        [problem_id] = repository.upsert_problems(
            store, [(repository.ProblemKey("ds", "train", 0), "What is 1+1?", "2")])
        repository.write_tree(store, tree=synthetic_tree(rng=np.random.default_rng(0),
                                                         num_nodes=num_nodes),
                              run_id=run.id, problem_id=problem_id, policy_version="v")
    finally:
        store.close()
    return path


@pytest.fixture
def store_path(tmp_path) -> Path:
    """A store holding one unscored tree (so `train` would score it first)."""
    return store_with_one_tree(tmp_path / "store.db")


def dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return list(connection.iterdump())


def assert_refused_untouched(store_path: Path, *args: str, expect: str) -> str:
    before = dump(store_path)
    result = run_cli(*args, "--db", f"sqlite:///{store_path}")
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expect in lines[0], lines[0]
    assert dump(store_path) == before
    return lines[0]


def _generate_args(model_dir, gsm8k_dir, *extra) -> list[str]:
    return ["generate", "--model", str(model_dir), "--dataset", str(gsm8k_dir / "test.jsonl"),
            "--limit", "1", *SMALL_TREE, *extra]


@pytest.mark.parametrize(("flags", "expect"), [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--max-new-tokens", str(2**40)], "--max-new-tokens"),
    (["--entropy-topk", "100000"], "--entropy-topk 100000 is larger than the model's vocab"),
    (["--root-children", "1000"], "--root-children 1000 is larger than the model's vocab"),
    (["--top-k", "100000"], "--top-k 100000"),
    (["--limit", str(2**70)], "--limit"),
    (["--batch-size", str(2**64)], "--batch-size"),
])
def test_generate_flags_are_checked_before_writing(tiny_model_dir, gsm8k_dir, store_path, flags,
                                                   expect):
    assert_refused_untouched(store_path, *_generate_args(tiny_model_dir, gsm8k_dir, *flags),
                             expect=expect)


@pytest.mark.parametrize("args", [["inspect", str(2**70)], ["score", "--tree-id", str(2**70)],
                                  ["inspect", "0"], ["trees", "--limit", str(2**63)]])
def test_ids_beyond_int64_are_refused(store_path, args):
    assert_refused_untouched(store_path, *args, expect=args[-2] if args[0] != "inspect" else "")


def _broken_copy(model_dir: Path, tmp_path: Path, damage: str) -> Path:
    broken = tmp_path / f"model-{damage}"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    if damage == "truncated":
        with weights.open("r+b") as handle:
            handle.truncate(weights.stat().st_size // 2)
    elif damage == "random":
        weights.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "config-sizes":
        config = json.loads((broken / "config.json").read_text())
        config["intermediate_size"] *= 2
        (broken / "config.json").write_text(json.dumps(config))
    elif damage == "config-json":
        (broken / "config.json").write_text("{not json")
    elif damage == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "chat_template.jinja"):
            (broken / name).unlink(missing_ok=True)
    elif damage == "pickle-only":
        weights.rename(broken / "pytorch_model.bin")
    return broken


DAMAGES = {
    "truncated": "model.safetensors is not a readable safetensors file",
    "random": "model.safetensors is not a readable safetensors file",
    "config-sizes": "config.json does not belong to these weights",
    "config-json": "config.json is not readable JSON",
    "no-tokenizer": "has no tokenizer",
    "pickle-only": "has no .safetensors weights",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_model_is_named_before_generate_writes(tiny_model_dir, gsm8k_dir, store_path,
                                                         tmp_path, damage):
    broken = _broken_copy(tiny_model_dir, tmp_path, damage)
    assert_refused_untouched(store_path, *_generate_args(broken, gsm8k_dir),
                             expect=DAMAGES[damage])


@pytest.mark.parametrize("damage", ["truncated", "config-sizes", "pickle-only"])
def test_a_damaged_or_missing_model_is_refused_before_train_scores(tiny_model_dir, store_path,
                                                                   tmp_path, damage):
    broken = _broken_copy(tiny_model_dir, tmp_path, damage)
    assert_refused_untouched(store_path, "train", "--model", str(broken), "--output-dir",
                             str(tmp_path / "out"), "--max-steps", "1", expect=DAMAGES[damage])
    assert_refused_untouched(store_path, "train", "--model", str(tmp_path / "missing"),
                             "--output-dir", str(tmp_path / "out"), expect="not found")


def test_demo_output_dir_that_is_a_file(store_path, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_refused_untouched(store_path, "demo", "--output-dir", str(afile),
                             expect="is a file, not a folder")


def test_a_dataset_file_with_a_trailing_slash(tiny_model_dir, gsm8k_dir, store_path):
    args = ["generate", "--model", str(tiny_model_dir), "--dataset",
            str(gsm8k_dir / "test.jsonl") + "/", *SMALL_TREE]
    assert_refused_untouched(store_path, *args, expect="drop the slash")
