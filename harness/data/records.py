"""Data sources: one record type for GSM8K, MATH / MATH-500 and MetaMathQA.

A source is `bundled:NAME` (a small file shipped in harness/bundled, so offline defaults work), `hub:ORG/NAME`
(the datasets hub, what a GPU user has) or a local .jsonl / .parquet path. A row without a usable gold answer is
skipped and counted, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.recipe import DataSource
from harness.errors import DataError
from harness.grading.grader import gold_answer

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"


@dataclass(frozen=True)
class Record:
    id: str
    """Stable id: source name and row index (or the dataset's own id)."""
    question: str
    answer: str
    """Gold final answer (what the grader compares with)."""
    solution: str | None
    """Gold worked solution (the ground-truth SFT target), when the dataset has one."""
    task: str
    """Grading rules: gsm8k or math."""


@dataclass
class Loaded:
    records: list[Record]
    skipped: list[str] = field(default_factory=list)
    """One line per skipped row: where it was and why."""

    def fingerprint(self) -> str:
        """A hash of the records as they will be used (ids, questions, gold answers and solutions, tasks): a
        resumed run compares it with the one its provenance recorded, so edited data cannot mix into a run."""
        rows = [[r.id, r.question, r.answer, r.solution, r.task] for r in self.records]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def read_rows(source: DataSource) -> tuple[str, list[dict[str, Any]]]:
    """Raw rows of a source and a short name for ids."""
    spec = source.source
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        path = BUNDLED_DIR / f"{name}.jsonl"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in BUNDLED_DIR.glob("*.jsonl")))
            raise DataError(f"data source {spec!r}: no bundled file {path.name} (bundled: {known})")
        return name, _read_jsonl(path)
    if spec.startswith("hub:"):
        import datasets

        name = spec.removeprefix("hub:")
        rows = datasets.load_dataset(name, source.config, split=source.split)
        return name.split("/")[-1], [dict(r) for r in rows]
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"data source {spec!r}: no such file")
    if path.suffix == ".parquet":
        import pandas

        return path.stem, pandas.read_parquet(path).to_dict(orient="records")
    return path.stem, _read_jsonl(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON: {err}") from None
    return rows


def to_record(row: dict[str, Any], fmt: str, task: str, rid: str) -> Record | str:
    """A Record, or the reason the row is unusable."""
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not an object with named fields"
    if fmt == "gsm8k":
        question, solution = row.get("question"), row.get("answer")
        answer = gold_answer(solution, "gsm8k") if isinstance(solution, str) else None
    elif fmt == "math":
        question, solution = row.get("problem"), row.get("solution")
        given = row.get("answer")
        answer = given if isinstance(given, str) and given.strip() else None
        if answer is None and isinstance(solution, str):
            answer = gold_answer(solution, "math")
    else:  # metamath: {query, response, type}; GSM_* rows grade as gsm8k, MATH_* as math
        question, solution = row.get("query"), row.get("response")
        task = "math" if str(row.get("type", "")).startswith("MATH") else "gsm8k"
        answer = gold_answer(solution, task) if isinstance(solution, str) else None
    if not isinstance(question, str) or not question.strip():
        return "no question"
    if not answer:
        return "no usable gold answer"
    rid = str(row.get("unique_id") or row.get("id") or rid)
    return Record(id=rid, question=question, answer=answer, solution=solution, task=task)


def load_source(source: DataSource) -> Loaded:
    """Usable records of a source after shuffle/offset/limit, and the skipped rows."""
    name, rows = read_rows(source)
    order = list(range(len(rows)))
    if source.shuffle_seed is not None:
        random.Random(source.shuffle_seed).shuffle(order)
    loaded = Loaded(records=[])
    for index in order[source.offset :]:
        if source.limit is not None and len(loaded.records) >= source.limit:
            break
        item = to_record(rows[index], source.format, source.task, f"{name}-{index}")
        if isinstance(item, str):
            loaded.skipped.append(f"{source.source} row {index + 1}: {item}")
        else:
            loaded.records.append(item)
    if not loaded.records:
        reasons = "; ".join(loaded.skipped[:3]) + (f"; and {len(loaded.skipped) - 3} more" if len(loaded.skipped) > 3
                                                   else "")
        raise DataError(f"data source {source.source!r}: no usable row out of {len(rows)}"
                        + (f" ({reasons})" if reasons else "") + ": check the file, its `format` and `offset`")
    return loaded
