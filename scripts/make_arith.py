"""Writes harness/bundled/arith.jsonl: one-step addition/subtraction questions with single-digit answers.

A CPU-sized training stream on which a small model sits between 0% and 100% (so rollouts disagree and make
pairs). GSM8K layout: {"question", "answer": "<work>\\n#### N"}. Deterministic: re-running writes the same file.
The same rows in MetaMathQA's layout ({"query", "response": "<work>\\nThe answer is: N", "type"}, types alternating
GSM_AnsAug and MATH_AnsAug so both grading rules run) go to arith_metamath.jsonl: what a rehearsal of a
MetaMathQA recipe streams in place of the hub dataset.
"""

import json
import random
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "harness" / "bundled"
OUT = BUNDLED / "arith.jsonl"
OUT_METAMATH = BUNDLED / "arith_metamath.jsonl"


def main(n: int = 1000, seed: int = 1234) -> None:
    rng = random.Random(seed)
    names = ["Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"]
    things = ["apples", "books", "coins", "pens", "shells", "stamps"]
    with OUT.open("w") as fh, OUT_METAMATH.open("w") as meta:
        for i in range(n):
            who, what = rng.choice(names), rng.choice(things)
            if rng.random() < 0.5:
                a = rng.randint(1, 8)
                b = rng.randint(1, 9 - a)
                q = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?"
                work, ans = f"{a} + {b} = {a + b}", a + b
            else:
                a = rng.randint(2, 9)
                b = rng.randint(1, a - 1)
                q = f"{who} has {a} {what} and gives away {b}. How many {what} are left?"
                work, ans = f"{a} - {b} = {a - b}", a - b
            fh.write(json.dumps({"question": q, "answer": f"{work}\n#### {ans}"}) + "\n")
            kind = "GSM_AnsAug" if i % 2 == 0 else "MATH_AnsAug"
            meta.write(json.dumps({"query": q, "response": f"{work}\nThe answer is: {ans}", "type": kind}) + "\n")


if __name__ == "__main__":
    main()
