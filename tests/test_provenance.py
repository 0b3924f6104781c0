"""Tree provenance: the tokenizer and policy each tree records, and replay's refusals."""

from __future__ import annotations

import shutil

import pytest
from alembic import command
from cli_runner import run_cli
from test_train_update import write_scored_trees

from treerpo.errors import BadInputError
from treerpo.provenance import (
    TreeProvenance,
    check_replay_provenance,
    policy_identity,
    tokenizer_fingerprint,
)
from treerpo.store import database, repository

SMALL_TREE = ["--max-new-tokens", "30", "--min-segment-len", "8", "--max-depth", "2",
              "--coverage-min-chars", "10", "--entropy-threshold", "0.5"]


@pytest.fixture(scope="module")
def other_template_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's weights with another chat template: same policy, another tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("other-template")
    for item in tiny_model_dir.iterdir():
        if item.suffix in (".safetensors", ".json") and "token" not in item.name:
            shutil.copy(item, folder / item.name)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def other_weights_model_dir(tmp_path_factory):
    """Another random model with the tiny model's tokenizer: same tokenizer, another policy."""
    from treerpo.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("other-weights"), seed=1)


def _fingerprint(model_dir) -> str:
    from transformers import AutoTokenizer

    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))


def test_tokenizer_fingerprint_follows_vocabulary_and_template(
        tiny_model_dir, other_template_model_dir, other_weights_model_dir):
    assert _fingerprint(tiny_model_dir) == _fingerprint(tiny_model_dir)
    assert _fingerprint(other_weights_model_dir) == _fingerprint(tiny_model_dir)
    assert _fingerprint(other_template_model_dir) != _fingerprint(tiny_model_dir)

    from treerpo.tiny_model import build_tokenizer

    assert tokenizer_fingerprint(build_tokenizer(vocab_size=300)) != tokenizer_fingerprint(
        build_tokenizer())


def test_policy_identity_is_the_weights_fingerprint():
    assert policy_identity("/a/model@0123456789ab") == policy_identity("org/model@0123456789ab")
    assert policy_identity("run@step-4") == "run@step-4"
    assert policy_identity("/a/model@0123456789ab") != policy_identity("/a/model@0123456789ac")


def _trees(*specs: tuple[str, str | None, str]) -> list[TreeProvenance]:
    return [TreeProvenance(tree_id=index, run_name=run, tokenizer_hash=tokenizer,
                           policy_version=policy)
            for index, (run, tokenizer, policy) in enumerate(specs, start=1)]


def test_check_replay_provenance_refuses_and_warns():
    mine = ("m", "tok-a", "m@aaaaaaaaaaaa")
    check = {"tokenizer_hash": "tok-a", "policy_version": "/x/m@aaaaaaaaaaaa", "model": "m"}
    assert check_replay_provenance(trees=_trees(mine, mine), allow_off_policy=False,
                                   **check) == []
    with pytest.raises(BadInputError, match=r"another tokenizer.*: b \(2 trees\), c \(1 tree\)"):
        check_replay_provenance(
            trees=_trees(mine, ("b", "tok-b", mine[2]), ("b", "tok-b", mine[2]),
                         ("c", "tok-c", mine[2])),
            allow_off_policy=True, **check)
    off = _trees(mine, mine, mine, ("g", "tok-a", "g@step-3"))
    with pytest.raises(BadInputError, match=r"1 of 4 trees \(25%\).*--allow-off-policy"):
        check_replay_provenance(trees=off, allow_off_policy=False, **check)
    [warning] = check_replay_provenance(trees=off, allow_off_policy=True, **check)
    assert "1 of 4 trees (25%)" in warning and "g (1 tree)" in warning
    [unknown] = check_replay_provenance(trees=_trees(mine, ("old", None, mine[2])),
                                        allow_off_policy=False, **check)
    assert "1 of 2 trees were stored before" in unknown and "old (1 tree)" in unknown


