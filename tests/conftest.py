"""Shared fixtures: a tiny random Qwen2 model on disk, offline; the real GSM8K files by path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GSM8K_DIR = SHARED_DATA / "gsm8k"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread, and the suite runs in two worker processes on two
    cores: more threads would only wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 causal LM + byte-level BPE tokenizer with a chat template."""
    from treerpo.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not GSM8K_DIR.exists():
        pytest.fail(f"the real GSM8K files are expected at {GSM8K_DIR}")
    return GSM8K_DIR


@pytest.fixture
def db_url(tmp_path) -> str:
    """A fresh SQLite store in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'store.db'}"
