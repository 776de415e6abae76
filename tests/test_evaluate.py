"""Tests for harness.evaluation.lm_eval: offline lm-eval tasks, result records, scoring, and the adapter check.

Everything runs offline on the in-process tiny model (random weights, so its scores are 0; scoring itself is
checked with a scripted lm-eval LM that answers with the gold solution, a wrong number, or no `####`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch

from harness.config.recipe import EvalConfig, EvalTask, ModelConfig
from harness.errors import DroppedAdapterError
from harness.evaluation.lm_eval import (
    HARNESS_TASKS,
    _task_manager,
    _vllm_model_args,
    build_lm,
    check_adapter,
    evaluate_model,
    needs_builtin_tasks,
    render_tasks,
)
from harness.evaluation.lm_eval_tasks import task_utils
from harness.modeling.models import load_base

LIMITS = {"arith": 4, "gsm8k": 4, "math500": 2}
BASE_CFG = EvalConfig(
    tasks=[
        EvalTask(name="arith", lm_eval_task="harness_arith", limit=LIMITS["arith"]),
        EvalTask(name="gsm8k", lm_eval_task="harness_gsm8k", limit=LIMITS["gsm8k"]),
        EvalTask(name="math500", lm_eval_task="harness_math500", limit=LIMITS["math500"]),
    ],
    batch_size=4,
    max_gen_toks=16,
)
ARITH_CFG = EvalConfig(tasks=[BASE_CFG.tasks[0]], batch_size=4, max_gen_toks=16)


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No hub, a private HF cache, and a working directory that is not the repo (data paths must not care).

    One torch thread: the tiny model's matmuls gain nothing from two, and on a busy CI machine two threads
    spin-wait against other processes (measured here: 50x slower generation under load).
    """
    home = tmp_path_factory.mktemp("hf_home")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        import datasets.config
        import huggingface_hub.constants

        # both read their environment at import time: set the values they already computed too
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield
    torch.set_num_threads(threads)


