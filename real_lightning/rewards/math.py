r"""Rule-based math reward: final-answer extraction, an exact numeric fast path, math-verify symbolic equivalence.

The graded answer is the content of the last ``\boxed{…}`` (or ``\fbox{…}``, ``\boxed x``) of the response, else a
plain final answer ("The answer is 42", "answer: 3/4", else the last number on the last line). When both it and the
ground truth are plain numbers they are compared exactly in Python; otherwise both are parsed as LaTeX by
math-verify (``LatexExtractionConfig`` only: model text is never evaluated as Python) and compared symbolically
under a wall-clock budget that holds from any thread (see :mod:`real_lightning.rewards.timeouts`).

Examples:
    >>> math_reward("so the answer is \\boxed{\\frac{2}{4}}", "0.5")
    1.0
    >>> verify("I am not sure.", "7")
    VerifyResult(reward=0.0, status='no_answer')
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from math_verify import LatexExtractionConfig, parse
from math_verify import verify as mv_verify

from real_lightning.rewards.timeouts import Outcome, run_bounded

#: Every status a :class:`VerifyResult` can carry.
STATUSES = ("correct", "incorrect", "no_answer", "timeout", "error")
#: Modules a worker process imports before its first symbolic check.
WORKER_PRELOAD = ("real_lightning.rewards.math",)

_LATEX_ONLY = (LatexExtractionConfig(),)
_THINK_END = "</think>"
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_RE = re.compile(r"answer\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)
_MATH_ENV_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_NUMBER = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_LAST_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}")
_NUMBER_THEN_WORDS_RE = re.compile(rf"({_NUMBER})\s+[A-Za-z]{{2,}}")
# A plain number as math-verify reads it: digits with an optional sign, or "," thousands groups with an optional "-",
# then optional decimals. Left to math-verify: "0,5" (a decimal comma to it) and "+1,000" (a set to it).
_PLAIN_NUMBER_RE = re.compile(r"(?:-?[1-9]\d{0,2}(?:,\d{3})+|[+-]?\d+)(?:\.(\d+))?")
# math-verify rounds floats to 6 decimals before comparing; longer decimals are left to it.
_MAX_FAST_DECIMALS = 6
_MAX_FAST_DIGITS = 15


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns that its own timeout is off; this module enforces the budget itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


@dataclass(frozen=True)
class VerifyResult:
    """Reward of one response and why.

    Attributes:
        reward: 1.0 if the final answer equals the ground truth, else 0.0.
        status: one of :data:`STATUSES`: ``"correct"``, ``"incorrect"``, ``"no_answer"`` (nothing extractable or an
            empty response), ``"timeout"`` (the budget ran out) or ``"error"`` (an exception in math-verify, or an
            empty ground truth).
    """

    reward: float
    status: str


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def _braced(text: str, open_index: int) -> str | None:
    """Content of the brace group opening at ``text[open_index] == "{"``; ``None`` if it never closes."""
    depth = 0
    i = open_index
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{…}``/``\fbox{…}`` (balanced braces) or ``\boxed x`` of ``text``.

    Returns:
        The stripped content, or ``None`` if there is no box, the last box never closes, or it is empty.
    """
    match = _last_match(_BOX_RE, text)
    if match is None:
        return None
    rest = text[match.end() :]
    stripped = rest.lstrip(" \t")
    if stripped.startswith("{"):
        content = _braced(stripped, 0)
    else:  # "\boxed 42$": up to the closing $ or the end of the line
        content = re.split(r"[$\n]", stripped, maxsplit=1)[0].rstrip(" .")
    if content is None or not content.strip():
        return None
    return content.strip()


def _clean_plain(candidate: str) -> str:
    """Trim a plain-text answer: its first math environment if any, else up to the end of the sentence."""
    candidate = candidate.strip().strip("*").strip()
    env = _MATH_ENV_RE.match(candidate)
    if env is not None:
        return next(g for g in env.groups() if g is not None).strip()
    sentence_end = _SENTENCE_END_RE.search(candidate)
    if sentence_end is not None:
        candidate = candidate[: sentence_end.start()]
    number_then_words = _NUMBER_THEN_WORDS_RE.match(candidate)  # "42 apples", "7 because ..."
    if number_then_words is not None:
        return number_then_words.group(1)
    return candidate.strip().rstrip(".,;:!").strip().strip("*").strip()


