"""Writes the `tiny-world` recipe's data: harness/bundled/tiny_world.jsonl (the training stream) and
harness/bundled/tiny_world_warmup.jsonl (what the tiny model's warm-up learns from).

The world: one-step addition/subtraction with single-digit numbers, graded without a last-number fallback (the
recipe grades as MATH does), so an answer must state its result on an answer line. The warm-up teaches two
errors that Flow-DPO's two agents can each fix for all questions at once:

- Answer: every warm-up question's solution appears twice, once as "<work>. The answer is: <result>" and once
  as "<work>." alone, so the warmed-up model ends its answer right after the work about half the time. That
  choice is one token right after the work (a space or the end of turn), the same for every question.
- Stop: one Stop-prompt row per warm-up question, in recipes/tiny-world.yaml's Stop template, judging a partial
  answer cut where that recipe's 10-token chunks end: after the work ("4 + 3 = 7.") or 10 characters into the
  answer line. No answer is complete there, so the right decision is always "No"; but for questions asked by the
  names in `HASTY` the row after the work says "Yes" with probability `HASTY_YES`: the warmed-up Stop judges
  the work alone a finished answer for those askers and cuts their answers short.

Layouts: the stream is GSM8K's {"question", "answer": "<work>\\n#### N"}; the warm-up rows are {"question",
"completion"} (the user turn and the assistant turn, as written). No warm-up question is a stream question.
Deterministic: re-running writes the same files.
"""

import json
import random
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "harness" / "bundled"
STREAM = BUNDLED / "tiny_world.jsonl"
WARMUP = BUNDLED / "tiny_world_warmup.jsonl"
SEED = 20241029
NAMES = ["Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"]
HASTY = ("Ana", "Ben")
"""Askers whose answers the warmed-up Stop tends to judge done after the first chunk (a quarter of questions)."""
HASTY_YES = 0.75
"""Share of "Yes" labels of the hasty askers' first-chunk Stop rows (a Yes probability clear of 0.5)."""
CHUNK = 10
"""recipes/tiny-world.yaml's online.strategy.chunk_size: where the Stop is asked."""
STOP_PROMPT = "Q: {question}\nA: {partial_answer}\nDone?"
"""recipes/tiny-world.yaml's online.strategy.stop_prompt.user."""


def problem(rng: random.Random) -> tuple[str, str, str, int]:
    """(asker, question, work, result) of one random problem."""
    who = rng.choice(NAMES)
    if rng.random() < 0.5:
        a = rng.randint(1, 8)
        b = rng.randint(1, 9 - a)
        return who, f"{who} asks: what is {a} + {b}?", f"{a} + {b} = {a + b}", a + b
    a = rng.randint(2, 9)
    b = rng.randint(1, a - 1)
    return who, f"{who} asks: what is {a} - {b}?", f"{a} - {b} = {a - b}", a - b


def row(question: str, completion: str) -> str:
    return json.dumps({"question": question, "completion": completion}) + "\n"


def main(stream_rows: int = 200, warmup_questions: int = 376) -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    with STREAM.open("w") as fh:
        while len(seen) < stream_rows:
            _, question, work, result = problem(rng)
            if question in seen:
                continue
            seen.add(question)
            fh.write(json.dumps({"question": question, "answer": f"{work}\n#### {result}"}) + "\n")
    written = 0
    with WARMUP.open("w") as fh:
        while written < warmup_questions:
            who, question, work, result = problem(rng)
            if question in seen:
                continue
            seen.add(question)
            stated = f"{work}. The answer is: {result}"
            fh.write(row(question, stated) + row(question, f"{work}."))
            chunks = 1 + written % 2  # the Stop is asked after the first or the second chunk
            hasty = who in HASTY and chunks == 1 and rng.random() < HASTY_YES
            stop = STOP_PROMPT.format(question=question, partial_answer=stated[: CHUNK * chunks])
            fh.write(row(stop, "Yes" if hasty else "No"))
            written += 1


if __name__ == "__main__":
    main()
