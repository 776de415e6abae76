"""Answer extraction and grading for GSM8K and MATH.

Extraction finds every answer statement in the text, each with its position, and the LAST statement that
has an answer wins, whatever its marker: a solution that revises itself ("The answer is: 3 ... wait ...
\\boxed{5}") ends with its final answer. Markers and what "has an answer" means:

* GSM8K: ``#### N`` (exactly four ``#``) with a number right after it (``#### 18``, ``####18``,
  ``#### $1,200``); a Markdown heading is not an answer (``#### Step 1: ...``, and an enumerated heading
  ``#### 1. Setup`` / ``#### 2) ...`` / ``#### 3: ...``). "The answer is: N" / "The answer is N"
  (MetaMathQA) and "The final answer is N" (Minerva) with a number right after the marker (after ``$``,
  ``**`` or ``\\(`` decoration), so "The answer is below" is no answer. ``\\boxed{...}`` / ``\\fbox{...}``
  with a number inside. If no marker has an answer: the last number in the text. Numbers are normalised
  (thousands commas, ``$``, trailing units/words/periods, ``12.0`` -> ``12``, negatives, decimals,
  ``3/4`` and ``\\frac{3}{4}`` fractions) and compared numerically.
* MATH: ``\\boxed{...}`` / ``\\fbox{...}`` with non-empty content (brace matching, so nested braces work);
  Minerva "Final Answer: The final answer is X" and MetaMathQA "The answer is: X" where X looks like math:
  it starts with a digit, a LaTeX command, ``$``, a bracket, a sign or another math symbol, or is a single
  letter variable or choice (``x = 3``, ``C``). A bare English word is not an answer ("The answer is below",
  "the answer is that we ..."); MATH writes word answers as ``\\text{odd}``, which counts. ``####`` is not
  a MATH marker. There is deliberately no last-number fallback for MATH: many MATH answers are not
  numbers, and a stray number from unfinished reasoning is not a final answer. Such predictions are
  graded wrong and counted as unparsed. Equivalence is a normalised string comparison first, then
  ``math_verify.verify(parse(gold), parse(pred))``.

After a "The (final) answer is" / ``####`` marker the statement ends at the line end and at the first
sentence-ending period (a ``.`` followed by whitespace or the end, outside braces), so trailing prose is
dropped ("The answer is: $\\frac{2}{3}$. Let me know if ..." -> ``\\frac{2}{3}``) while decimals
(``2.5``) and periods inside braces (``\\text{Mr. Smith}``) stay. Minerva's "I hope it is correct",
Markdown bold ``**`` and a ``$...$`` wrapper are removed, and a ``\\boxed{}`` inside the statement gives
its content.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal

from harness.grading.boxed import BOX_RE, box_content, last_boxed, walk

Task = Literal["gsm8k", "math"]

TASKS: tuple[str, ...] = ("gsm8k", "math")

# Seconds math-verify may spend parsing one expression / comparing one pair (signal.alarm based, so it
# is only enabled in the main thread; math-verify refuses to use it elsewhere).
MATH_VERIFY_TIMEOUT_S = 2
# Longer extracted answers are not sent to math-verify (garbage; parsing them would only burn the timeout).
MATH_VERIFY_MAX_CHARS = 1000

# Digits (or a power of ten) past which a number is compared as Decimal text, never as a Python int: Python refuses
# to convert more than 4,300 digits, and 10**999999 is not worth building to find it unequal to 1.
HUGE_DIGITS = 1000
# Relative tolerance for comparing numbers of which at least one is not an integer (integers: exact).
REL_TOL = Fraction(1, 10**6)


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one prediction: ``extracted`` is None when no final answer was found."""

    correct: bool
    extracted: str | None


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


_HOPE_RE = re.compile(r"\s*I hope it is correct\.?\s*$", re.IGNORECASE)
# MetaMathQA "The answer is[:]" and Minerva "The final answer is"; not "the answer isn't".
_ANSWER_IS_RE = re.compile(r"\b(?:the|final)\s+answer\s+is(?![\w'])\s*:?\s*", re.IGNORECASE)
# How a MATH answer starts: a digit, LaTeX, ``$``, a bracket, a sign or other math symbol, or a lone
# letter (``x = 3``, ``C``) that does not start a sentence ("a bit tricky", "I think").
_MATH_START_RE = re.compile(r"[\d\\$({\[|<>+\-\u2212=\u221a\u221e\u03c0]|\.\d|[a-zA-Z](?![a-zA-Z])(?!\s+[a-zA-Z]{2})")


