"""Run report and run comparison, on fake run folders written in the stages' exact formats."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import CompareError
from harness.reporting.compare import compare, parse_fail_below, run_metrics
from harness.reporting.report import write_report
from harness.reporting.run_folder import load_run
from harness.reporting.stats import mcnemar_exact, two_proportion_z, wilson
from harness.stages.online import summarize

Z = 1.959963984540054
N_LINES = 20
FLOW_SRC = "arXiv 2410.22304, Table 1 [paper]"
# model label -> task -> metrics (value 0..1); n per task below
EVAL = {
    "base": {"gsm8k": (0.45, 0.50), "math": (0.20, 0.18)},
    "sft-ground_truth": {"gsm8k": (0.60, 0.66), "math": (0.24, 0.22)},
    "sft-self": {"gsm8k": (0.62, 0.70), "math": (0.23, 0.21)},
    "sft-flow": {"gsm8k": (0.65, 0.73), "math": (0.29, 0.27)},
}
EVAL_N = {"gsm8k": 200, "math": 100}


def progress_line(i: int, shift: int = 0) -> dict[str, Any]:
    line: dict[str, Any] = {
        "index": i,
        "id": f"q-{i}",
        "correct_before": (i + shift) % 3 != 0,
        "frozen_correct": i % 4 == 0,
        "chunks": 1 + i % 3,
        "end": "stop" if i % 4 else "max_chunks",
        "extracted": str(i),
        "nodes": 2 * (1 + i % 3),
        "pairs": {"answer": i % 2, "stop": int(i % 3 == 0)},
        "pair_nodes": [f"answer:{i % 3}"] * (i % 2) + ["stop:0"] * int(i % 3 == 0),
        "updates": {"answer": [{"loss": 0.5 + 0.01 * i, "margin": 0.1 * i, "pairs": 4, "accuracy": 0.75}]}
        if i % 5 == 4
        else {},
        "tokens": 100 + 7 * i,
        "stop_decisions": i % 3,
        "generate_seconds": 1.0 + 0.1 * i,
        "curves_seconds": 0.5,
        "rollout_seconds": 2.0 + 0.05 * i,
        "answer_gen_seconds": 2.5 + 0.1 * i,
        "stop_seconds": 0.25,
        "update_seconds": 0.2 if i % 5 == 4 else 0.0,
    }
    if i < 15:  # an optional curve present on some lines only
        line["zero_shot_correct"] = i % 5 == 0
    return line


def eval_record(task: str, values: tuple[float, float]) -> dict:
    if task == "gsm8k":
        metrics = {
            "exact_match,strict-match": {"value": values[0], "stderr": 0.03},
            "exact_match,flexible-extract": {"value": values[1], "stderr": 0.03},
        }
        lm_task, shots = "gsm8k", 5
    else:
        metrics = {
            "exact_match,none": {"value": values[0], "stderr": 0.04},
            "math_verify,none": {"value": values[1], "stderr": 0.04},
        }
        lm_task, shots = "minerva_math", 4
    return {
        "task": task,
        "lm_eval_task": lm_task,
        "version": 3.0,
        "n_shot": shots,
        "chat_template": True,
        "limit": None,
        "n": EVAL_N[task],
        "metrics": metrics,
    }


def make_run(
    root: Path,
    name: str = "run",
    paper: dict | None = None,
    stages: tuple[str, ...] = ("online", "baseline", "compile", "evaluate"),
    shift: int = 0,
    eval_scale: float = 1.0,
    strategy: str | None = None,
    lines: list[dict] | None = None,
) -> Path:
    """A run folder in the stages' formats, with known values (`lines`: progress lines instead of progress_line's)."""
    run = root / name
    run.mkdir(parents=True)
    recipe = {
        "name": "fake",
        "description": "A fake run for tests.",
        "paper": paper,
        "online": {"questions": 20} | ({"strategy": {"name": strategy}} if strategy else {}),
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    provenance = {
        "recipe": "fake",
        "recipe_hash": "abcdef0123456789",
        "git": {"sha": "deadbeef", "dirty": False},
        "versions": {"torch": "2.13.0", "harness": "0.1.0"},
        "python": "3.11.7",
        "device": {"cuda": False, "cpu_count": 2},
        "seeds": {"model": 0, "online": 7},
        "argv": ["reproduce", "fake"],
        "created": "2026-01-02T03:04:05+0000",
    }
    (run / "provenance.json").write_text(json.dumps(provenance))
    if "online" in stages:
        (run / "online").mkdir()
        lines = lines if lines is not None else [progress_line(i, shift) for i in range(N_LINES)]
        (run / "online" / "progress.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        done = summarize(lines) | {  # what the online stage writes
            "skipped_rows": [],
            "adapters": str(run / "online" / "adapters"),
        }
        (run / "online" / "done.json").write_text(json.dumps(done))
    if "baseline" in stages:
        (run / "baseline").mkdir()
        base = {"questions": 16, "samples": 2, "accuracy": 13 / 32, "correct": 13, "n": 32, "seconds": 12.5}
        (run / "baseline" / "done.json").write_text(json.dumps(base))
    if "compile" in stages:
        (run / "compile").mkdir()
        comp = {
            "sets": {
                "flow": {"prompts": 16, "examples": 9, "mean_tokens": 120.5, "mean_chunks": 2.25},
                "self": {"prompts": 16, "examples": 13, "mean_tokens": 98.25, "mean_chunks": 1.0},
                "ground_truth": {"prompts": 16, "examples": 16, "mean_tokens": 80.75, "mean_chunks": 1.0},
            },
            "sft": {
                "flow": {"adapter": "a/flow", "train_loss": 0.8125, "seconds": 33.5},
                "self": {"adapter": "a/self", "train_loss": 0.9375, "seconds": 31.25},
                "ground_truth": {"adapter": "a/gt", "train_loss": 1.0625, "seconds": 30.0},
            },
        }
        (run / "compile" / "done.json").write_text(json.dumps(comp))
    if "evaluate" in stages:
        (run / "evaluate").mkdir()
        models = {
            label: [eval_record(t, (v[0] * eval_scale, v[1] * eval_scale)) for t, v in tasks.items()]
            for label, tasks in EVAL.items()
        }
        (run / "evaluate" / "done.json").write_text(json.dumps({"models": models}))
    return run


def wilson_ref(k: float, n: float) -> list[float]:
    """Wilson score interval, written out independently of harness.reporting.report."""
    p = k / n
    center = (2 * k + Z**2) / (2 * (n + Z**2))
    half = Z * math.sqrt(n * p * (1 - p) + Z**2 / 4) / (n + Z**2)
    return [max(0.0, center - half), min(1.0, center + half)]


def close(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


NUM = re.compile(r"[-+]?\d+(?:\.\d+)?")


def allowed_tokens(data: Any) -> set[str]:
    """Every way the report may print a number of report.json."""
    out: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                out.update(NUM.findall(str(k)))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, bool) or x is None:
            return
        elif isinstance(x, (int, float)):
            if float(x).is_integer():
                out.add(str(int(x)))
            for fmt in (".1f", ".2f", ".3f", ".4f", "+.1f"):
                out.add(format(x, fmt))
            out.add(format(100 * x, ".1f"))
        else:
            out.update(NUM.findall(str(x)))

    walk(data)
    return out


def table_cells(md: str) -> list[str]:
    """Data cells of every markdown table (header and separator lines left out)."""
    cells, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        for row in block[2:]:
            cells += [c.strip() for c in row.strip("|").split("|")]
        block = []
    return cells


def test_wilson_matches_published_values() -> None:
    lo, hi = wilson(81, 263)  # Newcombe (1998), example: 0.2553 to 0.3662
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson(0, 10)[1] == pytest.approx(Z**2 / (10 + Z**2))


def test_report_numbers_equal_the_run_files(tmp_path: Path) -> None:
    run = make_run(tmp_path, paper={"paper": "flow-dpo", "model": "llama3-8b"})
    out = tmp_path / "reports" / "fake"
    md_path = write_report(run, out)
    assert md_path == out / "report.md"
    folder = run / "report"
    for name in (
        "report.md",
        "report.html",
        "report.json",
        "progressive.png",
        "pairs_by_node.png",
        "time.png",
    ):
        assert (folder / name).stat().st_size > 0, name
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list(folder.glob("*.png")))
    assert not re.search(r"src=['\"](?!data:)", html)  # self-contained

    data = json.loads((folder / "report.json").read_text())
    lines = [progress_line(i) for i in range(N_LINES)]

    # progressive accuracy: cumulative proportions with Wilson intervals
    for curve, key in (
        ("trained", "correct_before"),
        ("frozen", "frozen_correct"),
        ("zero_shot", "zero_shot_correct"),
    ):
        vals = [x[key] for x in lines if key in x]
        got = data["progressive"]["final"][curve]
        assert (got["k"], got["n"]) == (sum(vals), len(vals))
        assert close(got["value"], sum(vals) / len(vals)) and close(
            got["ci"], wilson_ref(sum(vals), len(vals))
        )
    assert data["progressive"]["final"]["zero_shot"]["n"] == 15
    assert [c["questions"] for c in data["progressive"]["checkpoints"]] == [5, 10, 15, 20]
    cp = data["progressive"]["checkpoints"][1]["trained"]
    first10 = [x["correct_before"] for x in lines[:10]]
    assert (cp["k"], cp["n"]) == (sum(first10), 10) and close(cp["ci"], wilson_ref(sum(first10), 10))
    assert close(
        data["progressive"]["done_json"]["trained"], data["progressive"]["final"]["trained"]["value"]
    )

    # Table 1: headline = flexible-extract for gsm8k, first metric for math; paper beside it with delta
    rows = {r["model"]: r for r in data["table1"]["rows"]}
    assert [r["model"] for r in data["table1"]["rows"]] == [
        "base",
        "sft-ground_truth",
        "sft-self",
        "sft-flow",
    ]
    flow_gsm, flow_math = rows["sft-flow"]["cells"]["gsm8k"], rows["sft-flow"]["cells"]["math"]
    assert (flow_gsm["metric"], flow_gsm["filter"], flow_gsm["value"]) == (
        "exact_match,flexible-extract",
        "flexible-extract",
        0.73,
    )
    assert (flow_math["metric"], flow_math["value"]) == ("exact_match,none", 0.29)
    assert (flow_gsm["paper"], flow_gsm["paper_source"]) == (71.3, FLOW_SRC)
    assert close(flow_gsm["delta_points"], 73.0 - 71.3) and close(flow_math["delta_points"], 29.0 - 27.8)
    assert close(flow_gsm["ci"], wilson_ref(0.73 * 200, 200))
    assert flow_gsm["metrics"]["exact_match,strict-match"] == 0.65
    assert (flow_gsm["lm_eval_task"], flow_gsm["n_shot"], flow_gsm["chat_template"], flow_gsm["n"]) == (
        "gsm8k",
        5,
        True,
        200,
    )
    assert rows["base"]["method"] == "zero_shot" and rows["base"]["cells"]["math"]["paper"] == 22.3

    # trace quality
    tr = data["traces"]
    assert tr["baseline"]["accuracy"] == 13 / 32 and close(tr["baseline"]["ci"], wilson_ref(13, 32))
    assert tr["sft_sets"]["flow"] == {
        "prompts": 16,
        "examples": 9,
        "mean_tokens": 120.5,
        "mean_chunks": 2.25,
        "train_loss": 0.8125,
        "sft_seconds": 33.5,
    }
    assert close(tr["online"]["mean_chunks"], sum(x["chunks"] for x in lines) / N_LINES)
    assert tr["online"]["ends"] == {"max_chunks": 5, "stop": 15}
    assert tr["pairs"]["answer"] == {"total": 10, "per_question": 0.5, "questions_with_pairs": 10}
    assert tr["pairs"]["stop"]["total"] == 7
    counts: dict[str, dict[str, int]] = {}
    for x in lines:
        for node in x["pair_nodes"]:
            agent, idx = node.split(":")
            counts.setdefault(idx, {"answer": 0, "stop": 0})[agent] += 1
    assert tr["pairs_by_node"] == counts and list(tr["pairs_by_node"]) == ["0", "1", "2"]
    ups = [u for x in lines for u in x["updates"].get("answer", [])]
    assert tr["updates"]["answer"]["steps"] == 4 and tr["updates"]["answer"]["pairs"] == 16
    assert close(tr["updates"]["answer"]["mean_loss"], sum(u["loss"] for u in ups) / 4)

    # time: top-level phases are shares of the total, sub-phases are shares of generate + rollout
    t = data["time"]["online"]
    sums = {k: sum(x[k] for x in lines) for k in lines[0] if k.endswith("_seconds")}
    top = {k: v for k, v in sums.items() if k not in ("answer_gen_seconds", "stop_seconds")}
    assert set(t["phases"]) == {"generate_seconds", "curves_seconds", "rollout_seconds", "update_seconds"}
    assert all(close(t["phases"][k], v) for k, v in top.items())
    assert close(t["total_seconds"], sum(top.values()))
    assert close(t["shares"]["rollout_seconds"], top["rollout_seconds"] / sum(top.values()))
    gen = top["generate_seconds"] + top["rollout_seconds"]
    assert close(t["sub_shares"]["stop_seconds"], sums["stop_seconds"] / gen)
    assert close(t["tokens_per_second"], sum(x["tokens"] for x in lines) / gen)
    assert data["time"]["stages"]["baseline"] == 12.5 and data["time"]["stages"]["sft-flow"] == 33.5

    # provenance
    prov = data["provenance"]
    assert (prov["recipe_hash"], prov["git.sha"], prov["git.dirty"], prov["seeds.online"]) == (
        "abcdef0123456789",
        "deadbeef",
        False,
        7,
    )

    # every number in every markdown table is a number of report.json, printed
    md = (folder / "report.md").read_text()
    allowed = allowed_tokens(data)
    bad = [(cell, tok) for cell in table_cells(md) for tok in NUM.findall(cell) if tok not in allowed]
    assert not bad, bad[:10]
    # spot checks of the text
    flow_row = next(line for line in md.splitlines() if line.startswith("| SFT Flow-generated"))
    cells = [c.strip() for c in flow_row.strip("|").split("|")]
    assert cells == [
        "SFT Flow-generated",
        "73.0 [66.5, 78.7] (flexible-extract)",
        "65.0",
        "71.3",
        "+1.7",
        "29.0 [21.0, 38.5] (exact_match)",
        "27.8",
        "+1.2",
    ]
    assert FLOW_SRC in md and "lm-eval `gsm8k`, 5-shot, chat template" in md
    assert "lm-eval `minerva_math`, 4-shot, chat template" in md
    assert "exact_match,strict-match 65.0; exact_match,flexible-extract 73.0" in md
    assert "within 2,000 training instances" in md
    assert "![progressive accuracy](progressive.png)" in md


def test_report_skips_stages_that_did_not_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, stages=())
    out = tmp_path / "out"
    out.mkdir()
    (out / "table1.png").write_bytes(b"stale")
    (out / "pairs_by_chunk.png").write_bytes(b"stale")  # the name an earlier report gave the pairs figure
    md = write_report(run, out).read_text()
    assert not (out / "table1.png").exists() and not (out / "pairs_by_chunk.png").exists()
    for note in (
        "Online stage has not run",
        "Evaluate stage has not run",
        "Baseline stage has not run",
        "Compile stage has not run",
    ):
        assert note in md
    assert not list((run / "report").glob("*.png"))
    assert "| recipe_hash " in md


def test_report_on_an_unfinished_online_stage(tmp_path: Path) -> None:
    run = make_run(tmp_path, stages=("online",))
    (run / "online" / "done.json").unlink()
    with (run / "online" / "progress.jsonl").open("a") as fh:
        fh.write('{"index": 20, "id": "q-2')  # a line being written
    md = write_report(run).read_text()
    assert "Online stage not finished: 20 questions logged so far." in md
    assert "ignored a partial last line" in md
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["progressive"]["final"]["trained"]["n"] == 20 and data["run"]["stages"]["online"] == "started"


# ---- compare ----------------------------------------------------------------------------------------


def test_two_proportion_z_test_against_hand_value() -> None:
    # p1 = 45/100, p2 = 60/100, pooled 0.525: z = 0.15 / sqrt(0.525 * 0.475 * 0.02) = 2.12398
    z, p = two_proportion_z(45, 100, 60, 100)
    assert z == pytest.approx(2.1239769762143657, rel=1e-12)
    assert p == pytest.approx(0.033672068856345855, rel=1e-9)  # scipy.stats.norm.sf(|z|) * 2
    assert two_proportion_z(0, 10, 0, 10) == (0.0, 1.0)


def test_mcnemar_exact_against_hand_values() -> None:
    # two-sided: 2 * P(Binomial(b + c, 1/2) <= min(b, c)), capped at 1
    assert mcnemar_exact(1, 6) == 2 * (1 + 7) / 2**7
    assert mcnemar_exact(8, 2) == 2 * (1 + 10 + 45) / 2**10 == 0.109375
    assert mcnemar_exact(0, 10) == 2 / 2**10
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 1) == 1.0  # one discordant question proves nothing


def test_compare_table_and_fail_below(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", shift=1, eval_scale=0.9)
    ma, _ = run_metrics(load_run(a))
    mb, _ = run_metrics(load_run(b))
    pa, pb = ma["progressive_accuracy"], mb["progressive_accuracy"]
    assert (pa.k, pa.n) == (13, 20) and (pb.k, pb.n) == (14, 20)
    flex = "sft-flow/gsm8k/exact_match,flexible-extract"
    assert mb[flex].value == pytest.approx(0.73 * 0.9) and mb[flex].n == 200
    assert mb["baseline_accuracy"].n == 32 and ma["zero_shot_accuracy"].n == 15

    text, code = compare([a, b], None, {})
    assert code == 0
    _, p = two_proportion_z(13, 20, 14, 20)
    assert f"70.0 (+5.0, p={p:.3f})" in text
    _, p = two_proportion_z(0.73 * 200, 200, 0.73 * 0.9 * 200, 200)
    assert f"65.7 (-7.3, p={p:.3f})" in text

    assert compare([a, b], None, {"progressive_accuracy": 0.0})[1] == 0  # b is better
    assert compare([a, b], None, {flex: 0.1})[1] == 0  # 7.3 points lower, 10 allowed
    text, code = compare([a, b], None, parse_fail_below([f"{flex}=0.05", "progressive_accuracy=0.02"]))
    assert code == 1 and f"FAIL {flex}" in text and "ok   progressive_accuracy" in text
    assert compare([a, b], None, {"progressive_accuracy": -0.1})[1] == 1  # demanded +10 points, got +5
    c = make_run(tmp_path, "c", stages=("online",))
    assert compare([a, c], None, {flex: 0.5})[1] == 1  # run c has no evaluation at all
    with pytest.raises(CompareError, match="no such metric"):
        compare([a, b], None, {"progressive": 0.01})
    with pytest.raises(CompareError, match="proportion"):
        compare([a, b], None, {"progressive_accuracy": 2.0})
    with pytest.raises(CompareError, match="at least two runs"):
        compare([a], None, {"progressive_accuracy": 0.01})


def test_compare_against_the_paper(tmp_path: Path) -> None:
    run = make_run(tmp_path, "llama", paper={"paper": "flow-dpo", "model": "llama3-8b"})
    text, code = compare([run], "flow-dpo", {})
    assert code == 0
    row = next(
        line for line in text.splitlines() if line.startswith("| sft-flow/gsm8k/exact_match,flexible-extract")
    )
    assert "73.0" in row and "71.3" in row and FLOW_SRC in row
    row = next(line for line in text.splitlines() if line.startswith("| sft-flow/math/exact_match,none"))
    assert "29.0" in row and "27.8" in row and FLOW_SRC in row
    assert "paper llama3-8b %" in text and "phi3-medium" not in text
    assert "within 2,000 training instances" in text

    # no eval stage yet: the published numbers still get rows of their own
    online = make_run(
        tmp_path, "online-only", paper={"paper": "flow-dpo", "model": "llama3-8b"}, stages=("online",)
    )
    text, _ = compare([online], "flow-dpo", {})
    row = next(line for line in text.splitlines() if line.startswith("| sft-flow/gsm8k "))
    assert "71.3" in row and FLOW_SRC in row

    # a recipe without a paper ref: every model of the paper, or the one asked for
    plain = make_run(tmp_path, "plain", stages=("online",))
    text, _ = compare([plain], "flow-dpo", {})
    assert "paper llama3-8b %" in text and "paper phi3-medium %" in text and "38.6" in text
    text, _ = compare([plain], "flow-dpo", {}, paper_model="phi3-medium")
    assert "paper phi3-medium %" in text and "paper llama3-8b %" not in text and "38.6" in text
    with pytest.raises(CompareError, match="not in flow-dpo"):
        compare([plain], "flow-dpo", {}, paper_model="gpt-4")


def test_report_writes_nothing_where_there_is_no_run_folder_and_keeps_what_it_did_not_write(tmp_path: Path) -> None:
    from harness.errors import ReportError

    not_a_run = tmp_path / "thesis"
    (not_a_run / "report").mkdir(parents=True)
    (not_a_run / "report" / "thesis.md").write_text("mine")
    with pytest.raises(ReportError, match="not a run folder"):
        write_report(not_a_run)
    assert (not_a_run / "report" / "thesis.md").read_text() == "mine"
    with pytest.raises(ReportError, match="not a run folder"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()

    run = make_run(tmp_path, stages=())
    (run / "report").mkdir()
    (run / "report" / "notes.md").write_text("mine")
    (run / "report" / "table1.png").write_bytes(b"stale")  # an earlier report's figure this one does not draw
    write_report(run)
    assert (run / "report" / "notes.md").read_text() == "mine" and (run / "report" / "report.md").is_file()
    assert not (run / "report" / "table1.png").exists()
