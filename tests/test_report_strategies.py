"""The run report of strategies other than Flow-DPO: their own progress-line fields are summarised generically and
their pairs are broken down by node index, with no report code per strategy."""

from __future__ import annotations

import json
from pathlib import Path

from test_report import NUM, allowed_tokens, make_run, table_cells

from harness.reporting.online_lines import pairs_by_node, strategy_fields, strategy_means
from harness.reporting.report import write_report
from harness.reporting.summary import render_report


def core(i: int) -> dict:
    """The fields every strategy writes, with round numbers."""
    return {
        "index": i,
        "id": f"q-{i}",
        "correct_before": i % 2 == 0,
        "frozen_correct": False,
        "extracted": str(i),
        "updates": {},
        "tokens": 100,
        "generate_seconds": 1.0,
        "curves_seconds": 0.5,
        "rollout_seconds": 3.0,
        "update_seconds": 0.5,
    }


def mcts_line(i: int) -> dict:
    """MCTS-DPO's own fields beside the core: pairs at the depth of the step they branch from."""
    return core(i) | {
        "end": "eos",
        "simulations": 8,
        "tree_nodes": 10 + i,
        "depth": 2 + i % 2,
        "search_correct": i < 3,
        "pairs": {"policy": 2},
        "pair_nodes": ["step:1", f"step:{2 + i % 2}"],
        "search_seconds": 2.0,
        "self_eval_seconds": 0.75,
    }


def scdpo_line(i: int) -> dict:
    """Step-Controlled DPO: a naive pair (no index) and step pairs at their cut."""
    return core(i) | {
        "samples_correct": i % 3,
        "naive_pairs": 1,
        "step_pairs": 2,
        "cuts": 2,
        "pairs": {"policy": 3},
        "pair_nodes": ["naive", "step:0", f"step:{10 + i}"],
        "sample_seconds": 0.25,
    }


def test_strategy_fields_are_the_numeric_non_core_ones() -> None:
    lines = [mcts_line(i) for i in range(4)]
    assert strategy_fields(lines) == ["simulations", "tree_nodes", "depth", "search_correct"]
    assert strategy_means(lines) == {"simulations": 8.0, "tree_nodes": 11.5, "depth": 2.5, "search_correct": 0.75}
    # a field on some lines only is averaged over the lines that carry it
    assert strategy_means([core(0) | {"rounds": 2}, core(1)]) == {"rounds": 2.0}
    # Flow-DPO: the kind of a node names its agent; the index is the chunk
    flow = [core(0) | {"pairs": {"answer": 2, "stop": 1}, "pair_nodes": ["answer:2", "stop:0", "answer:0"]}]
    assert pairs_by_node(flow) == {"0": {"answer": 1, "stop": 1}, "2": {"answer": 1, "stop": 0}}
    # naive DPO: a label without an index, of the only agent
    assert pairs_by_node([core(0) | {"pairs": {"policy": 1}, "pair_nodes": ["answer"]}]) == {"answer": {"policy": 1}}


def test_report_of_an_mcts_dpo_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, "mcts", stages=("online",), strategy="mcts_dpo", lines=[mcts_line(i) for i in range(4)])
    write_report(run)
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["run"]["strategy"] == "mcts_dpo"
    assert data["traces"]["online"] == {
        "questions": 4,
        "mean_tokens": 100.0,
        "mean_simulations": 8.0,
        "mean_tree_nodes": 11.5,
        "mean_depth": 2.5,
        "mean_search_correct": 0.75,
        "ends": {"eos": 4},
    }
    assert data["traces"]["pairs"] == {"policy": {"total": 8, "per_question": 2.0, "questions_with_pairs": 4}}
    assert data["traces"]["pairs_by_node"] == {"1": {"policy": 4}, "2": {"policy": 2}, "3": {"policy": 2}}
    t = data["time"]["online"]
    assert t["total_seconds"] == 4 * 5.0 and t["sub_phases"] == {"search_seconds": 8.0, "self_eval_seconds": 3.0}
    md = (run / "report" / "report.md").read_text()
    assert "| questions   | mean generated tokens   | mean simulations   | mean tree nodes   | mean depth   |" in md
    assert "![pairs by node index](pairs_by_node.png)" in md and (run / "report" / "pairs_by_node.png").is_file()
    assert "strategy: mcts_dpo;" in md and "Flow" not in md
    allowed = allowed_tokens(data)
    assert not [tok for cell in table_cells(md) for tok in NUM.findall(cell) if tok not in allowed]
    assert "strategy: mcts_dpo; paper: none" in render_report(run / "report", "text")


