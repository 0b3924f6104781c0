"""Answer checking through math-verify: equivalences, every GSM8K reference, and the timeout."""

from __future__ import annotations

import json
import signal
import threading
import time

import math_verify
import pytest

from treerpo.scoring import answers_equivalent, is_correct
from treerpo.scoring.answers import reference_from_gsm8k
from treerpo.scoring.verify import clear_caches


@pytest.fixture(autouse=True)
def fresh_caches():
    clear_caches()
    yield
    clear_caches()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1,234", "1234"),
        ("1,234,567", "1234567"),
        ("1{,}000", "1000"),
        (r"1\,000", "1000"),
        (r"\$18", "18"),
        ("$18", "18"),
        ("18.0", "18"),
        ("18.00", "18"),
        (r"18 \text{ dollars}", "18"),
        ("18 dollars", "18"),
        (r"50\%", "50"),
        (r"50\%", "0.5"),
        ("50 percent", "50"),
        (r"\frac{1}{2}", "0.5"),
        (r"\dfrac12", "1/2"),
        (r"\frac{1}{3}", "0.3333333"),
        (r"\sqrt{18}", r"3\sqrt{2}"),
        ("x^2+2x+1", "(x+1)^2"),
        ("(1,2]", r"(1, 2]"),
        (r"[0,\infty)", r"[0, \infty)"),
        (r"\{1,2,3\}", r"\{3,1,2\}"),
        ("x=5", "5"),
        (r"\text{(B)}", "B"),
    ],
)
def test_equivalent_answers(a, b):
    assert answers_equivalent(a, b)
    assert answers_equivalent(b, a)
    assert is_correct(rf"so the answer is $\boxed{{{a}}}$.", b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("18", "19"),
        ("-3", "3"),
        ("1,2", "12"),
        ("0.333", r"\frac{1}{3}"),
        ("[1,2]", "(1,2)"),
        ("(1,2]", "[1,2)"),
        (r"\{1,2\}", r"\{1,2,3\}"),
        (r"5\pi", "5"),
        ("5 pi", "5"),
        (r"\sqrt{2}", "1.41"),
        ("50", "0.5"),
    ],
)
def test_different_answers(a, b):
    assert not answers_equivalent(a, b)
    assert not answers_equivalent(b, a)
    assert not is_correct(rf"so the answer is $\boxed{{{a}}}$.", b)


def test_integers_are_exact_at_any_length():
    assert not answers_equivalent("12345678901234567890", "12345678901234567891")
    huge = "9" * 5000  # over int()'s 4,300-digit limit
    assert answers_equivalent(huge, f"{huge}.0")
    assert not answers_equivalent(huge, "9" * 4999 + "8")
    assert answers_equivalent("-0", "0")


@pytest.mark.parametrize(
    "completion",
    ["The answer is 72.", r"\boxed{72", r"\boxed{}", r"\boxed{72} no wait \boxed{71}"],
)
def test_incorrect_without_a_matching_final_box(completion):
    assert not is_correct(completion, "72")


def test_every_gsm8k_reference_against_itself_and_a_different_number(gsm8k_dir):
    """Plain integers take the exact fast path; `\\text{ apples}` makes math-verify parse them."""
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 7473
    started = time.perf_counter()
    wrongly_judged = []
    for row in rows:
        raw = row["answer"].rsplit("####", 1)[1].strip()  # as written: "1,080"
        reference = reference_from_gsm8k(row["answer"])
        different = str(int(reference) + 1)
        right = [
            rf"so she has $\boxed{{{raw}}}$.",
            rf"\boxed{{\${raw}.00}}",
            rf"\boxed{{{raw}\text{{ apples}}}}",
        ]
        wrong = [rf"so she has $\boxed{{{different}}}$.", rf"\boxed{{{different}\text{{ apples}}}}"]
        wrongly_judged += [(c, reference) for c in right if not is_correct(c, reference)]
        wrongly_judged += [(c, reference) for c in wrong if is_correct(c, reference)]
    seconds = time.perf_counter() - started
    assert wrongly_judged == []
    assert seconds < 60, f"{len(rows)} rows took {seconds:.1f} s"


def test_a_slow_verifier_counts_as_incorrect_within_the_timeout(monkeypatch):
    def slow_verify(*args, **kwargs):
        time.sleep(30)
        return True

    monkeypatch.setattr(math_verify, "verify", slow_verify)
    started = time.perf_counter()
    assert not is_correct(r"\boxed{2}", "3", timeout_s=0.5)
    assert time.perf_counter() - started < 2.0
    assert is_correct(r"\boxed{3}", "3", timeout_s=0.5)  # identical text needs no verifier


def test_a_pathological_expression_counts_as_incorrect_within_the_timeout():
    started = time.perf_counter()
    assert not is_correct(r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=1.0)
    assert time.perf_counter() - started < 3.0
    assert is_correct(r"\boxed{\frac{4}{8}}", "0.5")  # nothing left behind: the next check works


def test_the_alarm_is_disarmed_and_an_outer_alarm_is_kept():
    outer_handler = signal.getsignal(signal.SIGALRM)
    assert is_correct(r"\boxed{\frac{2}{4}}", "0.5")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is outer_handler

    def outer_alarm(signum, frame):
        raise AssertionError("the outer alarm fired early")

    previous = signal.signal(signal.SIGALRM, outer_alarm)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        assert is_correct(r"\boxed{\frac{3}{6}}", "0.5")
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90.0 < remaining <= 100.0
        assert signal.getsignal(signal.SIGALRM) is outer_alarm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_the_timeout_works_off_the_main_thread():
    """Signals are main-thread only: other threads use a helper process, killed on overrun."""
    results = {}

    def check():
        started = time.perf_counter()
        results["pathological"] = is_correct(r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=1.0)
        results["seconds"] = time.perf_counter() - started  # a fresh helper's start included
        results["after"] = is_correct(r"\boxed{\frac{1}{4}}", "25\\%")  # a replacement helper

    thread = threading.Thread(target=check)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert results["pathological"] is False
    assert results["seconds"] < 20
    assert results["after"] is True
