"""`harness compare`: runs side by side (and beside a paper), with significance tests and a CI gate.

Metric names (all are proportions 0..1 with an n read from the run folder):

- `progressive_accuracy`, `frozen_accuracy`, `zero_shot_accuracy`: the online curves, from
  online/progress.jsonl (n = lines carrying the field; falls back to online/done.json, n = questions).
- `baseline_accuracy`: baseline/done.json `accuracy` (n = its `n`).
- `MODEL/TASK/METRIC,FILTER`: one lm-eval metric of evaluate/done.json, e.g.
  `sft-flow/gsm8k/exact_match,flexible-extract` or `base/math/exact_match,none` (n = the record's `n`).

Every later run is compared with the first: Δ in percentage points and the two-sided p-value of a pooled
two-proportion z-test (k = value * n). Runs on the same questions are paired, so the z-test is conservative.

Above the metrics, one row per run (`run_facts`): its strategy (`online.strategy.name`), questions logged, pairs per
question of each agent, generated tokens and online wall seconds per question, and for later runs the paired test
of progressive accuracy against run 1 (exact McNemar on `correct_before` of the shared question ids; a note names
the runs whose ids differ from run 1's).

`fail_below={"METRIC": DELTA}`: exit code 1 when a later run's METRIC is lower than the first run's by more
than DELTA, or lacks it. DELTA is a proportion (0.02 = 2 points); a negative DELTA demands an improvement.

Paper numbers (`paper="flow-dpo"`): the model is `paper_model` when given, else the first run's recipe
`paper.model` when its recipe refs the same paper, else every model of the paper (one column each).
A published number sits on the row of the run metric that measures it: the method's `run_model` label +
benchmark = eval task name, headline metric (flexible-extract for gsm8k, else the first metric).
Published numbers that no run measured get their own rows (`sft-flow/gsm8k`, or `paper:METHOD/BENCH` for
methods with no run label).

Formats (`fmt`): `text` aligned terminal tables (each run's value with its 95% Wilson CI, Δ and p vs run 1,
the paper's columns), `md` markdown tables, `json` the numbers as one object (`comparison()`: values and CIs as
proportions, Δ in points, published numbers in %, each run's facts under `runs`). The gate's lines and exit code
are the same in all three.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from harness.errors import CompareError
from harness.reporting.cells import num
from harness.reporting.eval_metrics import headline_metric
from harness.reporting.papers import Paper, load_paper
from harness.reporting.run_facts import paired, run_facts
from harness.reporting.run_folder import RunView, load_run
from harness.reporting.stats import two_proportion_z, wilson
from harness.run.progress import CURVES

FORMATS = ("text", "md", "json")
WRAP = 110
"""Width the text format wraps its prose lines at (the table itself is as wide as its columns)."""


@dataclass(frozen=True)
class Metric:
    """A proportion measured on n items."""

    value: float
    n: float

    @property
    def k(self) -> float:
        return self.value * self.n


def run_metrics(run: RunView) -> tuple[dict[str, Metric], dict[tuple[str, str], str]]:
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


def _paper_models(paper: Paper, first: RunView, paper_model: str | None) -> list[str]:
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


def _published(
    pap: Paper, models: list[str], measured: list[tuple[dict[str, Metric], dict]], names: list[str]
) -> tuple[list[str], dict[str, dict[str, tuple[float | None, str]]]]:
    """(metric names with the paper-only rows added, row name -> model -> (published value %, source))."""
    names = list(names)
    rows: dict[str, dict[str, tuple[float | None, str]]] = {}
    headlines: dict[tuple[str, str], str] = {}
    for _, heads in measured:
        headlines = heads | headlines  # the first run that measured a (model, task) names its headline
    for model in models:
        for row in pap.numbers(pap.default_version):
            if row.model != model:
                continue
            run_model = pap.methods[row.method].run_model
            name = headlines.get((run_model, row.benchmark)) if run_model else None
            if name is None:
                name = f"{run_model}/{row.benchmark}" if run_model else f"paper:{row.method}/{row.benchmark}"
            if name not in names:
                names.append(name)
            rows.setdefault(name, {}).setdefault(model, (row.value, row.source))
    return names, rows


def _cell(v: Metric | None, first: Metric | None, later: bool) -> dict | None:
    """One run's value of a metric: proportion, n, k, 95% Wilson CI; Δ points and p vs run 1 for later runs."""
    if v is None:
        return None
    cell: dict = {
        "value": v.value,
        "n": v.n,
        "k": v.k,
        "ci": list(wilson(v.k, v.n)),
        "delta_points": None,
        "p_value": None,
    }
    if later and first is not None:
        cell["delta_points"] = 100 * (v.value - first.value)
        cell["p_value"] = two_proportion_z(first.k, first.n, v.k, v.n)[1]
    return cell


