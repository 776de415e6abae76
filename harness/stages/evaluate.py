"""Stage `evaluate`: lm-eval on the base model, on every SFT model of the compile stage and, for a one-agent
strategy (MCTS-DPO, SCDPO, naive DPO), on its online-trained policy (`online-policy`: the model those papers report).

Every model is evaluated from saved weights, the way lm-eval loads them: the base model's folder (or hub id) and,
for an SFT model, its adapter folder (`peft=` for hf, a LoRA request for vllm). No second in-memory copy is
made, and the generation engine is closed before this stage, so the evaluating engine has the device to itself.
The base model is evaluated first; each SFT adapter's per-sample outputs are then checked against it, so an adapter
that was silently not applied (outputs identical on every sample) stops the run instead of reporting base scores
(not the online policy's: a short stream may rightly leave every greedy answer as it was).
"""

from __future__ import annotations

import json
import time

from harness.console import Progress
from harness.evaluation.lm_eval import check_adapter_applied, evaluate_model
from harness.generation.engine import vllm_engine_kwargs
from harness.models import free_memory, saved_model_folder
from harness.recipe import Recipe
from harness.rundir import RunDir

STAGE = "evaluate"


def engine_args(recipe: Recipe) -> dict:
    """How lm-eval loads the model: the recipe's dtype, and the runtime's device (hf) or engine settings (vllm)."""
    remote = {"trust_remote_code": True} if recipe.model.trust_remote_code else {}
    if recipe.eval.backend == "vllm":
        args = vllm_engine_kwargs(recipe)
        args.pop("enable_sleep_mode", None)
        return args | {"dtype": recipe.model.dtype, "seed": recipe.online.seed,
                       "data_parallel_size": recipe.runtime.vllm.eval_data_parallel_size}
    from harness.models import resolve_device

    return {"dtype": recipe.model.dtype, "device": str(resolve_device(recipe.runtime.device))} | remote


def run_evaluate(recipe: Recipe, run: RunDir) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    folder = run.stage(STAGE)
    start = time.perf_counter()
    adapters: dict[str, str | None] = {"base": None}
    if run.is_done("online") and recipe.strategy.agents() == ["policy"]:
        # a one-agent method's online adapter is the paper's trained model (MCTS-DPO Table 1, SCDPO Table 2)
        adapters["online-policy"] = str(run.path / "online" / "adapters" / "policy")
    if run.is_done("compile"):
        for source, result in run.summary("compile")["sft"].items():
            if result.get("adapter"):
                adapters[f"sft-{source}"] = result["adapter"]
    base = saved_model_folder(recipe.model)
    models = {}
    tasks = len(recipe.eval.tasks)
    finished = [label for label in adapters if (folder / label / "records.json").is_file()]
    shown = Progress("evaluate", len(adapters) * tasks, "task", initial=len(finished) * tasks)
    for label, adapter in adapters.items():
        done = folder / label / "records.json"
        if not done.is_file():
            evaluate_model(base, base, recipe.eval, folder, label, adapter_path=adapter,
                           engine_args=engine_args(recipe),
                           on_task=lambda task, label=label: shown.update(1, model=label, task=task))
            free_memory()
        if adapter is not None and label != "online-policy":  # few online steps may leave greedy answers as they were
            check_adapter_applied(folder / "base", folder / label)
        models[label] = list(json.loads(done.read_text()).values())
    shown.close()
    summary = {"models": models, "seconds": time.perf_counter() - start}
    run.mark_done(STAGE, summary)
    return summary
