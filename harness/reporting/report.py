"""The run report: markdown + self-contained HTML + PNGs + report.json, from the run folder only.

`write_report(RUN)` reads RUN/{recipe.yaml, provenance.json, online/, baseline/, compile/, evaluate/} and
writes RUN/report/{report.md, report.html, report.json, *.png}. Every number in the report's tables is in
report.json and is computed from those files (the published numbers come from results/papers/<paper>.yaml via
the recipe's `paper` ref). A stage that has not run leaves a one-line note instead of its section.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tabulate import tabulate

from harness.progress import CURVES, PHASES
from harness.reporting.papers import Paper, load_paper
from harness.rundir import RunError

Z95 = 1.959963984540054
CURVE_NAMES = {
    "trained": "Flow trained online",
    "frozen": "Flow frozen",
    "zero_shot": "single model zero-shot",
}
ROW_ORDER = ["base", "sft-ground_truth", "sft-self", "sft-flow"]
ROW_NAMES = {
    "base": "zero-shot (base)",
    "sft-ground_truth": "SFT ground truth",
    "sft-self": "SFT self-generated",
    "sft-flow": "SFT Flow-generated",
}
STAGES = ("baseline", "online", "compile", "evaluate")
REPORT_FILES = (
    "report.md",
    "report.html",
    "report.json",
    "progressive.png",
    "table1.png",
    "pairs_by_chunk.png",
    "time.png",
)


class ReportError(RunError):
    """A run folder whose files cannot be read; the message names the file."""


# ---- reading the run folder ----------------------------------------------------------------------


@dataclass
class Run:
    """Everything the report reads from one run folder (missing files are None / empty)."""

    path: Path
    recipe: dict = field(default_factory=dict)
    provenance: dict | None = None
    progress: list[dict] = field(default_factory=list)
    done: dict[str, dict | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.path.name)

    def paper_ref(self) -> tuple[str, str] | None:
        """(paper, model) from the recipe's `paper` field, or None."""
        ref = self.recipe.get("paper")
        if isinstance(ref, dict) and ref.get("paper") and ref.get("model"):
            return str(ref["paper"]), str(ref["model"])
        return None

    def eval_records(self) -> dict[str, list[dict]]:
        """evaluate/done.json `models`: label -> records ({} when the stage has not run).

        Records may be a list or a {task: record} mapping; metrics without a numeric value are dropped.
        """
        done = self.done.get("evaluate") or {}
        out = {}
        for label, records in (done.get("models") or {}).items():
            items = list(records.values()) if isinstance(records, dict) else list(records or [])
            out[label] = [
                {
                    **rec,
                    "metrics": {
                        k: m for k, m in (rec.get("metrics") or {}).items() if _is_num(m.get("value"))
                    },
                }
                for rec in items
            ]
        return out


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from err


def _read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # a line being written while we read
                notes.append(f"{path.name}: ignored a partial last line")
                break
            raise ReportError(f"{path}:{i + 1}: not valid JSON: {err}") from err
    return out


def load_run(run_dir: Path | str) -> Run:
    """Read a run folder; ReportError when it is not one."""
    path = Path(run_dir)
    recipe_file = path / "recipe.yaml"
    if not recipe_file.is_file():
        raise ReportError(f"{path}: not a run folder (no recipe.yaml)")
    try:
        recipe = yaml.safe_load(recipe_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{recipe_file}: not valid YAML: {err}") from err
    run = Run(path=path, recipe=recipe, provenance=_read_json(path / "provenance.json"))
    run.progress = _read_jsonl(path / "online" / "progress.jsonl", run.notes)
    run.done = {stage: _read_json(path / stage / "done.json") for stage in STAGES}
    return run


# ---- statistics ----------------------------------------------------------------------------------


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def curve(progress: list[dict], key: str) -> list[tuple[int, bool]]:
    """(questions seen, correct) for the lines that carry `key`, in log order."""
    return [(i + 1, bool(line[key])) for i, line in enumerate(progress) if key in line]


def cumulative(points: list[tuple[int, bool]], upto: int | None = None) -> dict:
    """{k, n, value, ci} of the points with questions-seen <= upto (all when None)."""
    pts = [c for q, c in points if upto is None or q <= upto]
    k, n = sum(pts), len(pts)
    return {"k": k, "n": n, "value": k / n if n else None, "ci": list(wilson(k, n)) if n else None}


def headline_metric(record: dict) -> str | None:
    """Table-1 metric of an lm-eval record: the recipe's (`eval.tasks[].metric`), else flexible-extract for
    gsm8k-like tasks, else the first metric."""
    metrics = list((record.get("metrics") or {}).keys())
    if not metrics:
        return None
    if record.get("headline") in metrics:
        return record["headline"]
    gsm = "gsm8k" in str(record.get("task", "")) or "gsm8k" in str(record.get("lm_eval_task", ""))
    if gsm and "exact_match,flexible-extract" in metrics:
        return "exact_match,flexible-extract"
    return metrics[0]


def metric_filter(metric: str) -> str:
    """`exact_match,flexible-extract` -> `flexible-extract` (lm-eval's `metric,filter` key)."""
    return metric.split(",", 1)[1] if "," in metric else "none"


def _sum_seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        nums = [v for v in value.values() if isinstance(v, (int, float))]
        return float(sum(nums)) if nums else None
    return None


# ---- formatting ----------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def pct_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None or ci is None:
        return "–"
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1f}"


