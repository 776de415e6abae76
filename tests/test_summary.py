"""`harness report --format` and `harness compare --format`: what they print, on the fake run folders of
test_report (imported, so both files build runs the same way)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from test_report import NUM, allowed_tokens, close, make_run, progress_line, wilson_ref

from harness.cli import main
from harness.reporting.compare import compare
from harness.reporting.report import write_report
from harness.reporting.stats import two_proportion_z
from harness.reporting.summary import render_report, want_color
from harness.stages.online import summarize

LLAMA = {"paper": "flow-dpo", "model": "llama3-8b"}
FLEX = "sft-flow/gsm8k/exact_match,flexible-extract"
FLOW_SRC = "arXiv 2410.22304, Table 1 [paper]"


@pytest.fixture
def llama_run(tmp_path: Path) -> Path:
    """A finished run whose recipe refs Flow-DPO's Llama-3-8B numbers."""
    return make_run(tmp_path, "llama", paper=LLAMA)


def report_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """`harness report ARGV`: (exit code, stdout, stderr)."""
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cells(line: str) -> list[str]:
    """The cells of one row of a `simple` table (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def row(text: str, first_cell: str) -> list[str]:
    return cells(next(line for line in text.splitlines() if line.startswith(first_cell)))


def tables(text: str) -> list[list[str]]:
    """Every `simple` table of the text: its header, rule and data lines."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if re.fullmatch(r"-+( +-+)*", line) and i > 0:
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].strip()), len(lines))
            out.append(lines[i - 1 : end])
    return out


