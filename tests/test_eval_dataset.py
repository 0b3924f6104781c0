"""`treerpo eval dataset`: the modes, voting and storage of `eval gsm8k` on any source."""

from __future__ import annotations

from cli_runner import run_cli

from treerpo.policies import arith_policy_path


def test_eval_dataset_on_arith(db_url):
    result = run_cli("eval", "dataset", "--model", str(arith_policy_path()), "--dataset",
                     "arith", "--limit", "6", "--k", "2", "--max-new-tokens", "48", "--db", db_url,
                     "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["n"] == 6 and summary["k"] == 2
    assert summary["run"].startswith("eval-arith-arith-tiny-test-")
    records = run_cli("eval", "show", summary["run"], "--db", db_url, "--json").json()
    assert sorted({record["mode"] for record in records}) == ["greedy", "maj@2"]
    greedy = [record for record in records if record["mode"] == "greedy"]
    assert summary["greedy_accuracy"] == sum(record["correct"] for record in greedy) / 6
    # The same command resumes its run: nothing is redone.
    again = run_cli("eval", "dataset", "--model", str(arith_policy_path()), "--dataset", "arith",
                    "--limit", "6", "--k", "2", "--max-new-tokens", "48", "--db", db_url)
    assert again.exit_code == 0, again.stderr
    assert "12 records resumed" in again.stdout and "arith (test) · run" in again.stdout


def test_eval_dataset_local_file_and_bad_column(tmp_path, db_url):
    data = tmp_path / "problems.jsonl"
    data.write_text('{"question": "1 + 1?", "final_answer": "2"}\n')
    ok = run_cli("eval", "dataset", "--model", str(arith_policy_path()), "--dataset", str(data),
                 "--mode", "greedy", "--max-new-tokens", "8", "--db", db_url, "--json")
    assert ok.exit_code == 0, ok.stderr and ok.json()["n"] == 1
    bad = run_cli("eval", "dataset", "--model", str(arith_policy_path()), "--dataset", str(data),
                  "--problem-field", "nope", "--db", db_url)
    assert bad.exit_code == 2 and "nope" in bad.stderr