def _paper_info(pap: Paper, models: list[str]) -> dict:
    """The paper's identity, the models whose columns are shown, and what it says about them."""
    statements = [
        {"metric": st.metric, "model": st.model, "text": st.text, "source": st.source, "note": st.note}
        for m in models
        for st in pap.statements_for(m)
    ]
    return {"paper": pap.paper, "title": pap.title, "arxiv": pap.arxiv, "models": models, "statements": statements}


def comparison(
    runs: list[Path],
    paper: str | None = None,
    fail_below: dict[str, float] | None = None,
    paper_model: str | None = None,
) -> dict:
    """Every number `compare` prints, as one JSON-able object; CompareError when it cannot be made as asked."""
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
    published: dict[str, dict[str, tuple[float | None, str]]] = {}
    if pap is not None:
        names, published = _published(pap, models, measured, names)
    rows = []
    for name in names:
        vals = [metrics.get(name) for metrics, _ in measured]
        pub = published.get(name, {})
        rows.append(
            {
                "name": name,
                "values": [_cell(v, vals[0], i > 0) for i, v in enumerate(vals)],
                "paper_percent": {m: pub[m][0] for m in models if m in pub},
                "paper_sources": sorted({src for _, src in pub.values()}),
            }
        )
    checks, code = _gate(loaded, measured, labels, fail_below)
    facts = [
        {"label": label, "name": r.name, "path": str(r.path), **run_facts(r)}
        | {"paired": paired(loaded[0], r) if i else None}
        for i, (label, r) in enumerate(zip(labels, loaded, strict=True))
    ]
    return {
        "runs": facts,
        "paper": _paper_info(pap, models) if pap else None,
        "metrics": rows,
        "gate": {"fail_below": fail_below, "checks": checks, "exit_code": code},
    }


def compare(
    runs: list[Path],
    paper: str | None = None,
    fail_below: dict[str, float] | None = None,
    paper_model: str | None = None,
    fmt: str = "md",
) -> tuple[str, int]:
    """The runs side by side (and the paper's numbers) as `fmt`; (printed text, exit code 0 or 1).

    The default stays `md`, the table this function has always returned; the CLI's default is `text`.
    """
    if fmt not in FORMATS:
        raise CompareError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    data = comparison(runs, paper, fail_below, paper_model)
    render = {"text": render_text, "md": render_md, "json": render_json}[fmt]
    return render(data), data["gate"]["exit_code"]


def render_json(data: dict) -> str:
    """The comparison object, indented."""
    return json.dumps(data, indent=2) + "\n"


def _ns(row: dict) -> str:
    """The distinct n of a row over the runs, `/`-joined."""
    return "/".join(sorted({f"{c['n']:g}" for c in row["values"] if c is not None})) or "–"


def _md_value(cell: dict | None) -> str:
    if cell is None:
        return "–"
    if cell["p_value"] is None:
        return f"{100 * cell['value']:.1f}"
    return f"{100 * cell['value']:.1f} ({cell['delta_points']:+.1f}, {_fmt_p(cell['p_value'])})"


def _paper_value(row: dict, model: str) -> str:
    value = row["paper_percent"].get(model)
    return "–" if value is None else f"{value:.1f}"


def _statement_lines(paper: dict) -> list[str]:
    """`  paper on METRIC (WHO): TEXT [SOURCE] NOTE`, one per statement about the shown models."""
    return [
        f"  paper on {st['metric']} ({st['model'] or 'all models'}): {st['text']} [{st['source']}]"
        + (f" {st['note']}" if st["note"] else "")
        for st in paper["statements"]
    ]


