"""The report's Table 1: each evaluated model (base, online policy, the SFT models) on each eval task, beside the
paper's number where the recipe names a paper, with the exact lm-eval settings under each number and the evaluate
stage's findings on its adapters."""

from __future__ import annotations

from pathlib import Path

from harness.reporting.cells import num, pct, pct_ci, signed
from harness.reporting.eval_metrics import headline_metric, metric_filter, metric_label
from harness.reporting.names import ROW_NAMES, ROW_ORDER
from harness.reporting.papers import Paper
from harness.reporting.plots import plot_table1
from harness.reporting.render import Block, note
from harness.reporting.run_folder import RunView
from harness.reporting.stats import wilson

STRICT = "exact_match,strict-match"


def section_table1(run: RunView, paper: Paper | None, model: str | None, out: Path) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Table 1: SFT on traces from each source")]
    models = run.eval_records()
    if not models:
        return {}, blocks + [note("Evaluate stage has not run: no evaluate/done.json.")]
    labels = [m for m in ROW_ORDER if m in models] + sorted(m for m in models if m not in ROW_ORDER)
    tasks: list[str] = []
    for label in labels:
        for rec in models[label]:
            if rec.get("task") not in tasks:
                tasks.append(rec.get("task"))
    rows_data = [{"model": label, "method": paper.method_for_run_model(label) if paper else None,
                  "cells": model_cells(models[label], paper, model, label)} for label in labels]
    data = {"paper": {"paper": paper.paper, "model": model} if paper else None, "tasks": tasks, "rows": rows_data}
    blocks += [main_table(rows_data, tasks, paper is not None), paper_note(rows_data, paper, model)]
    blocks += [("p", "Exact evaluation settings under each number:"), settings_table(rows_data)]
    data["adapter_checks"] = (run.done.get("evaluate") or {}).get("adapter_checks", {})
    blocks += adapter_check_notes(data["adapter_checks"])
    plot_table1(data, out / "table1.png")
    blocks.append(("img", "table1.png", "Table 1"))
    return data, blocks


def model_cells(records: list[dict], paper: Paper | None, model: str | None, label: str) -> dict[str, dict]:
    """One evaluated model's cell per task: its headline number with the interval, every metric, the settings it
    was measured with, and the paper's number beside it."""
    method = paper.method_for_run_model(label) if paper else None
    cells = {}
    for rec in records:
        metric = headline_metric(rec)
        if metric is None:
            continue
        value, n = float(rec["metrics"][metric]["value"]), rec.get("n")
        cell = {
            "lm_eval_task": rec.get("lm_eval_task"), "version": rec.get("version"), "n_shot": rec.get("n_shot"),
            "chat_template": rec.get("chat_template"), "limit": rec.get("limit"), "n": n,
            "metric": metric, "filter": metric_filter(metric), "value": value,
            "ci": list(wilson(value * n, n)) if n else None,
            "metrics": {k: float(v["value"]) for k, v in rec["metrics"].items()},
            "paper": None, "paper_source": None, "delta_points": None,
        }
        if paper is not None and method is not None and rec.get("task") in paper.benchmarks:
            row = paper.number(model, method, rec["task"])
            if row is not None:
                cell["paper"], cell["paper_source"] = row.value, row.source
                if row.value is not None:
                    cell["delta_points"] = 100 * value - row.value
        cells[rec.get("task")] = cell
    return cells


def main_table(rows_data: list[dict], tasks: list[str], with_paper: bool) -> Block:
    """A row per model: each task's headline % with its interval (and strict-match, and the paper's number and Δ
    where there is one), then a row of the settings every number shares."""
    extra = {t: any(STRICT in c["metrics"] and c["metric"] != STRICT
                    for r in rows_data for task, c in r["cells"].items() if task == t) for t in tasks}
    headers = ["model"]
    for task in tasks:
        headers.append(f"{task} % [95% CI] (metric)")
        headers += [f"{task} strict-match %"] if extra[task] else []
        headers += [f"{task} paper %", f"{task} Δ"] if with_paper else []
    rows = []
    for r in rows_data:
        row = [ROW_NAMES.get(r["model"], r["model"])]
        for task in tasks:
            c = r["cells"].get(task)
            row.append(f"{pct_ci(c['value'], c['ci'])} ({metric_label(c['metric'])})" if c else "–")
            if extra[task]:
                row.append(pct(c["metrics"].get(STRICT)) if c else "–")
            if with_paper:
                row += [num(c["paper"], 1) if c else "–", signed(c["delta_points"]) if c else "–"]
        rows.append(row)
    settings_row = ["settings"]
    for task in tasks:
        kinds = {_settings(r["cells"][task]) for r in rows_data if task in r["cells"]}
        settings_row.append(kinds.pop() if len(kinds) == 1 else "varies: see below")
        settings_row += [""] * (int(extra[task]) + (2 if with_paper else 0))
    rows.append(settings_row)
    return ("table", headers, rows)


def paper_note(rows_data: list[dict], paper: Paper | None, model: str | None) -> Block:
    if paper is None:
        return note("The recipe has no `paper` ref: no published numbers beside these.")
    sources = sorted({c["paper_source"] for r in rows_data for c in r["cells"].values() if c["paper_source"]})
    return ("p", f"Paper numbers: {paper.paper} / {model} ({paper.models[model].name}); source: "
                 + ("; ".join(sources) or "none for these rows") + ". Δ = measured − paper, points.")


def settings_table(rows_data: list[dict]) -> Block:
    """Every number's lm-eval task, shots, chat template, limit, sample count, headline metric and all metrics."""
    headers = ["model", "task", "lm-eval task", "n-shot", "chat template", "limit", "n", "headline (filter)",
               "all metrics %"]
    rows = [[r["model"], task, str(c["lm_eval_task"]), str(c["n_shot"]), str(c["chat_template"]),
             "–" if c["limit"] is None else str(c["limit"]), str(c["n"]), f"{c['metric']}",
             "; ".join(f"{k} {pct(v)}" for k, v in c["metrics"].items())]
            for r in rows_data for task, c in r["cells"].items()]
    return ("table", headers, rows)


def adapter_check_notes(checks: dict[str, dict]) -> list[Block]:
    """The evaluate stage's findings on its adapters (one too weak to change a greedy answer, one never trained)."""
    warnings = [check["warning"] for check in checks.values() if check.get("warning")]
    return [("p", "Adapter checks:"), ("list", warnings)] if warnings else []


def _settings(cell: dict) -> str:
    chat = "chat template" if cell["chat_template"] else "no chat template"
    limit = "" if cell["limit"] is None else f", limit {cell['limit']}"
    return f"lm-eval `{cell['lm_eval_task']}`, {cell['n_shot']}-shot, {chat}{limit}"