# ---- document blocks -----------------------------------------------------------------------------

Block = tuple
"""("h", level, text) | ("p", text) | ("list", [text]) | ("table", headers, rows) | ("img", file, alt)"""


def _note(text: str) -> Block:
    return ("p", f"_{text}_")


# ---- sections ------------------------------------------------------------------------------------


def _section_progressive(
    run: Run, paper: Paper | None, model: str | None, out: Path
) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Progressive validation accuracy")]
    if not run.progress:
        return {}, blocks + [_note("Online stage has not run: no online/progress.jsonl.")]
    total = len(run.progress)
    curves = {name: curve(run.progress, key) for name, key in CURVES.items()}
    curves = {name: pts for name, pts in curves.items() if pts}
    done = run.done.get("online")
    if done is None:
        blocks.append(_note(f"Online stage not finished: {total} questions logged so far."))
    checkpoints = sorted(
        {max(1, math.ceil(total * q)) for q in (0.25, 0.5, 0.75, 1.0)} | ({2000} if total > 2000 else set())
    )
    data: dict[str, Any] = {
        "questions": total,
        "final": {name: cumulative(pts) for name, pts in curves.items()},
        "checkpoints": [
            {"questions": n, **{name: cumulative(pts, n) for name, pts in curves.items()}}
            for n in checkpoints
        ],
        "done_json": {
            name: (done or {}).get(f"{'progressive' if name == 'trained' else name}_accuracy")
            for name in curves
        },
    }
    _plot_progressive(curves, out / "progressive.png")
    blocks.append(
        (
            "p",
            "Cumulative accuracy on the training stream, each question scored before the Flow learns "
            "from it (trained), by the untrained Flow (frozen) and by the base model in one pass "
            "(zero-shot); bands are 95% Wilson intervals on the cumulative proportion.",
        )
    )
    blocks.append(("img", "progressive.png", "progressive accuracy"))
    headers = ["curve", "correct", "questions", "accuracy % [95% CI]", "done.json %"]
    rows = [
        [
            CURVE_NAMES[name],
            str(c["k"]),
            str(c["n"]),
            pct_ci(c["value"], c["ci"]),
            pct(data["done_json"][name]),
        ]
        for name, c in data["final"].items()
    ]
    blocks.append(("table", headers, rows))
    headers = ["questions seen"] + [f"{CURVE_NAMES[name]} %" for name in curves]
    rows = [
        [str(cp["questions"])] + [pct_ci(cp[name]["value"], cp[name]["ci"]) for name in curves]
        for cp in data["checkpoints"]
    ]
    blocks.append(("table", headers, rows))
    if paper is not None:
        statements = paper.statements_for(model)
        data["paper_statements"] = [s.model_dump() for s in statements]
        if statements:
            blocks.append(("p", f"What the paper says ({paper.paper}, {model}):"))
            blocks.append(
                ("list", [f"{s.text} ({s.source}){' ' + s.note if s.note else ''}" for s in statements])
            )
    return data, blocks


