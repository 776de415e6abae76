"""`harness compare`: runs side by side (and beside a paper), with significance tests and a CI gate.

Metric names (all are proportions 0..1 with an n read from the run folder):

- `progressive_accuracy`, `frozen_accuracy`, `zero_shot_accuracy`: the online curves, from
  online/progress.jsonl (n = lines carrying the field; falls back to online/done.json, n = questions).
- `baseline_accuracy`: baseline/done.json `accuracy` (n = its `n`).
- `MODEL/TASK/METRIC,FILTER`: one lm-eval metric of evaluate/done.json, e.g.
  `sft-flow/gsm8k/exact_match,flexible-extract` or `base/math/exact_match,none` (n = the record's `n`).

Every later run is compared with the first: Δ in percentage points and the two-sided p-value of a pooled
two-proportion z-test (k = value * n). Runs on the same questions are paired, so the z-test is conservative.

`fail_below={"METRIC": DELTA}`: exit code 1 when a later run's METRIC is lower than the first run's by more
than DELTA, or lacks it. DELTA is a proportion (0.02 = 2 points); a negative DELTA demands an improvement.

Paper numbers (`paper="flow-dpo"`): the model is `paper_model` when given, else the first run's recipe
`paper.model` when its recipe refs the same paper, else every model of the paper (one column each).
A published number sits on the row of the run metric that measures it: the method's `run_model` label +
benchmark = eval task name, headline metric (flexible-extract for gsm8k, else the first metric).
Published numbers that no run measured get their own rows (`sft-flow/gsm8k`, or `paper:METHOD/BENCH` for
methods with no run label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from harness.papers import Paper, load_paper
from harness.report import CURVES, Run, headline_metric, load_run


class CompareError(ValueError):
    """A comparison that cannot be made as asked (unknown metric, bad DELTA, too few runs)."""


@dataclass(frozen=True)
class Metric:
    """A proportion measured on n items."""

    value: float
    n: float

    @property
    def k(self) -> float:
        return self.value * self.n


def run_metrics(run: Run) -> tuple[dict[str, Metric], dict[tuple[str, str], str]]:
    """(metric name -> Metric, (model label, task) -> headline metric name) of one run."""
    out: dict[str, Metric] = {}
    done = run.done.get("online") or {}
    for curve, key in CURVES.items():
        name = "progressive_accuracy" if curve == "trained" else f"{curve}_accuracy"
        vals = [bool(line[key]) for line in run.progress if key in line]
        if vals:
            out[name] = Metric(sum(vals) / len(vals), len(vals))
        elif done.get(name) is not None and done.get("questions"):
            out[name] = Metric(float(done[name]), done["questions"])
    base = run.done.get("baseline") or {}
    if base.get("accuracy") is not None and base.get("n"):
        out["baseline_accuracy"] = Metric(float(base["accuracy"]), base["n"])
    headlines: dict[tuple[str, str], str] = {}
    for label, records in run.eval_records().items():
        for rec in records:
            for metric, m in (rec.get("metrics") or {}).items():
                if rec.get("n"):
                    out[f"{label}/{rec.get('task')}/{metric}"] = Metric(float(m["value"]), rec["n"])
            head = headline_metric(rec)
            if head:
                headlines[(label, str(rec.get("task")))] = f"{label}/{rec.get('task')}/{head}"
    return out, headlines


def two_proportion_z(k1: float, n1: float, k2: float, n2: float) -> tuple[float, float]:
    """Pooled two-proportion z-test of p2 - p1: (z, two-sided p-value); (0, 1) when undefined."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k2 / n2 - k1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def parse_fail_below(items: list[str]) -> dict[str, float]:
    """`["progressive_accuracy=0.02", ...]` -> {metric: delta}; splits on the last `=`."""
    out = {}
    for item in items:
        metric, sep, raw = item.rpartition("=")
        if not sep or not metric:
            raise CompareError(f"--fail-below {item!r}: expected METRIC=DELTA")
        try:
            out[metric] = float(raw)
        except ValueError:
            raise CompareError(f"--fail-below {item!r}: DELTA {raw!r} is not a number") from None
    return out


def _fmt_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _paper_models(paper: Paper, first: Run, paper_model: str | None) -> list[str]:
    if paper_model is not None:
        if paper_model not in paper.models:
            raise CompareError(
                f"paper model {paper_model!r} is not in {paper.paper} (known: {', '.join(paper.models)})"
            )
        return [paper_model]
    ref = first.paper_ref()
    if ref and ref[0] == paper.paper and ref[1] in paper.models:
        return [ref[1]]
    return list(paper.models)


