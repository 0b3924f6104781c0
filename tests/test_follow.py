"""Asynchronous generate -> train (issue 15): `train --follow` trains on the trees that
`generate --follow-policy` workers store, within --max-staleness of its step, and the workers
grow with the checkpoints it publishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from cli_runner import error_lines, run_cli
from safetensors.torch import save_file
from sqlalchemy import func, select
from test_generate_workers import POSTGRES_SERVER, _postgres_database
from test_scoring_scorer import make_tree

from treerpo.config import FollowConfig
from treerpo.errors import BadInputError, RunFailure
from treerpo.growth.follow import FOLLOW_FILE, PolicyFollower, newest_checkpoint
from treerpo.store import repository
from treerpo.store.database import open_store
from treerpo.store.models import ClaimRow, NodeRow, RunRow, TrainStepRow, TreeRow
from treerpo.training.follow import FollowBatches

ROOT = Path(__file__).resolve().parents[1]
TREE = ["--max-new-tokens", "30", "--min-segment-len", "8", "--max-depth", "2",
        "--coverage-min-chars", "10", "--entropy-threshold", "0.5"]
BASE = "model@aaaaaaaaaaaa"
TOKENIZER = "t" * 16


class _Main:
    is_main_process = True
    num_processes = 1


def _fake_checkpoint(folder: Path, value: float) -> Path:
    """A folder whose weights fingerprint differs with `value` (policy_version reads it)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.full((64,), value)}, str(folder / "model.safetensors"))
    return folder


def _store_trees(store, run_id: int, *, count: int, policy_step: int | None,
                 policy_version: str = BASE, tokenizer_hash: str = TOKENIZER,
                 first_problem: int = 0) -> list[int]:
    trees = [make_tree([None, 0, 0], [None, "4", "5"]) for _ in range(count)]
    keys = [(repository.ProblemKey("hand", "train", first_problem + index), f"p{index}", "4")
            for index in range(count)]
    problem_ids = repository.upsert_problems(store, keys)
    return repository.write_trees(store, trees=trees, run_id=run_id, problem_ids=problem_ids,
                                  policy_version=policy_version, tokenizer_hash=tokenizer_hash,
                                  policy_step=policy_step, epoch=first_problem)


@pytest.fixture
def follow_store(db_url, tmp_path):
    store = open_store(db_url)
    generate = repository.get_or_create_run(store, name="g", kind="generate", model="m",
                                            config={})
    train = repository.get_or_create_run(store, name="t", kind="train", model="m", config={})
    yield store, generate.id, train.id
    store.close()


def _batches(store, train_run_id, output_dir, *, trees_per_step=2, max_staleness=1,
             allow_off_policy=False, timeout=None, runs=("g",), messages=None):
    return FollowBatches(
        store=store, source_runs=list(runs), train_run_id=train_run_id,
        follow=FollowConfig(max_staleness=max_staleness, follow_timeout=timeout,
                            poll_seconds=0.01),
        trees_per_step=trees_per_step, num_iterations=1, total_steps=10,
        tokenizer_hash=TOKENIZER, base_policy_version=BASE, model="m",
        allow_off_policy=allow_off_policy, reward_fn_spec=None, output_dir=output_dir,
        accelerator=_Main(),
        on_message=(messages.append if messages is not None else (lambda message: None)))


def test_batches_take_the_oldest_fresh_trees_and_skip_stale_ones(follow_store, tmp_path):
    store, run_id, train_id = follow_store
    output_dir = tmp_path / "out"
    base_trees = _store_trees(store, run_id, count=3, policy_step=0)
    batches = _batches(store, train_id, output_dir)
    assert json.loads((output_dir / FOLLOW_FILE).read_text()) == {
        "trees_per_step": 2, "max_staleness": 1, "runs": ["g"]}
    assert batches.batch_tree_ids(0) == base_trees[:2]  # oldest first
    metrics = batches.last_batch_seconds()
    assert metrics["staleness_max"] == 0 and metrics["stale_trees_skipped"] == 0
    # Taken trees are scored, as `treerpo score` would.
    assert all(tree.scored for tree in repository.load_trees(store, base_trees[:2]))

    checkpoint = _fake_checkpoint(output_dir / "checkpoint-1", 1.0)
    batches.after_checkpoint(1, checkpoint)
    from treerpo.engines.loading import policy_version

    fresh = _store_trees(store, run_id, count=2, policy_step=1,
                         policy_version=policy_version(str(checkpoint)), first_problem=10)
    # Step 3 updates the weights of step 2: the third base tree (staleness 2 > 1) is skipped.
    assert batches.batch_tree_ids(2) == fresh
    metrics = batches.last_batch_seconds()
    assert metrics["stale_trees_skipped"] == 1 and metrics["staleness_max"] == 1
    assert batches.stale_skipped == 1


