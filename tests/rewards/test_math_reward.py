"""Answer extraction, hand-graded cases, the exact fast path against math-verify, and safety."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from real_lightning.rewards import VerifyResult, math_reward, score_batch, verify
from real_lightning.rewards import math as math_module
from real_lightning.rewards.math import extract_answer, fast_equal, last_boxed

CORRECT = [
    (r"so the answer is \boxed{46}", "46"),
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{\frac{1}{2}}", r"\frac{2}{4}"),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
    (r"first \boxed{3}, on reflection \boxed{4}", "4"),
    (r"\boxed{\frac{a}{b}}", r"\frac{a}{b}"),
    (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    (r"\boxed{142}", "142.0"),
    (r"\boxed{142.0}", "142"),
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{-3}", "-3"),
    (r"$\boxed 7$.", "7"),
    (r"\fbox{12}", "12"),
    (r"\boxed {x^2+1}", "1 + x^2"),
    ("The answer is 42.", "42"),
    ("The final answer is $\\frac{3}{4}$.", "0.75"),
    ("answer: 3/4", r"\frac{3}{4}"),
    ("Answer: 17 apples", "17"),
    ("We count them.\nThere are 1,234 in total", "1234"),
    (r"\boxed{46}", r"\boxed{46}"),
    (r"\boxed{5}", "$5$"),
    (r"\boxed{5}", 5.0),
]
WRONG = [
    (r"\boxed{45}", "46"),
    (r"\boxed{4}, no wait \boxed{3}", "4"),
    (r"\boxed{\frac{1}{3}}", "0.5"),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{12}"),
    (r"\boxed{\text{(B)}}", r"\text{(C)}"),
    (r"\boxed{142.5}", "142.0"),
    ("The answer is 41.", "42"),
    (r"\boxed{x+2}", "x+1"),
]


@pytest.mark.parametrize(("response", "truth"), CORRECT)
def test_correct_answers_score_one(response: str, truth: str) -> None:
    assert verify(response, truth) == VerifyResult(1.0, "correct")
    assert math_reward(response, truth) == 1.0


@pytest.mark.parametrize(("response", "truth"), WRONG)
def test_wrong_answers_score_zero(response: str, truth: str) -> None:
    assert verify(response, truth) == VerifyResult(0.0, "incorrect")


@pytest.mark.parametrize("response", ["", "   ", "I have no idea.", r"\boxed{}", r"truncated \boxed{\frac{1}{2", None])
def test_nothing_to_grade_is_no_answer(response: str | None) -> None:
    assert verify(response, "1") == VerifyResult(0.0, "no_answer")  # type: ignore[arg-type]
    assert math_reward(response, "1") == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("truth", ["", "  ", None])
def test_empty_ground_truth_is_zero_not_an_exception(truth: str | None) -> None:
    assert verify(r"\boxed{1}", truth) == VerifyResult(0.0, "error")  # type: ignore[arg-type]


def test_answer_after_think() -> None:
    response = r"<think>maybe \boxed{5}</think> The answer is \boxed{7}"
    assert math_reward(response, "7") == 1.0
    assert math_reward(response, "7", answer_after_think=True) == 1.0
    assert math_reward(response, "5", answer_after_think=True) == 0.0
    thinking_only = r"<think>it is \boxed{5}</think> Done."
    assert math_reward(thinking_only, "5") == 1.0
    assert verify(thinking_only, "5", answer_after_think=True) == VerifyResult(0.0, "no_answer")
    unfinished = r"<think>it is \boxed{5}"
    assert math_reward(unfinished, "5") == 1.0
    assert verify(unfinished, "5", answer_after_think=True) == VerifyResult(0.0, "no_answer")
    last_think = r"<think>a</think> \boxed{1} <think>b</think> \boxed{2}"
    assert math_reward(last_think, "2", answer_after_think=True) == 1.0


@pytest.mark.parametrize(
    ("response", "lenient", "strict"),
    [
        (r"so \boxed{42}", "correct", "correct"),
        ("The answer is 42.", "correct", "no_answer"),
        ("We get 40 + 2 = 42", "correct", "no_answer"),
        (r"first \boxed{42}, finally The answer is 41", "correct", "correct"),  # a box wins in both modes
        (r"\boxed{41}", "incorrect", "incorrect"),
        (r"\boxed{}", "no_answer", "no_answer"),
        (r"$\fbox{42}$", "correct", "correct"),
    ],
)
def test_strict_boxed_grader_requires_a_box(response: str, lenient: str, strict: str) -> None:
    assert verify(response, "42").status == lenient
    assert verify(response, "42", require_boxed=True).status == strict
    scores = score_batch([response], ["42"], grader="strict_boxed", num_workers=1)
    assert scores.statuses == [strict]


def test_strict_boxed_after_think_is_the_official_rule() -> None:
    """A box inside the reasoning does not count; one after ``</think>`` does; no ``</think>``: no answer."""
    cases = [r"<think>\boxed{42}</think> it is 42", r"<think>so 41</think> \boxed{42}", r"<think>\boxed{42}"]
    scores = score_batch(cases, ["42"] * 3, grader="strict_boxed", answer_after_think=True, num_workers=1)
    assert scores.statuses == ["no_answer", "correct", "no_answer"]
    lenient = score_batch(cases, ["42"] * 3, answer_after_think=True, num_workers=1)
    assert lenient.statuses == ["correct", "correct", "no_answer"]


def test_grader_is_checked() -> None:
    with pytest.raises(ValueError, match="grader must be one of lenient, strict_boxed, got 'boxed'"):
        score_batch(["x"], ["1"], grader="boxed")
    with pytest.raises(ValueError, match="applies to the math reward only"):
        score_batch(["x"], ["1"], grader="strict_boxed", reward_fn="tests.rewards.helpers:exact_reward")


def test_extraction() -> None:
    assert last_boxed(r"\boxed{\frac{a}{b}} and \boxed{\left\{1, 2\right\}}") == r"\left\{1, 2\right\}"
    assert last_boxed(r"\boxed{a} \boxed{b") is None
    assert extract_answer(r"\boxed{1} then \fbox{2}") == "2"
    assert extract_answer("The answer is: **12**") == "12"
    assert extract_answer("So the answer is $x = 3$. Check: fine") == "x = 3"
    assert extract_answer("The answer is 12 because 3 * 4 = 12.") == "12"
    assert extract_answer("So we get\n-7") == "-7"
    assert extract_answer("So we get\nx") is None


def test_fast_path_is_exact_and_defers_on_non_numbers() -> None:
    assert fast_equal("46", "46.000") is True
    assert fast_equal("-3", "3") is False
    assert fast_equal("1,000", "1000") is True
    assert fast_equal("0.1", "0.10") is True
    assert fast_equal("0.25", "0.2500001") is None  # more than 6 decimals: math-verify rounds, so it decides
    assert fast_equal("0,5", "0.5") is None  # a decimal comma to math-verify
    assert fast_equal("+1,000", "1000") is None  # a set to math-verify
    assert fast_equal(r"\frac{1}{2}", "0.5") is None


def test_fast_path_skips_math_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(answer: str, ground_truth: str) -> str:
        raise AssertionError("the fast path should decide plain numbers")

    monkeypatch.setattr(math_module, "_symbolic_status", unreachable)
    assert verify(r"\boxed{142.0}", "142") == VerifyResult(1.0, "correct")
    assert verify("The answer is 1,001", "1000") == VerifyResult(0.0, "incorrect")


def _random_number(rng: random.Random) -> str:
    sign = rng.choice(["", "", "-", "+"])
    if rng.random() < 0.5:
        n = rng.choice([rng.randint(0, 20), rng.randint(0, 10**6), rng.randint(0, 10**25)])
        text = f"{n:,}" if rng.random() < 0.3 else str(n)
        return sign + ("0" + text if rng.random() < 0.1 else text)
    whole = rng.choice([0, rng.randint(0, 999), rng.randint(0, 10**9)])
    decimals = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 8)))
    return f"{sign}{f'{whole:,}' if rng.random() < 0.2 else whole}.{decimals}"


def _variant(rng: random.Random, text: str) -> str:
    """Often the same value written differently, sometimes a near miss, sometimes another number."""
    r = rng.random()
    if r < 0.15:
        return text
    if r < 0.35:
        return text + "0" if "." in text else text + ".0"
    if r < 0.45:
        return text + "00" if "." in text else text + ".000000"
    if r < 0.55:
        return text.replace(",", "")
    if r < 0.65:
        return text.lstrip("+-")
    if r < 0.75:
        return "0" + text.lstrip("+-")
    if r < 0.85 and "." in text:
        return text.rstrip("0123456789") + str(rng.randint(0, 9))
    return _random_number(rng)


def test_fast_path_agrees_with_math_verify() -> None:
    rng = random.Random(0)
    decided = equal = 0
    for _ in range(400):
        answer = _random_number(rng)
        truth = _variant(rng, answer)
        fast = fast_equal(answer, truth)
        if fast is None:
            continue
        decided += 1
        equal += fast
        symbolic = math_module._symbolic_status(answer, truth)
        assert fast == (symbolic == "correct"), (answer, truth, symbolic)
    assert decided > 250 and 50 < equal < decided - 50  # both outcomes well represented


@pytest.mark.parametrize(
    "template",
    [
        r"\boxed{{__import__('os').system('touch {path}')}}",
        "The answer is __import__('os').system('touch {path}')",
        r"\boxed{{exec(\"open('{path}', 'w')\")}}",
        "answer: eval(\"__import__('os').system('touch {path}')\")",
    ],
)
def test_model_text_is_never_evaluated(template: str, tmp_path: Path) -> None:
    path = tmp_path / "pwned"
    response = template.format(path=path)
    assert math_reward(response, "0") == 0.0
    assert score_batch([response, response], ["0", "1"], num_workers=2).rewards == [0.0, 0.0]
    assert not path.exists()
