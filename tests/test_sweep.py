"""`harness sweep`: one run folder per value, a combined report with each run's numbers, and resumption."""

from __future__ import annotations

import gc
import json

import pytest
from test_online import strip_seconds

import harness.stages.pipeline as pipeline_mod
from harness.cli import main as cli_main
from harness.errors import RecipeError
from harness.run.folder import read_jsonl
from harness.tools.sweep import split_values, sweep_spec

ARGS = ["model.tiny.warmup_steps=300", "online.questions=4", "online.checkpoint_every=2", "online.dpo.batch_pairs=1",
        "online.curves=[trained, frozen]", "online.strategy.chunk_size=12", "online.strategy.max_chunks=3"]


def test_values_split_at_top_level_commas_only():
    assert split_values("1,2.5, x") == ["1", "2.5", "x"]
    assert split_values("[a, b],[c],'d,e'") == ["[a, b]", "[c]", "'d,e'"]
    assert sweep_spec("online.dpo.lr=0,1e-3") == ("online.dpo.lr", ["0", "1e-3"])
    for bad in ("online.dpo.lr=1e-3", "online.dpo.lr=1,1", "online.dpo.lr=1,", "lr"):
        with pytest.raises(RecipeError):
            sweep_spec(bad)


def test_sweep_runs_each_value_reports_them_and_resumes_after_a_kill(tmp_path, warm_tiny, monkeypatch):
    spec = "online.dpo.lr=0,3e-3"
    straight = tmp_path / "straight"
    assert cli_main(["sweep", "tiny", spec, "--run-dir", str(straight), *ARGS]) == 0
    report = json.loads((straight / "sweep.json").read_text())
    assert report["key"] == "online.dpo.lr" and report["values"] == ["0", "3e-3"]
    for value in report["values"]:
        run = straight / f"online.dpo.lr={value}"
        assert (run / "online" / "done.json").is_file()
        assert f"lr: {float(value)}" in (run / "recipe.yaml").read_text()
        lines = read_jsonl(run / "online" / "progress.jsonl")
        row = report["runs"][value]
        assert row["questions"] == len(lines) == 4
        assert row["trained"]["k"] == sum(line["correct_before"] for line in lines)
        assert row["frozen"]["k"] == sum(line["frozen_correct"] for line in lines)
        assert row["pairs_per_question"] == {a: sum(line["pairs"][a] for line in lines) / 4 for a in ("answer", "stop")}
        assert row["tokens_per_question"] == sum(line["tokens"] for line in lines) / 4
    off = report["runs"]["0"]["difference"]
    assert (off["only_first"], off["only_second"], off["delta"]) == (0, 0, 0.0)  # lr 0: trained is frozen
    md = (straight / "sweep.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("|"))
    assert header.split("|")[1].strip() == "online.dpo.lr" and "answer pairs/q" in header
    assert "stop_decisions/q" in header  # the Flow's own per-question fields come along
    assert (straight / "sweep_accuracy.png").stat().st_size > 5000

    # killed while the second value runs its online stage: a second sweep skips the first and finishes the other
    killed = tmp_path / "killed"
    real = pipeline_mod.run_stage
    calls = []

    def dies_on_the_second_run(stage, recipe, run, engine=None):
        calls.append(run.path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(stage, recipe, run, engine)

    monkeypatch.setattr(pipeline_mod, "run_stage", dies_on_the_second_run)
    with pytest.raises(KeyboardInterrupt):
        cli_main(["sweep", "tiny", spec, "--run-dir", str(killed), *ARGS])
    monkeypatch.setattr(pipeline_mod, "run_stage", real)
    gc.collect()  # the interrupted run's folder lock goes with its last reference, as when a process dies
    assert not (killed / "online.dpo.lr=3e-3" / "online" / "done.json").exists()
    assert cli_main(["sweep", "tiny", spec, "--run-dir", str(killed), *ARGS]) == 0
    for value in ("0", "3e-3"):
        name = f"online.dpo.lr={value}/online/progress.jsonl"
        assert strip_seconds(read_jsonl(killed / name)) == strip_seconds(read_jsonl(straight / name))


def test_with_changes_another_field_along_with_the_swept_one(tmp_path, warm_tiny, capsys):
    root = tmp_path / "zipped"
    args = [a for a in ARGS if "chunk" not in a and "questions" not in a] + ["online.questions=2"]
    assert cli_main(["sweep", "tiny", "online.strategy.chunk_size=6,18", "--with", "online.strategy.max_chunks=6,2",
                     "--run-dir", str(root), *args]) == 0
    report = json.loads((root / "sweep.json").read_text())
    assert report["with"] == {"online.strategy.max_chunks": ["6", "2"]}
    for size, chunks in (("6", 6), ("18", 2)):
        recipe = (root / f"online.strategy.chunk_size={size}" / "recipe.yaml").read_text()
        assert f"chunk_size: {size}" in recipe and f"max_chunks: {chunks}" in recipe
        lines = read_jsonl(root / f"online.strategy.chunk_size={size}" / "online" / "progress.jsonl")
        assert all(line["chunks"] <= chunks for line in lines)
    header = next(line for line in (root / "sweep.md").read_text().splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.split("|")[1:3]] == ["online.strategy.chunk_size", "online.strategy.max_chunks"]
    for bad in ("online.strategy.max_chunks=6,2,1", "online.strategy.chunk_size=1,2"):
        capsys.readouterr()
        assert cli_main(["sweep", "tiny", "online.strategy.chunk_size=6,18", "--with", bad,
                         "--run-dir", str(tmp_path / "bad")]) != 0
        assert f"sweep --with {bad!r}" in capsys.readouterr().err


def test_with_values_may_repeat_where_swept_values_may_not():
    from harness.errors import RecipeError
    from harness.tools.sweep import sweep_spec, zipped_specs

    key, values = sweep_spec("online.strategy.chunk_size=10,20,30")
    assert zipped_specs(key, values, ["online.strategy.max_chunks=3,3,1"]) == {
        "online.strategy.max_chunks": ["3", "3", "1"]}
    with pytest.raises(RecipeError, match="give two or more distinct values"):
        sweep_spec("online.strategy.chunk_size=10,10")
    with pytest.raises(RecipeError, match=r"sweep --with 'online.strategy.max_chunks=3,,1'"):
        zipped_specs(key, values, ["online.strategy.max_chunks=3,,1"])
