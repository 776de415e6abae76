"""Functions the offline lm-eval tasks of this folder name with `!function`.

MATH-500 (`harness_math500`) mirrors lm-eval 0.4.13's `minerva_math500` (tasks/minerva_math/utils.py, MIT
license, EleutherAI): same Minerva 4-shot prompt, same answer extraction ("Final Answer: The final answer is X.
I hope it is correct."), same Lewkowycz et al. normalisation, same `math_verify` metric. It cannot simply import
that module: it asserts `antlr4-python3-runtime==4.11` at import (for `sympy.parsing.latex.parse_latex`), while
math-verify pins antlr4 4.13, so in an environment with math-verify the built-in minerva tasks do not load.
The one deliberate difference: the symbolic step of `exact_match` parses LaTeX with latex2sympy2_extended (the
antlr-4.13 parser math-verify itself uses) instead of sympy's `parse_latex`. Identical normalised strings are
equal in both; the `math_verify` metric is lm-eval's exactly.

Arithmetic (`harness_arith`): rows of harness/bundled/arith.jsonl that no bundled recipe trains on.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# harness/bundled/arith.jsonl rows: the tiny recipe streams rows 0+, compiles from 500+, and the tiny model's
# warm-up trains on 800+. Evaluation uses 600-799; few-shot examples come from 550-599.
ARITH_TEST_ROWS = range(600, 800)
ARITH_FEWSHOT_ROWS = range(550, 600)

EQUIV_TIMEOUT_S = 5
INVALID_ANSWER = "[invalidanswer]"


# ------------------------------------------------------------------------------------------------ arith
def arith_test_docs(dataset: Any) -> Any:
    """The held-out evaluation rows (a datasets.Dataset in, a Dataset out)."""
    return dataset.select([i for i in ARITH_TEST_ROWS if i < len(dataset)])


def arith_fewshot_docs(dataset: Any) -> Any:
    """The rows few-shot examples are drawn from (disjoint from the evaluation rows)."""
    return dataset.select([i for i in ARITH_FEWSHOT_ROWS if i < len(dataset)])


# ------------------------------------------------------------------------------------------------ MATH
def doc_to_text(doc: dict) -> str:
    return "Problem:" + "\n" + doc["problem"] + "\n\n" + "Solution:"


def process_docs(dataset: Any) -> Any:
    """Gold answer = the normalised last \\boxed{} of the solution (as minerva_math500 does)."""

    def _process_doc(doc: dict) -> dict:
        return {
            "problem": doc["problem"],
            "solution": doc["solution"],
            "answer": normalize_final_answer(remove_boxed(last_boxed_only_string(doc["solution"]))),
        }

    return dataset.map(_process_doc)


def list_fewshot_samples() -> list[dict]:
    """The four Minerva few-shot examples (Lewkowycz et al. 2022), as in lm-eval."""
    return [
        {
            "problem": "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
            "solution": "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, "
            "so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so "
            "$5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
            "Final Answer: The final answer is $[2,5)$. I hope it is correct.",
            "few_shot": "1",
        },
        {
            "problem": "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
            "$\\det (\\mathbf{A} \\mathbf{B}).$",
            "solution": "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) "
            "= (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
            "few_shot": "1",
        },
        {
            "problem": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
            "instead, how many times must Terrell lift them in order to lift the same total weight?",
            "solution": "If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
            "$2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, "
            "he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we "
            "can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n"
            "\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.",
            "few_shot": "1",
        },
        {
            "problem": "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}"
            "has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is "
            "nonzero.",
            "solution": "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n"
            "$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n"
            "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
            "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
            "few_shot": "1",
        },
    ]


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    """exact_match: Minerva extraction + normalisation + equivalence; math_verify: lm-eval's, unchanged."""
    from math_verify import parse, verify

    candidate = results[0]
    answer = normalize_final_answer(get_unnormalized_answer(candidate))
    return {
        "exact_match": int(is_equiv(answer, doc["answer"])),
        "math_verify": int(bool(verify(gold=parse(doc["solution"]), target=parse(candidate)))),
    }


def get_unnormalized_answer(text: str) -> str:
    match = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.", text + "I hope it is correct.")
    return match.group(1).strip() if match else INVALID_ANSWER


def last_boxed_only_string(string: str) -> str | None:
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(string)):
        if string[i] == "{":
            depth += 1
        elif string[i] == "}":
            depth -= 1
            if depth == 0:
                return string[idx : i + 1]
    return None


def remove_boxed(s: str | None) -> str:
    if s is None:
        raise ValueError("solution has no \\boxed{} answer")
    if s.startswith("\\boxed "):
        return s[len("\\boxed ") :]
    left = "\\boxed{"
    if not (s.startswith(left) and s.endswith("}")):
        raise ValueError(f"not a \\boxed{{...}} string: {s[:80]!r}")
    return s[len(left) : -1]


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """SIGALRM limit where it can work (main thread, POSIX); no limit elsewhere."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def is_equiv(x1: str, x2: str) -> bool:
    """Normalised answers equal as strings, or their LaTeX parses differ by something sympy simplifies to 0."""
    if isinstance(x1, str) and x1 and x1 == x2:
        return True
    if x1 == INVALID_ANSWER or not x1 or not x2:
        return False
    import sympy
    from latex2sympy2_extended import latex2sympy

    try:
        with _time_limit(EQUIV_TIMEOUT_S):
            return bool(sympy.simplify(latex2sympy(x1) - latex2sympy(x2)) == 0)
    except Exception as err:  # noqa: BLE001 - any parse/compare failure means "not shown equal"
        log.debug("could not compare %r and %r: %s", x1, x2, err)
        return False


SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
]
REMOVED_EXPRESSIONS = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
]


def normalize_final_answer(final_answer: str) -> str:
    """Normalise a final answer (appendix D of Lewkowycz et al. 2022, as lm-eval 0.4.13 implements it)."""
    final_answer = final_answer.split("=")[-1]
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            final_answer = re.sub(rf"(?<!\\)\b{expr}\b", "", final_answer)
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            segments = re.split(r"(\\[a-zA-Z]+)", final_answer)
            for i in range(0, len(segments), 2):
                segments[i] = segments[i].replace(expr, "")
            final_answer = "".join(segments)
        else:
            final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", final_answer):
        final_answer = final_answer.replace(",", "")
    return final_answer
