"""Resumable batched work: results go to a JSONL file one whole batch at a time.

A killed process leaves whole batches (and perhaps a torn or partial last batch); a restart keeps the whole
batches and recomputes the rest. Each batch's seed depends only on its number, so recomputed lines are identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from harness.run.console import ProgressBar, percent
from harness.run.folder import write_jsonl

T = TypeVar("T")


def whole_batches(path: Path) -> list[dict]:
    """Lines of the batches that were completely written (each batch ends with a line marked `last`)."""
    if not path.is_file():
        return []
    kept, pending = [], []
    for raw in path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            break  # a torn line from a kill mid-write
        pending.append(line)
        if line.get("last"):
            kept += pending
            pending = []
    return kept


def run_batches(path: Path, items: Sequence[T], batch_size: int,
                work: Callable[[int, Sequence[T]], list[dict]]) -> list[dict]:
    """Call `work(batch_number, batch_items)` for every batch not yet in `path`; return all lines in order."""
    lines = whole_batches(path)
    write_jsonl(path, lines)
    done = {line["batch"] for line in lines}
    batches = range(0, len(items), batch_size)
    bar = ProgressBar(f"{path.parent.name}/{path.stem}", len(batches), "batch", initial=len(done))
    with path.open("a") as fh:
        for number, start in enumerate(batches):
            if number in done:
                continue
            new = [line | {"batch": number} for line in work(number, items[start : start + batch_size])]
            new[-1]["last"] = True
            fh.write("".join(json.dumps(line) + "\n" for line in new))
            fh.flush()
            lines += new
            graded = [line["correct"] for line in lines if "correct" in line]
            bar.update(1, **({"correct": percent(sum(graded), len(graded))} if graded else {}))
    bar.close()
    return sorted(lines, key=lambda line: line["batch"])
