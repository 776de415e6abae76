"""`harness report --format text|md|json`: what the command prints about the report it has just written.

`text` is a terminal summary (about 30 lines) built from the written report.json only, so every number it shows
is one of the report's: progressive accuracy per curve with 95% CIs and n, Table 1 beside the paper, the SFT set
sizes, stage times and where the full report is. `md` is report.md's text, `json` report.json's.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import IO, Any

from tabulate import tabulate

from harness.reporting.eval_metrics import metric_label
from harness.reporting.names import CURVE_NAMES, ROW_NAMES

FORMATS = ("text", "md", "json")
WRAP = 110
"""Width the prose lines wrap at; the tables are as wide as their columns."""


def want_color(stream: IO[str]) -> bool:
    """Bold titles only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def render_report(folder: Path, fmt: str = "text", color: bool = False) -> str:
    """The report written in `folder` as `fmt`: the text summary, report.md's text or report.json's text."""
    folder = Path(folder)
    if fmt == "md":
        return (folder / "report.md").read_text()
    if fmt == "json":
        return (folder / "report.json").read_text()
    if fmt == "text":
        return summary_text(json.loads((folder / "report.json").read_text()), folder, color)
    raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


def summary_text(data: dict, folder: Path, color: bool = False) -> str:
    """The terminal summary of one report.json (`folder` holds report.md and report.html)."""
    sections = [
        _header(data["run"], color),
        _progressive(data.get("progressive") or {}, data["run"]["stages"], color),
        _table1(data.get("table1") or {}, color),
        _sft_sets((data.get("traces") or {}).get("sft_sets") or {}, color),
        _times((data.get("time") or {}).get("stages") or {}),
        _paths(Path(folder)),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


# ---- formatting ----------------------------------------------------------------------------------


def _title(text: str, color: bool) -> str:
    return f"\033[1m{text}\033[0m" if color else text


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _table(rows: list[list[str]], headers: list[str], align: list[str]) -> str:
    # disable_numparse: the cells are already formatted; tabulate must not reformat "0.8125" or "16".
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, colalign=align)


def _seconds(s: float | None) -> str:
    """12.5s, 3m05s, 36h02m: readable at any scale from a CI run to the paper's 36-48 hours."""
    if s is None:
        return "–"
    if s < 100:
        return f"{s:.1f}s"
    m, sec = divmod(round(s), 60)
    return f"{m}m{sec:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, WRAP, subsequent_indent="  ", break_on_hyphens=False))


# ---- sections ------------------------------------------------------------------------------------


def _header(run: dict, color: bool) -> str:
    """Recipe, run folder, strategy, paper ref, stage statuses and the report's notes."""
    paper = run.get("paper")
    ref = f"{paper['paper']} / {paper['model']}" if paper else "none"
    stages = ", ".join(f"{s} {st}" for s, st in run["stages"].items())
    lines = [_title(f"Run report: {run['recipe']}", color) + f"  ({run['path']})"]
    lines.append(_wrap(f"strategy: {run.get('strategy') or 'not named'}; paper: {ref}; stages: {stages}"))
    lines += [_wrap(f"note: {n}") for n in run.get("notes") or []]
    return "\n".join(lines)


def _progressive(prog: dict, stages: dict[str, str], color: bool) -> str:
    """One row per curve: cumulative accuracy %, its 95% Wilson CI, correct and n."""
    if not prog.get("final"):
        return "Progressive accuracy: the online stage has not run."
    unfinished = "; online stage not finished" if stages.get("online") != "done" else ""
    title = _title(f"Progressive accuracy ({prog['questions']} questions{unfinished})", color)
    rows = [
        [CURVE_NAMES.get(name, name), _pct(c["value"]), _ci(c["ci"]), str(c["k"]), str(c["n"])]
        for name, c in prog["final"].items()
    ]
    headers = ["curve", "%", "95% CI", "correct", "n"]
    table = _table(rows, headers, ["left", "right", "right", "right", "right"])
    return title + "\n" + table + (f"\n\n{_wrap(prog['verdict'])}" if prog.get("verdict") else "")


def _common(cells: list[dict], key: str) -> Any:
    """The value of `key` shared by every cell, else None (then each cell shows its own)."""
    values = {json.dumps(c.get(key)) for c in cells}
    return cells[0].get(key) if len(values) == 1 else None


def _table1_cell(cell: dict | None, shared_metric: str | None, shared_n: Any) -> str:
    """`73.0 [66.5, 78.7]`, with the metric and n appended where they differ from the column's."""
    if cell is None:
        return "–"
    text = f"{_pct(cell['value'])} {_ci(cell['ci'])}"
    if shared_metric is None:
        text += f" {metric_label(cell['metric'])}"
    if shared_n is None and cell.get("n") is not None:
        text += f" n={cell['n']}"
    return text


def _table1(t1: dict, color: bool) -> str:
    """Model rows x task columns: value % [95% CI]; the paper's % and Δ points beside each when it has one."""
    if not t1.get("rows"):
        return "Table 1: the evaluate stage has not run."
    paper = t1.get("paper")
    headers, align = ["model"], ["left"]
    shared = {}
    for task in t1["tasks"]:
        cells = [r["cells"][task] for r in t1["rows"] if task in r["cells"]]
        metric, n = _common(cells, "metric"), _common(cells, "n")
        shared[task] = (metric, n)
        # the metric and n name the column when every row shares them, which keeps the cells short
        headers.append(" ".join([task] + ([metric_label(metric)] if metric else []) + ([f"n={n}"] if n else [])))
        align.append("right")
        if paper:
            headers += ["paper", "Δ"]
            align += ["right", "right"]
    rows = []
    for r in t1["rows"]:
        row = [ROW_NAMES.get(r["model"], r["model"])]
        for task in t1["tasks"]:
            cell = r["cells"].get(task)
            row.append(_table1_cell(cell, *shared[task]))
            if paper:
                pub, delta = (cell or {}).get("paper"), (cell or {}).get("delta_points")
                row += ["–" if pub is None else f"{pub:.1f}", "–" if delta is None else f"{delta:+.1f}"]
        rows.append(row)
    what = f"paper: {paper['paper']} / {paper['model']}, Δ = measured − paper in points" if paper else "no paper ref"
    title = _title("Table 1", color) + f" (% [95% CI]; {what})"
    return title + "\n" + _table(rows, headers, align)


def _sft_sets(sets: dict, color: bool) -> str:
    """Per SFT source: examples kept of the prompts, mean tokens per example, final train loss."""
    if not sets:
        return "SFT sets: the compile stage has not run."
    rows = [
        [
            src,
            str(d.get("examples", "–")),
            str(d.get("prompts", "–")),
            "–" if d.get("mean_tokens") is None else f"{d['mean_tokens']:.1f}",
            "–" if d.get("train_loss") is None else f"{d['train_loss']:.4f}",
        ]
        for src, d in sets.items()
    ]
    headers = ["SFT set", "examples", "prompts", "mean tokens", "train loss"]
    return _title("SFT sets", color) + "\n" + _table(rows, headers, ["left"] + ["right"] * 4)


def _times(stages: dict[str, float | None]) -> str:
    """Stage wall times on one line (wrapped), with their sum."""
    if not stages:
        return ""
    total = sum(v for v in stages.values() if v is not None)
    parts = ", ".join(f"{k} {_seconds(v)}" for k, v in stages.items())
    return _wrap(f"Stage time (total {_seconds(total)}): {parts}")


def _paths(folder: Path) -> str:
    return f"Full report: {folder / 'report.md'}\n             {folder / 'report.html'}"