def extract_answer(text: str, *, require_boxed: bool = False) -> str | None:
    r"""The final answer of a response.

    In order: the content of the last ``\boxed{…}``; the rest of the line after the last "answer is" / "answer:";
    the last number (or ``a/b``) on the last non-empty line. With ``require_boxed`` only the first: no box, no
    answer (the official REAL grader, ``grader: strict_boxed``).

    Args:
        text: the response (or the part of it to grade).
        require_boxed: only a ``\boxed{…}`` answer counts.

    Returns:
        The answer as a string, or ``None`` if nothing is extractable.

    Examples:
        >>> extract_answer(r"first \boxed{1}, then \boxed{\frac{a}{b}}")
        '\\frac{a}{b}'
        >>> extract_answer("So the answer is $3/4$.")
        '3/4'
        >>> extract_answer("We add them.\nTotal: 1,000 apples")
        '1,000'
    """
    if _BOX_RE.search(text):
        return last_boxed(text)
    if require_boxed:
        return None
    match = _last_match(_ANSWER_RE, text)
    if match is not None:
        answer = _clean_plain(text[match.end() :].split("\n", 1)[0])
        if answer:
            return answer
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        numbers = _LAST_NUMBER_RE.findall(lines[-1])
        if numbers:
            return numbers[-1]
    return None


def _clean_ground_truth(ground_truth: object) -> str:
    r"""Ground truth as a LaTeX string: ``str()`` of non-strings (``142.0``), unboxed, outer ``$…$`` removed."""
    text = str(ground_truth).strip()
    if _BOX_RE.search(text):
        text = last_boxed(text) or ""
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def _plain_number(text: str) -> Decimal | None:
    """``text`` as an exact :class:`~decimal.Decimal` if it is a plain number the fast path may decide, else None."""
    match = _PLAIN_NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    decimals = match.group(1)
    if decimals is not None:
        digits = sum(c.isdigit() for c in text)
        if len(decimals) > _MAX_FAST_DECIMALS or digits > _MAX_FAST_DIGITS:
            return None
    return Decimal(text.replace(",", ""))


def fast_equal(answer: str, ground_truth: str) -> bool | None:
    """Exact comparison of two plain numbers (``46``, ``-3``, ``142.0``, ``1,000``, ``0.25``) without math-verify.

    Returns:
        Whether they are equal, or ``None`` if either is not a plain number this path decides (then math-verify does).

    Examples:
        >>> fast_equal("142.0", "142"), fast_equal("1,000", "1000"), fast_equal("x", "1")
        (True, True, None)
    """
    a, b = _plain_number(answer.strip()), _plain_number(ground_truth.strip())
    if a is None or b is None:
        return None
    return a == b


def _parse_latex(text: str) -> list[object]:
    return parse(
        text,
        extraction_config=_LATEX_ONLY,
        fallback_mode="first_match",
        parsing_timeout=None,  # the budget is enforced by the caller (signal or worker process)
        raise_on_error=True,
    )


@lru_cache(maxsize=1024)
def _parse_ground_truth(ground_truth: str) -> tuple[object, ...]:
    """math-verify parse of a ground truth, boxed; wrapped in ``$…$`` instead if boxing yields no expression."""
    parsed = _parse_latex("\\boxed{" + ground_truth + "}")
    if all(isinstance(p, str) for p in parsed):
        in_dollars = _parse_latex("$" + ground_truth + "$")
        if any(not isinstance(p, str) for p in in_dollars):
            return tuple(in_dollars)
    return tuple(parsed)


def _symbolic_status(answer: str, ground_truth: str) -> str:
    """math-verify equivalence of an extracted answer and a cleaned ground truth, unbounded in time.

    Returns:
        ``"correct"``, ``"incorrect"``, ``"no_answer"`` or ``"error"`` (math-verify raised).
    """
    try:
        gold = _parse_ground_truth(ground_truth)
        prediction = _parse_latex("\\boxed{" + answer + "}")
    except Exception:
        return "error"
    if not gold:
        return "error"
    if not prediction:
        return "no_answer"
    errored = False
    for g in gold:
        for p in prediction:
            try:
                if mv_verify(g, p, timeout_seconds=None, raise_on_error=True):
                    return "correct"
            except Exception:
                errored = True
    return "error" if errored else "incorrect"