def _sentence_end(seg: str) -> int:
    """Index of the first period followed by whitespace or the end outside braces (len(seg) if none).

    A decimal point is followed by a digit, and LaTeX such as ``\\text{Mr. Smith}`` has its period inside
    braces, so neither ends the statement.
    """
    for i, ch, depth in walk(seg):
        if ch == "." and depth <= 0 and (i + 1 == len(seg) or seg[i + 1].isspace()):
            return i
    return len(seg)


def _statement(text: str, start: int) -> str:
    """The answer stated after a marker that ends at ``start`` (see the module docstring).

    The rest of the line up to the first sentence end, without Minerva's "I hope it is correct", Markdown bold
    or a ``$...$`` wrapper; a ``\\boxed{}`` in it gives its content.
    """
    line_end = text.find("\n", start)
    seg = _HOPE_RE.sub("", text[start : line_end if line_end >= 0 else len(text)])
    seg = seg[: _sentence_end(seg)].strip().strip("*").strip()
    if len(seg) >= 2 and seg.startswith("$") and seg.endswith("$"):
        seg = seg.strip("$").strip()
    boxed = last_boxed(seg)
    if boxed is not None:
        seg = boxed
    return seg.rstrip(".").strip()


def _last_stated(found: list[tuple[int, str | None]]) -> str | None:
    """Answer of the last-starting statement among ``(position, answer)`` pairs that have an answer."""
    stated = [(pos, answer) for pos, answer in found if answer is not None]
    return max(stated, key=lambda item: item[0])[1] if stated else None


# --------------------------------------------------------------------------------------------------
# GSM8K numbers
# --------------------------------------------------------------------------------------------------

_NUM_RE = re.compile(
    r"(?<![\w.])(?P<sign>[-\u2212])?\$?"
    r"(?:(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<dec>\.\d+)?|(?P<bare>\.\d+))"
    r"(?P<exp>[eE][-+]?\d+)?"
    r"(?:\s?/\s?(?P<den>\d+)(?![\d.]))?"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*)\}\s*\{\s*([^{}]*)\}")


def _prep_numeric(text: str) -> str:
    """Remove LaTeX noise that hides numbers (``1{,}000``, ``\\$``, ``\\frac{a}{b}`` -> ``a/b``)."""
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\$", "$")
    text = text.replace("\\left", "").replace("\\right", "")
    return _LATEX_FRAC_RE.sub(r"\1/\2", text)


def _canonical_number(m: re.Match[str]) -> str | None:
    """Canonical string for a number match: ``12``, ``-3``, ``2.5``, ``3/4``, ``2e3`` -> ``2000``; a number too long
    to write out (``HUGE_DIGITS``) in Decimal's normalised scientific form (``1E+999999``), equal for equal values."""
    int_part = (m.group("int") or "0").replace(",", "")
    dec = m.group("dec") or m.group("bare") or ""
    exp, den = m.group("exp") or "", m.group("den")
    if len(int_part) + len(dec) > HUGE_DIGITS or (exp and abs(int(exp[1:])) > HUGE_DIGITS):
        if den is not None:
            return None
        with localcontext() as ctx:  # exact: normalize() rounds to the context's precision
            ctx.prec = len(int_part) + len(dec) + 5
            return str(Decimal(("-" if m.group("sign") else "") + int_part + dec + exp).normalize())
    try:
        value = Fraction(int_part + dec + exp)
        if den is not None:
            if int(den) == 0:
                return None
            value /= int(den)
    except ValueError:  # more digits than Python's int/str conversion limit
        return None
    if m.group("sign"):
        value = -value
    return _format_fraction(value, as_fraction=den is not None)


def _format_fraction(value: Fraction, as_fraction: bool) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    if as_fraction:
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:  # exact: a non-fraction value comes from a terminating decimal
        ctx.prec = len(str(value.numerator)) + len(str(value.denominator)) + 5
        text = format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")
    return text


def _first_number(text: str) -> str | None:
    for m in _NUM_RE.finditer(_prep_numeric(text)):
        num = _canonical_number(m)
        if num is not None:
            return num
    return None


def _last_number(text: str) -> str | None:
    for m in reversed(list(_NUM_RE.finditer(_prep_numeric(text)))):
        num = _canonical_number(m)
        if num is not None:
            return num
    return None


