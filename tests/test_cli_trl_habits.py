"""TRL habits: spellings that parse to the same configuration as treerpo's own flags, boolean
flags with true/false, every transformers scheduler name, conversational rows, --reward-fn."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from cli_runner import run_cli

from treerpo.config import METRIC_SCHEDULERS, SCHEDULER_TYPES, OptimizationConfig
from treerpo.policies import arith_policy_path


class _Captured:
    is_main_process = False


@pytest.fixture
def captured_configs(monkeypatch):
    """`train` parses its flags into a TrainConfig and stops there."""
    configs = []

    def capture(*, store, config, callbacks):
        configs.append(config)
        return _Captured()

    monkeypatch.setattr("treerpo.training.trainer.run_training", capture)
    return configs


def _parsed(captured_configs, tmp_path, *args):
    result = run_cli("train", "--output-dir", str(tmp_path / "out"), "--db",
                     f"sqlite:///{tmp_path / 's.db'}", *args)
    assert result.exit_code == 0, result.stderr
    return captured_configs.pop().model_dump()


def test_trl_spellings_parse_to_the_native_config(captured_configs, tmp_path):
    native = _parsed(captured_configs, tmp_path, "--model", "m", "--dataset", "arith",
                     "--torch-dtype", "bfloat16", "--max-new-tokens", "64", "--warmup-steps",
                     "3", "--loss-aggregation", "token", "--engine", "vllm",
                     "--gpu-memory-utilization", "0.4", "--gradient-checkpointing",
                     "--no-enable-prefix-caching")
    trl = _parsed(captured_configs, tmp_path, "--model_name_or_path", "m", "--dataset_name",
                  "arith", "--bf16", "--max_completion_length", "64", "--warmup_steps", "3",
                  "--loss_type", "dapo", "--use_vllm", "--vllm_gpu_memory_utilization", "0.4",
                  "--gradient_checkpointing", "true", "--enable_prefix_caching", "false")
    assert trl == native
    assert native["engine"]["torch_dtype"] == "bfloat16"
    assert native["optimization"]["gradient_checkpointing"] is True
    assert native["engine"]["enable_prefix_caching"] is False


def test_boolean_flags_take_true_and_false(captured_configs, tmp_path):
    base = ["--model", "m", "--dataset", "arith"]
    assert not _parsed(captured_configs, tmp_path, *base, "--gradient-checkpointing",
                       "false")["optimization"]["gradient_checkpointing"]
    assert _parsed(captured_configs, tmp_path, *base, "--full-determinism=True")[
        "full_determinism"]
    assert _parsed(captured_configs, tmp_path, *base, "--fp16", "true")["engine"][
        "torch_dtype"] == "float16"


@pytest.mark.parametrize(("args", "message"), [
    (["--bf16", "--torch-dtype", "float32"], "--bf16 contradicts --torch-dtype float32"),
    (["--bf16", "--fp16"], "contradict"),
    (["--use-vllm", "--engine", "hf"], "--use-vllm contradicts --engine hf"),
    (["--loss-type", "dr_grpo"], "no equivalent"),
    (["--loss-type", "grpo", "--loss-aggregation", "token"], "contradicts"),
    (["--lr-scheduler-type", "cosine_with_min_lr"], "min_lr"),
    (["--lr-scheduler-type", "reduce_lr_on_plateau"], "give --eval-dataset"),
    (["--reward-fn", "a:b", "--reward-weights", "1,2"], "one per function"),
    (["--eval-steps", "5"], "need --eval-dataset"),
])
def test_contradictions_are_refused(captured_configs, tmp_path, args, message):
    result = run_cli("train", "--model", "m", "--dataset", "arith", "--output-dir",
                     str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert message in result.stderr and "\n" not in result.stderr.strip()
    assert not captured_configs


def test_every_transformers_scheduler_name_is_known():
    import torch
    from transformers import SchedulerType, get_scheduler

    assert set(SCHEDULER_TYPES) == {member.value for member in SchedulerType}
    kwargs = {"cosine_with_min_lr": {"min_lr_rate": 0.1},
              "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
              "warmup_stable_decay": {"num_decay_steps": 2}}
    for name in SCHEDULER_TYPES:
        optimization = OptimizationConfig(lr_scheduler_type=name,
                                          lr_scheduler_kwargs=kwargs.get(name, {}),
                                          warmup_steps=1)
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        get_scheduler(name, optimizer, num_warmup_steps=optimization.num_warmup_steps(10),
                      num_training_steps=10,
                      scheduler_specific_kwargs=optimization.lr_scheduler_kwargs or None)
    assert set(METRIC_SCHEDULERS) < set(SCHEDULER_TYPES)


def test_conversational_rows_go_through_the_chat_template(tiny_model_dir, tmp_path, db_url):
    rows = [{"prompt": [{"role": "system", "content": "Box the answer."},
                        {"role": "user", "content": f"What is {i} + {i}?"}],
             "answer": str(2 * i)} for i in range(2)]
    data = tmp_path / "conversations.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_cli("generate", "--model", str(tiny_model_dir), "--dataset", str(data),
                     "--max-new-tokens", "8", "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["trees"] == 2
    tree = run_cli("inspect", "1", "--db", db_url, "--json").json()
    assert tree["problem"] == "What is 0 + 0?" and tree["reference"] == "0"
    root = tree["root"]["text"]
    assert root.index("Box the answer.") < root.index("What is 0 + 0?")
    assert root.count("What is 0 + 0?") == 1


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A plug-in module in the working folder, which is not on sys.path in this process."""
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def quarter(*, completion, reference, problem):
            return 0.25

        def half(*, completion, reference, problem):
            return 0.5
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path
                                      if entry not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    from treerpo.scoring.rewards import resolve_reward_fn

    resolve_reward_fn.cache_clear()
    yield
    resolve_reward_fn.cache_clear()


