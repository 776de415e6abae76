"""The peer, side by side: TRL's `OnlineDPOTrainer` on a recipe's model, stream and token budget.

TRL's online DPO makes one pair from two full completions of a prompt, judged here by the harness's grader (1 for
a correct answer, 0 otherwise), with a LoRA adapter of the recipe's Answer rank. It prints questions per hour and
generated tokens per second, to set beside `harness run online RECIPE online.questions=64` on the same machine
(its console line shows `tok/s`, its done.json the stage's seconds). TRL counts a completion's padding after EOS
as generated, so its tokens/s is an upper bound. Needs nothing beyond the project's own dependencies.

Usage: python scripts/peer_trl_online_dpo.py [RECIPE] [QUESTIONS]   (default: smollm2-135m 16)
"""

import os
import sys
import tempfile
import time

from datasets import Dataset
from peft import LoraConfig

from harness.config.recipe import load_recipe
from harness.data.records import load_source
from harness.grading.grader import grade
from harness.modeling.models import load_base

PROMPTS_PER_STEP = 4
"""Prompts per optimizer step (two completions each)."""


def main(recipe_name: str = "smollm2-135m", questions: int = 16) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # read when trl.experimental is imported
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    recipe = load_recipe(recipe_name)
    flow, spec = recipe.strategy, recipe.adapter_specs()["answer"]
    model, tokenizer = load_base(recipe.model, recipe.runtime.device)
    records = load_source(recipe.data.train).records[:questions]
    system = [{"role": "system", "content": flow.answer_prompt.system}] if flow.answer_prompt.system else []
    rows = [{"prompt": [*system, {"role": "user", "content": flow.answer_prompt.user.format(question=r.question)}],
             "gold": r.answer, "task": r.task} for r in records]
    generated = [0]

    def correct(prompts, completions, completion_ids, gold, task, **_) -> list[float]:
        generated[0] += sum(map(len, completion_ids))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(grade(text, g, t).correct) for text, g, t in zip(texts, gold, task)]

    args = OnlineDPOConfig(output_dir=tempfile.mkdtemp(prefix="peer-"), per_device_train_batch_size=PROMPTS_PER_STEP,
                           max_new_tokens=flow.answer_budget(), temperature=flow.temperature,
                           learning_rate=recipe.online.dpo.lr, beta=recipe.online.dpo.beta,
                           max_steps=max(1, questions // PROMPTS_PER_STEP), use_cpu=recipe.runtime.device == "cpu",
                           report_to="none", save_strategy="no", bf16=recipe.model.dtype == "bfloat16")
    lora = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = OnlineDPOTrainer(model=model, reward_funcs=correct, args=args, train_dataset=Dataset.from_list(rows),
                               processing_class=tokenizer, peft_config=lora)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    print(f"TRL OnlineDPOTrainer, {recipe_name}: {questions} questions in {seconds:.0f} s "
          f"({questions * 3600 / seconds:.0f} questions/hour), {generated[0]} tokens generated "
          f"({generated[0] / seconds:.1f}/s)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "smollm2-135m", int(args[1]) if len(args) > 1 else 16)