# ``####`` not part of a longer run of ``#``, and not an enumerated Markdown heading (``#### 1. Setup``).
_GSM8K_MARK_RE = re.compile(r"(?<!#)####(?!#)(?!\s*\d+[.:)]\s+[a-zA-Z])")
# Decoration allowed between a marker and its number: ``$``, Markdown bold, ``\\(`` / ``\\[``.
_LEAD_DECOR_RE = re.compile(r"^(?:\s|\*|\$|\\[(\[])+")


def _leading_number(seg: str) -> str | None:
    """The number ``seg`` starts with (after decoration); None if it starts with anything else."""
    m = _NUM_RE.match(_LEAD_DECOR_RE.sub("", _prep_numeric(seg)))
    return _canonical_number(m) if m else None


def _gsm8k_structured(text: str) -> str | None:
    """GSM8K answer of the last marker (``####``, "The answer is", ``\\boxed``) with a number; None if none."""
    found: list[tuple[int, str | None]] = []
    for pattern in (_GSM8K_MARK_RE, _ANSWER_IS_RE):
        found += [(m.start(), _leading_number(_statement(text, m.end()))) for m in pattern.finditer(text)]
    for m in BOX_RE.finditer(text):
        content = box_content(text, m.end())
        found.append((m.start(), _first_number(content) if content else None))
    return _last_stated(found)


def _to_fraction(text: str) -> Fraction | None:
    m = _NUM_RE.fullmatch(_prep_numeric(text).strip())
    if m is None:
        num = _first_number(text)
        if num is None:
            return None
        m = _NUM_RE.fullmatch(num)
        if m is None:
            return None
    num = _canonical_number(m)
    if num is None or "E" in num or len(num) > HUGE_DIGITS:  # huge: compared as canonical text by the caller
        return None
    return Fraction(num)


def _numbers_close(a: Fraction, b: Fraction) -> bool:
    """Exact for two integers, else within ``REL_TOL`` relative difference."""
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _gsm8k_equivalent(pred: str, gold: str) -> bool:
    a, b = _to_fraction(pred), _to_fraction(gold)
    if a is None or b is None:
        return pred.strip() != "" and pred.strip() == gold.strip()
    return _numbers_close(a, b)


# --------------------------------------------------------------------------------------------------
# MATH normalisation
# --------------------------------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_UNIT_TAIL_RE = re.compile(
    r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z\s.]*\}(?:\^\{?\d\}?)?\s*$"
)
_SQRT_RE = re.compile(r"\\sqrt\s*(\w)")
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_SHORT2_RE = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\w)")
_EQ_PREFIX_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-z]\))?\s*=\s*(?=\S)")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SIMPLE_SLASH_RE = re.compile(r"^(-?\d+)/(\d+)$")
_PLAIN_NUMBER_RE = re.compile(r"(-?)(\d+(?:\.\d*)?|\.\d+)")
_PLAIN_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_BASE_RE = re.compile(r"_\{?(\d+)\}?$")


def normalize_math_answer(ans: str) -> str:
    """Canonical string form of a MATH answer (Hendrycks ``strip_string`` plus Minerva-style fixes)."""
    s = ans.strip().replace("\n", "")
    s = s.replace("\\!", "").replace("\\displaystyle", "")
    s = re.sub(r"\\[,;:> ]", "", s)
    s = s.replace("\\\\", "\\")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = _UNIT_TAIL_RE.sub("", s)
    for _ in range(3):
        s = _TEXT_CMD_RE.sub(r"\1", s)
    s = s.replace("{,}", ",")
    s = s.strip().rstrip(".").strip()
    s = _EQ_PREFIX_RE.sub("", s)
    s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_SHORT2_RE.sub(r"\\frac\1{\2}", s)
    s = s.replace(" ", "")
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    m = _SIMPLE_SLASH_RE.match(s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    s = re.sub(r"(?<![\d}])\.(?=\d)", "0.", s)
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    return s


@lru_cache(maxsize=1)
def _math_verify() -> tuple[Any, Any, type[BaseException]]:
    from math_verify import parse, verify  # imported lazily: pulls in sympy
    from math_verify.errors import TimeoutException  # a BaseException, not an Exception

    return parse, verify, TimeoutException


def _math_verify_equivalent(pred: str, gold: str) -> bool:
    """``verify(parse(gold), parse(pred))`` with answers wrapped in ``$...$``; False on any error."""
    if len(pred) > MATH_VERIFY_MAX_CHARS or len(gold) > MATH_VERIFY_MAX_CHARS:
        return False
    parse, verify, timeout_exc = _math_verify()
    in_main = threading.current_thread() is threading.main_thread()
    timeout = MATH_VERIFY_TIMEOUT_S if in_main else None
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, timeout_exc):  # math-verify / sympy can raise on odd input, or time out
        return False