def _section_table1(run: Run, paper: Paper | None, model: str | None, out: Path) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Table 1: SFT on traces from each source")]
    models = run.eval_records()
    if not models:
        return {}, blocks + [_note("Evaluate stage has not run: no evaluate/done.json.")]
    labels = [m for m in ROW_ORDER if m in models] + sorted(m for m in models if m not in ROW_ORDER)
    tasks: list[str] = []
    for label in labels:
        for rec in models[label]:
            if rec.get("task") not in tasks:
                tasks.append(rec.get("task"))
    rows_data = []
    for label in labels:
        method = paper.method_for_run_model(label) if paper else None
        cells = {}
        for rec in models[label]:
            metric = headline_metric(rec)
            if metric is None:
                continue
            value = float(rec["metrics"][metric]["value"])
            n = rec.get("n")
            cell = {
                "lm_eval_task": rec.get("lm_eval_task"),
                "version": rec.get("version"),
                "n_shot": rec.get("n_shot"),
                "chat_template": rec.get("chat_template"),
                "limit": rec.get("limit"),
                "n": n,
                "metric": metric,
                "filter": metric_filter(metric),
                "value": value,
                "ci": list(wilson(value * n, n)) if n else None,
                "metrics": {k: float(v["value"]) for k, v in rec["metrics"].items()},
                "paper": None,
                "paper_source": None,
                "delta_points": None,
            }
            if paper is not None and method is not None and rec.get("task") in paper.benchmarks:
                row = paper.number(model, method, rec["task"])
                if row is not None:
                    cell["paper"], cell["paper_source"] = row.value, row.source
                    if row.value is not None:
                        cell["delta_points"] = 100 * value - row.value
            cells[rec.get("task")] = cell
        rows_data.append({"model": label, "method": method, "cells": cells})
    data = {
        "paper": {"paper": paper.paper, "model": model} if paper else None,
        "tasks": tasks,
        "rows": rows_data,
    }

    strict = "exact_match,strict-match"
    extra = {
        t: any(
            strict in c["metrics"] and c["metric"] != strict
            for r in rows_data
            for task, c in r["cells"].items()
            if task == t
        )
        for t in tasks
    }
    headers = ["model"]
    for task in tasks:
        headers.append(f"{task} % [95% CI] (metric)")
        headers += [f"{task} strict-match %"] if extra[task] else []
        headers += [f"{task} paper %", f"{task} Δ"] if paper else []
    rows = []
    for r in rows_data:
        row = [ROW_NAMES.get(r["model"], r["model"])]
        for task in tasks:
            c = r["cells"].get(task)
            row.append(f"{pct_ci(c['value'], c['ci'])} ({metric_label(c['metric'])})" if c else "–")
            if extra[task]:
                row.append(pct(c["metrics"].get(strict)) if c else "–")
            if paper:
                row += [num(c["paper"], 1) if c else "–", signed(c["delta_points"]) if c else "–"]
        rows.append(row)
    settings_row = ["settings"]
    for task in tasks:
        kinds = {_settings(r["cells"][task]) for r in rows_data if task in r["cells"]}
        settings_row.append(kinds.pop() if len(kinds) == 1 else "varies: see below")
        settings_row += [""] * (int(extra[task]) + (2 if paper else 0))
    rows.append(settings_row)
    blocks.append(("table", headers, rows))
    if paper is not None:
        sources = sorted(
            {c["paper_source"] for r in rows_data for c in r["cells"].values() if c["paper_source"]}
        )
        blocks.append(
            (
                "p",
                f"Paper numbers: {paper.paper} / {model} ({paper.models[model].name}); source: "
                + ("; ".join(sources) or "none for these rows")
                + ". Δ = measured − paper, points.",
            )
        )
    else:
        blocks.append(_note("The recipe has no `paper` ref: no published numbers beside these."))
    headers = [
        "model",
        "task",
        "lm-eval task",
        "n-shot",
        "chat template",
        "limit",
        "n",
        "headline (filter)",
        "all metrics %",
    ]
    rows = []
    for r in rows_data:
        for task, c in r["cells"].items():
            rows.append(
                [
                    r["model"],
                    task,
                    str(c["lm_eval_task"]),
                    str(c["n_shot"]),
                    str(c["chat_template"]),
                    "–" if c["limit"] is None else str(c["limit"]),
                    str(c["n"]),
                    f"{c['metric']}",
                    "; ".join(f"{k} {pct(v)}" for k, v in c["metrics"].items()),
                ]
            )
    blocks.append(("p", "Exact evaluation settings under each number:"))
    blocks.append(("table", headers, rows))
    _plot_table1(data, out / "table1.png")
    blocks.append(("img", "table1.png", "Table 1"))
    return data, blocks