def test_trees_of_other_policies_are_skipped_unless_allowed(follow_store, tmp_path):
    store, run_id, train_id = follow_store
    output_dir = tmp_path / "out"
    checkpoint = _fake_checkpoint(output_dir / "checkpoint-1", 1.0)  # found at start
    other = _fake_checkpoint(tmp_path / "elsewhere" / "checkpoint-1", 2.0)
    from treerpo.engines.loading import policy_version

    skipped = [
        *_store_trees(store, run_id, count=1, policy_step=None,
                      policy_version="other@bbbbbbbbbbbb"),  # a plain generate of another model
        *_store_trees(store, run_id, count=1, policy_step=1, first_problem=1,
                      policy_version=policy_version(str(other))),  # another run's checkpoint-1
        *_store_trees(store, run_id, count=1, policy_step=5, first_problem=2,
                      policy_version="later@cccccccccccc"),  # a step this run has not reached
    ]
    kept = [*_store_trees(store, run_id, count=1, policy_step=None, first_problem=3),  # base
            *_store_trees(store, run_id, count=1, policy_step=1, first_problem=4,
                          policy_version=policy_version(str(checkpoint)))]
    batches = _batches(store, train_id, output_dir)
    assert batches.batch_tree_ids(1) == kept
    assert batches.last_batch_seconds()["off_policy_trees_skipped"] == 3
    allowed = _batches(store, train_id, output_dir, trees_per_step=5, allow_off_policy=True)
    assert sorted(allowed.batch_tree_ids(1)) == sorted(skipped + kept)


def test_a_tree_of_another_tokenizer_stops_training(follow_store, tmp_path):
    store, run_id, train_id = follow_store
    _store_trees(store, run_id, count=2, policy_step=0, tokenizer_hash="x" * 16)
    with pytest.raises(BadInputError, match="another tokenizer"):
        _batches(store, train_id, tmp_path / "out").batch_tree_ids(0)


def test_waits_for_trees_and_for_the_run_then_times_out(follow_store, tmp_path):
    store, run_id, train_id = follow_store
    messages: list[str] = []
    batches = _batches(store, train_id, tmp_path / "out", runs=("late",), messages=messages,
                       timeout=30)

    def later() -> None:
        time.sleep(0.3)
        run = repository.get_or_create_run(store, name="late", kind="generate", model="m",
                                           config={})
        time.sleep(0.2)
        _store_trees(store, run.id, count=2, policy_step=0)

    thread = threading.Thread(target=later)
    thread.start()
    tree_ids = batches.batch_tree_ids(0)
    thread.join()
    assert len(tree_ids) == 2 and batches.last_batch_seconds()["wait_seconds"] >= 0.4
    assert any("no run named 'late'" in message for message in messages)
    impatient = _batches(store, train_id, tmp_path / "out2", runs=("late",), timeout=0.2)
    impatient.seen = set(tree_ids)
    with pytest.raises(RunFailure, match="--follow-timeout"):
        impatient.batch_tree_ids(1)


def test_a_resumed_trainer_does_not_retrain_recorded_trees(follow_store, tmp_path):
    store, run_id, train_id = follow_store
    tree_ids = _store_trees(store, run_id, count=4, policy_step=0)
    repository.record_train_step(store, run_id=train_id, step=1, metrics={},
                                 tree_ids=tree_ids[:2])
    batches = _batches(store, train_id, tmp_path / "out")
    assert batches.batch_tree_ids(1) == tree_ids[2:]


def test_a_resumed_follow_run_removes_the_checkpoints_of_later_steps(tmp_path):
    from treerpo.training.follow import remove_later_checkpoints

    for step in (1, 2, 3):
        _fake_checkpoint(tmp_path / f"checkpoint-{step}", float(step))
    messages: list[str] = []
    remove_later_checkpoints(tmp_path, step=1, on_message=messages.append)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-1"]
    assert messages == ["removed checkpoint-2, checkpoint-3: later than the resumed step 1, "
                        "generators must not grow with them"]