def test_report_text_summary_numbers(llama_run: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = report_cli(capsys, str(llama_run))
    assert code == 0 and not err
    assert len(out.splitlines()) <= 40
    assert "\x1b" not in out  # captured stdout is no terminal
    # progressive accuracy: value, Wilson CI, correct, n per curve
    lo, hi = wilson_ref(13, 20)
    assert row(out, "trained online") == [
        "trained online",
        "65.0",
        f"[{100 * lo:.1f}, {100 * hi:.1f}]",
        "13",
        "20",
    ]
    assert row(out, "zero-shot (base, one pass)")[1:] == ["20.0", "[7.0, 45.2]", "3", "15"]
    # Table 1: metric and n in the column header, the paper and Δ beside each value
    assert "gsm8k flexible-extract n=200" in out and "math exact_match n=100" in out
    assert row(out, "SFT Flow-generated") == [
        "SFT Flow-generated",
        "73.0 [66.5, 78.7]",
        "71.3",
        "+1.7",
        "29.0 [21.0, 38.5]",
        "27.8",
        "+1.2",
    ]
    assert "paper: flow-dpo / llama3-8b" in out
    # SFT set sizes, stage times, where the full report is
    assert row(out, "flow ") == ["flow", "9", "16", "120.5", "0.8125"]
    assert row(out, "ground_truth") == ["ground_truth", "16", "16", "80.8", "1.0625"]
    assert "baseline 12.5s" in out and "sft-flow 33.5s" in out and "evaluate –" in out
    folder = llama_run / "report"
    assert str(folder / "report.md") in out and str(folder / "report.html") in out
    # aligned: every line of a table is as wide as its rule
    found = tables(out)
    assert len(found) == 3
    for table in found:
        assert len({len(line) for line in table}) == 1, table


def test_report_text_summary_numbers_are_report_json_numbers(llama_run: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, _ = report_cli(capsys, str(llama_run))
    data = json.loads((llama_run / "report" / "report.json").read_text())
    allowed = allowed_tokens(data)
    shown = [tok for table in tables(out) for line in table[2:] for tok in NUM.findall(line)]
    assert shown and not [tok for tok in shown if tok not in allowed]


def test_report_text_summary_of_a_two_of_four_curve(tmp_path: Path) -> None:
    run = make_run(tmp_path, stages=("online",))
    lines = [progress_line(i) | {"correct_before": i % 2 == 0} for i in range(4)]
    (run / "online" / "progress.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "online" / "done.json").write_text(json.dumps(summarize(lines)))
    text = render_report(write_report(run).parent, "text")
    lo, hi = wilson_ref(2, 4)
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" == "[15.0, 85.0]"
    assert row(text, "trained online")[1:] == ["50.0", "[15.0, 85.0]", "2", "4"]
    assert "Progressive accuracy (4 questions)" in text
    assert "Table 1: the evaluate stage has not run." in text and "SFT sets: the compile stage has not run." in text


def test_report_text_summary_of_a_run_with_nothing_done(tmp_path: Path) -> None:
    text = render_report(write_report(make_run(tmp_path, stages=())).parent, "text")
    assert "paper: none; stages: baseline not run, online not run, compile not run, evaluate not run" in text
    assert "Progressive accuracy: the online stage has not run." in text and "Stage time" not in text
    assert len(text.splitlines()) <= 12


def test_report_text_summary_without_a_paper_ref(tmp_path: Path) -> None:
    text = render_report(write_report(make_run(tmp_path)).parent, "text")
    assert "Table 1 (% [95% CI]; no paper ref)" in text
    assert row(text, "SFT Flow-generated") == ["SFT Flow-generated", "73.0 [66.5, 78.7]", "29.0 [21.0, 38.5]"]


def test_report_text_summary_of_an_unfinished_online_stage(tmp_path: Path) -> None:
    run = make_run(tmp_path, stages=("online",))
    (run / "online" / "done.json").unlink()
    with (run / "online" / "progress.jsonl").open("a") as fh:
        fh.write('{"index": 20, "id": "q-2')  # a line being written
    text = render_report(write_report(run).parent, "text")
    assert "Progressive accuracy (20 questions; online stage not finished)" in text
    assert "note: progress.jsonl: ignored a partial last line" in text


def test_report_md_and_json_formats(llama_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "reports" / "llama"
    code, out, err = report_cli(capsys, str(llama_run), "--out", str(out_dir), "--format", "md")
    assert code == 0 and out == (out_dir / "report.md").read_text() and out.startswith("# Run report: fake")
    assert err.strip() == f"report: {out_dir / 'report.md'}"
    code, out, err = report_cli(capsys, str(llama_run), "--format", "json")
    assert code == 0 and json.loads(out) == json.loads((llama_run / "report" / "report.json").read_text())
    assert json.loads(out)["table1"]["rows"][3]["cells"]["gsm8k"]["paper"] == 71.3
    with pytest.raises(SystemExit):
        main(["report", str(llama_run), "--format", "html"])


def test_report_color_only_on_a_terminal(llama_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_report(llama_run).parent
    assert "\x1b[1mTable 1\x1b[0m" in render_report(folder, "text", color=True)
    assert "\x1b" not in render_report(folder, "text", color=False)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert want_color(Tty()) and not want_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not want_color(Tty())


# ---- compare --format ------------------------------------------------------------------------------


def test_compare_text_format(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", paper=LLAMA)
    b = make_run(tmp_path, "b", shift=1, eval_scale=0.5)
    text, code = compare([a, b], "flow-dpo", {}, fmt="text")
    assert code == 0 and "|" not in text
    _, p = two_proportion_z(13, 20, 14, 20)
    lo, hi = wilson_ref(14, 20)
    assert row(text, "progressive_accuracy") == [
        "progressive_accuracy",
        "20",
        "65.0",
        "[43.3, 81.9]",
        "70.0",
        f"[{100 * lo:.1f}, {100 * hi:.1f}]",
        "+5.0",
        f"{p:.3f}",
        "–",
    ]
    # a significant drop is starred; the paper's number sits in its own column, its source below the table
    assert row(text, FLEX) == [
        FLEX,
        "200",
        "73.0",
        "[66.5, 78.7]",
        "36.5",
        "[30.1, 43.4]",
        "-36.5",
        "<0.001 ***",
        "71.3",
    ]
    assert "paper llama3-8b %" in text and FLOW_SRC in " ".join(text.split())
    assert "within 2,000 training instances" in " ".join(text.split())
    found = tables(text)
    assert len(found) == 2  # the runs, then the metrics
    for table in found:
        assert len({len(line) for line in table}) == 1, table


def policy_line(i: int, correct: bool) -> dict:
    """A progress line of a one-agent strategy (MCTS-DPO's fields), with round numbers."""
    return {
        "index": i,
        "id": f"q-{i}",
        "correct_before": correct,
        "extracted": "1",
        "end": "eos",
        "simulations": 4,
        "pairs": {"policy": i % 3},
        "pair_nodes": [f"step:{j}" for j in range(i % 3)],
        "updates": {},
        "tokens": 40 + 10 * i,
        "generate_seconds": 1.0,
        "curves_seconds": 0.5,
        "rollout_seconds": 2.0,
        "search_seconds": 1.5,  # a sub-phase of rollout: not part of the wall time
        "update_seconds": 0.5,
    }


def test_compare_run_facts_in_every_format(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", strategy="flow_dpo")  # correct_before: i % 3 != 0, ids q-0 .. q-19
    b = make_run(tmp_path, "b", strategy="mcts_dpo", lines=[policy_line(i, True) for i in range(20)])
    c = make_run(tmp_path, "c", strategy="step_controlled", lines=[policy_line(i, i < 5) for i in range(10)])
    data = json.loads(compare([a, b, c], None, {}, fmt="json")[0])
    first, same, fewer = data["runs"]
    assert (first["strategy"], first["questions"], first["paired"]) == ("flow_dpo", 20, None)
    assert first["pairs_per_question"] == {"answer": 0.5, "stop": 0.35}
    assert close(first["tokens_per_question"], 166.5) and close(first["seconds_per_question"], 4.965)
    # b: 0.95 pairs (sum of i % 3 over 20 lines is 19), 40 + 10 * 9.5 tokens, 1 + 0.5 + 2 + 0.5 seconds
    assert (same["strategy"], same["pairs_per_question"]) == ("mcts_dpo", {"policy": 0.95})
    assert (same["tokens_per_question"], same["seconds_per_question"]) == (135.0, 4.0)
    # b answers all 20 right, a the 13 with i % 3 != 0: 7 discordant questions, all b's; p = 2 / 2**7
    assert same["paired"] == {
        "shared": 20, "only_in_first": 0, "only_in_later": 0, "same_ids": True, "both_right": 13,
        "first_only_right": 0, "later_only_right": 7, "both_wrong": 0, "delta_points": 35.0, "p_value": 0.015625,
    }
    # c logged q-0 .. q-9 only and answered q-0 .. q-4 right; a got q-1, 2, 4, 5, 7, 8 right: 3 vs 2 discordant
    assert (fewer["tokens_per_question"], fewer["pairs_per_question"]) == (85.0, {"policy": 0.9})
    assert fewer["paired"] == {
        "shared": 10, "only_in_first": 10, "only_in_later": 0, "same_ids": False, "both_right": 3,
        "first_only_right": 3, "later_only_right": 2, "both_wrong": 2, "delta_points": -10.0, "p_value": 1.0,
    }

    text, _ = compare([a, b, c], None, {}, fmt="text")
    header = cells(tables(text)[0][0])
    assert header == ["run", "strategy", "questions", "answer pairs/q", "policy pairs/q", "stop pairs/q", "tokens/q",
                      "seconds/q", "shared ids", "paired Δ pts", "McNemar p"]
    run1 = row(text, "run 1 ")
    assert run1[:7] + run1[8:] == ["run 1", "flow_dpo", "20", "0.50", "–", "0.35", "166.5", "–", "–", "–"]
    assert row(text, "run 2 ") == ["run 2", "mcts_dpo", "20", "–", "0.95", "–", "135.0", "4.00", "20", "+35.0", "0.016"]
    assert row(text, "run 3 ") == ["run 3", "step_controlled", "10", "–", "0.90", "–", "85.0", "4.00", "10", "-10.0",
                                   "1.000"]
    prose = " ".join(text.split())
    assert "run 3: c: question ids differ from run 1's (10 shared, 10 only in run 1, 0 only in this run)" in prose
    assert "run 2: b: question ids differ" not in prose

    md, _ = compare([a, b, c], None, {}, fmt="md")
    md_row = next(line for line in md.splitlines() if line.startswith("| run 2 "))
    assert [x.strip() for x in md_row.strip("|").split("|")] == [
        "run 2", "mcts_dpo", "20", "–", "0.95", "–", "135.0", "4.00", "20", "+35.0", "0.016"
    ]
    assert "run 3: c: question ids differ from run 1's" in md

    # a run with no online stage has no question in common: no paired test, and the note says so
    d = make_run(tmp_path, "d", stages=("evaluate",))
    data = json.loads(compare([a, d], None, {}, fmt="json")[0])
    assert data["runs"][1]["strategy"] is None and data["runs"][1]["tokens_per_question"] is None
    assert data["runs"][1]["paired"]["p_value"] is None
    assert "run 2: d: no question id in common with run 1: no paired test." in compare([a, d], None, {})[0]


def test_compare_json_format(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", paper=LLAMA)
    b = make_run(tmp_path, "b", shift=1, eval_scale=0.9)
    text, code = compare([a, b], "flow-dpo", {FLEX: 0.05}, fmt="json")
    data = json.loads(text)
    assert code == 1 and data["gate"]["exit_code"] == 1
    assert [r["label"] for r in data["runs"]] == ["run 1: a", "run 2: b"] and data["paper"]["models"] == ["llama3-8b"]
    rows = {r["name"]: r for r in data["metrics"]}
    first, later = rows["progressive_accuracy"]["values"]
    assert (first["value"], first["n"], first["delta_points"], first["p_value"]) == (0.65, 20, None, None)
    assert close(first["ci"], wilson_ref(13, 20))
    assert later["delta_points"] == pytest.approx(5.0) and close(later["p_value"], two_proportion_z(13, 20, 14, 20)[1])
    assert rows[FLEX]["paper_percent"] == {"llama3-8b": 71.3} and rows[FLEX]["paper_sources"] == [FLOW_SRC]
    (check,) = data["gate"]["checks"]
    assert (check["metric"], check["status"], check["allowed_drop"]) == (FLEX, "fail", 0.05)
    assert close(check["value"], 0.73 * 0.9) and check["message"].startswith(f"FAIL {FLEX}: run 2: b")


def test_compare_md_format_is_the_default_of_the_function(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", shift=1)
    text, _ = compare([a, b], None, {})
    assert text == compare([a, b], None, {}, fmt="md")[0]
    assert "| progressive_accuracy" in text and "70.0 (+5.0, p=0.736)" in text


@pytest.mark.parametrize("fmt", ["text", "md", "json"])
def test_compare_cli_exit_codes_in_every_format(tmp_path: Path, capsys: pytest.CaptureFixture, fmt: str) -> None:
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", shift=1, eval_scale=0.9)
    c = make_run(tmp_path, "c", stages=("online",))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["compare", *argv, "--format", fmt])
        return (code, *capsys.readouterr())

    assert run(str(a), str(b))[0] == 0
    assert run(str(a), str(b), "--fail-below", "progressive_accuracy=0.0", "--fail-below", f"{FLEX}=0.1")[0] == 0
    code, out, _ = run(str(a), str(b), "--fail-below", f"{FLEX}=0.05", "--fail-below", "progressive_accuracy=0.02")
    assert code == 1 and f"FAIL {FLEX}" in out and "ok   progressive_accuracy" in out
    assert run(str(a), str(b), "--fail-below", "progressive_accuracy=-0.1")[0] == 1
    assert run(str(a), str(c), "--fail-below", f"{FLEX}=0.5")[0] == 1  # run c has no evaluation at all
    code, out, err = run(str(a), str(b), "--fail-below", "progressive=0.01")
    assert code == 2 and not out and "no such metric" in err
    assert run(str(a), "--fail-below", "progressive_accuracy=0.01")[0] == 2
    if fmt == "json":
        code, out, _ = run(str(a), str(b), "--fail-below", f"{FLEX}=0.05")
        assert code == 1 and json.loads(out)["gate"]["exit_code"] == 1