def _settings(cell: dict) -> str:
    chat = "chat template" if cell["chat_template"] else "no chat template"
    limit = "" if cell["limit"] is None else f", limit {cell['limit']}"
    return f"lm-eval `{cell['lm_eval_task']}`, {cell['n_shot']}-shot, {chat}{limit}"


def metric_label(metric: str) -> str:
    """Short name of an lm-eval `metric,filter` key: the filter of exact_match, the metric of filter none."""
    name, _, filt = metric.partition(",")
    if filt in ("", "none"):
        return name
    return filt if name == "exact_match" else metric


def _section_traces(run: Run, out: Path) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Trace quality")]
    data: dict[str, Any] = {}
    base = run.done.get("baseline")
    if base:
        ci = wilson(base["correct"], base["n"]) if base.get("n") else None
        data["baseline"] = {k: base.get(k) for k in ("questions", "samples", "correct", "n", "accuracy")}
        data["baseline"]["ci"] = list(ci) if ci else None
        blocks.append(("p", "Baseline sampling (base model, single pass over the compile prompts):"))
        blocks.append(
            (
                "table",
                ["questions", "samples", "correct", "n", "accuracy % [95% CI]"],
                [
                    [
                        str(base.get("questions")),
                        str(base.get("samples")),
                        str(base.get("correct")),
                        str(base.get("n")),
                        pct_ci(base.get("accuracy"), data["baseline"]["ci"]),
                    ]
                ],
            )
        )
    else:
        blocks.append(_note("Baseline stage has not run: no baseline/done.json."))
    comp = run.done.get("compile")
    if comp:
        sets, sft = comp.get("sets") or {}, comp.get("sft") or {}
        data["sft_sets"] = {
            src: {
                **sets.get(src, {}),
                "train_loss": (sft.get(src) or {}).get("train_loss"),
                "sft_seconds": (sft.get(src) or {}).get("seconds"),
            }
            for src in list(sets) + [s for s in sft if s not in sets]
        }
        rows = [
            [
                src,
                str(d.get("prompts")),
                str(d.get("examples")),
                num(d.get("mean_tokens"), 1),
                num(d.get("mean_chunks")),
                num(d.get("train_loss"), 4),
                num(d.get("sft_seconds"), 1),
            ]
            for src, d in data["sft_sets"].items()
        ]
        blocks.append(("p", "SFT sets (compile stage):"))
        blocks.append(
            (
                "table",
                [
                    "source",
                    "prompts",
                    "examples",
                    "mean tokens",
                    "mean chunks",
                    "SFT train loss",
                    "SFT seconds",
                ],
                rows,
            )
        )
        sampling = comp.get("sampling")
        if sampling:
            data["sft_sampling"] = sampling
            flow, own = sampling["flow"], sampling["self"]
            alike = "alike" if flow == own else "differently"
            blocks.append(("p", f"The Flow and self sets are sampled {alike}: Flow traces at temperature "
                                f"{flow['temperature']}, {flow['samples']} per prompt; self-generated answers at "
                                f"temperature {own['temperature']}, {own['samples']} per prompt."))
    else:
        blocks.append(_note("Compile stage has not run: no compile/done.json."))
    if not run.progress:
        return data, blocks + [_note("Online stage has not run: no pair statistics.")]
    lines = run.progress
    n = len(lines)
    ends = Counter(str(line.get("end")) for line in lines)
    data["online"] = {
        "questions": n,
        "mean_chunks": sum(line.get("chunks", 0) for line in lines) / n,
        "mean_nodes": sum(line.get("nodes", 0) for line in lines) / n,
        "mean_tokens": sum(line.get("tokens", 0) for line in lines) / n,
        "mean_stop_decisions": sum(line.get("stop_decisions", 0) for line in lines) / n,
        "ends": dict(sorted(ends.items())),
    }
    o = data["online"]
    blocks.append(("p", "Online traces (main chain of each training question; tokens include its rollouts):"))
    blocks.append(
        (
            "table",
            [
                "questions",
                "mean chunks per trace",
                "mean nodes",
                "mean generated tokens",
                "mean stop decisions",
            ]
            + [f"ended by {e}" for e in o["ends"]],
            [
                [
                    str(n),
                    num(o["mean_chunks"]),
                    num(o["mean_nodes"]),
                    num(o["mean_tokens"], 1),
                    num(o["mean_stop_decisions"]),
                ]
                + [str(c) for c in o["ends"].values()]
            ],
        )
    )
    agents = sorted({a for line in lines for a in (line.get("pairs") or {})})
    pairs = {}
    for agent in agents:
        counts = [int((line.get("pairs") or {}).get(agent, 0)) for line in lines]
        pairs[agent] = {
            "total": sum(counts),
            "per_question": sum(counts) / n,
            "questions_with_pairs": sum(1 for c in counts if c > 0),
        }
    data["pairs"] = pairs
    blocks.append(("p", "DPO pairs per question and agent:"))
    blocks.append(
        (
            "table",
            ["agent", "pairs", "pairs per question", "questions with ≥1 pair"],
            [
                [a, str(p["total"]), num(p["per_question"]), str(p["questions_with_pairs"])]
                for a, p in pairs.items()
            ],
        )
    )
    by_chunk: dict[int, dict[str, int]] = {}
    for line in lines:
        for node in line.get("pair_nodes") or []:
            agent, _, idx = str(node).partition(":")
            if idx.isdigit():
                by_chunk.setdefault(int(idx), {a: 0 for a in agents})
                by_chunk[int(idx)][agent] = by_chunk[int(idx)].get(agent, 0) + 1
    data["pairs_by_chunk"] = {str(k): by_chunk[k] for k in sorted(by_chunk)}
    if by_chunk:
        blocks.append(("p", "Pairs by chunk index of the node they come from (`pair_nodes`):"))
        blocks.append(
            (
                "table",
                ["chunk index"] + agents,
                [[str(k)] + [str(by_chunk[k].get(a, 0)) for a in agents] for k in sorted(by_chunk)],
            )
        )
        _plot_pairs(data["pairs_by_chunk"], agents, out / "pairs_by_chunk.png")
        blocks.append(("img", "pairs_by_chunk.png", "pairs by chunk index"))
    else:
        blocks.append(_note("No pairs were made: no chunk-index breakdown."))
    updates: dict[str, list[dict]] = {}
    for line in lines:
        for agent, ups in (line.get("updates") or {}).items():
            updates.setdefault(agent, []).extend(ups)
    data["updates"] = {}
    for agent, ups in sorted(updates.items()):

        def mean(key: str, ups: list[dict] = ups) -> float | None:
            vals = [u[key] for u in ups if isinstance(u.get(key), (int, float))]
            return sum(vals) / len(vals) if vals else None

        data["updates"][agent] = {
            "steps": len(ups),
            "pairs": sum(int(u.get("pairs", 0)) for u in ups),
            "mean_loss": mean("loss"),
            "mean_margin": mean("margin"),
            "mean_accuracy": mean("accuracy"),
        }
    if data["updates"]:
        blocks.append(("p", "DPO optimizer steps per agent:"))
        blocks.append(
            (
                "table",
                ["agent", "steps", "pairs trained", "mean loss", "mean margin", "mean accuracy"],
                [
                    [
                        a,
                        str(u["steps"]),
                        str(u["pairs"]),
                        num(u["mean_loss"], 4),
                        num(u["mean_margin"], 4),
                        num(u["mean_accuracy"], 3),
                    ]
                    for a, u in data["updates"].items()
                ],
            )
        )
    else:
        blocks.append(_note("No DPO optimizer step was taken."))
    return data, blocks