class _RecordingEngine:
    name = "hf"

    def __init__(self) -> None:
        self.loads: list[dict] = []

    def load_weights(self, named_tensors) -> None:
        self.loads.append(dict(named_tensors))


def test_policy_follower_loads_the_newest_complete_checkpoint(tmp_path):
    directory = tmp_path / "out"
    engine = _RecordingEngine()
    follower = PolicyFollower(directory=str(directory), engine=engine, base_version=BASE)
    assert not follower.refresh() and follower.step == 0 and follower.version == BASE
    _fake_checkpoint(directory / "checkpoint-2", 2.0)
    _fake_checkpoint(directory / "checkpoint-10", 10.0)
    _fake_checkpoint(directory / ".tmp-checkpoint-11-123", 11.0)  # being written
    (directory / "checkpoint-12").write_text("not a folder")
    assert newest_checkpoint(directory).step == 10
    assert follower.refresh() and follower.step == 10 and follower.reloads == 1
    assert float(engine.loads[0]["w"][0]) == 10.0
    assert follower.version.startswith(str(directory / "checkpoint-10") + "@")
    assert not follower.refresh() and len(engine.loads) == 1  # unchanged: nothing to load
    assert follower.reached(10) and not follower.reached(11) and not follower.reached(None)
    # A trainer resumed from an earlier step writes checkpoint-10 again: it is loaded again.
    import shutil

    shutil.rmtree(directory / "checkpoint-10")
    _fake_checkpoint(directory / "checkpoint-10", 20.0)
    assert follower.refresh() and float(engine.loads[1]["w"][0]) == 20.0


def test_policy_follower_stays_within_what_the_trainer_can_use(tmp_path):
    directory = tmp_path / "out"
    follower = PolicyFollower(directory=str(directory), engine=_RecordingEngine(),
                              base_version=BASE)
    stored = {BASE: 5}
    counted: list[list[str]] = []

    def count(versions, min_step):
        counted.append(sorted(versions))
        assert min_step == max(follower.step - 2, 0)
        return sum(stored.get(version, 0) for version in versions)

    assert not follower.enough_ahead(count)  # no trainer yet: no bound known
    directory.mkdir()
    (directory / FOLLOW_FILE).write_text(json.dumps({"trees_per_step": 2, "max_staleness": 2}))
    assert not follower.enough_ahead(count)  # 5 < (2 + 1) x 2
    stored[BASE] = 6
    assert follower.enough_ahead(count) and counted[-1] == [BASE]
    # Newer policies: the window is the policies of the last max_staleness + 1 steps.
    for step in (1, 2, 3):
        _fake_checkpoint(directory / f"checkpoint-{step}", float(step))
    follower.refresh()
    assert sorted(follower.versions) == [0, 3]  # 1 and 2 were never grown with
    assert not follower.enough_ahead(count) and counted[-1] == [follower.version]
    stored[follower.version] = 6
    assert follower.enough_ahead(count)


def test_follow_flags_are_checked_before_anything_runs(tiny_model_dir, db_url, tmp_path):
    model = ["--model", str(tiny_model_dir), "--db", db_url, "--output-dir", str(tmp_path / "o")]
    for extra, message in [
        (["--follow", "--max-steps", "2"], "--follow needs --run NAME"),
        (["--follow", "--run", "g"], "--follow needs --max-steps"),
        (["--follow", "--run", "g", "--max-steps", "2", "--dataset", "arith"],
         "drop --dataset"),
        (["--follow", "--run", "g", "--max-steps", "2", "--save-steps", "4",
          "--max-staleness", "2"], "--save-steps <= 3"),
        (["--follow", "--run", "g", "--max-steps", "2", "--max-staleness", "-1"],
         "--max-staleness"),
        (["--run", "g", "--follow-timeout", "5"], "--follow-timeout is for --follow"),
    ]:
        result = run_cli("train", *model, *extra)
        assert result.exit_code == 2, (extra, result.stderr)
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and message in lines[0], extra
    result = run_cli("generate", "--model", str(tiny_model_dir), "--dataset", "arith",
                     "--db", db_url, "--until-steps", "3")
    assert result.exit_code == 2 and "--follow-policy" in error_lines(result.stderr)[0]
    assert not Path(db_url.removeprefix("sqlite:///")).exists()


