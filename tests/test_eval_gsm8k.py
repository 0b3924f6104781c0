"""`treerpo eval gsm8k` end to end: the tiny model on real GSM8K rows, a scripted engine whose
answers are known (exact accuracies), stored records, `eval show`, resume, bad input."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from treerpo.engines.base import GenerationResult

FAST = ["--limit", "3", "--max-new-tokens", "16"]


def _eval(model_dir, gsm8k_dir, db_url, *extra, command=("eval", "gsm8k")):
    return run_cli(*command, "--model", str(model_dir), "--data-file",
                   str(gsm8k_dir / "test.jsonl"), "--db", db_url, *extra)


def _records(db_url, run, *extra):
    result = run_cli("eval", "show", run, "--db", db_url, "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return result.json()


def _run_names(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as connection:
        return [name for (name,) in connection.execute("SELECT name FROM runs WHERE kind='eval'")]


# --- the tiny model on real rows -----------------------------------------------------------------


def test_greedy_only(tiny_model_dir, gsm8k_dir, db_url):
    result = _eval(tiny_model_dir, gsm8k_dir, db_url, *FAST, "--mode", "greedy", "--run", "g",
                   "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1  # one line, no progress bar
    summary = result.json()
    assert summary == {"greedy_accuracy": summary["greedy_accuracy"], "maj_accuracy": None,
                       "k": None, "n": 3, "run": "g"}
    assert 0.0 <= summary["greedy_accuracy"] <= 1.0
    records = _records(db_url, "g")
    assert [(record["row_index"], record["mode"]) for record in records] == [
        (0, "greedy"), (1, "greedy"), (2, "greedy")]
    assert records[0]["reference"] == "18" and records[0]["problem"].startswith("Janet")
    for record in records:
        assert len(record["completions"]) == 1 and 1 <= record["num_tokens"] <= 16


def test_majority_only_with_small_k(tiny_model_dir, gsm8k_dir, db_url):
    result = _eval(tiny_model_dir, gsm8k_dir, db_url, *FAST, "--mode", "maj8", "--k", "2",
                   "--run", "m", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["greedy_accuracy"] is None and summary["k"] == 2 and summary["n"] == 3
    records = _records(db_url, "m")
    assert {record["mode"] for record in records} == {"maj@2"} and len(records) == 3
    for record in records:
        assert len(record["completions"]) == len(record["answers"]) == 2
        assert record["num_tokens"] <= 2 * 16


def test_default_k_is_8(tiny_model_dir, gsm8k_dir, db_url):
    result = _eval(tiny_model_dir, gsm8k_dir, db_url, "--limit", "2", "--max-new-tokens", "8",
                   "--mode", "maj8", "--run", "k8", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["k"] == 8
    records = _records(db_url, "k8")
    assert [record["mode"] for record in records] == ["maj@8", "maj@8"]
    assert all(len(record["completions"]) == 8 for record in records)


def test_both_modes_print_a_table(tiny_model_dir, gsm8k_dir, db_url):
    result = _eval(tiny_model_dir, gsm8k_dir, db_url, *FAST, "--k", "2", "--run", "both")
    assert result.exit_code == 0, result.stderr
    for text in ("GSM8K · run both", "accuracy", "boxed", "mean tokens", "greedy", "maj@2"):
        assert text in result.stdout
    modes = Counter(record["mode"] for record in _records(db_url, "both"))
    assert modes == {"greedy": 3, "maj@2": 3}


@pytest.mark.parametrize("command", ["eval-gsm8k", "eval_gsm8k"])
def test_original_alias(tiny_model_dir, gsm8k_dir, db_url, tmp_path, command):
    result = run_cli(command, "--model_id", str(tiny_model_dir), "--data_file",
                     str(gsm8k_dir / "test.jsonl"), "--limit", "1", "--max_new_tokens", "8",
                     "--k", "2", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    assert "greedy" in result.stdout and "maj@2" in result.stdout  # both modes, printed
    assert len(_run_names(tmp_path / "store.db")) == 1


def test_same_seed_same_records(tiny_model_dir, gsm8k_dir, db_url):
    def sampled(run, seed):
        result = _eval(tiny_model_dir, gsm8k_dir, db_url, "--limit", "2", "--max-new-tokens",
                       "12", "--mode", "maj8", "--k", "3", "--seed", seed, "--run", run)
        assert result.exit_code == 0, result.stderr
        return [(record["completions"], record["answers"], record["vote"])
                for record in _records(db_url, run)]

    first = sampled("seed3-a", "3")
    assert sampled("seed3-b", "3") == first
    assert sampled("seed4", "4") != first


def test_same_command_resumes_its_default_run(tiny_model_dir, gsm8k_dir, db_url, tmp_path):
    args = ["--max-new-tokens", "8", "--mode", "greedy", "--json"]
    assert _eval(tiny_model_dir, gsm8k_dir, db_url, "--limit", "1", *args).exit_code == 0
    [run_name] = _run_names(tmp_path / "store.db")
    assert run_name.startswith("eval-gsm8k-")
    # The same file named through another path is the same run.
    relative = Path("..") / gsm8k_dir.name / "test.jsonl"
    again = run_cli("eval", "gsm8k", "--model", str(tiny_model_dir), "--data-file",
                    str(gsm8k_dir / relative), "--limit", "2", "--db", db_url, *args)
    assert again.exit_code == 0, again.stderr
    assert _run_names(tmp_path / "store.db") == [run_name]
    assert [record["row_index"] for record in _records(db_url, run_name)] == [0, 1]
    other = _eval(tiny_model_dir, gsm8k_dir, db_url, "--limit", "1", *args, "--seed", "1")
    assert other.exit_code == 0 and len(_run_names(tmp_path / "store.db")) == 2


# --- a scripted engine: known answers, exact accuracies ------------------------------------------

SCRIPT = {
    # Janet (reference 18): greedy right; votes 18 ×2 (spelled two ways) vs 17, one unboxed.
    "Janet": {"greedy": "She makes 9 * 2 = 18 dollars, so \\boxed{18}.",
              "samples": ["\\boxed{18.0}", "It is \\boxed{\\$18}", "no answer", "\\boxed{17}"]},
    # Robe (reference 3): greedy has no boxed answer; votes 2 ×2 vs 3, one unboxed.
    "robe": {"greedy": "It takes 3 bolts.",
             "samples": ["\\boxed{2}", "\\boxed{2}", "\\boxed{3}", "I am unsure"]},
}


class ScriptedEvalEngine:
    """Answers each GSM8K prompt from SCRIPT: the greedy text at temperature 0, else the next
    scripted sample of that problem. Records every call."""

    logprob_temperature = 1.0

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = []  # (sampling, [(problem key, max_new_tokens, context ids)])
        self.samples_drawn = Counter()

    def _problem_key(self, context_token_ids) -> str:
        prompt = self.tokenizer.decode(list(context_token_ids))
        return next(key for key in SCRIPT if key in prompt)

    def generate(self, requests, *, sampling, topk):
        keys = [self._problem_key(request.context_token_ids) for request in requests]
        self.calls.append((sampling, [(key, request.max_new_tokens,
                                       tuple(request.context_token_ids))
                                      for key, request in zip(keys, requests, strict=True)]))
        results = []
        for key in keys:
            if sampling.temperature == 0:
                text = SCRIPT[key]["greedy"]
            else:
                samples = SCRIPT[key]["samples"]
                text = samples[self.samples_drawn[key] % len(samples)]
                self.samples_drawn[key] += 1
            token_ids = [*self.tokenizer.encode(text, add_special_tokens=False),
                         self.tokenizer.eos_token_id]
            num_tokens = len(token_ids)
            results.append(GenerationResult(
                token_ids=np.asarray(token_ids, dtype=np.int32),
                logprobs=np.zeros(num_tokens, dtype=np.float32),
                topk_token_ids=np.zeros((num_tokens, topk), dtype=np.int32),
                topk_logprobs=np.zeros((num_tokens, topk), dtype=np.float32),
                finish_reason="eos"))
        return results


@pytest.fixture
def scripted_engine(tiny_model_dir, monkeypatch):
    from treerpo.engines.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = ScriptedEvalEngine(tokenizer)

    def create_scripted_engine(name, *, model, seed, **settings):
        return engine, tokenizer

    monkeypatch.setattr("treerpo.engines.create_engine", create_scripted_engine)
    return engine


def _scripted_eval(gsm8k_dir, db_url, *extra):
    return run_cli("eval", "gsm8k", "--model", "scripted/model", "--data-file",
                   str(gsm8k_dir / "test.jsonl"), "--limit", "2", "--db", db_url, *extra)


def test_known_answers_give_exact_accuracy(scripted_engine, gsm8k_dir, db_url):
    result = _scripted_eval(gsm8k_dir, db_url, "--k", "4", "--run", "known", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"greedy_accuracy": 0.5, "maj_accuracy": 0.5, "k": 4, "n": 2,
                             "run": "known"}
    janet_greedy, janet_majority, robe_greedy, robe_majority = _records(db_url, "known")
    assert (janet_greedy["mode"], janet_greedy["vote"], janet_greedy["correct"]) == (
        "greedy", "18", True)
    assert janet_greedy["completions"] == [SCRIPT["Janet"]["greedy"]]  # EOS not in the text
    assert (robe_greedy["answers"], robe_greedy["vote"], robe_greedy["correct"]) == (
        [None], None, False)
    assert janet_majority["mode"] == "maj@4"
    assert janet_majority["answers"] == ["18.0", "\\$18", None, "17"]
    assert janet_majority["vote"] == "18.0" and janet_majority["correct"] is True
    assert robe_majority["vote"] == "2" and robe_majority["correct"] is False
    failures = _records(db_url, "known", "--failures")
    assert [(record["row_index"], record["mode"]) for record in failures] == [
        (1, "greedy"), (1, "maj@4")]


def test_table_shows_boxed_share_and_tokens(scripted_engine, gsm8k_dir, db_url):
    result = _scripted_eval(gsm8k_dir, db_url, "--k", "4", "--run", "table")
    assert result.exit_code == 0, result.stderr
    greedy_line = next(line for line in result.stdout.splitlines() if "greedy" in line)
    majority_line = next(line for line in result.stdout.splitlines() if "maj@4" in line)
    # greedy: 1 of 2 right, 1 of 2 boxed; maj@4: 1 of 2 right, 6 of 8 samples boxed.
    assert "50.0%" in greedy_line and greedy_line.count("50.0%") == 2
    assert "50.0%" in majority_line and "75.0%" in majority_line


def test_engine_gets_the_original_settings(scripted_engine, gsm8k_dir, db_url):
    assert _scripted_eval(gsm8k_dir, db_url, "--k", "3").exit_code == 0
    (greedy_sampling, greedy_requests), (majority_sampling, majority_requests) = (
        scripted_engine.calls)
    assert (greedy_sampling.temperature, greedy_sampling.top_p, greedy_sampling.top_k,
            greedy_sampling.min_p, greedy_sampling.repetition_penalty) == (0.0, None, None,
                                                                           None, None)
    assert (majority_sampling.temperature, majority_sampling.top_p, majority_sampling.top_k,
            majority_sampling.min_p, majority_sampling.repetition_penalty) == (0.7, 0.8, None,
                                                                               None, None)
    assert [key for key, _, _ in greedy_requests] == ["Janet", "robe"]
    # k requests per problem, the same prompt k times, both problems in one engine call.
    assert [key for key, _, _ in majority_requests] == ["Janet"] * 3 + ["robe"] * 3
    assert len({context for key, _, context in majority_requests if key == "Janet"}) == 1
    assert {max_new_tokens for _, max_new_tokens, _ in greedy_requests + majority_requests} == {
        1024}
    prompt = scripted_engine.tokenizer.decode(list(greedy_requests[0][2]))
    assert prompt.count("<|im_start|>user") == 1 and prompt.endswith("<|im_start|>assistant\n")


def test_tie_is_broken_from_the_seed(scripted_engine, gsm8k_dir, db_url, monkeypatch):
    monkeypatch.setitem(SCRIPT, "Janet", {"greedy": "", "samples": ["\\boxed{18}", "\\boxed{17}"]})
    votes = set()
    for seed in range(12):
        result = _scripted_eval(gsm8k_dir, db_url, "--mode", "maj8", "--k", "2", "--seed",
                                str(seed), "--run", f"tie{seed}", "--limit", "1")
        assert result.exit_code == 0, result.stderr
        votes.add(_records(db_url, f"tie{seed}")[0]["vote"])
    assert votes == {"18", "17"}


def test_resume_and_redo(scripted_engine, gsm8k_dir, db_url):
    assert _scripted_eval(gsm8k_dir, db_url, "--k", "2", "--run", "r", "--limit",
                          "1").exit_code == 0
    scripted_engine.calls.clear()
    resumed = _scripted_eval(gsm8k_dir, db_url, "--k", "2", "--run", "r", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["n"] == 2 and resumed.json()["greedy_accuracy"] == 0.5
    # Only the new problem went to the engine.
    assert {key for _, requests in scripted_engine.calls for key, _, _ in requests} == {"robe"}
    # Another k under the same name redoes the run: the maj@2 records are gone.
    redone = _scripted_eval(gsm8k_dir, db_url, "--k", "4", "--run", "r", "--mode", "maj8")
    assert redone.exit_code == 0, redone.stderr
    assert [record["mode"] for record in _records(db_url, "r")] == ["maj@4", "maj@4"]


def test_stored_run_holds_the_whole_config(scripted_engine, gsm8k_dir, db_url, tmp_path):
    assert _scripted_eval(gsm8k_dir, db_url, "--k", "2", "--run", "cfg").exit_code == 0
    with sqlite3.connect(tmp_path / "store.db") as connection:
        kind, status, config = connection.execute(
            "SELECT kind, status, config FROM runs WHERE name = 'cfg'").fetchone()
    config = json.loads(config)
    assert (kind, status) == ("eval", "finished")
    assert config["k"] == 2 and config["max_new_tokens"] == 1024 and config["mode"] == "both"
    assert config["data"]["dataset"] == str((gsm8k_dir / "test.jsonl").resolve())
    assert config["sampling"]["maj"]["temperature"] == 0.7
    assert config["sampling"]["greedy"]["temperature"] == 0.0


def test_show_table_lists_failures(scripted_engine, gsm8k_dir, db_url):
    assert _scripted_eval(gsm8k_dir, db_url, "--k", "4", "--run", "s").exit_code == 0
    result = run_cli("eval", "show", "s", "--failures", "--db", db_url)
    assert result.exit_code == 0, result.stderr
    assert "failures: 2" in result.stdout and "A robe takes" in result.stdout
    assert "Janet" not in result.stdout


def test_show_refuses_unknown_and_non_eval_runs(gsm8k_dir, db_url, tiny_model_dir):
    assert run_cli("db", "upgrade", "--db", db_url).exit_code == 0
    unknown = run_cli("eval", "show", "nope", "--db", db_url)
    assert unknown.exit_code == 2 and "nope" in unknown.stderr
    generated = run_cli("generate", "--model", str(tiny_model_dir), "--dataset",
                        str(gsm8k_dir / "test.jsonl"), "--limit", "1", "--max-new-tokens", "4",
                        "--rollout", "flat", "--num-generations", "2", "--run", "gen",
                        "--db", db_url)
    assert generated.exit_code == 0, generated.stderr
    not_eval = run_cli("eval", "show", "gen", "--db", db_url)
    assert not_eval.exit_code == 2 and "not an eval run" in not_eval.stderr


# --- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def model_must_not_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("treerpo.engines.create_engine", refuse)


@pytest.mark.parametrize(
    ("args", "rows", "message"),
    [
        (["--data-file", "{tmp}/missing.jsonl"], None, "missing.jsonl"),
        (["--data-file", "{tmp}/rows.jsonl"], [{"problem": "1+1?", "answer": "#### 2"}],
         "'question'"),
        (["--data-file", "{tmp}/rows.jsonl"], [{"question": "1+1?", "solution": "2"}],
         "'answer'"),
        (["--k", "0"], None, "--k"),
        (["--limit", "0"], None, "--limit"),
        (["--mode", "maj"], None, "--mode"),
        (["--batch-size", "0"], None, "--batch-size"),
        (["--max-new-tokens", "0"], None, "--max-new-tokens"),
    ],
)
def test_bad_input_exits_2_before_loading(model_must_not_load, gsm8k_dir, tmp_path, args, rows,
                                          message):
    if rows is not None:
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = {"--data-file": str(gsm8k_dir / "test.jsonl"), "--limit": "2"}
    options.update(dict(zip(args[::2], [value.format(tmp=tmp_path) for value in args[1::2]],
                            strict=True)))
    db_path = tmp_path / "store.db"
    result = run_cli("eval", "gsm8k", "--model", "any/model", "--db", f"sqlite:///{db_path}",
                     *[item for pair in options.items() for item in pair])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not db_path.exists()