def answer_after_think_text(text: str) -> str | None:
    """The text after the last ``</think>``, or ``None`` when there is none (the reasoning never ended).

    Examples:
        >>> answer_after_think_text("<think>a</think> 1 <think>b</think> 2")
        ' 2'
        >>> answer_after_think_text("<think>unfinished") is None
        True
    """
    cut = text.rfind(_THINK_END)
    return None if cut < 0 else text[cut + len(_THINK_END) :]


def prepare(
    response: str, ground_truth: object, *, answer_after_think: bool = False, require_boxed: bool = False
) -> VerifyResult | tuple[str, str]:
    """Everything of :func:`verify` that needs no budget: extraction and the exact fast path.

    Returns:
        The final :class:`VerifyResult` when decided here, else ``(answer, ground_truth)`` for
        ``_symbolic_status``.
    """
    text = response or ""
    if answer_after_think:
        after = answer_after_think_text(text)
        if after is None:
            return VerifyResult(0.0, "no_answer")
        text = after
    truth = _clean_ground_truth(ground_truth) if ground_truth is not None else ""
    if not truth:
        return VerifyResult(0.0, "error")
    answer = extract_answer(text, require_boxed=require_boxed) if text.strip() else None
    if answer is None:
        return VerifyResult(0.0, "no_answer")
    equal = fast_equal(answer, truth)
    if equal is not None:
        return VerifyResult(1.0, "correct") if equal else VerifyResult(0.0, "incorrect")
    return answer, truth


def result_from_outcome(outcome: Outcome) -> VerifyResult:
    """Map a bounded ``_symbolic_status`` call to a :class:`VerifyResult`."""
    if outcome.status == "ok" and outcome.value in STATUSES:
        return VerifyResult(1.0 if outcome.value == "correct" else 0.0, outcome.value)
    return VerifyResult(0.0, "timeout" if outcome.status == "timeout" else "error")


def check_timeout(timeout_s: float) -> None:
    """Raise ``ValueError`` unless ``timeout_s`` is a positive, finite number of seconds."""
    if not 0 < timeout_s < math.inf:
        raise ValueError(f"timeout_s must be a positive, finite number of seconds, got {timeout_s!r}")


def verify(
    response: str,
    ground_truth: str,
    *,
    answer_after_think: bool = False,
    timeout_s: float = 5.0,
    require_boxed: bool = False,
) -> VerifyResult:
    r"""Grade a response's final answer against the ground truth, with the reason.

    Args:
        response: the model's response.
        ground_truth: the reference answer (LaTeX or a number, e.g. ``\frac{1}{2}``, ``142.0``).
        answer_after_think: grade only the text after the last ``</think>`` (none: ``no_answer``), as the REAL grader.
        timeout_s: wall-clock budget of the symbolic comparison, in seconds; overrunning gives ``"timeout"``.
        require_boxed: only a ``\boxed{…}`` answer counts (none: ``no_answer``), as the REAL grader.

    Returns:
        The :class:`VerifyResult`.
    """
    check_timeout(timeout_s)
    prepared = prepare(response, ground_truth, answer_after_think=answer_after_think, require_boxed=require_boxed)
    if isinstance(prepared, VerifyResult):
        return prepared
    return result_from_outcome(run_bounded(_symbolic_status, prepared, timeout_s=timeout_s, preload=WORKER_PRELOAD))


def math_reward(
    response: str,
    ground_truth: str,
    *,
    answer_after_think: bool = False,
    timeout_s: float = 5.0,
    require_boxed: bool = False,
) -> float:
    """1.0 if the response's final answer equals the ground truth, else 0.0 (see :func:`verify`)."""
    kwargs = {"answer_after_think": answer_after_think, "timeout_s": timeout_s, "require_boxed": require_boxed}
    return verify(response, ground_truth, **kwargs).reward