def _process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "treerpo.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _run_exists(db_url: str, name: str) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        store = open_store(db_url, create=False, read_only=True)
    except (BadInputError, SQLAlchemyError):  # no store yet, or being created
        return False
    try:
        with store.session() as session:
            return session.scalar(select(func.count()).select_from(RunRow)
                                  .where(RunRow.name == name)) > 0
    except SQLAlchemyError:
        return False
    finally:
        store.close()


def _follow_round(tiny_model_dir, gsm8k_dir, db_url, output_dir, *, max_staleness=1,
                  max_steps=4) -> None:
    generate = ["generate", "--model", str(tiny_model_dir), "--dataset",
                str(gsm8k_dir / "test.jsonl"), "--limit", "4", "--batch-size", "1",
                "--run", "live", "--db", db_url, "--follow-policy", str(output_dir),
                "--engine", "hf", "--json", *TREE]
    # One worker runs until it is sent SIGTERM (as a process manager stops it); it starts
    # first, and the others once it has created the run (its SIGTERM handler is then in place).
    endless = _process(*generate, "--worker-name", "endless")
    deadline = time.monotonic() + 120
    while not _run_exists(db_url, "live"):
        assert endless.poll() is None and time.monotonic() < deadline, endless.communicate()
        time.sleep(0.2)
    trainer = _process(
        "train", "--model", str(tiny_model_dir), "--output-dir", str(output_dir), "--db", db_url,
        "--run", "live", "--follow", "--max-steps", str(max_steps),
        "--per-device-train-batch-size", "2", "--max-staleness", str(max_staleness),
        "--follow-timeout", "240", "--learning-rate", "1e-3", "--run-name", "learner",
        "--json")
    # The other stops when the trainer has published its last step.
    until = _process(*generate, "--until-steps", str(max_steps), "--worker-name", "until")
    try:
        trained_out, trained_err = trainer.communicate(timeout=300)
        if trainer.returncode != 0:
            for process in (until, endless):
                process.kill()
            raise AssertionError(f"trainer: {trained_err}\nuntil: {until.communicate()[1]}\n"
                                 f"endless: {endless.communicate()[1]}")
        until_out, until_err = until.communicate(timeout=120)
        assert until.returncode == 0, until_err
        endless.send_signal(signal.SIGTERM)
        endless_out, endless_err = endless.communicate(timeout=120)
        assert endless.returncode == 0, endless_err
    finally:
        for process in (trainer, until, endless):
            if process.poll() is None:
                process.kill()
                process.communicate()
    summary = json.loads(trained_out)
    assert summary["steps"] == max_steps
    until_summary = json.loads(until_out)
    endless_summary = json.loads(endless_out)
    assert until_summary["policy_step"] == max_steps and not until_summary["interrupted"]
    assert endless_summary["interrupted"]
    # The generators picked up the published checkpoints.
    assert until_summary["policy_reloads"] >= 1 and endless_summary["policy_reloads"] >= 1

    store = open_store(db_url, create=False)
    try:
        with store.session() as session:
            trees = {row.id: row for row in session.execute(select(
                TreeRow.id, TreeRow.problem_id, TreeRow.epoch, TreeRow.policy_step,
                TreeRow.num_nodes, TreeRow.worker))}
            steps = session.execute(select(TrainStepRow.step, TrainStepRow.tree_ids,
                                           TrainStepRow.metrics)
                                    .order_by(TrainStepRow.step)).all()
            nodes = dict(session.execute(select(NodeRow.tree_id, func.count())
                                         .group_by(NodeRow.tree_id)).all())
            claims_left = session.scalar(select(func.count()).select_from(ClaimRow))
            statuses = dict(session.execute(select(RunRow.name, RunRow.status)).all())
    finally:
        store.close()
    # Exactly one complete tree per problem and epoch, whatever stopped the workers.
    assert len({(tree.problem_id, tree.epoch) for tree in trees.values()}) == len(trees)
    assert all(nodes[tree_id] == tree.num_nodes for tree_id, tree in trees.items())
    assert claims_left == 0
    assert statuses == {"live": "stopped", "learner": "finished"} or \
        statuses == {"live": "finished", "learner": "finished"}
    # Every trained tree was grown within --max-staleness of the weights it updated.
    assert [step for step, _, _ in steps] == list(range(1, max_steps + 1))
    trained = [tree_id for _, tree_ids, _ in steps for tree_id in tree_ids]
    assert len(trained) == len(set(trained)) == 2 * max_steps
    for step, tree_ids, metrics in steps:
        for tree_id in tree_ids:
            assert 0 <= (step - 1) - trees[tree_id].policy_step <= max_staleness
        assert metrics["staleness_max"] <= max_staleness
    # The last steps trained on trees grown with published checkpoints.
    assert max(trees[tree_id].policy_step for tree_id in steps[-1][1]) >= 1
    assert json.loads((output_dir / FOLLOW_FILE).read_text())["trees_per_step"] == 2
    assert (output_dir / f"checkpoint-{max_steps}").is_dir()


