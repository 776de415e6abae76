"""`harness grade FILE`: a JSON-lines file of predictions graded against its answers."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import DataError
from harness.grading.grader import Task, check_task, grade


def grade_file(path: str | Path, task: Task) -> dict:
    """Grade a jsonl of ``{"prediction", "answer"}`` rows: ``{"n", "correct", "accuracy", "unparsed"}``.

    Blank lines are skipped. A malformed line raises ValueError naming the file and 1-based line number.
    """
    check_task(task)
    path = Path(path)
    n = correct = unparsed = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("prediction", "answer"):
                if key not in row:
                    raise DataError(f"{where}: missing key {key!r}")
            prediction, answer = row["prediction"], row["answer"]
            if not isinstance(prediction, str):
                raise DataError(f"{where}: 'prediction' must be a string, got {type(prediction).__name__}")
            if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
                raise DataError(f"{where}: 'answer' must be a string or number, got {type(answer).__name__}")
            try:
                result = grade(prediction, str(answer), task)
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from exc
            n += 1
            correct += result.correct
            unparsed += result.extracted is None
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "unparsed": unparsed}
