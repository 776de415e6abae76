"""`harness reproduce tiny`: the whole pipeline, its run folder, idempotent re-runs and resumption mid-stage."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["online.questions=8", "data.train.limit=8", "data.compile.limit=8", "online.checkpoint_every=3",
         "eval.tasks.0.limit=8"]
# Files that hold paths, dates or timings by design (lm-eval's results.json, peft's adapter_config.json);
# the numbers and outputs they summarise are compared through records.json, samples.jsonl and the weights.
VOLATILE = {"done.json", "results.json", "adapter_config.json", "README.md"}


def reproduce(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "harness.cli", "reproduce", "tiny", "--run-dir", str(run_dir),
                          *SMALL, *extra], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def digest(run_dir: Path, skip: tuple[str, ...] = ("report/", "logs/", ".lock")) -> dict[str, str]:
    """Hashes of every result file (timings stripped from JSON lines, since seconds differ between runs)."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        rel = str(path.relative_to(run_dir))
        if path.is_dir() or rel.startswith(skip) or "/trainer/" in rel or path.name in VOLATILE:
            continue
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            lines = [json.loads(line) for line in data.decode().splitlines()]
            data = json.dumps([{k: v for k, v in line.items() if not k.endswith("_seconds")} for line in lines])
            data = data.encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("repro") / "run"
    res = reproduce(run_dir)
    (run_dir.parent / "console.txt").write_text(res.stdout + res.stderr)  # what a user saw, in a pipe
    return run_dir


# The harness's own console lines: progress lines of its stages, the stage table, the paths.
OWN_LINE = re.compile(r"^(run folder: |report: |logs: |warning: |stage +status|-+ +-+"
                      r"|(baseline|online|compile|evaluate|report)( |/)|sft-\w+ )")


def test_console_shows_the_harness_and_the_logs_hold_the_libraries(finished):
    console = (finished.parent / "console.txt").read_text().splitlines()
    assert 8 <= len(console) <= 30, console
    assert [line for line in console if not OWN_LINE.match(line)] == []  # no third-party line
    assert any(line.startswith("online    24/24 questions") or line.startswith("online    8/8 questions")
               for line in console)
    logs = {p.name: p.read_text() for p in (finished / "logs").iterdir()}
    assert set(logs) == {"baseline.log", "online.log", "compile.log", "evaluate.log", "report.log"}
    assert "generate_until" in logs["evaluate.log"]  # lm-eval's own progress went to the log
    assert "Building labels" in logs["compile.log"] or "train_runtime" in logs["compile.log"]


def test_run_folder_layout(finished):
    for rel in ["recipe.yaml", "provenance.json", "baseline/traces.jsonl", "online/progress.jsonl",
                "online/adapters/answer/adapter_model.safetensors", "online/adapters/stop/adapter_model.safetensors",
                "compile/sft_flow.jsonl", "compile/sft_self.jsonl", "compile/sft_ground_truth.jsonl",
                "evaluate/base/arith/results.json", "evaluate/base/arith/samples.jsonl",
                "report/report.md", "report/report.html"]:
        assert (finished / rel).is_file(), rel
    prov = json.loads((finished / "provenance.json").read_text())
    assert {"recipe_hash", "git", "versions", "device", "seeds"} <= set(prov)
    assert "torch" in prov["versions"] and "transformers" in prov["versions"]
    assert len((finished / "online/progress.jsonl").read_text().splitlines()) == 8


def test_sft_sets_share_their_prompts(finished):
    summary = json.loads((finished / "compile/done.json").read_text())
    prompts = summary["prompts"]
    assert len(prompts) == 8
    by_id = {}
    for source in ("flow", "self", "ground_truth"):
        lines = [json.loads(x) for x in (finished / f"compile/sft_{source}.jsonl").read_text().splitlines()]
        assert summary["sets"][source]["examples"] == len(lines)
        for line in lines:
            assert line["id"] in prompts
            # the same question has the same prompt ids whichever source the target came from
            assert by_id.setdefault(line["id"], line["prompt_ids"]) == line["prompt_ids"]
    assert summary["sets"]["ground_truth"]["examples"] == 8


def test_eval_records_name_their_settings(finished):
    models = json.loads((finished / "evaluate/done.json").read_text())["models"]
    assert "base" in models
    for records in models.values():
        for record in records:
            assert {"task", "lm_eval_task", "version", "n_shot", "chat_template", "n"} <= set(record)
            assert any(m.endswith(",flexible-extract") for m in record["metrics"])


def test_rerun_is_quick_and_changes_nothing(finished):
    before = digest(finished)
    res = reproduce(finished)
    assert res.stdout.count("skipped (done)") == 4
    assert digest(finished) == before


def test_resume_mid_stage_gives_same_results(finished, tmp_path):
    """Simulate kills: baseline cut mid-batch with a torn line, compile without its SFT models, no evaluation."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / "baseline/done.json").unlink()
    traces = (copy / "baseline/traces.jsonl").read_text().splitlines()
    (copy / "baseline/traces.jsonl").write_text("\n".join(traces[:-3]) + '\n{"id": "torn')
    for path in ["compile/done.json", "compile/sft-flow", "compile/sft-self", "compile/sft_self.jsonl", "evaluate"]:
        target = copy / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    reproduce(copy)
    assert digest(copy) == digest(finished)


def test_a_moved_run_folder_resumes_reports_and_compares_where_it_is(finished, tmp_path):
    """Copied elsewhere with its evaluation deleted, while the original is out of reach: the evaluate stage finds
    the SFT adapters inside the copy, and report and compare work there."""
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(finished, moved)
    shutil.rmtree(moved / "evaluate")
    hidden = finished.with_name("hidden")
    finished.rename(hidden)
    try:
        reproduce(moved)
    finally:
        hidden.rename(finished)
    assert digest(moved) == digest(finished)
    for args in (["report", str(moved)], ["compare", str(finished), str(moved)]):
        res = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]


def test_report_numbers_equal_the_run_files(finished):
    """The report of a real tiny run: its numbers are the logs' and lm-eval's, recomputed here."""
    report = json.loads((finished / "report/report.json").read_text())
    lines = [json.loads(x) for x in (finished / "online/progress.jsonl").read_text().splitlines()]
    final = report["progressive"]["final"]
    assert final["trained"]["k"] == sum(line["correct_before"] for line in lines)
    assert final["trained"]["n"] == len(lines)
    assert final["zero_shot"]["k"] == sum(line["zero_shot_correct"] for line in lines)
    base = json.loads((finished / "evaluate/base/records.json").read_text())["arith"]
    cell = next(r for r in report["table1"]["rows"] if r["model"] == "base")["cells"]["arith"]
    assert cell["value"] == base["metrics"][cell["metric"]]["value"]
    assert cell["n"] == base["n"] and cell["n_shot"] == base["n_shot"]
    baseline = json.loads((finished / "baseline/done.json").read_text())
    assert report["traces"]["baseline"]["correct"] == baseline["correct"]
    assert (finished / "report/progressive.png").stat().st_size > 10_000
