"""Stage `evaluate`: lm-eval on the base model, on every SFT model of the compile stage and, for a one-agent
strategy (MCTS-DPO, SCDPO, naive DPO), on its online-trained policy (`online-policy`: the model those papers report).

Every model is evaluated from saved weights, the way lm-eval loads them: the base model's folder (or hub id) and,
for an SFT model, its adapter folder (`peft=` for hf, a LoRA request for vllm). No second in-memory copy is
made, and the generation engine is closed before this stage, so the evaluating engine has the device to itself.
The base model is evaluated first; each adapter is then checked against it (`check_adapter`): all-zero weights, or a
probe read exactly as the base read it, stop the run instead of reporting base scores as the adapter's; an adapter
that changes no greedy answer is reported with its numbers (`adapter_checks` in done.json), not stopped. An online
policy that never stepped (a stream that made no pair) is reported the same way: its zero weights are what it learnt.
"""

from __future__ import annotations

import json
import time

from harness.config.recipe import Recipe
from harness.evaluation.lm_eval import check_adapter, evaluate_model
from harness.generation.engine import vllm_engine_kwargs
from harness.modeling.models import free_memory, saved_model_folder
from harness.reporting.names import ONLINE_POLICY
from harness.run.console import ProgressBar, say
from harness.run.folder import RunDir

STAGE = "evaluate"


def engine_args(recipe: Recipe) -> dict:
    """How lm-eval loads the model: the recipe's dtype, and the runtime's device (hf) or engine settings (vllm)."""
    remote = {"trust_remote_code": True} if recipe.model.trust_remote_code else {}
    if recipe.eval.backend == "vllm":
        args = vllm_engine_kwargs(recipe)
        args.pop("enable_sleep_mode", None)
        return args | {"dtype": recipe.model.dtype, "seed": recipe.online.seed,
                       "data_parallel_size": recipe.runtime.vllm.eval_data_parallel_size}
    from harness.modeling.models import resolve_device

    return {"dtype": recipe.model.dtype, "device": str(resolve_device(recipe.runtime.device))} | remote


def run_evaluate(recipe: Recipe, run: RunDir) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    folder = run.stage(STAGE)
    start = time.perf_counter()
    adapters: dict[str, str | None] = {"base": None}
    if run.is_done("online") and recipe.strategy.agents() == ["policy"]:
        # a one-agent method's online adapter is the paper's trained model (MCTS-DPO Table 1, SCDPO Table 2)
        adapters[ONLINE_POLICY] = str(run.path / "online" / "adapters" / "policy")
    if run.is_done("compile"):
        for source, result in run.summary("compile")["sft"].items():
            if result.get("adapter"):
                adapters[f"sft-{source}"] = str(run.path / result["adapter"])  # relative (or, before, absolute)
    base = saved_model_folder(recipe.model)
    models, checks = {}, {}
    tasks = len(recipe.eval.tasks)
    finished = [label for label in adapters if (folder / label / "records.json").is_file()]
    shown = ProgressBar("evaluate", len(adapters) * tasks, "task", initial=len(finished) * tasks)
    for label, adapter in adapters.items():
        done = folder / label / "records.json"
        if not done.is_file():
            evaluate_model(base, base, recipe.eval, folder, label, adapter_path=adapter,
                           engine_args=engine_args(recipe),
                           on_task=lambda task, label=label: shown.update(1, model=label, task=task))
            free_memory()
        if adapter is not None:
            # an online policy may rightly be untrained: a stream that made no pair never steps
            checks[label] = check_adapter(folder / "base", folder / label, adapter,
                                          may_be_untrained=label == ONLINE_POLICY)
        models[label] = list(json.loads(done.read_text()).values())
    shown.close()
    for check in checks.values():
        if check.get("warning"):
            say(f"warning: {check['warning']}")
    summary = {"models": models, "adapter_checks": checks, "seconds": time.perf_counter() - start}
    run.mark_done(STAGE, summary)
    return summary