def tiny() -> tuple[torch.nn.Module, object]:
    return load_base(ModelConfig(name="tiny"))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval")
    model, tok = tiny()
    return out, evaluate_model(model, tok, BASE_CFG, out, "base")


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ 1, 2
def test_gsm8k_style_tasks_run_offline_and_name_every_number(base_run: tuple[Path, dict]) -> None:
    out, records = base_run
    assert set(records) == {"arith", "gsm8k", "math500"}
    for name, lm_task, version in [("arith", "harness_arith", 1.0), ("gsm8k", "harness_gsm8k", 3.0)]:
        rec = records[name]
        assert rec["task"] == name and rec["lm_eval_task"] == lm_task
        assert rec["version"] == version  # harness_gsm8k keeps lm-eval gsm8k's version: same task, local data
        assert rec["n_shot"] == 5 and rec["chat_template"] is False
        assert rec["limit"] == rec["n"] == LIMITS[name]
        assert set(rec["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
        for number in rec["metrics"].values():
            assert 0.0 <= number["value"] <= 1.0 and number["stderr"] is not None
            assert number["higher_is_better"] is True
        results = json.loads((out / "base" / name / "results.json").read_text())
        assert results["versions"][lm_task] == version and results["n-shot"][lm_task] == 5
        assert results["higher_is_better"][lm_task] == {"exact_match": True}
        assert results["configs"][lm_task]["dataset_path"] == "json"
        assert "lm_eval_version" in results and "samples" not in results
        samples = read_samples(out / "base" / name / "samples.jsonl")
        assert {s["filter"] for s in samples} == {"strict-match", "flexible-extract"}
        assert sorted({s["doc_id"] for s in samples}) == list(range(LIMITS[name]))
        assert all(s["task"] == lm_task and isinstance(s["resps"][0][0], str) for s in samples)
    saved = json.loads((out / "base" / "records.json").read_text())
    assert saved == records


def test_gsm8k_prompt_is_lm_eval_gsm8k(base_run: tuple[Path, dict]) -> None:
    """Few-shot examples come from the shipped train split exactly as lm-eval's hub-backed gsm8k draws them."""
    out, _ = base_run
    first = read_samples(out / "base" / "gsm8k" / "samples.jsonl")[0]
    prompt = first["arguments"][0][0]
    assert prompt.endswith(f"Question: {first['doc']['question']}\nAnswer:")
    # lm-eval gsm8k, 5-shot, fewshot seed 1234, doc 0: these five train questions in this order (as seen in
    # public renderings of lm-eval's gsm8k prompt for example 0)
    shots = [line[len("Question: ") :][:30] for line in prompt.split("\n") if line.startswith("Question: ")]
    assert shots == [
        "Jen and Tyler are gymnasts pra",
        "Four people in a law firm are ",
        "A charcoal grill burns fifteen",
        "A bear is preparing to hiberna",
        "Brendan can cut 8 yards of gra",
        "Janet’s ducks lay 16 eggs per ",
    ]
    assert "\n#### 12\n\nQuestion: Four people" in prompt


def test_arith_holds_out_training_rows(base_run: tuple[Path, dict]) -> None:
    """harness_arith evaluates rows 600+ of arith.jsonl with few-shot examples from rows 550-599."""
    out, _ = base_run
    rows = read_samples(Path(task_utils.__file__).parents[2] / "bundled" / "arith.jsonl")
    samples = read_samples(out / "base" / "arith" / "samples.jsonl")
    assert samples[0]["doc"] == rows[600]
    pool = {row["question"] for row in rows[550:600]}
    shots = [line[len("Question: ") :] for line in samples[0]["arguments"][0][0].split("\n")]
    shots = [q for q in shots if q in {row["question"] for row in rows}]
    assert len(shots) == 6 and set(shots[:5]) <= pool and shots[5] == rows[600]["question"]


def test_math500_runs_offline_with_minerva_prompt(base_run: tuple[Path, dict]) -> None:
    out, records = base_run
    rec = records["math500"]
    assert rec["lm_eval_task"] == "harness_math500" and rec["version"] == 3.1
    assert rec["n_shot"] == 4 and rec["n"] == 2
    assert set(rec["metrics"]) == {"exact_match,none", "math_verify,none"}
    prompt = read_samples(out / "base" / "math500" / "samples.jsonl")[0]["arguments"][0][0]
    assert prompt.startswith("Problem:\nFind the domain of the expression")
    assert prompt.count("Final Answer: The final answer is") == 4 and prompt.endswith("\n\nSolution:")


def test_chat_template_is_recorded(tmp_path: Path) -> None:
    cfg = EvalConfig(
        tasks=[EvalTask(name="arith", lm_eval_task="harness_arith", num_fewshot=2, limit=2)],
        apply_chat_template=True,
        max_gen_toks=8,
    )
    model, tok = tiny()
    rec = evaluate_model(model, tok, cfg, tmp_path, "chat")["arith"]
    assert rec["chat_template"] is True and rec["n_shot"] == 2 and rec["n"] == 2
    prompt = read_samples(tmp_path / "chat" / "arith" / "samples.jsonl")[0]["arguments"][0][0]
    # few-shot examples as earlier chat turns (lm-eval's fewshot_as_multiturn), then the question
    assert prompt.startswith("<|im_start|>user\nQuestion: ") and prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>user") == 3 and prompt.count("<|im_start|>assistant") == 3


# ------------------------------------------------------------------------------------------------ 3
def random_lora(model: torch.nn.Module) -> torch.nn.Module:
    """A PeftModel whose lora_B is random (not the zero init), so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return peft_model.eval()


def save_lora(peft_model: torch.nn.Module, folder: Path, scale: float | None = None) -> Path:
    """Save the PeftModel's adapter to `folder`, its lora_B multiplied by `scale` first (0: a zeroed adapter)."""
    peft_model.save_pretrained(folder)
    saved = folder / "adapter_model.safetensors"
    if scale is not None:
        from safetensors.torch import load_file, save_file

        weights = load_file(saved)
        save_file({k: v * scale if "lora_B" in k else v for k, v in weights.items()}, saved)
    return folder


def test_adapter_check_passes_an_applied_adapter_and_stops_a_dropped_one(base_run, tmp_path: Path) -> None:
    out, _ = base_run
    model, tok = tiny()
    peft_model = random_lora(model)
    adapter = save_lora(peft_model, tmp_path / "saved")
    evaluate_model(peft_model, tok, ARITH_CFG, tmp_path, "lora")
    record = check_adapter(out / "base", tmp_path / "lora", adapter)
    assert record["differing"] > 0 and record["probe_change"] > 0 and record["lora_b_norm"] > 0
    assert "warning" not in record

    with peft_model.disable_adapter():  # the silent failure: the adapter is there but not used
        evaluate_model(peft_model, tok, ARITH_CFG, tmp_path, "lora_disabled")
    with pytest.raises(DroppedAdapterError, match="did not reach the evaluated model"):
        check_adapter(out / "base", tmp_path / "lora_disabled", adapter)  # weights fine, but never applied
    with pytest.raises(DroppedAdapterError, match="did not reach"):
        check_adapter(out / "base", out / "base")

    zeroed = save_lora(random_lora(tiny()[0]), tmp_path / "zeroed", scale=0.0)
    with pytest.raises(DroppedAdapterError, match="every lora_B weight is zero"):
        check_adapter(out / "base", tmp_path / "lora", zeroed)
    untrained = check_adapter(out / "base", out / "base", zeroed, may_be_untrained=True)  # an online policy
    assert untrained["lora_b_norm"] == 0.0 and "never stepped" in untrained["warning"]

    merged = peft_model.merge_and_unload()  # a merged model is just a transformers model
    evaluate_model(merged, tok, ARITH_CFG, tmp_path, "merged")
    assert check_adapter(out / "base", tmp_path / "merged")["differing"] > 0
    texts = [[s["resps"] for s in read_samples(tmp_path / r / "arith" / "samples.jsonl")] for r in ("lora", "merged")]
    assert texts[0] == texts[1]

    with pytest.raises(ValueError, match="no samples in common"):
        check_adapter(out / "base", tmp_path / "nothing_here")


def test_an_adapter_that_changes_no_greedy_answer_is_a_warning(base_run, tmp_path: Path) -> None:
    """Weights and probe show an applied adapter; the same greedy text on every sample is reported, not stopped."""
    import shutil

    out, _ = base_run
    weak = tmp_path / "weak"
    shutil.copytree(out / "base", weak)  # every generated text is the base's
    probe = json.loads((weak / "probe.json").read_text())
    (weak / "probe.json").write_text(json.dumps([probe[0] - 1e-3, *probe[1:]]))
    adapter = save_lora(random_lora(tiny()[0]), tmp_path / "adapter", scale=1e-3)
    record = check_adapter(out / "base", weak, adapter)
    shared = record["shared"]
    assert record["differing"] == 0 and shared == sum(LIMITS.values())
    assert 0 < record["probe_change"] <= 1e-3 and 0 < record["lora_b_norm"]
    assert f"generated the base model's text on all {shared} shared samples" in record["warning"]
    assert f"lora_B norm {record['lora_b_norm']:.3g}" in record["warning"]


def test_saved_model_and_adapter_folders(base_run: tuple[Path, dict], tmp_path: Path) -> None:
    """A model folder plus adapter_path (lm-eval's own peft= loading) generates what the in-memory PeftModel does."""
    model, tok = tiny()
    model.save_pretrained(tmp_path / "base_model")
    tok.save_pretrained(tmp_path / "base_model")
    peft_model = random_lora(model)
    peft_model.save_pretrained(tmp_path / "adapter")
    evaluate_model(peft_model, tok, ARITH_CFG, tmp_path, "in_memory")
    evaluate_model(tmp_path / "base_model", tok, ARITH_CFG, tmp_path, "folders", adapter_path=tmp_path / "adapter")
    assert check_adapter(base_run[0] / "base", tmp_path / "folders", tmp_path / "adapter")["differing"] > 0
    texts = [read_samples(tmp_path / r / "arith" / "samples.jsonl") for r in ("in_memory", "folders")]
    assert [s["resps"] for s in texts[0]] == [s["resps"] for s in texts[1]]


def test_peft_model_with_two_active_adapters_is_refused() -> None:
    from peft import LoraConfig, get_peft_model

    model, tok = tiny()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"), adapter_name="a")
    peft_model.add_adapter("b", LoraConfig(r=4, target_modules="all-linear"))
    peft_model.base_model.set_adapter(["a", "b"])
    with pytest.raises(ValueError, match="one adapter at a time"):
        build_lm(peft_model, tok, ARITH_CFG)


# ------------------------------------------------------------------------------------------------ 4
def scripted_lm(answer: Callable[[dict], str]) -> object:
    """An lm-eval LM whose generation for each request is answer(doc): scoring with known outputs."""
    from lm_eval.api.model import LM

    class ScriptedLM(LM):
        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            return [answer(r.doc) for r in requests]

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
            raise NotImplementedError

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
            raise NotImplementedError

    return ScriptedLM()


def minerva(answer: str) -> str:
    return f"So that is it.\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


SCORING_CFG = EvalConfig(
    tasks=[
        EvalTask(name="arith", lm_eval_task="harness_arith", limit=8),
        EvalTask(name="gsm8k", lm_eval_task="harness_gsm8k", limit=8),
        EvalTask(name="math500", lm_eval_task="harness_math500", limit=8),
    ]
)


def scores(records: dict) -> dict[str, dict[str, float]]:
    return {name: {k: m["value"] for k, m in rec["metrics"].items()} for name, rec in records.items()}


def test_scoring_with_known_outputs(tmp_path: Path) -> None:
    def gold(doc: dict) -> str:
        return doc["solution"] + "\n" + minerva(doc["answer"]) if "problem" in doc else doc["answer"]

    def wrong(doc: dict) -> str:
        return minerva("123456789") if "problem" in doc else "I think 7 + 1 = 123456789.\n#### 123456789"

    def no_hashes(doc: dict) -> str:  # the instruct-model habit: the right number, no "#### "
        return minerva(doc["answer"]) if "problem" in doc else f"The answer is {doc['answer'].split('#### ')[-1]}."

    right = scores(evaluate_model(scripted_lm(gold), None, SCORING_CFG, tmp_path, "gold"))
    assert right == {
        "arith": {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0},
        "gsm8k": {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0},
        "math500": {"exact_match,none": 1.0, "math_verify,none": 1.0},
    }
    bad = scores(evaluate_model(scripted_lm(wrong), None, SCORING_CFG, tmp_path, "wrong"))
    assert all(value == 0.0 for task in bad.values() for value in task.values())
    loose = scores(evaluate_model(scripted_lm(no_hashes), None, SCORING_CFG, tmp_path, "loose"))
    assert loose["gsm8k"] == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0}
    assert loose["arith"] == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0}
    assert loose["math500"]["exact_match,none"] == 1.0


