r"""Is a completion's final answer mathematically equal to the reference? (DESIGN step 7)

`is_correct(completion, reference)`:

1. The answer is the content of the completion's last `\boxed{…}` (`answers.extract_boxed`); no
   answer means incorrect.
2. An answer that is textually identical to the reference is correct without any parsing, and
   two plain integers (`1,080`, `\$18`, `18.0`, `-0`) are compared exactly as integers: what
   math-verify concludes for them, about a hundred times faster (GSM8K answers are integers),
   and exact beyond math-verify's 15 significant digits.
3. Otherwise both are parsed by `math-verify`, each wrapped as `$\boxed{…}$` so its LaTeX
   normalisation applies (thousands separators, `\$`, `\%`, `\text{units}`, `\dfrac`, intervals,
   sets…), and compared with `math_verify.verify(gold=reference, target=answer)`: numerically
   (`0.5` = `\frac{1}{2}`, `50\%` = `50`, `18.0` = `18`), then symbolically.
   Two additions to math-verify's normalisation: a plain number followed by plain words
   (`18 dollars`, `3 hours`) is read as the number (math-verify alone reads the words as a product
   of single-letter symbols), and a thin space between digit groups (`1\,000`) is a thousands
   separator.

`answers_equivalent(a, b)` compares two extracted answers the same way, symmetrically (eval's
majority voting groups votes with it: `18`, `18.0`, `\$18` are one answer).

Timeouts. A pathological answer (`9^{9^{9^9}}`, an integral sympy cannot do) can make sympy run
for minutes, and math-verify's own timeout uses `signal.alarm` in whatever thread calls it (it
raises ValueError off the main thread). We turn it off (`parsing_timeout=None`,
`timeout_seconds=None`) and run the whole parse-and-compare under our own deadline:

- on the main thread of a process (the CLI, and every `ProcessPoolExecutor` worker, which runs its
  tasks on its main thread): an ITIMER_REAL alarm whose handler raises `VerifyTimeout`, a
  `BaseException`, so math-verify's broad `except Exception` blocks cannot swallow it and go on;
- on any other thread, where signals cannot be used: in a spawned helper process that is killed
  when the deadline passes (callers from several threads take turns).

A comparison that runs past its deadline counts as incorrect: that is the one failure this module
turns into a verdict. Verdicts (timeouts included) and parses are cached per process, so the
reference of a tree is parsed once for all its leaves and a pathological answer costs its timeout
once.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import multiprocessing.pool
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import math_verify
from math_verify import ExprExtractionConfig, LatexExtractionConfig

from treerpo.scoring.answers import extract_boxed

DEFAULT_TIMEOUT_S = 5.0
"""Seconds one comparison (both parses and the verification) may take before it counts as wrong."""

_EXTRACTION_CONFIG = (
    LatexExtractionConfig(boxed_match_priority=0),
    ExprExtractionConfig(),
)

# `18 dollars`, `-3.5 hours`, `\$1,200 per month`: a number and plain words (2+ letters each).
# Words that are maths, not units, keep the whole answer for math-verify.
_NUMBER_WITH_WORDS = re.compile(
    r"(?P<number>[-+]?(?:\\?\$)?\s*\d[\d,]*(?:\.\d+)?)(?P<words>(?:\s+[A-Za-z]{2,}\.?)+)"
)
# An integer as answers write it: sign, optional dollar, thousands separators, optional `.0`.
_PLAIN_INTEGER = re.compile(
    r"(?P<sign>[-+]?)\s*(?:\\?\$)?\s*(?P<digits>\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)(?:\.0*)?"
)
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_MATH_WORDS = frozenset(
    {
        "pi",
        "sin",
        "cos",
        "tan",
        "cot",
        "sec",
        "csc",
        "log",
        "ln",
        "exp",
        "sqrt",
        "mod",
        "and",
        "or",
        "inf",
        "infty",
        "infinity",
    }
)


class VerifyTimeout(BaseException):
    """A comparison ran past its deadline.

    A BaseException on purpose: math-verify catches `Exception` around its parsing and comparison
    steps and would otherwise carry on with the next strategy after our alarm.
    """


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off; ours replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger_name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger_name).addFilter(_DropTimeoutDisabledWarning())


def is_correct(completion: str, reference: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    r"""True when the last `\boxed{}` of `completion` equals `reference` mathematically.

    False when there is no boxed answer, when they differ, or when the comparison takes longer
    than `timeout_s` seconds.
    """
    answer = extract_boxed(completion)
    if answer is None:
        return False
    return _verdict(reference.strip(), answer, timeout_s)


def answers_equivalent(a: str, b: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when two extracted answers are mathematically equal (symmetric in `a` and `b`)."""
    a, b = a.strip(), b.strip()
    gold, target = sorted((a, b))  # math-verify is not symmetric for equations: fix the order
    return _verdict(gold, target, timeout_s)


