"""The run report: markdown + self-contained HTML + PNGs + report.json, from the run folder only.

`write_report(RUN)` reads RUN/{recipe.yaml, provenance.json, online/, baseline/, compile/, evaluate/} and
writes RUN/report/{report.md, report.html, report.json, *.png}. Every number in the report's tables is in
report.json and is computed from those files (the published numbers come from results/papers/<paper>.yaml via
the recipe's `paper` ref). A stage that has not run leaves a one-line note instead of its section.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from harness.errors import ReportError
from harness.reporting.papers import load_paper
from harness.reporting.render import Block, note, to_html, to_markdown
from harness.reporting.run_folder import STAGES, load_run
from harness.reporting.sections import (
    section_progressive,
    section_provenance,
    section_time,
    section_traces,
)
from harness.reporting.table1 import section_table1

REPORT_FILES = (
    "report.md",
    "report.html",
    "report.json",
    "progressive.png",
    "difference.png",
    "dpo_steps.png",
    "table1.png",
    "pairs_by_node.png",
    "pairs_by_chunk.png",  # written by reports made before the breakdown was by node; removed from `out`
    "time.png",
)


def build_report(run_dir: Path | str, folder: Path) -> tuple[dict, list[Block]]:
    """Compute every section from the run folder, writing PNGs into `folder`; (report.json data, blocks)."""
    run = load_run(run_dir)
    ref = run.paper_ref()
    paper = load_paper(ref[0]) if ref else None
    model = ref[1] if ref else None
    if paper is not None and model not in paper.models:
        raise ReportError(
            f"{run.path / 'recipe.yaml'}: paper.model {model!r} is not in {paper.paper} "
            f"(known: {', '.join(paper.models)})"
        )
    stages = {
        s: "done" if run.done.get(s) is not None else "started" if (run.path / s).is_dir() else "not run"
        for s in STAGES
    }
    data: dict[str, Any] = {
        "run": {
            "path": str(run.path),
            "recipe": run.name,
            "strategy": run.strategy,
            "stages": stages,
            "paper": {"paper": ref[0], "model": ref[1]} if ref else None,
            "notes": run.notes,
        }
    }
    blocks: list[Block] = [("h", 1, f"Run report: {run.name}")]
    description = str(run.recipe.get("description") or "").strip()
    if description:
        blocks.append(("p", description))
    blocks.append(
        (
            "p",
            f"Run folder `{run.shown_path()}`; strategy: "
            f"{run.strategy or 'not named (no `online.strategy.name`)'}; paper: "
            + (f"{ref[0]} / {ref[1]}" if ref else "none (the recipe has no `paper` ref)")
            + ".",
        )
    )
    if run.command():
        blocks.append(("p", f"Command: `{run.command()}`"))
    blocks.append(("table", ["stage", "status"], [[s, st] for s, st in stages.items()]))
    for text in run.notes:
        blocks.append(note(text))
    sections = [
        ("progressive", section_progressive(run, paper, model, folder)),
        ("table1", section_table1(run, paper, model, folder)),
        ("traces", section_traces(run, folder)),
        ("time", section_time(run, folder)),
        ("provenance", section_provenance(run)),
    ]
    for key, (part, section_blocks) in sections:
        data[key] = part
        blocks += section_blocks
    return data, blocks


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write RUN/report/{report.md, report.html, report.json, *.png}; copy the folder to `out` when given.

    RUN/report is rebuilt: the files an earlier report wrote (REPORT_FILES) are removed first, nothing else, and
    only once RUN is known to be a run folder. In `out`, report files this report no longer has are removed.
    Returns the path of report.md (in `out` when given, else in RUN/report).
    """
    run_dir = Path(run_dir)
    load_run(run_dir)  # not a run folder: say so before anything is written or removed
    folder = run_dir / "report"
    folder.mkdir(exist_ok=True)
    for name in REPORT_FILES:
        (folder / name).unlink(missing_ok=True)
    data, blocks = build_report(run_dir, folder)
    (folder / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(to_markdown(blocks))
    (folder / "report.html").write_text(to_html(blocks, folder, f"Run report: {data['run']['recipe']}"))
    if out is None:
        return folder / "report.md"
    out = Path(out)
    for name in REPORT_FILES:  # a PNG of an earlier report whose section is now skipped must not linger
        if (out / name).is_file() and not (folder / name).exists():
            (out / name).unlink()
    shutil.copytree(folder, out, dirs_exist_ok=True)
    return out / "report.md"