def test_report_of_a_step_controlled_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, "scdpo", stages=("online",), strategy="step_controlled",
                   lines=[scdpo_line(i) for i in range(3)])
    write_report(run)
    data = json.loads((run / "report" / "report.json").read_text())
    online = data["traces"]["online"]
    assert (online["mean_samples_correct"], online["mean_naive_pairs"], online["mean_cuts"]) == (1.0, 1.0, 2.0)
    assert online["ends"] == {} and "mean_sample_seconds" not in online
    # indices in numeric order (10 before 11 and 12, all after 0), then the labels without one
    by_node = data["traces"]["pairs_by_node"]
    assert list(by_node) == ["0", "10", "11", "12", "naive"]
    assert by_node["0"] == {"policy": 3} and by_node["naive"] == {"policy": 3} and by_node["11"] == {"policy": 1}
    md = (run / "report" / "report.md").read_text()
    assert "| naive        | 3        |" in md and "ended by" not in md


def test_paired_difference_verdict_and_learning_by_quarter(tmp_path: Path) -> None:
    # 12 questions: trained right on 0, 2, 4, ..., frozen never (core); so 6 discordant, all the trained's
    lines = [mcts_line(i) | {"updates": {"policy": [{"loss": 0.7, "margin": i / 10, "accuracy": i / 11, "pairs": 2}]}}
             for i in range(12)]
    run = make_run(tmp_path, strategy="mcts_dpo", lines=lines)
    write_report(run)
    data = json.loads((run / "report" / "report.json").read_text())["progressive"]
    diff = data["difference"]
    assert (diff["n"], diff["only_first"], diff["only_second"]) == (12, 0, 6)
    assert diff["delta"] == 0.5 and diff["p_mcnemar"] == 2 / 2**6
    half = 1.959963984540054 * ((6 / 12 - 0.25) / 12) ** 0.5
    assert diff["ci"] == [0.5 - half, 0.5 + half]
    assert [p["delta"] for p in data["difference_curve"]][:3] == [1.0, 0.5, 2 / 3]
    assert data["verdict"].startswith("trained online is better than frozen (untrained): +50.0 points")
    assert (run / "report" / "difference.png").is_file()
    traces = json.loads((run / "report" / "report.json").read_text())["traces"]
    quarters = traces["updates"]["policy"]["by_quarter"]
    assert [q["steps"] for q in quarters] == [3, 3, 3, 3]
    assert [round(q["margin"], 6) for q in quarters] == [0.1, 0.4, 0.7, 1.0]
    assert "trained online is better than frozen" in render_report(run / "report")


def test_the_time_table_says_when_generate_holds_the_rollouts(tmp_path: Path) -> None:
    """A continuous schedule logs no rollout time of its own: the table says generate holds it; a phased one not."""
    note = "generate holds the rollouts"
    continuous = [mcts_line(i) | {"generate_seconds": 4.0, "rollout_seconds": 0.0} for i in range(4)]
    for name, lines, shown in (("together", continuous, True), ("apart", [mcts_line(i) for i in range(4)], False)):
        run = make_run(tmp_path, name, stages=("online",), strategy="mcts_dpo", lines=lines)
        write_report(run)
        assert (note in (run / "report" / "report.md").read_text()) is shown