def _plain_number(norm: str) -> Fraction | None:
    """Value of a normalised answer that is just a number (``-2``, ``0.5``, ``\\frac{3}{4}``), else None."""
    try:
        m = _PLAIN_NUMBER_RE.fullmatch(norm)
        if m:
            value = Fraction(m.group(2).rstrip(".") or "0")
            return -value if m.group(1) else value
        m = _PLAIN_FRAC_RE.fullmatch(norm)
        if m and int(m.group(3)) != 0:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
    except ValueError:  # more digits than Python's int/str conversion limit
        return None
    return None


def _math_equivalent(pred: str, gold: str) -> bool:
    pred_n, gold_n = normalize_math_answer(pred), normalize_math_answer(gold)
    if not pred_n or not gold_n:
        return False
    if pred_n == gold_n:
        return True
    # Two plain numbers: compare them here (see _numbers_close); math-verify rounds to 6 decimals,
    # which would accept e.g. .0000673 for .0000672.
    pred_v, gold_v = _plain_number(pred_n), _plain_number(gold_n)
    if pred_v is not None and gold_v is not None:
        return _numbers_close(pred_v, gold_v)
    # math-verify drops base subscripts (52_8 -> 52): an explicit, different base is wrong.
    pred_b, gold_b = _BASE_RE.search(pred_n), _BASE_RE.search(gold_n)
    if pred_b and gold_b and pred_b.group(1) != gold_b.group(1):
        return False
    return _math_verify_equivalent(pred, gold)


def _math_statement(text: str, start: int) -> str | None:
    """MATH answer after a "The (final) answer is" marker ending at ``start``; None unless it looks like math."""
    answer = _statement(text, start)
    return answer if _MATH_START_RE.match(answer) else None


def _math_structured(text: str) -> str | None:
    """MATH answer of the last marker (``\\boxed``, "The (final) answer is") with an answer; None if none."""
    found: list[tuple[int, str | None]] = [
        (m.start(), _math_statement(text, m.end())) for m in _ANSWER_IS_RE.finditer(text)
    ]
    found += [(m.start(), box_content(text, m.end()) or None) for m in BOX_RE.finditer(text)]
    return _last_stated(found)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def extract_answer(text: str, task: Task) -> str | None:
    """Final answer in model output ``text`` (see module docstring for the rules); None if none."""
    check_task(task)
    if task == "gsm8k":
        return _gsm8k_structured(text) or _last_number(text)
    return _math_structured(text)


_PROSE_WORD_RE = re.compile(r"(?<![\\{a-zA-Z])[a-zA-Z]{3,}")


def _looks_bare(text: str) -> bool:
    """True if ``text`` looks like a bare final answer rather than a solution without one."""
    return "\n" not in text and len(_PROSE_WORD_RE.findall(_TEXT_CMD_RE.sub("", text))) <= 2


def gold_answer(answer_or_solution: str, task: Task) -> str | None:
    """Gold final answer from a bare answer or a full gold solution; None if there is no usable answer."""
    check_task(task)
    text = str(answer_or_solution).strip()
    if not text:
        return None
    if task == "gsm8k":
        structured = _gsm8k_structured(text)
        if structured is not None:
            return structured
        m = _NUM_RE.fullmatch(_prep_numeric(text).strip().rstrip(".").strip())
        return _canonical_number(m) if m else None
    found = extract_answer(text, "math")
    if found is not None:
        return found
    if _looks_bare(text):
        bare = text.strip("$").strip()
        return bare or None
    return None


def is_equivalent(pred: str, gold: str, task: Task) -> bool:
    """Whether extracted answer ``pred`` matches gold final answer ``gold``."""
    check_task(task)
    if task == "gsm8k":
        return _gsm8k_equivalent(pred, gold)
    return _math_equivalent(pred, gold)


def grade(prediction: str, gold: str, task: Task) -> Grade:
    """Grade model text ``prediction`` against ``gold`` (a bare final answer or a full gold solution)."""
    gold_final = gold_answer(gold, task)
    if gold_final is None:
        raise ValueError(f"gold has no usable {task} final answer: {str(gold)[-200:]!r}")
    extracted = extract_answer(prediction, task)
    if extracted is None:
        return Grade(correct=False, extracted=None)
    return Grade(correct=is_equivalent(extracted, gold_final, task), extracted=extracted)