def _runs_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, one row per run): strategy, questions, pairs/tokens/seconds per question, paired Δ and p vs run 1."""
    agents = sorted({a for r in data["runs"] for a in r["pairs_per_question"]})
    headers = ["run", "strategy", "questions"] + [f"{a} pairs/q" for a in agents]
    headers += ["tokens/q", "seconds/q", "shared ids", "paired Δ pts", "McNemar p"]
    rows = []
    for i, r in enumerate(data["runs"]):
        pairs = r["pairs_per_question"]
        row = [f"run {i + 1}", r["strategy"] or "–", str(r["questions"])]
        row += [f"{pairs[a]:.2f}" if a in pairs else "–" for a in agents]
        row += [num(r["tokens_per_question"], 1), num(r["seconds_per_question"], 2)]
        pair = r["paired"]
        if pair is None or pair["p_value"] is None:
            row += ["–" if pair is None else "0", "–", "–"]
        else:
            row += [str(pair["shared"]), f"{pair['delta_points']:+.1f}", _p_text(pair["p_value"])]
        rows.append(row)
    return headers, rows


def _paired_lines(data: dict) -> list[str]:
    """What the runs table's per-question and paired columns are, and each later run whose question ids differ."""
    lines = [
        "Per question of online/progress.jsonl: pairs per agent, generated tokens, online seconds (sum of the phases). "
        "Paired vs run 1: Δ points of correct_before on the question ids both runs logged, two-sided exact McNemar "
        "test."
    ]
    for r in data["runs"][1:]:
        pair = r["paired"]
        if pair["shared"] == 0:
            lines.append(f"{r['label']}: no question id in common with run 1: no paired test.")
        elif not pair["same_ids"]:
            lines.append(
                f"{r['label']}: question ids differ from run 1's ({pair['shared']} shared, {pair['only_in_first']} "
                f"only in run 1, {pair['only_in_later']} only in this run): the paired test uses the shared ones."
            )
    return lines