def clear_caches() -> None:
    """Forget cached parses and verdicts (tests that swap the verifier use it)."""
    _verdict.cache_clear()
    _parse.cache_clear()


@functools.lru_cache(maxsize=1 << 16)
def _verdict(gold: str, target: str, timeout_s: float) -> bool:
    if gold == target:
        return bool(gold)
    if not gold or not target:
        return False
    gold_integer, target_integer = _plain_integer(gold), _plain_integer(target)
    if gold_integer is not None and target_integer is not None:
        return gold_integer == target_integer
    try:
        return _within_deadline(_compare, (gold, target), seconds=timeout_s)
    except VerifyTimeout:
        return False


def _compare(gold: str, target: str) -> bool:
    return math_verify.verify(
        list(_parse(gold)), list(_parse(target)), timeout_seconds=None, raise_on_error=False
    )


@functools.lru_cache(maxsize=1 << 16)
def _parse(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of one extracted answer: (sympy object, its normalised string)."""
    return tuple(
        math_verify.parse(
            f"$\\boxed{{{_normalise(answer)}}}$",
            extraction_config=_EXTRACTION_CONFIG,
            parsing_timeout=None,
        )
    )


def _plain_integer(answer: str) -> str | None:
    """Canonical digits of a plain integer (`-1080` for `-1,080.0`), else None.

    Kept as text: int() refuses numbers over 4,300 digits, and a model can write one.
    """
    match = _PLAIN_INTEGER.fullmatch(_normalise(answer))
    if match is None:
        return None
    digits = match.group("digits").replace("{,}", "").replace(",", "").lstrip("0") or "0"
    return f"-{digits}" if match.group("sign") == "-" and digits != "0" else digits


def _normalise(answer: str) -> str:
    answer = _THIN_SPACE_THOUSANDS.sub("", answer)
    match = _NUMBER_WITH_WORDS.fullmatch(answer)
    if match is None:
        return answer
    words = {word.rstrip(".").lower() for word in match.group("words").split()}
    return answer if words & _MATH_WORDS else match.group("number")


def _within_deadline(fn: Callable[..., bool], args: tuple[Any, ...], *, seconds: float) -> bool:
    """`fn(*args)`, or VerifyTimeout when it runs past `seconds`."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _call_with_alarm(fn, args, seconds)
    return _HELPER.call(fn, args, seconds)


def _call_with_alarm(fn: Callable[..., bool], args: tuple[Any, ...], seconds: float) -> bool:
    def on_alarm(signum: int, frame: object) -> None:
        raise VerifyTimeout(f"comparison ran past {seconds:g} s")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_delay > 0:  # someone else's alarm was pending: give it back what is left of it
            remaining = outer_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-6))


def _warm_up() -> None:
    """Run once in a fresh helper so that imports are not charged to the first deadline."""
    _compare("1", "1")


class _HelperProcess:
    """A spawned process that runs comparisons for callers off the main thread.

    Spawned rather than forked: the caller may hold threads (torch, a web server) that a fork would
    copy in an inconsistent state. Killed and replaced when a comparison overruns its deadline.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: multiprocessing.pool.Pool | None = None

    def call(self, fn: Callable[..., bool], args: tuple[Any, ...], seconds: float) -> bool:
        with self._lock:
            if self._pool is None:
                self._pool = multiprocessing.get_context("spawn").Pool(processes=1)
                self._pool.apply(_warm_up)
            pending = self._pool.apply_async(fn, args)
            try:
                return pending.get(timeout=seconds)
            except multiprocessing.TimeoutError:
                self._pool.terminate()
                self._pool = None
                raise VerifyTimeout(f"comparison ran past {seconds:g} s") from None

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None


_HELPER = _HelperProcess()
atexit.register(_HELPER.close)