def compare(
    runs: list[Path],
    paper: str | None = None,
    fail_below: dict[str, float] | None = None,
    paper_model: str | None = None,
) -> tuple[str, int]:
    """Side-by-side table of the runs (and the paper's numbers); (printed text, exit code 0 or 1)."""
    if not runs:
        raise CompareError("compare needs at least one run folder")
    fail_below = fail_below or {}
    loaded = [load_run(r) for r in runs]
    measured = [run_metrics(r) for r in loaded]
    labels = [f"run {i + 1}: {r.path.name}" for i, r in enumerate(loaded)]
    names: list[str] = []
    for metrics, _ in measured:
        names += [m for m in metrics if m not in names]

    pap = load_paper(paper) if paper else None
    models = _paper_models(pap, loaded[0], paper_model) if pap else []
    paper_rows: dict[str, dict[str, tuple[float | None, str]]] = {}  # row name -> model -> (value, source)
    if pap is not None:
        headlines: dict[tuple[str, str], str] = {}
        for _, heads in measured:
            headlines = heads | headlines
        for model in models:
            for row in pap.numbers(pap.default_version):
                if row.model != model:
                    continue
                run_model = pap.methods[row.method].run_model
                name = headlines.get((run_model, row.benchmark)) if run_model else None
                if name is None:
                    name = (
                        f"{run_model}/{row.benchmark}" if run_model else f"paper:{row.method}/{row.benchmark}"
                    )
                if name not in names:
                    names.append(name)
                paper_rows.setdefault(name, {}).setdefault(model, (row.value, row.source))

    headers = ["metric", "n"] + labels
    if pap is not None:
        headers += [f"paper {m} %" for m in models] + ["paper source"]
    rows = []
    for name in names:
        vals = [metrics.get(name) for metrics, _ in measured]
        ns = sorted({f"{v.n:g}" for v in vals if v is not None})
        row = [name, "/".join(ns) or "–"]
        first = vals[0]
        for i, v in enumerate(vals):
            if v is None:
                row.append("–")
            elif i == 0 or first is None:
                row.append(f"{100 * v.value:.1f}")
            else:
                _, p = two_proportion_z(first.k, first.n, v.k, v.n)
                row.append(f"{100 * v.value:.1f} ({100 * (v.value - first.value):+.1f}, {_fmt_p(p)})")
        if pap is not None:
            published = paper_rows.get(name, {})
            for m in models:
                value = published.get(m, (None, ""))[0]
                row.append("–" if value is None else f"{value:.1f}")
            row.append("; ".join(sorted({src for _, src in published.values()})))
        rows.append(row)

    lines = [f"{label}  (recipe {r.name}, {r.path})" for label, r in zip(labels, loaded, strict=True)]
    lines += ["", tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    lines.append(
        "Values in %; (Δ points vs run 1, two-sided pooled two-proportion z-test p); n from the run files."
    )
    if pap is not None:
        lines.append(f"Paper: {pap.paper} ({pap.title}, arXiv {pap.arxiv}); models: {', '.join(models)}.")
        for st in [s for m in models for s in pap.statements_for(m)]:
            who = st.model or "all models"
            lines.append(
                f"  paper on {st.metric} ({who}): {st.text} [{st.source}]"
                + (f" {st.note}" if st.note else "")
            )
    code = _gate(loaded, measured, labels, fail_below, lines)
    return "\n".join(lines) + "\n", code


def _gate(
    loaded: list[Run],
    measured: list[tuple[dict[str, Metric], dict]],
    labels: list[str],
    fail_below: dict[str, float],
    lines: list[str],
) -> int:
    if not fail_below:
        return 0
    if len(loaded) < 2:
        raise CompareError("--fail-below compares later runs with the first: give at least two runs")
    code = 0
    first = measured[0][0]
    for metric, delta in fail_below.items():
        if not -1.0 <= delta <= 1.0:
            raise CompareError(
                f"--fail-below {metric}={delta}: DELTA is a proportion in [-1, 1] (0.02 = 2 points)"
            )
        if metric not in first:
            raise CompareError(f"--fail-below {metric}: run 1 has no such metric (known: {', '.join(first)})")
        base = first[metric].value
        for label, (metrics, _) in zip(labels[1:], measured[1:], strict=True):
            got = metrics.get(metric)
            if got is None:
                lines.append(f"FAIL {metric}: {label} does not have it")
                code = 1
            elif base - got.value > delta:
                lines.append(
                    f"FAIL {metric}: {label} {got.value:.4f} is {base - got.value:.4f} below run 1's "
                    f"{base:.4f} (allowed {delta})"
                )
                code = 1
            else:
                lines.append(
                    f"ok   {metric}: {label} {got.value:.4f} vs run 1's {base:.4f} (allowed drop {delta})"
                )
    return code
