"""Final-answer extraction and dataset references."""

from __future__ import annotations

import pytest

from treerpo.errors import BadInputError
from treerpo.scoring.answers import extract_boxed, reference_from_gsm8k, reference_from_solution


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is $\boxed{72}$.", "72"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{3}, then \boxed{4}, finally \boxed{5}", "5"),
        (r"\boxed{\boxed{7}}", "7"),
        (r"\boxed{ 12 }", "12"),
        (r"\boxed {12}", "12"),
        (r"the answer is \boxed 5", "5"),
        (r"the answer is \boxed 5.", "5"),
        (r"$\boxed 42$", "42"),
        (r"\fbox{9}", "9"),
        (r"\boxed{3} and then \fbox{8}", "8"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{(0, 1]}", "(0, 1]"),
        (r"\boxed{[1, \infty\}}", r"[1, \infty\}"),
        (r"\boxed{\text{\$}18}", r"\text{\$}18"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box at all: 72",
        "",
        r"\boxed{}",
        r"\boxed{   }",
        r"\boxed{\frac{1}{2}",  # cut off by the budget
        r"\boxed{3} and later \boxed{4",  # the last box is unbalanced: no fallback to 3
        r"\boxed",
        r"\boxed5",
        r"\boxedanswer{5}",
    ],
)
def test_extract_boxed_finds_no_answer(text):
    assert extract_boxed(text) is None


def test_reference_from_gsm8k():
    answer = "She has 1,000 + 80 = <<1000+80=1080>>1,080 apples.\n#### 1,080"
    assert reference_from_gsm8k(answer) == "1080"
    assert reference_from_gsm8k("x\n#### -3 ") == "-3"
    with pytest.raises(BadInputError, match="####"):
        reference_from_gsm8k("no marker 12")
    with pytest.raises(BadInputError, match="empty"):
        reference_from_gsm8k("#### ")


def test_reference_from_solution():
    solution = r"We get $x = \boxed{3}$ or, simplified, $\boxed{\dfrac{3}{4}}$."
    assert reference_from_solution(solution) == r"\dfrac{3}{4}"
    with pytest.raises(BadInputError, match="boxed"):
        reference_from_solution("The answer is 3.")