def _section_time(run: Run, out: Path) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Where the time went")]
    data: dict[str, Any] = {}
    if run.progress:
        keys: list[str] = []
        for line in run.progress:
            keys += [k for k in line if k.endswith("_seconds") and k not in keys]
        sums = {k: float(sum(line.get(k, 0.0) for line in run.progress)) for k in keys}
        phases = {k: v for k, v in sums.items() if k in PHASES}
        subs = {k: v for k, v in sums.items() if k not in PHASES}
        total = sum(phases.values())
        gen = phases.get("generate_seconds", 0.0) + phases.get("rollout_seconds", 0.0)
        tokens = sum(int(line.get("tokens", 0)) for line in run.progress)
        data["online"] = {
            "phases": phases,
            "total_seconds": total,
            "shares": {k: (v / total if total else None) for k, v in phases.items()},
            "sub_phases": subs,
            "sub_shares": {k: (v / gen if gen else None) for k, v in subs.items()},
            "tokens": tokens,
            "generation_seconds": gen,
            "tokens_per_second": tokens / gen if gen else None,
        }
        d = data["online"]
        blocks.append(("p", "Online stage, summed over every line of online/progress.jsonl:"))
        rows = [[k.removesuffix("_seconds"), num(v), pct(d["shares"][k])] for k, v in phases.items()]
        rows.append(["total", num(total), pct(1.0 if total else None)])
        blocks.append(("table", ["phase", "seconds", "share of total %"], rows))
        if subs:
            blocks.append(("p", "Sub-phases (parts of generate + rollout, not added to the total):"))
            blocks.append(
                (
                    "table",
                    ["sub-phase", "seconds", "share of generate + rollout %"],
                    [[k.removesuffix("_seconds"), num(v), pct(d["sub_shares"][k])] for k, v in subs.items()],
                )
            )
        blocks.append(
            (
                "table",
                ["generated tokens", "generate + rollout seconds", "tokens/s"],
                [[str(tokens), num(gen), num(d["tokens_per_second"], 1)]],
            )
        )
        _plot_time(phases, out / "time.png")
        blocks.append(("img", "time.png", "time by phase"))
    else:
        blocks.append(_note("Online stage has not run: no phase timings."))
    stages: dict[str, float | None] = {}
    if run.done.get("baseline"):
        stages["baseline"] = _sum_seconds(run.done["baseline"].get("seconds"))
    if "online" in data:
        stages["online"] = data["online"]["total_seconds"]
    for src, d in ((run.done.get("compile") or {}).get("sft") or {}).items():
        stages[f"sft-{src}"] = _sum_seconds((d or {}).get("seconds"))
    if run.done.get("evaluate"):
        stages["evaluate"] = _sum_seconds(run.done["evaluate"].get("seconds"))
    data["stages"] = stages
    if stages:
        blocks.append(("p", "Stage wall time (from each stage's done.json; online from progress.jsonl):"))
        blocks.append(("table", ["stage", "seconds"], [[k, num(v)] for k, v in stages.items()]))
    return data, blocks


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        out[prefix] = " ".join(str(v) for v in value)
    else:
        out[prefix] = value