def test_equivalence_is_symbolic() -> None:
    assert task_utils.is_equiv("\\frac{1}{2}", "0.5")
    assert task_utils.is_equiv("\\frac{2}{3}", "2/3")
    assert task_utils.is_equiv("x^2+2x", "x(x+2)")
    assert not task_utils.is_equiv("[2,5)", "[2,5]")
    assert not task_utils.is_equiv("3", "4")
    assert not task_utils.is_equiv(task_utils.INVALID_ANSWER, "3")
    assert task_utils.get_unnormalized_answer(minerva("\\frac{2}{3}")) == "$\\frac{2}{3}$"
    assert task_utils.get_unnormalized_answer("no final answer") == task_utils.INVALID_ANSWER


def lm_eval_minerva_utils() -> object:
    """lm-eval's own minerva utils, imported past its antlr4==4.11 assertion (its text functions need no antlr)."""
    from lm_eval.tasks import manager

    path = Path(manager.__file__).parent / "minerva_math" / "utils.py"
    spec = importlib.util.spec_from_file_location("_lm_eval_minerva_utils", path)
    module = importlib.util.module_from_spec(spec)
    with mock.patch("importlib.metadata.version", return_value="4.11.0"):
        spec.loader.exec_module(module)
    return module


def test_vendored_minerva_functions_equal_lm_eval() -> None:
    theirs = lm_eval_minerva_utils()
    assert task_utils.list_fewshot_samples() == theirs.list_fewshot_samples()
    bundled = Path(task_utils.__file__).parents[2] / "bundled" / "math500_test.jsonl"
    for row in read_samples(bundled):
        boxed = task_utils.last_boxed_only_string(row["solution"])
        assert boxed == theirs.last_boxed_only_string(row["solution"])
        ours = task_utils.normalize_final_answer(task_utils.remove_boxed(boxed))
        assert ours == theirs.normalize_final_answer(theirs.remove_boxed(boxed))
        text = minerva(row["answer"])
        assert task_utils.get_unnormalized_answer(text) == theirs.get_unnormalized_answer(text)
        assert task_utils.doc_to_text(row) == theirs.doc_to_text(row)
    sys.modules.pop("_lm_eval_minerva_utils", None)


