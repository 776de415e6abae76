"""The combined report of a sweep (ROOT/sweep.md, sweep.json, PNGs): against the swept value, what each run's online
stage logged: progressive accuracy of the trained and frozen policies with 95% Wilson intervals, their paired
difference (McNemar), pairs per question per agent, generated tokens per question, the strategy's own per-question
means (the Flow's Stop decisions, chunks, nodes) and wall time per question."""

from __future__ import annotations

import json
from pathlib import Path

from harness.reporting import online_lines
from harness.reporting.cells import num, pct_ci
from harness.reporting.render import to_html, to_markdown
from harness.reporting.run_facts import run_facts
from harness.reporting.run_folder import load_run
from harness.reporting.stats import cumulative, curve, paired_difference
from harness.run.progress import CURVES


def sweep_row(run_dir: Path) -> dict:
    """What the combined report shows of one run (its online stage)."""
    run = load_run(run_dir)
    lines = run.progress
    n = len(lines)
    row = {"questions": n, **{name: cumulative(curve(lines, key)) for name, key in CURVES.items()}}
    paired = [(line[CURVES["frozen"]], line[CURVES["trained"]]) for line in lines if CURVES["frozen"] in line]
    row["difference"] = paired_difference(*zip(*paired)) if paired else None
    facts = run_facts(run)
    row |= {key: facts[key] for key in ("pairs_per_question", "tokens_per_question", "seconds_per_question")}
    row["strategy_means"] = online_lines.strategy_means(lines)
    return row


def write_sweep_report(root: Path, key: str, values: list[str], zipped: dict[str, list[str]] | None = None) -> Path:
    zipped = zipped or {}
    rows = {value: sweep_row(root / f"{key}={value}") for value in values}
    agents = sorted({a for row in rows.values() for a in row["pairs_per_question"]})
    fields = sorted({f for row in rows.values() for f in row["strategy_means"]})
    headers = [key, *zipped, "questions", "trained % [95% CI]", "frozen % [95% CI]", "trained − frozen pts [95% CI]",
               "McNemar p", *[f"{a} pairs/q" for a in agents], "tokens/q", *[f"{f}/q" for f in fields], "seconds/q"]
    table = []
    for i, (value, row) in enumerate(rows.items()):
        diff = row["difference"]
        table.append([
            value, *[others[i] for others in zipped.values()], str(row["questions"]),
            pct_ci(row["trained"]["value"], row["trained"]["ci"]),
            pct_ci(row["frozen"]["value"], row["frozen"]["ci"]),
            f"{100 * diff['delta']:+.1f} [{100 * diff['ci'][0]:+.1f}, {100 * diff['ci'][1]:+.1f}]" if diff else "—",
            f"{diff['p_mcnemar']:.3g}" if diff else "—",
            *[num(row["pairs_per_question"].get(a)) for a in agents], num(row["tokens_per_question"], 1),
            *[num(row["strategy_means"].get(f)) for f in fields], num(row["seconds_per_question"]),
        ])
    plot_sweep(key, rows, agents, root)
    blocks = [("h", 1, f"Sweep of {key}"),
              ("p", f"One run per value, each in {root.name}/{key}=VALUE/; the online stage's progress log of each."),
              ("table", headers, table),
              ("img", "sweep_accuracy.png", "accuracy against the swept value"),
              ("img", "sweep_cost.png", "pairs, tokens and time per question against the swept value")]
    (root / "sweep.json").write_text(json.dumps({"key": key, "values": values, "with": zipped, "runs": rows},
                                                indent=2))
    (root / "sweep.md").write_text(to_markdown(blocks))
    (root / "sweep.html").write_text(to_html(blocks, root, f"Sweep of {key}"))
    return root / "sweep.md"


def plot_sweep(key: str, rows: dict[str, dict], agents: list[str], folder: Path) -> None:
    """Accuracy (trained, frozen, with 95% intervals) and cost per question against the swept value."""
    from harness.reporting.plots import figure, save

    x = list(range(len(rows)))
    fig, ax = figure(6.5, 3.8)
    for name, color, shift in (("trained", "tab:blue", -0.05), ("frozen", "tab:gray", 0.05)):
        cells = [row[name] for row in rows.values()]
        if not all(c["n"] for c in cells):
            continue
        values = [100 * c["value"] for c in cells]
        errors = [[100 * (c["value"] - c["ci"][0]) for c in cells], [100 * (c["ci"][1] - c["value"]) for c in cells]]
        ax.errorbar([i + shift for i in x], values, yerr=errors, color=color, marker="o", capsize=3, label=name)
    ax.set_xticks(x, list(rows))
    ax.set_xlabel(key)
    ax.set_ylabel("progressive accuracy (%)")
    ax.set_title("Accuracy against the swept value (95% Wilson intervals)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    save(fig, folder / "sweep_accuracy.png")

    fig, ax = figure(6.5, 3.8)
    for agent in agents:
        ax.plot(x, [row["pairs_per_question"].get(agent, 0) for row in rows.values()], marker="o",
                label=f"{agent} pairs/q")
    ax.set_xticks(x, list(rows))
    ax.set_xlabel(key)
    ax.set_ylabel("pairs per question")
    right = ax.twinx()
    right.plot(x, [row["tokens_per_question"] or 0 for row in rows.values()], color="tab:red", marker="s",
               label="tokens/q")
    right.set_ylabel("generated tokens per question")
    ax.set_title("Pairs and tokens per question against the swept value")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    right.legend(loc="upper right")
    save(fig, folder / "sweep_cost.png")