def _section_provenance(run: Run) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Provenance")]
    if run.provenance is None:
        return {}, blocks + [_note("No provenance.json in the run folder.")]
    flat: dict[str, Any] = {}
    order = ["recipe", "recipe_hash", "git", "created", "python", "device", "seeds", "versions", "argv"]
    for key in order + [k for k in run.provenance if k not in order]:
        if key in run.provenance:
            _flatten(key, run.provenance[key], flat)
    blocks.append(("table", ["field", "value"], [[k, str(v)] for k, v in flat.items()]))
    return flat, blocks


# ---- plots ---------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 4.0):  # -> (Figure, Axes); Agg canvas, no pyplot state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _plot_progressive(curves: dict[str, list[tuple[int, bool]]], path: Path) -> None:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    colors = {"trained": "tab:blue", "frozen": "tab:gray", "zero_shot": "tab:orange"}
    zorder = {"trained": 3, "frozen": 2, "zero_shot": 1}
    for name, pts in curves.items():
        x = np.array([q for q, _ in pts])
        k = np.cumsum([c for _, c in pts])
        n = np.arange(1, len(pts) + 1)
        p = k / n
        z2 = Z95 * Z95
        denom = 1 + z2 / n
        center = (p + z2 / (2 * n)) / denom
        half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
        ax.plot(x, 100 * p, color=colors[name], label=CURVE_NAMES[name], lw=1.8, zorder=zorder[name] + 3)
        ax.fill_between(
            x,
            100 * np.clip(center - half, 0, 1),
            100 * np.clip(center + half, 0, 1),
            color=colors[name],
            alpha=0.15,
            lw=0,
            zorder=zorder[name],
        )
    ax.set_xlabel("training questions seen")
    ax.set_ylabel("progressive accuracy (%)")
    ax.set_ylim(-2, 102)  # a curve at 0% or 100% stays visible off the axis
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Progressive validation accuracy (95% Wilson bands)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path)


def _plot_pairs(by_chunk: dict[str, dict[str, int]], agents: list[str], path: Path) -> None:
    fig, ax = _figure(6.0, 3.5)
    idx = sorted(int(k) for k in by_chunk)
    width = 0.8 / max(1, len(agents))
    for j, agent in enumerate(agents):
        ax.bar(
            [i + j * width for i in idx], [by_chunk[str(i)].get(agent, 0) for i in idx], width, label=agent
        )
    ax.set_xticks([i + width * (len(agents) - 1) / 2 for i in idx], [str(i) for i in idx])
    ax.set_xlabel("chunk index of the node")
    ax.set_ylabel("DPO pairs")
    ax.set_title("Pairs by chunk index")
    ax.legend()
    _save(fig, path)


