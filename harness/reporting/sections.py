"""The report's sections: each reads the run folder and returns (its part of report.json, its document blocks).

Every number a section prints is in the data it returns, so report.json holds every number of report.md; a section
whose stage has not run returns a one-line note instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.reporting import online_lines
from harness.reporting.cells import num, pct, pct_ci
from harness.reporting.names import CURVE_NAMES
from harness.reporting.papers import Paper
from harness.reporting.plots import (
    plot_difference,
    plot_dpo_steps,
    plot_pairs,
    plot_progressive,
    plot_time,
)
from harness.reporting.render import Block, note
from harness.reporting.run_folder import RunView, sum_seconds
from harness.reporting.stats import cumulative, curve, paired_difference, verdict, wilson
from harness.run.progress import CURVES, PHASES


def section_progressive(
    run: RunView, paper: Paper | None, model: str | None, out: Path
) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Progressive validation accuracy")]
    if not run.progress:
        return {}, blocks + [note("Online stage has not run: no online/progress.jsonl.")]
    total = len(run.progress)
    curves = {name: curve(run.progress, key) for name, key in CURVES.items()}
    curves = {name: pts for name, pts in curves.items() if pts}
    done = run.done.get("online")
    if done is None:
        blocks.append(note(f"Online stage not finished: {total} questions logged so far."))
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
    plot_progressive(curves, out / "progressive.png")
    blocks.append(
        (
            "p",
            "Cumulative accuracy on the training stream, each question answered by the strategy before it "
            "learns from it (trained), by the strategy with its adapters untrained (frozen) and by the base model "
            "in one pass (zero-shot); bands are 95% Wilson intervals on the cumulative proportion.",
        )
    )
    blocks.append(("img", "progressive.png", "progressive accuracy"))
    paired = [(line[CURVES["frozen"]], line[CURVES["trained"]]) for line in run.progress if CURVES["frozen"] in line]
    if paired:
        frozen, trained = [f for f, _ in paired], [t for _, t in paired]
        data["difference"] = paired_difference(frozen, trained)
        data["difference_curve"] = [paired_difference(frozen[:n], trained[:n]) for n in range(1, len(paired) + 1)]
        data["verdict"] = verdict(data["difference"], CURVE_NAMES["frozen"], CURVE_NAMES["trained"])
        plot_difference(data["difference_curve"], out / "difference.png")
        blocks.append(("p", f"**Verdict.** {data['verdict']}"))
        blocks.append(("p", "The paired difference trained − frozen over the stream (the same questions, each "
                            "answered by both with the same seed), with its 95% band:"))
        blocks.append(("img", "difference.png", "trained minus frozen"))
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


def section_traces(run: RunView, out: Path) -> tuple[dict, list[Block]]:
    """Baseline sampling, the SFT sets, and the online stage's traces, pairs and optimizer steps."""
    data: dict[str, Any] = {}
    blocks: list[Block] = [("h", 2, "Trace quality")]
    parts = [_baseline_part(run), _sft_part(run)]
    if run.progress:
        parts += [_online_part(run.progress), _pairs_part(run.progress, out), _updates_part(run.progress, out)]
    for part_data, part_blocks in parts:
        data |= part_data
        blocks += part_blocks
    if not run.progress:
        blocks.append(note("Online stage has not run: no pair statistics."))
    return data, blocks


def _baseline_part(run: RunView) -> tuple[dict, list[Block]]:
    base = run.done.get("baseline")
    if not base:
        return {}, [note("Baseline stage has not run: no baseline/done.json.")]
    ci = wilson(base["correct"], base["n"]) if base.get("n") else None
    data = {k: base.get(k) for k in ("questions", "samples", "correct", "n", "accuracy")}
    data["ci"] = list(ci) if ci else None
    row = [str(base.get(k)) for k in ("questions", "samples", "correct", "n")]
    return {"baseline": data}, [
        ("p", "Baseline sampling (base model, single pass over the compile prompts):"),
        ("table", ["questions", "samples", "correct", "n", "accuracy % [95% CI]"],
         [row + [pct_ci(base.get("accuracy"), data["ci"])]]),
    ]