# ------------------------------------------------------------------------------------------------ plumbing
def test_rendered_tasks_use_absolute_paths(tmp_path: Path) -> None:
    rendered = render_tasks(tmp_path / "tasks")
    assert HARNESS_TASKS == {"harness_arith", "harness_gsm8k", "harness_math500"}
    assert {p.stem for p in rendered.glob("*.yaml")} == HARNESS_TASKS
    for path in rendered.glob("*.yaml"):
        text = path.read_text()
        assert "${" not in text and str(Path(task_utils.__file__).parents[2]) in text
    assert not needs_builtin_tasks(BASE_CFG.tasks)
    manager = _task_manager(BASE_CFG.tasks, rendered)  # only our folder: no scan of lm-eval's 14k tasks
    assert set(manager.all_subtasks) == HARNESS_TASKS
    # a paper-scale recipe names lm-eval's own tasks: those need the built-in index (and the hub)
    assert needs_builtin_tasks([EvalTask(name="gsm8k", lm_eval_task="gsm8k"), *BASE_CFG.tasks])


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot name"):
        evaluate_model(None, None, ARITH_CFG, tmp_path, "../escape")
    twice = EvalConfig(tasks=[BASE_CFG.tasks[0], BASE_CFG.tasks[0]])
    with pytest.raises(ValueError, match="repeat"):
        evaluate_model(None, None, twice, tmp_path, "base")


