"""`--rehearse`: every recipe in recipes/ runs end to end on this CPU, with only the model, hub data, counts and
(without vLLM) the backend replaced; the paper recipes' wiring (prompts, templates, EOS ids, per-question updates,
learner memory settings, lm-eval metrics) is what runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.cli import main as cli_main
from harness.config.recipe import list_recipes, load_recipe
from harness.errors import RecipeError
from harness.modeling.families import generation_eos_ids
from harness.run.folder import read_jsonl
from harness.tools.rehearse import BUNDLED_TASKS, rehearsal

ALLOWED = {"model.name", "model.tiny.family", "model.tiny.warmup_steps", "model.dtype", "runtime.device",
           "online.questions", "online.question_batch", "online.checkpoint_every", "online.strategy.chunk_size",
           "online.strategy.max_new_tokens", "online.strategy.max_step_tokens", "eval.max_gen_toks",
           "compile.sft.lr", "backend", "eval.backend", "runtime.vllm.sleep_during_updates",
           "runtime.vllm.enforce_eager"}
"""Fields a rehearsal may change besides data sources and eval task names/limits."""


def flat(data, prefix=""):
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return {k: v for i, value in enumerate(data) for k, v in flat(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): data}


@pytest.mark.parametrize("name", list_recipes())
def test_rehearsal_changes_only_what_a_cpu_cannot_hold(name):
    recipe = load_recipe(name)
    rehearsed, changes = rehearsal(recipe, with_vllm=False)
    before, after = flat(recipe.model_dump(mode="json")), flat(rehearsed.model_dump(mode="json"))
    changed = {k for k in before if before[k] != after[k]} - {"description"}
    assert changed == {path for path, _, _ in changes}
    for path in changed:
        assert (path in ALLOWED or path.startswith("data.")
                or path.rsplit(".", 1)[-1] in ("lm_eval_task", "limit")), path
    assert rehearsed.model.name == "tiny" and rehearsed.backend == "hf" and rehearsed.eval.backend == "hf"
    for task in rehearsed.eval.tasks:  # built-in tasks need hub data; each has a bundled stand-in
        assert task.lm_eval_task.startswith("harness_")
    # kept as written: prompts, update mode, learner memory settings, metrics, SFT batch layout
    kept = {"max_new_tokens", "max_step_tokens", "chunk_size"}
    assert rehearsed.strategy.model_dump(exclude=kept) == recipe.strategy.model_dump(exclude=kept)
    assert rehearsed.online.dpo.update == recipe.online.dpo.update
    assert rehearsed.runtime.gradient_checkpointing == recipe.runtime.gradient_checkpointing
    assert [t.metric for t in rehearsed.eval.tasks] == [t.metric for t in recipe.eval.tasks]
    assert rehearsed.compile.sft.batch_size == recipe.compile.sft.batch_size


def test_paper_models_get_their_family_and_vllm_stays_where_installed():
    llama, _ = rehearsal(load_recipe("llama3-8b"), with_vllm=True)
    phi, _ = rehearsal(load_recipe("phi3-medium"), with_vllm=False)
    assert (llama.model.tiny.family, llama.backend, llama.eval.backend) == ("llama3", "vllm", "vllm")
    assert llama.runtime.vllm.enforce_eager and not llama.runtime.vllm.sleep_during_updates
    assert phi.model.tiny.family == "phi3"
    assert BUNDLED_TASKS["minerva_math"] == "harness_math500"  # the Minerva prompt, exact_match and math_verify


def test_a_hub_task_without_a_bundled_stand_in_is_refused_up_front():
    recipe = load_recipe("llama3-8b", ["eval.tasks.1.lm_eval_task=hendrycks_math"])
    with pytest.raises(RecipeError, match="eval.tasks.1.lm_eval_task: 'hendrycks_math' reads its data from the hub"):
        rehearsal(recipe)


PAPER_SCALE = [name for name in list_recipes() if load_recipe(name).paper is not None or name == "smollm2-135m"]
"""The paper recipes and the real-model CPU recipe: what a rehearsal changes (the tiny recipes run as they are in
tests/test_reproduce.py and test_strategy_runs.py; the SmolLM2 variants of the other methods share their model
with smollm2-135m and their strategies with the tiny recipes)."""


@pytest.fixture(scope="module")
def rehearsed_runs(tmp_path_factory, warm_tiny):
    """Every recipe's rehearsal, run as a user runs it: `harness reproduce NAME --rehearse`. With both cores: the
    Llama-3 stand-in's 128k-vocabulary head (warm-up, SFT) is the one large matmul of the test suite."""
    root = tmp_path_factory.mktemp("rehearse")
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        for name in PAPER_SCALE:
            run_dir = root / name
            assert cli_main(["reproduce", name, "--rehearse", "--run-dir", str(run_dir)]) == 0
            runs[name] = run_dir
    finally:
        torch.set_num_threads(threads)
    return runs


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_every_recipe_rehearses_to_a_full_table1(rehearsed_runs, name):
    run = rehearsed_runs[name]
    recipe = load_recipe(name)
    report = json.loads((run / "report" / "report.json").read_text())
    table = report["table1"]
    online = ["online-policy"] if recipe.strategy.agents() == ["policy"] else []  # a one-agent method's own model
    assert [row["model"] for row in table["rows"]] == ["base", *online, "sft-ground_truth", "sft-self", "sft-flow"]
    tasks = [t.name for t in recipe.eval.tasks]
    for row in table["rows"]:
        assert sorted(row["cells"]) == sorted(tasks), row["model"]
        for task in recipe.eval.tasks:
            cell = row["cells"][task.name]
            # the recipe's headline, else lm-eval's first metric,filter key (flexible-extract for arithmetic)
            assert cell["metric"] == (task.metric or "exact_match,flexible-extract")
            assert 0.0 <= cell["value"] <= 1.0


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_rehearsed_sft_targets_end_with_an_eos_id(rehearsed_runs, name):
    run = rehearsed_runs[name]
    ends = set(generation_eos_ids(rehearsal(load_recipe(name))[0].model.tiny.family))
    for source in ("flow", "self", "ground_truth"):
        examples = read_jsonl(run / "compile" / f"sft_{source}.jsonl")
        assert examples, source  # the stand-in gets some compile prompts right
        assert all(e["completion_ids"][-1] in ends for e in examples), source
    stopped = [line for line in read_jsonl(run / "compile" / "flow_traces.jsonl") if line["end"] != "eos"]
    assert all(line["completion_ids"][-1] not in ends for line in stopped)  # so the EOS of their targets was added


def test_phi3_rehearsal_folds_the_system_prompt_and_records_it(rehearsed_runs):
    prov = json.loads((rehearsed_runs["phi3-medium"] / "provenance.json").read_text())
    assert prov["prompts"] == {"system_folded_into_user_turn": True}
    prov = json.loads((rehearsed_runs["llama3-8b"] / "provenance.json").read_text())
    assert prov["prompts"] == {"system_folded_into_user_turn": False}


@pytest.mark.parametrize("name", ["llama3-8b", "phi3-medium"])
def test_paper_rehearsals_update_after_every_question_with_pairs(rehearsed_runs, name):
    lines = read_jsonl(Path(rehearsed_runs[name]) / "online" / "progress.jsonl")
    assert len(lines) == 8
    for line in lines:
        for agent, count in line["pairs"].items():
            assert bool(line["updates"].get(agent)) == (count > 0), (line["index"], agent)