def test_train_chained_uses_weighted_reward_fns(reward_module, tmp_path, db_url):
    output_dir = tmp_path / "out"
    result = run_cli("train", "--model", str(arith_policy_path()), "--dataset", "arith",
        "--limit", "4", "--per-device-train-batch-size", "2", "--max-steps", "2",
        "--max-new-tokens", "32", "--logging-steps", "1", "--output-dir", str(output_dir),
        "--db", db_url, "--reward-fn", "my_rewards:quarter", "--reward-fn", "my_rewards:half",
        "--reward-weights", "2,1", "--no-signal-warning-steps", "2")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["mean_reward"] for line in lines] == [pytest.approx(2 * 0.25 + 0.5)] * 2
    # Every leaf scored alike: no signal in either step, and the run says so.
    assert all(line["no_signal_tree_share"] == 1.0 for line in lines)
    assert "steps 1–2 had no learning signal" in result.stderr


def test_score_imports_plugins_from_the_working_folder(reward_module, tiny_model_dir, db_url):
    assert run_cli("generate", "--model", str(tiny_model_dir), "--dataset", "arith", "--limit",
                   "1", "--max-new-tokens", "6", "--db", db_url).exit_code == 0
    result = run_cli("score", "--reward-fn", "my_rewards:half", "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["mean_reward"] == pytest.approx(0.5)


def test_run_name_ignores_eval_and_counts_new_settings_only_when_set(captured_configs,
                                                                    tmp_path):
    from treerpo.config import TrainConfig

    def run_name(*args):
        result = run_cli("train", "--model", "m", "--dataset", "arith", "--output-dir",
                         str(tmp_path / "out"), *args)
        assert result.exit_code == 0, result.stderr
        return TrainConfig.model_validate(captured_configs.pop().model_dump()).resolved_run_name()

    plain = run_name()
    assert run_name("--eval-dataset", "arith", "--eval-steps", "3") == plain
    assert run_name("--no-signal-warning-steps", "2") == plain
    assert run_name("--warmup-steps", "3") != plain
    assert run_name("--warmup-steps", "0") == plain


def test_spellings_rewrite_only_what_the_command_has():
    import typer

    from treerpo.cli import app
    from treerpo.cli.spellings import normalise_args

    root = typer.main.get_command(app)
    assert normalise_args(root, ["inspect", "--json", "1"]) == ["inspect", "--json", "1"]
    assert normalise_args(root, ["train", "--bf16", "false", "--model_id", "m"]) == [
        "train", "--model", "m"]
    assert normalise_args(root, ["--", "train", "--use_vllm", "TRUE"]) == [
        "--", "train", "--use-vllm"]
    assert normalise_args(root, ["trees", "--model-id", "x"]) == ["trees", "--model-id", "x"]
    assert normalise_args(root, ["train", "--", "--bf16", "false"]) == [
        "train", "--", "--bf16", "false"]


def test_conversational_rows_from_parquet_and_bad_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from treerpo.problems.sources import load_problems

    table = pa.table({
        "prompt": [[{"role": "user", "content": "2 + 2?"}],
                   [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                    {"role": "user", "content": "3 + 3?"}],
                   [{"role": "user", "content": ""}]],
        "answer": ["4", "6", "0"],
    })
    pq.write_table(table, tmp_path / "train.parquet")
    problems = load_problems(dataset=str(tmp_path / "train.parquet")).problems
    assert [problem.problem for problem in problems] == ["2 + 2?", "3 + 3?"]
    assert problems[1].messages == (("user", "first"), ("assistant", "x"), ("user", "3 + 3?"))