def _plot_time(phases: dict[str, float], path: Path) -> None:
    fig, ax = _figure(6.0, 0.6 + 0.45 * max(1, len(phases)))
    names = [k.removesuffix("_seconds") for k in phases]
    ax.barh(names, list(phases.values()), color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("seconds (online stage)")
    ax.set_title("Where the time went")
    _save(fig, path)


def _plot_table1(data: dict, path: Path) -> None:
    fig, ax = _figure(7.0, 4.0)
    tasks, rows = data["tasks"], data["rows"]
    width = 0.8 / max(1, len(rows))
    for j, r in enumerate(rows):
        xs, ys, errs, paper_x, paper_y = [], [], [[], []], [], []
        for i, task in enumerate(tasks):
            c = r["cells"].get(task)
            if not c:
                continue
            x = i + j * width
            xs.append(x)
            ys.append(100 * c["value"])
            lo, hi = c["ci"] or (c["value"], c["value"])
            errs[0].append(100 * (c["value"] - lo))
            errs[1].append(100 * (hi - c["value"]))
            if c["paper"] is not None:
                paper_x.append(x)
                paper_y.append(c["paper"])
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=ROW_NAMES.get(r["model"], r["model"]))
        if paper_x:
            ax.scatter(
                paper_x,
                paper_y,
                marker="_",
                s=300,
                color="black",
                zorder=3,
                label="paper" if j == 0 else None,
            )
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy (%)")
    with_paper = data.get("paper") is not None
    ax.set_title("Measured (bars, 95% CI)" + (" vs paper (black marks)" if with_paper else ""))
    ax.legend(fontsize=7)
    _save(fig, path)


# ---- rendering -----------------------------------------------------------------------------------


def _to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h":
            parts.append(f"{'#' * b[1]} {b[2]}")
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "list":
            parts.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            parts.append(tabulate(b[2], headers=b[1], tablefmt="github", disable_numparse=True))
        elif b[0] == "img":
            parts.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"(?<!\w)_([^_]+)_(?!\w)", r"<em>\1</em>", text)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}"""


def _to_html(blocks: list[Block], folder: Path, title: str) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
    ]
    for b in blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{_inline_html(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{_inline_html(b[1])}</p>")
        elif b[0] == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            rows = [[_inline_html(c) for c in row] for row in b[2]]
            parts.append(
                tabulate(
                    rows, headers=[html.escape(h) for h in b[1]], tablefmt="unsafehtml", disable_numparse=True
                )
            )
        elif b[0] == "img":
            data = base64.b64encode((folder / b[1]).read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- entry point ---------------------------------------------------------------------------------


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
            f"Run folder `{run.path}`; paper: "
            + (f"{ref[0]} / {ref[1]}" if ref else "none (the recipe has no `paper` ref)")
            + ".",
        )
    )
    blocks.append(("table", ["stage", "status"], [[s, st] for s, st in stages.items()]))
    for note in run.notes:
        blocks.append(_note(note))
    sections = [
        ("progressive", _section_progressive(run, paper, model, folder)),
        ("table1", _section_table1(run, paper, model, folder)),
        ("traces", _section_traces(run, folder)),
        ("time", _section_time(run, folder)),
        ("provenance", _section_provenance(run)),
    ]
    for key, (part, section_blocks) in sections:
        data[key] = part
        blocks += section_blocks
    return data, blocks


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write RUN/report/{report.md, report.html, report.json, *.png}; copy the folder to `out` when given.

    RUN/report is rebuilt from scratch; in `out`, report files this report no longer has are removed.
    Returns the path of report.md (in `out` when given, else in RUN/report).
    """
    run_dir = Path(run_dir)
    folder = run_dir / "report"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    data, blocks = build_report(run_dir, folder)
    (folder / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(_to_markdown(blocks))
    (folder / "report.html").write_text(_to_html(blocks, folder, f"Run report: {data['run']['recipe']}"))
    if out is None:
        return folder / "report.md"
    out = Path(out)
    for name in REPORT_FILES:  # a PNG of an earlier report whose section is now skipped must not linger
        if (out / name).is_file() and not (folder / name).exists():
            (out / name).unlink()
    shutil.copytree(folder, out, dirs_exist_ok=True)
    return out / "report.md"