def render_md(data: dict) -> str:
    """Markdown: one github table, Δ and p in each later run's cell, the paper's columns and its claims."""
    pap = data["paper"]
    headers = ["metric", "n"] + [r["label"] for r in data["runs"]]
    if pap is not None:
        headers += [f"paper {m} %" for m in pap["models"]] + ["paper source"]
    rows = []
    for row in data["metrics"]:
        cells = [row["name"], _ns(row)] + [_md_value(c) for c in row["values"]]
        if pap is not None:
            cells += [_paper_value(row, m) for m in pap["models"]] + ["; ".join(row["paper_sources"])]
        rows.append(cells)
    lines = [f"{r['label']}  (recipe {r['name']}, {r['path']})" for r in data["runs"]]
    run_headers, run_rows = _runs_table(data)
    lines += ["", tabulate(run_rows, headers=run_headers, tablefmt="github", disable_numparse=True), ""]
    lines += _paired_lines(data)
    lines += ["", tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    lines.append("Values in %; (Δ points vs run 1, two-sided pooled two-proportion z-test p); n from the run files.")
    if pap is not None:
        models = ", ".join(pap["models"])
        lines.append(f"Paper: {pap['paper']} ({pap['title']}, arXiv {pap['arxiv']}); models: {models}.")
        lines += _statement_lines(pap)
    lines += [c["message"] for c in data["gate"]["checks"]]
    return "\n".join(lines) + "\n"


def _p_text(p: float) -> str:
    """A p-value for a table column: `0.736`, `<0.001`."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _stars(p: float) -> str:
    """Significance marks of a p-value: *** < 0.001, ** < 0.01, * < 0.05."""
    return next((s for s, cut in (("***", 0.001), ("**", 0.01), ("*", 0.05)) if p < cut), "")


def _text_cells(cell: dict | None, later: bool) -> list[str]:
    """A run's columns in the text table: value %, 95% CI, and for later runs Δ points and p."""
    if cell is None:
        return ["–", ""] + (["", ""] if later else [])
    lo, hi = cell["ci"]
    out = [f"{100 * cell['value']:.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]"]
    if later:
        p = cell["p_value"]
        out += ["–", ""] if p is None else [f"{cell['delta_points']:+.1f}", f"{_p_text(p)} {_stars(p)}".rstrip()]
    return out


def _wrap(text: str) -> list[str]:
    """A prose line wrapped to WRAP columns, continuation lines indented under it."""
    indent = " " * (len(text) - len(text.lstrip()) + 2)
    return textwrap.wrap(text, WRAP, subsequent_indent=indent, break_on_hyphens=False) or [""]


def render_text(data: dict) -> str:
    """Terminal table: runs side by side with 95% CIs, Δ and p vs run 1, the paper's columns; gate lines."""
    pap = data["paper"]
    headers, align = ["metric", "n"], ["left", "right"]
    for i, _ in enumerate(data["runs"]):
        headers += [f"run {i + 1} %", "95% CI"] + (["Δ pts", "p"] if i else [])
        align += ["right", "right"] + (["right", "left"] if i else [])
    models = pap["models"] if pap is not None else []
    headers += [f"paper {m} %" for m in models]
    align += ["right"] * len(models)
    rows = [
        [row["name"], _ns(row)]
        + [x for i, c in enumerate(row["values"]) for x in _text_cells(c, i > 0)]
        + [_paper_value(row, m) for m in models]
        for row in data["metrics"]
    ]
    lines = [f"{r['label']}  (recipe {r['name']}, {r['path']})" for r in data["runs"]]
    run_headers, run_rows = _runs_table(data)
    run_align = ["left", "left"] + ["right"] * (len(run_headers) - 2)
    lines += ["", tabulate(run_rows, headers=run_headers, tablefmt="simple", disable_numparse=True, colalign=run_align)]
    lines += [""] + [w for line in _paired_lines(data) for w in _wrap(line)]
    table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, colalign=align)
    lines += ["", table, ""]
    lines += _wrap(
        "Values in % of n; 95% Wilson CI; Δ points and p vs run 1 (two-sided pooled two-proportion z-test, "
        "conservative for runs on the same questions): * p<0.05, ** p<0.01, *** p<0.001."
    )
    if pap is not None:
        sources = sorted({s for row in data["metrics"] for s in row["paper_sources"]})
        lines += _wrap(
            f"Paper: {pap['paper']} ({pap['title']}, arXiv {pap['arxiv']}); models: {', '.join(models)}; "
            f"source: {'; '.join(sources) or 'none'}."
        )
        lines += [w for st in _statement_lines(pap) for w in _wrap(st)]
    lines += [c["message"] for c in data["gate"]["checks"]]
    return "\n".join(lines) + "\n"


def _gate(
    loaded: list[RunView],
    measured: list[tuple[dict[str, Metric], dict]],
    labels: list[str],
    fail_below: dict[str, float],
) -> tuple[list[dict], int]:
    """The --fail-below checks of every later run against run 1: (one dict per check, exit code 0 or 1)."""
    if not fail_below:
        return [], 0
    if len(loaded) < 2:
        raise CompareError("--fail-below compares later runs with the first: give at least two runs")
    checks: list[dict] = []
    first = measured[0][0]
    for metric, delta in fail_below.items():
        if not -1.0 <= delta <= 1.0:
            raise CompareError(f"--fail-below {metric}={delta}: DELTA is a proportion in [-1, 1] (0.02 = 2 points)")
        if metric not in first:
            raise CompareError(f"--fail-below {metric}: run 1 has no such metric (known: {', '.join(first)})")
        base = first[metric].value
        for label, (metrics, _) in zip(labels[1:], measured[1:], strict=True):
            got = metrics.get(metric)
            check = {
                "metric": metric,
                "run": label,
                "value": None if got is None else got.value,
                "first": base,
                "allowed_drop": delta,
            }
            if got is None:
                check |= {"status": "fail", "message": f"FAIL {metric}: {label} does not have it"}
            elif base - got.value > delta:
                check |= {
                    "status": "fail",
                    "message": (
                        f"FAIL {metric}: {label} {got.value:.4f} is {base - got.value:.4f} below run 1's "
                        f"{base:.4f} (allowed {delta})"
                    ),
                }
            else:
                check |= {
                    "status": "ok",
                    "message": (f"ok   {metric}: {label} {got.value:.4f} vs run 1's {base:.4f} (allowed drop {delta})"),
                }
            checks.append(check)
    return checks, int(any(c["status"] == "fail" for c in checks))
