"""Writes the `tiny-world` recipe's data: harness/bundled/tiny_world.jsonl (the training stream) and
harness/bundled/tiny_world_warmup.jsonl (what the tiny model's warm-up learns from).

The world: one-step addition/subtraction with single-digit operands and results, whose warm-up solutions end
with a bimodal answer line. Every warm-up question appears twice, once with "The answer is: <result>" and once
with "The answer is: <first operand>", so the warmed-up model computes the result but copies it into its answer
line only about half the time. That choice is the same structural one for every question, so DPO pairs on the
answer chunk (right digit against distractor) shift it for all questions at once.

Layouts: the stream is GSM8K's {"question", "answer": "<work>\\n#### N"}; the warm-up rows are {"question",
"completion"} (the assistant turn, as written). No warm-up question is a stream question. Deterministic:
re-running writes the same files.
"""

import json
import random
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "harness" / "bundled"
STREAM = BUNDLED / "tiny_world.jsonl"
WARMUP = BUNDLED / "tiny_world_warmup.jsonl"
SEED = 20241029
NAMES = ["Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"]


def problem(rng: random.Random) -> tuple[str, str, int, int]:
    """(question, work, result, first operand) of one random problem."""
    who = rng.choice(NAMES)
    if rng.random() < 0.5:
        a = rng.randint(1, 8)
        b = rng.randint(1, 9 - a)
        return f"{who} asks: what is {a} + {b}?", f"{a} + {b} = {a + b}", a + b, a
    a = rng.randint(2, 9)
    b = rng.randint(1, a - 1)
    return f"{who} asks: what is {a} - {b}?", f"{a} - {b} = {a - b}", a - b, a


def main(stream_rows: int = 200, warmup_questions: int = 376) -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    with STREAM.open("w") as fh:
        while len(seen) < stream_rows:
            question, work, result, _ = problem(rng)
            if question in seen:
                continue
            seen.add(question)
            fh.write(json.dumps({"question": question, "answer": f"{work}\n#### {result}"}) + "\n")
    written = 0
    with WARMUP.open("w") as fh:
        while written < warmup_questions:
            question, work, result, first = problem(rng)
            if question in seen:
                continue
            seen.add(question)
            written += 1
            for line in (f"The answer is: {result}", f"So the answer is: {first}"):
                fh.write(json.dumps({"question": question, "completion": f"{work}. {line}"}) + "\n")


if __name__ == "__main__":
    main()