def test_vllm_model_args(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16}))
    cfg = EvalConfig(tasks=ARITH_CFG.tasks, backend="vllm", batch_size=32)
    args = _vllm_model_args("/models/base", "/models/base", cfg, tmp_path)
    assert args == {
        "pretrained": "/models/base",
        "batch_size": 32,
        "tokenizer": "/models/base",
        "lora_local_path": str(tmp_path),
        "max_lora_rank": 16,
    }
    assert "lora_local_path" not in _vllm_model_args("/models/base", None, cfg, None)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(RuntimeError, match="vllm is not installed"):
            build_lm("/models/base", None, cfg, tmp_path)


def test_vllm_evaluation_takes_the_runtime_engine_settings_and_data_parallel_copies(tiny_recipe) -> None:
    from harness.stages.evaluate import engine_args

    recipe = tiny_recipe("eval.backend=vllm", "runtime.vllm.tensor_parallel_size=2",
                         "runtime.vllm.eval_data_parallel_size=4", "runtime.vllm.sleep_during_updates=true")
    args = engine_args(recipe)
    assert (args["tensor_parallel_size"], args["data_parallel_size"]) == (2, 4)
    assert "enable_sleep_mode" not in args  # an online-engine setting, not lm-eval's
    assert engine_args(tiny_recipe("eval.backend=vllm"))["data_parallel_size"] == 1


def test_task_files_planted_in_a_run_folder_are_never_loaded(base_run, tmp_path: Path) -> None:
    """A YAML that shadows our task with a `!function` and the Python file it names, planted where the evaluation
    folder keeps its rendered tasks: evaluating there runs neither, and the numbers are our task's."""
    out, records = base_run
    planted = tmp_path / "planted" / "_lm_eval_tasks"
    planted.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    (planted / "evil_utils.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
                                           "def docs(dataset):\n    return dataset\n")
    (planted / "evil.yaml").write_text(
        "task: harness_arith\ndataset_path: json\ndataset_kwargs:\n  data_files: {test: nowhere.jsonl}\n"
        "test_split: test\nprocess_docs: !function evil_utils.docs\ndoc_to_text: q\ndoc_to_target: a\n"
        "output_type: generate_until\nmetric_list:\n  - metric: exact_match\n")
    model, tok = tiny()
    again = evaluate_model(model, tok, ARITH_CFG, tmp_path, "planted")
    assert not marker.exists()
    assert again["arith"]["metrics"] == records["arith"]["metrics"]