def test_generated_trees_record_their_provenance(tiny_model_dir, gsm8k_dir, db_url):
    from treerpo.engines.loading import policy_version

    result = run_cli("generate", "--model", str(tiny_model_dir), "--dataset",
                     str(gsm8k_dir / "test.jsonl"), "--db", db_url, "--limit", "2",
                     "--run", "grown", *SMALL_TREE)
    assert result.exit_code == 0, result.stderr
    store = database.open_store(db_url)
    try:
        rows = repository.tree_provenance(store)
    finally:
        store.close()
    assert len(rows) == 2
    assert {row.tokenizer_hash for row in rows} == {_fingerprint(tiny_model_dir)}
    assert {row.policy_version for row in rows} == {policy_version(str(tiny_model_dir))}


def test_replay_of_another_tokenizers_trees_is_refused_store_byte_identical(
        tiny_model_dir, other_template_model_dir, gsm8k_dir, tmp_path):
    db_path = tmp_path / "store.db"
    db_url = f"sqlite:///{db_path}"
    grown = run_cli("generate", "--model", str(tiny_model_dir), "--dataset",
                    str(gsm8k_dir / "test.jsonl"), "--db", db_url, "--limit", "2",
                    "--run", "grown-by-tiny", *SMALL_TREE)
    assert grown.exit_code == 0, grown.stderr
    before = db_path.read_bytes()
    output_dir = tmp_path / "out"
    result = run_cli("train", "--model", str(other_template_model_dir), "--output-dir",
                     str(output_dir), "--db", db_url, "--max-steps", "1", "--allow-off-policy")
    assert result.exit_code == 2, result.stderr
    [store_line, error] = result.stderr.splitlines()
    assert store_line == f"store: {db_url}"
    assert error.startswith("error: refusing to replay trees of another tokenizer")
    assert "grown-by-tiny (2 trees)" in error
    # the trees were unscored: a refusal after scoring would have changed the file
    assert db_path.read_bytes() == before
    assert not output_dir.exists()


def test_off_policy_replay_needs_the_flag_and_then_warns_with_the_share(
        tiny_model_dir, other_weights_model_dir, db_url, tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=[[1, 0, 0, 1, 0]] * 2,
                       run_name="by-tiny")
    write_scored_trees(db_url=db_url, model_dir=other_weights_model_dir,
                       rewards=[[0, 1, 1, 0, 0]], run_name="by-other")
    train = ["train", "--model", str(other_weights_model_dir), "--db", db_url,
             "--max-steps", "1", "--per-device-train-batch-size", "3"]
    refused = run_cli(*train, "--output-dir", str(tmp_path / "refused"))
    assert refused.exit_code == 2
    assert "refusing to train off-policy: 2 of 3 trees (67%)" in refused.stderr
    assert "by-tiny (2 trees)" in refused.stderr and "by-other" not in refused.stderr
    assert not (tmp_path / "refused").exists()
    allowed = run_cli(*train, "--output-dir", str(tmp_path / "allowed"), "--allow-off-policy")
    assert allowed.exit_code == 0, allowed.stderr
    assert ("warning: training off-policy (--allow-off-policy): 2 of 3 trees (67%)"
            in allowed.stdout)
    # the on-policy run alone trains without a word
    alone = run_cli(*train, "--output-dir", str(tmp_path / "alone"), "--run", "by-other")
    assert alone.exit_code == 0, alone.stderr
    assert "warning" not in alone.stdout


def test_trees_stored_before_0003_read_as_unknown_tokenizer(tiny_model_dir, db_url, tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=[[1, 0, 0, 1, 0]])
    store = database.open_store(db_url)
    try:
        with store.engine.begin() as connection:
            command.downgrade(database.alembic_config(connection), "0002")
    finally:
        store.close()
    assert database.current_revision(db_url) == "0002"
    store = database.open_store(db_url)  # upgraded to head again: the column comes back empty
    try:
        [row] = repository.tree_provenance(store)
    finally:
        store.close()
    assert database.current_revision(db_url) == database.head_revision()
    assert row.tokenizer_hash is None
    result = run_cli("train", "--model", str(tiny_model_dir), "--output-dir",
                     str(tmp_path / "out"), "--db", db_url, "--max-steps", "1")
    assert result.exit_code == 0, result.stderr
    assert "1 of 1 trees were stored before treerpo recorded their tokenizer" in result.stdout
