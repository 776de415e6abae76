"""`python scripts/compare_run_folders.py A B`: are two trees of run folders the same results?

Used to show that a behaviour-preserving change is one: run the same recipes at two commits into the same run-folder
paths (so that stored paths agree), move each tree aside, compare. Every JSON and JSON-lines value is compared but
timing fields (`*seconds`, `*_runtime`, `*per_second`, `created`, the report's `time` section) and provenance
(where and from which commit a run ran, not what it found); weights, checkpoints and other files byte for byte.
Left out: logs, the lock, rendered markdown/HTML/PNG (their numbers are in report.json), peft's adapter_config.json
and README (paths), lm-eval's results.json outside its `results` block (dates, environment). Prints each
difference and a count; exits 1 when there is one.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

IGNORED = re.compile(r"(seconds|_runtime|per_second|^created$|^shares$|^sub_shares$|^time$|^date$|_time$"
                     r"|^provenance$)")
RENDERED = (".png", ".html", ".md", "adapter_config.json", "provenance.json")


def clean(value: object) -> object:
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if not IGNORED.search(str(k))}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def content(path: Path) -> object:
    if path.name == "results.json":
        return clean(json.loads(path.read_text()).get("results"))
    if path.suffix == ".json":
        return clean(json.loads(path.read_text()))
    if path.suffix == ".jsonl":
        return [clean(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compared(root: Path) -> set[str]:
    """Files under root (one run folder per first-level folder) that hold results."""
    out = set()
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        inner = rel.split("/", 1)[-1]
        if path.is_file() and not (inner.startswith("logs/") or inner == ".lock" or "/trainer/" in inner
                                   or "_lm_eval_tasks" in inner or inner.endswith(RENDERED)):
            out.add(rel)
    return out


def main(a: Path, b: Path) -> int:
    files_a, files_b = compared(a), compared(b)
    differences = [f"only in one: {rel}" for rel in sorted(files_a ^ files_b)]
    differences += [f"differ: {rel}" for rel in sorted(files_a & files_b) if content(a / rel) != content(b / rel)]
    print("\n".join(differences))
    print(f"{len(files_a & files_b)} files compared, {len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
