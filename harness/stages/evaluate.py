"""Stage `evaluate`: lm-eval on the base model and on every SFT model of the compile stage.

The base model is evaluated first; each SFT adapter's per-sample outputs are then checked against it, so an adapter
that was silently not applied (outputs identical on every sample) stops the run instead of reporting base scores.
"""

from __future__ import annotations

import json

from harness.evaluate import check_adapter_applied, evaluate_model
from harness.models import load_base
from harness.recipe import Recipe
from harness.rundir import RunDir

STAGE = "evaluate"


def run_evaluate(recipe: Recipe, run: RunDir) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    folder = run.stage(STAGE)
    adapters: dict[str, str | None] = {"base": None}
    if run.is_done("compile"):
        for source, result in run.summary("compile")["sft"].items():
            if result.get("adapter"):
                adapters[f"sft-{source}"] = result["adapter"]
    models = {}
    for label, adapter in adapters.items():
        done = folder / label / "records.json"
        if not done.is_file():
            model, tokenizer = load_base(recipe.model)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter).eval()
            evaluate_model(model, tokenizer, recipe.eval, folder, label)
        if adapter is not None:
            check_adapter_applied(folder / "base", folder / label)
        models[label] = list(json.loads(done.read_text()).values())
    summary = {"models": models}
    run.mark_done(STAGE, summary)
    return summary
