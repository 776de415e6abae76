"""Published numbers: every paper file loads, the numbers equal the papers' tables, recipes' paper refs resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from harness.config.recipe import RECIPES_DIR, load_recipe
from harness.errors import PaperError
from harness.reporting.papers import PAPERS_DIR, list_papers, load_paper, load_paper_file, paper_number

# A second, independent entry of the same numbers: Flow-DPO arXiv 2410.22304 Table 1; Step-Controlled DPO
# arXiv 2407.00782 main results table (GSM8K, MATH); MCTS-DPO arXiv 2405.00451 v2 Table 1.
FLOW_TABLE1 = {
    ("llama3-8b", "zero_shot"): (48.9, 22.3),
    ("llama3-8b", "sft_ground_truth"): (67.2, 25.1),
    ("llama3-8b", "sft_self"): (68.8, 24.2),
    ("llama3-8b", "sft_flow"): (71.3, 27.8),
    ("phi3-medium", "zero_shot"): (None, 35.4),
    ("phi3-medium", "sft_ground_truth"): (None, 36.3),
    ("phi3-medium", "sft_self"): (None, 36.5),
    ("phi3-medium", "sft_flow"): (None, 38.6),
}
SCDPO_TABLE = {
    "mistral-7b-ours": [(76.8, 43.2), (78.8, 45.1), (79.0, 45.7), (80.1, 47.7)],
    "metamath-mistral-7b": [(77.7, 28.2), (81.0, 28.7), (81.4, 29.0), (81.7, 29.3)],
    "mathcoder-mistral-7b": [(78.1, 39.3), (79.2, 42.9), (78.3, 41.1), (80.4, 43.3)],
    "internlm2-20b": [(86.4, 55.8), (87.0, 57.6), (88.2, 57.5), (88.5, 58.1)],
}
MCTS_V2_TABLE1 = {
    "sft": (75.9, 28.9),
    "mcts_offline_dpo": (79.9, 31.9),
    "instance_online_dpo": (79.7, 32.9),
    "mcts_dpo": (81.8, 34.7),
    "mcts_dpo_gt_guidance": (80.7, 32.2),
}
ARXIV = {"flow-dpo": "2410.22304", "mcts-dpo": "2405.00451", "scdpo": "2407.00782"}


def test_all_papers_load() -> None:
    assert {"flow-dpo", "mcts-dpo", "scdpo"} <= set(list_papers())
    for name in list_papers():
        paper = load_paper(name)
        assert paper.paper == name
        assert paper.numbers(), name


@pytest.mark.parametrize("name", sorted(ARXIV))
def test_every_number_has_a_tagged_source(name: str) -> None:
    paper = load_paper(name)
    for row in paper.numbers():
        assert ARXIV[name] in row.source, row
        assert re.search(r"\[(paper|summary|code)\]", row.source), row
    for st in paper.statements:
        assert ARXIV[name] in st.source and re.search(r"\[(paper|summary|code)\]", st.source)
    for group in paper.hyperparameters:
        assert re.search(r"\[(paper|summary|code)\]|untagged", group.source), group.id


def test_spot_checks() -> None:
    src = "arXiv 2410.22304, Table 1 [paper]"
    assert paper_number("flow-dpo", "llama3-8b", "sft_flow", "gsm8k") == (71.3, src)
    assert paper_number("flow-dpo", "llama3-8b", "sft_flow", "math") == (27.8, src)
    assert paper_number("flow-dpo", "phi3-medium", "sft_flow", "math") == (38.6, src)
    assert paper_number("mcts-dpo", "mistral-7b", "mcts_dpo", "gsm8k")[0] == 81.8
    assert paper_number("mcts-dpo", "mistral-7b", "mcts_dpo", "math")[0] == 34.7
    assert paper_number("scdpo", "metamath-mistral-7b", "scdpo", "gsm8k")[0] == 81.7
    assert paper_number("scdpo", "metamath-mistral-7b", "scdpo", "math")[0] == 29.3


def test_flow_dpo_table1_complete() -> None:
    paper = load_paper("flow-dpo")
    for (model, method), (gsm, math) in FLOW_TABLE1.items():
        assert paper_number(paper, model, method, "gsm8k")[0] == gsm
        assert paper_number(paper, model, method, "math")[0] == math
    value, source = paper_number(paper, "phi3-medium", "zero_shot", "gsm8k")
    assert value is None and "not published" in source  # null, not 0
    assert {m.run_model for m in paper.methods.values()} == {
        "base",
        "sft-ground_truth",
        "sft-self",
        "sft-flow",
    }


def test_flow_dpo_statements_and_hyperparameters() -> None:
    paper = load_paper("flow-dpo")
    by_id = {s.id: s for s in paper.statements}
    llama = by_id["llama3-8b-progressive-gain"]
    assert llama.numbers == {"gain_percent": 20, "within_instances": 2000}
    assert "absolute" in llama.note and "relative" in llama.note
    assert by_id["phi3-medium-progressive-gain"].numbers == {"gain_points": 4, "final_percent_approx": 83}
    assert by_id["phi3-medium-zero-shot-training-data"].numbers == {"zero_shot_percent": 79}
    assert "Figure 4" in by_id["phi3-medium-zero-shot-training-data"].source
    compute = by_id["compute"]
    assert compute.numbers == {"online_hours_min": 36, "online_hours_max": 48, "online_gpus": 4,
                               "gpu_memory_gb": 80, "sft_hours": 1, "sft_gpus": 1}
    assert "A.2" in compute.source
    assert [s.id for s in paper.statements_for("phi3-medium")] == [
        "flow-starts-below-zero-shot",
        "phi3-medium-progressive-gain",
        "phi3-medium-zero-shot-training-data",
        "compute",
    ]
    assert any("already optimized" in note for note in paper.notes)  # why Phi-3 has no GSM8K column
    groups = {g.id: g for g in paper.hyperparameters}
    online, sft = groups["online"].values, groups["compile_sft"].values
    assert "Table 2" in groups["online"].source and "Table 3" in groups["compile_sft"].source
    assert online["learning_rate"] == 5e-6 and isinstance(online["learning_rate"], float)
    assert (online["global_batch_size"], online["dpo_beta"], online["gradient_clipping"]) == (32, 1.0, 1.0)
    assert (online["lora_r"], online["lora_alpha"], online["lora_dropout"]) == (8, 8, 0.05)
    assert (online["max_chunks"], online["chunk_size_tokens"]) == (6, 160)
    assert sft["learning_rate"] == 2e-4 and isinstance(sft["learning_rate"], float)
    assert (sft["global_batch_size"], sft["gradient_accumulation"], sft["warmup_ratio"], sft["epochs"]) == (
        16,
        2,
        0.1,
        3,
    )
    assert (sft["lora_r"], sft["lora_alpha"], sft["lora_dropout"]) == (16, 16, 0.05)


def test_mcts_dpo_versions() -> None:
    paper = load_paper("mcts-dpo")
    assert paper.default_version == "v2"
    for method, (gsm, math) in MCTS_V2_TABLE1.items():
        assert paper_number(paper, "mistral-7b", method, "gsm8k", "v2")[0] == gsm
        assert paper_number(paper, "mistral-7b", method, "math", "v2")[0] == math
    # v2 abstract [paper] is preferred over Table 1 [summary] for the same number
    assert paper_number(paper, "mistral-7b", "mcts_dpo", "gsm8k") == (
        81.8,
        "arXiv 2405.00451v2, abstract [paper]",
    )
    assert paper_number(paper, "mistral-7b", "mcts_dpo", "arc_c")[0] == 76.4
    assert paper_number(paper, "mistral-7b", "sft", "arc_c")[0] == 60.6
    row = paper.number("mistral-7b", "mcts_dpo", "arc_c")
    assert (row.delta, row.delta_vs) == (15.8, "sft")
    v1 = {b: paper.number("mistral-7b", "mcts_dpo", b, "v1") for b in ("gsm8k", "math", "sciq")}
    assert {b: (r.value, r.delta) for b, r in v1.items()} == {
        "gsm8k": (80.7, 4.8),
        "math": (32.2, 3.3),
        "sciq": (88.5, 7.7),
    }
    assert all(r.version == "v1" and "2405.00451v1, abstract [paper]" in r.source for r in v1.values())
    assert paper_number(paper, "mistral-7b", "sft", "sciq", "v1")[0] is None  # v1 states only the gains


def test_scdpo_table_complete() -> None:
    paper = load_paper("scdpo")
    methods = ["sft", "dpo", "dpo_data_equal", "scdpo"]
    assert set(paper.models) == set(SCDPO_TABLE)
    for model, cells in SCDPO_TABLE.items():
        for method, (gsm, math) in zip(methods, cells, strict=True):
            assert paper_number(paper, model, method, "gsm8k")[0] == gsm
            assert paper_number(paper, model, method, "math")[0] == math


def test_unknown_keys_name_the_file_and_key() -> None:
    with pytest.raises(PaperError, match=r"flow-dpo\.yaml: no model 'llama3-70b'"):
        paper_number("flow-dpo", "llama3-70b", "sft_flow", "gsm8k")
    with pytest.raises(PaperError, match="no benchmark 'aime'"):
        paper_number("flow-dpo", "llama3-8b", "sft_flow", "aime")
    with pytest.raises(PaperError, match="no version 'v3'"):
        paper_number("mcts-dpo", "mistral-7b", "mcts_dpo", "gsm8k", "v3")
    with pytest.raises(PaperError, match="no such paper file"):
        load_paper("nope")


def _broken(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((PAPERS_DIR / "flow-dpo.yaml").read_text())
    edit(data)
    path = tmp_path / "flow-dpo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_malformed_files_name_file_and_key(tmp_path: Path) -> None:
    path = _broken(tmp_path, lambda d: d["tables"][0].update(colour="red"))
    with pytest.raises(
        PaperError, match=r"flow-dpo\.yaml: invalid paper file:\n  tables\.0\.colour: unknown key"
    ):
        load_paper_file(path)
    path = _broken(
        tmp_path, lambda d: d["tables"][0]["numbers"]["llama3-8b"]["sft_flow"].update(gsm8k="high")
    )
    with pytest.raises(PaperError, match=r"tables\.0\.numbers\.llama3-8b\.sft_flow\.gsm8k"):
        load_paper_file(path)
    path = _broken(tmp_path, lambda d: d["tables"][0]["numbers"].update({"llama3-70b": {}}))
    with pytest.raises(PaperError, match=r"tables\.0\.numbers: 'llama3-70b' is not declared"):
        load_paper_file(path)
    path = _broken(tmp_path, lambda d: d.update(paper="other"))
    with pytest.raises(PaperError, match="must equal the file name"):
        load_paper_file(path)
    path.write_text("tables: [unclosed")
    with pytest.raises(PaperError, match="not valid YAML"):
        load_paper_file(path)


def test_every_recipe_paper_ref_resolves() -> None:
    """Loops over whatever recipes exist; a recipe with `paper` set names a paper file and a model in it."""
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        recipe = load_recipe(str(path))
        if recipe.paper is None:
            continue
        paper = load_paper(recipe.paper.paper)
        assert recipe.paper.model in paper.models, f"{path}: paper.model {recipe.paper.model!r}"
        assert any(row.model == recipe.paper.model for row in paper.numbers()), path