def _sft_part(run: RunView) -> tuple[dict, list[Block]]:
    comp = run.done.get("compile")
    if not comp:
        return {}, [note("Compile stage has not run: no compile/done.json.")]
    sets, sft = comp.get("sets") or {}, comp.get("sft") or {}
    data: dict[str, Any] = {
        "sft_sets": {
            src: {
                **sets.get(src, {}),
                "train_loss": (sft.get(src) or {}).get("train_loss"),
                "sft_seconds": (sft.get(src) or {}).get("seconds"),
            }
            for src in list(sets) + [s for s in sft if s not in sets]
        }
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
    headers = ["source", "prompts", "examples", "mean tokens", "mean chunks", "SFT train loss", "SFT seconds"]
    blocks: list[Block] = [("p", "SFT sets (compile stage):"), ("table", headers, rows)]
    sampling = comp.get("sampling")
    if sampling:
        data["sft_sampling"] = sampling
        flow, own = sampling["flow"], sampling["self"]
        alike = "alike" if flow == own else "differently"
        blocks.append(("p", f"The Flow and self sets are sampled {alike}: Flow traces at temperature "
                            f"{flow['temperature']}, {flow['samples']} per prompt; self-generated answers at "
                            f"temperature {own['temperature']}, {own['samples']} per prompt."))
    return data, blocks


def _online_part(lines: list[dict]) -> tuple[dict, list[Block]]:
    """Per question: generated tokens, the mean of each of the strategy's own numeric fields, how answers ended."""
    means = online_lines.strategy_means(lines)
    ends = online_lines.ends(lines)
    data = {
        "questions": len(lines),
        "mean_tokens": online_lines.tokens(lines) / len(lines),
        **{f"mean_{k}": v for k, v in means.items()},
        "ends": ends,
    }
    headers = ["questions", "mean generated tokens"] + [f"mean {k.replace('_', ' ')}" for k in means]
    row = [str(len(lines)), num(data["mean_tokens"], 1)] + [num(v) for v in means.values()]
    return {"online": data}, [
        ("p", "Online traces, per training question (tokens include the exploration for pairs; the other means "
              "are the strategy's own fields of online/progress.jsonl):"),
        ("table", headers + [f"ended by {e}" for e in ends], [row + [str(c) for c in ends.values()]]),
    ]


def _pairs_part(lines: list[dict], out: Path) -> tuple[dict, list[Block]]:
    """DPO pairs per agent, and by the index of the node they come from."""
    pairs = online_lines.pairs_per_agent(lines)
    by_node = online_lines.pairs_by_node(lines)
    blocks: list[Block] = [
        ("p", "DPO pairs per question and agent:"),
        (
            "table",
            ["agent", "pairs", "pairs per question", "questions with ≥1 pair"],
            [[a, str(p["total"]), num(p["per_question"]), str(p["questions_with_pairs"])] for a, p in pairs.items()],
        ),
    ]
    if not by_node:
        return {"pairs": pairs, "pairs_by_node": by_node}, blocks + [note("No pairs were made: no breakdown by node.")]
    columns = list(next(iter(by_node.values())))
    blocks += [
        ("p", "Pairs by the node they come from: the index of its `pair_nodes` label `kind:index` (a chunk, a step); "
              "a label without an index has a row of its own:"),
        ("table", ["node index"] + columns, [[k] + [str(row[a]) for a in columns] for k, row in by_node.items()]),
        ("img", "pairs_by_node.png", "pairs by node index"),
    ]
    plot_pairs(by_node, columns, out / "pairs_by_node.png")
    return {"pairs": pairs, "pairs_by_node": by_node}, blocks


def _updates_part(lines: list[dict], out: Path) -> tuple[dict, list[Block]]:
    """The DPO optimizer steps per agent: count, pairs trained, mean loss, margin and reward accuracy."""
    updates: dict[str, list[dict]] = {}
    for line in lines:
        for agent, ups in (line.get("updates") or {}).items():
            updates.setdefault(agent, []).extend(ups)
    data = {}
    for agent, ups in sorted(updates.items()):

        def mean(key: str, ups: list[dict] = ups) -> float | None:
            vals = [u[key] for u in ups if isinstance(u.get(key), (int, float))]
            return sum(vals) / len(vals) if vals else None

        quarters = [ups[len(ups) * q // 4 : len(ups) * (q + 1) // 4] for q in range(4)]
        data[agent] = {
            "steps": len(ups),
            "pairs": sum(int(u.get("pairs", 0)) for u in ups),
            "mean_loss": mean("loss"),
            "mean_margin": mean("margin"),
            "mean_accuracy": mean("accuracy"),
            "by_quarter": [{"steps": len(part), "margin": mean("margin", part), "accuracy": mean("accuracy", part)}
                           for part in quarters],
            "curve": [{"margin": u.get("margin"), "accuracy": u.get("accuracy")} for u in ups],
        }
    if not data:
        return {"updates": data}, [note("No DPO optimizer step was taken.")]
    rows = [
        [a, str(u["steps"]), str(u["pairs"]), num(u["mean_loss"], 4), num(u["mean_margin"], 4),
         num(u["mean_accuracy"], 3)]
        for a, u in data.items()
    ]
    quarter_rows = [[a, *[f"{num(q['accuracy'], 2)} / {num(q['margin'], 3)}" for q in u["by_quarter"]]]
                    for a, u in data.items()]
    plot_dpo_steps({a: u["curve"] for a, u in data.items()}, out / "dpo_steps.png")
    return {"updates": data}, [
        ("p", "DPO optimizer steps per agent:"),
        ("table", ["agent", "steps", "pairs trained", "mean loss", "mean margin", "mean accuracy"], rows),
        ("p", "Reward accuracy / margin of each agent's steps, by quarter of its steps (each step's figures are "
              "measured on its new pairs before it updates, so a rise is learning that carries over to new "
              "questions):"),
        ("table", ["agent", "1st quarter", "2nd quarter", "3rd quarter", "4th quarter"], quarter_rows),
        ("img", "dpo_steps.png", "DPO reward accuracy and margin over steps"),
    ]


def section_time(run: RunView, out: Path) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Where the time went")]
    data: dict[str, Any] = {}
    if run.progress:
        sums = online_lines.phase_seconds(run.progress)
        phases = {k: v for k, v in sums.items() if k in PHASES}
        subs = {k: v for k, v in sums.items() if k not in PHASES}
        total = sum(phases.values())
        gen = phases.get("generate_seconds", 0.0) + phases.get("rollout_seconds", 0.0)
        tokens = online_lines.tokens(run.progress)
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
        # a schedule that answers and explores in the same forward passes logs no rollout time of its own
        together = phases.get("generate_seconds", 0.0) > 0 and phases.get("rollout_seconds", 0.0) == 0
        blocks.append(("p", "Online stage, summed over every line of online/progress.jsonl"
                            + (" (the continuous schedule answers and explores in the same forward passes: generate "
                               "holds the rollouts):" if together else ":")))
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
        plot_time(phases, out / "time.png")
        blocks.append(("img", "time.png", "time by phase"))
    else:
        blocks.append(note("Online stage has not run: no phase timings."))
    stages: dict[str, float | None] = {}
    if run.done.get("baseline"):
        stages["baseline"] = sum_seconds(run.done["baseline"].get("seconds"))
    if "online" in data:
        stages["online"] = data["online"]["total_seconds"]
    for src, d in ((run.done.get("compile") or {}).get("sft") or {}).items():
        stages[f"sft-{src}"] = sum_seconds((d or {}).get("seconds"))
    if run.done.get("evaluate"):
        stages["evaluate"] = sum_seconds(run.done["evaluate"].get("seconds"))
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


def section_provenance(run: RunView) -> tuple[dict, list[Block]]:
    blocks: list[Block] = [("h", 2, "Provenance")]
    if run.provenance is None:
        return {}, blocks + [note("No provenance.json in the run folder.")]
    flat: dict[str, Any] = {}
    order = ["recipe", "recipe_hash", "git", "created", "python", "device", "seeds", "versions", "argv"]
    for key in order + [k for k in run.provenance if k not in order]:
        if key in run.provenance:
            _flatten(key, run.command() if key == "argv" else run.provenance[key], flat)
    blocks.append(("table", ["field", "value"], [[k, str(v)] for k, v in flat.items()]))
    return flat, blocks