def test_a_follow_trainer_and_two_follow_policy_generators(tiny_model_dir, gsm8k_dir, db_url,
                                                          tmp_path):
    _follow_round(tiny_model_dir, gsm8k_dir, db_url, tmp_path / "out")


@pytest.mark.skipif(not POSTGRES_SERVER, reason="no PostgreSQL server (.ci/run starts one)")
def test_follow_on_postgresql(tiny_model_dir, gsm8k_dir, tmp_path):
    with _postgres_database() as url:
        _follow_round(tiny_model_dir, gsm8k_dir, url, tmp_path / "out", max_staleness=0,
                      max_steps=3)


def test_follow_policy_loads_a_published_checkpoint_into_the_hf_engine(tiny_model_dir, tmp_path):
    from treerpo.engines import create_engine
    from treerpo.engines.loading import load_policy

    engine, _ = create_engine("hf", model=str(tiny_model_dir), seed=0)
    trained = load_policy(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.mul_(0.5)
    trained.save_pretrained(tmp_path / "out" / "checkpoint-1")
    follower = PolicyFollower(directory=str(tmp_path / "out"), engine=engine, base_version=BASE)
    assert follower.refresh() and follower.step == 1
    served = dict(engine.model.named_parameters())
    for name, parameter in trained.named_parameters():
        torch.testing.assert_close(served[name], parameter.detach())


def test_trees_of_a_policy_are_counted_by_fingerprint_whatever_the_path(follow_store):
    store, run_id, _ = follow_store
    _store_trees(store, run_id, count=2, policy_step=1,
                 policy_version="/mnt/a/out/checkpoint-1@0123456789ab")
    _store_trees(store, run_id, count=1, policy_step=1, first_problem=5,
                 policy_version="/data/out/checkpoint-1@0123456789ab")
    _store_trees(store, run_id, count=1, policy_step=0, first_problem=9)
    count = repository.count_trees_of_policies
    assert count(store, run_id=run_id, policy_versions=["out/checkpoint-1@0123456789ab"]) == 3
    assert count(store, run_id=run_id, policy_versions=[BASE, "x@0123456789ab"]) == 4
    assert count(store, run_id=run_id, policy_versions=["x@ffffffffffff"]) == 0
    assert count(store, run_id=run_id, policy_versions=[]) == 0
    # Steps without learning signal publish the same weights: the step tells them apart.
    assert count(store, run_id=run_id, policy_versions=[BASE], min_policy_step=1) == 0
    assert count(store, run_id=run_id, policy_versions=["a@0123456789ab"],
                 min_policy_step=1) == 3


def test_batches_other_workers_grow_count_as_in_flight(follow_store):
    from treerpo.store import claims

    store, run_id, _ = follow_store
    for batch, worker, lease in ((0, "a", 60.0), (1, "b", 60.0), (2, "b", 60.0), (3, "c", 1e-6)):
        assert claims.try_claim(store, run_id=run_id, epoch=0, batch_index=batch, worker=worker,
                                lease_seconds=lease)
    time.sleep(0.01)  # c's lease has run out: c is dead, its batch is not being grown
    assert claims.batches_in_flight(store, run_id=run_id, other_than="a") == 2
    assert claims.batches_in_flight(store, run_id=run_id, other_than="b") == 1
