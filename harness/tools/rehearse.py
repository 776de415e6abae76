"""Rehearsal: a recipe's whole pipeline on a CPU before GPUs are paid for.

`harness reproduce RECIPE --rehearse` runs every stage of the recipe as written except what a CPU machine cannot
hold: the model becomes a tiny random model of the same architecture family with the same chat template, special
tokens and EOS ids (harness/modeling/families.py), built offline and warmed up on bundled arithmetic so it answers some
questions right; hub datasets become bundled rows of the same format; counts are cut to a handful; vLLM becomes the
HF backend where vLLM is not installed. Everything else (prompts, Flow and update settings, learner memory
settings, lm-eval prompts, metrics and filters, SFT batch layout) is untouched, so the recipe's wiring is tested.
Every replacement is listed for the user.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from harness.config.recipe import Recipe
from harness.errors import RecipeError
from harness.evaluation.lm_eval import HARNESS_TASKS

QUESTIONS = 8
"""Training questions of a rehearsal."""
COMPILE_PROMPTS = 32
"""Compile prompts of a rehearsal (enough that the tiny model gets some right, so every SFT set has examples)."""
EVAL_LIMIT = 4
"""Examples per lm-eval task."""
EVAL_TOKENS = 64
"""Longest evaluated answer: the stand-in's arithmetic answers are ~30 tokens, and a random stand-in that never
writes EOS would otherwise fill the paper's 512 or 1,024 tokens on every example."""
CHUNK_TOKENS = 12
"""Longest chunk (or step): the stand-in writes one character per token, an arithmetic answer is ~30 of them."""
ANSWER_TOKENS = 36
"""Longest one-pass answer."""
WARMUP_STEPS = 300
"""Warm-up of the stand-in on bundled arithmetic (as the `tiny` recipe)."""
SFT_LR = 1e-2
"""A few SFT steps at the paper's 2e-4 leave a tiny LoRA's greedy outputs unchanged, which the evaluate stage's
silent-adapter guard rightly refuses: the rehearsal's SFT steps must move the model."""

BUNDLED_DATA = {"metamath": ("bundled:arith_metamath", 500), "gsm8k": ("bundled:arith", 500),
                "math": ("bundled:math500_test", 250)}
"""Stand-in rows for a hub dataset, by row format, and where the compile prompts start in them (after the stream)."""
BUNDLED_TASKS = {"gsm8k": "harness_gsm8k", "minerva_math": "harness_math500", "minerva_math500": "harness_math500"}
"""lm-eval built-in tasks (hub data) -> the same prompts, filters and metrics on rows shipped in the repo."""


def family_of(model_name: str) -> str:
    """The stand-in family of a model: Llama-3, Phi-3, else a ChatML Llama (SmolLM2, the `tiny` model)."""
    name = model_name.lower()
    if "llama-3" in name or "llama3" in name:
        return "llama3"
    if "phi-3" in name or "phi3" in name:
        return "phi3"
    return "chatml"


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def rehearsal(recipe: Recipe, with_vllm: bool | None = None) -> tuple[Recipe, list[tuple[str, Any, Any]]]:
    """The rehearsal of `recipe` and what it replaced: (field, value in the recipe, value rehearsed)."""
    with_vllm = vllm_installed() if with_vllm is None else with_vllm
    data = recipe.model_dump(mode="json")
    changes: list[tuple[str, Any, Any]] = []

    def put(path: str, value: Any) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if node[key] != value:
            changes.append((path, node[key], value))
            node[key] = value

    model = data["model"]
    family = family_of(model["name"]) if model["name"] != "tiny" else model["tiny"]["family"]
    put("model.name", "tiny")
    put("model.tiny.family", family)
    put("model.tiny.warmup_steps", max(model["tiny"]["warmup_steps"], WARMUP_STEPS))
    put("model.dtype", "float32")  # bf16 matmuls are slow on CPUs, and fp16 ones unsupported on many
    put("runtime.device", "cpu")
    for name, limit in (("train", QUESTIONS), ("compile", COMPILE_PROMPTS)):
        source = data["data"][name]
        if source["source"].startswith("hub:"):
            bundled, compile_offset = BUNDLED_DATA[source["format"]]
            put(f"data.{name}.source", bundled)
            put(f"data.{name}.offset", 0 if name == "train" else compile_offset)
            put(f"data.{name}.shuffle_seed", None)
        put(f"data.{name}.limit", min(source["limit"] or limit, limit))
    put("online.questions", QUESTIONS)
    group = min(data["online"]["question_batch"], QUESTIONS // 2)
    put("online.question_batch", group)
    put("online.checkpoint_every", group * max(1, (QUESTIONS // 2) // group))
    strategy = data["online"]["strategy"]
    for key, most in (("chunk_size", CHUNK_TOKENS), ("max_step_tokens", CHUNK_TOKENS),
                      ("max_new_tokens", ANSWER_TOKENS)):
        if key in strategy:
            put(f"online.strategy.{key}", min(strategy[key], most))
    put("compile.sft.lr", max(data["compile"]["sft"]["lr"], SFT_LR))
    for i, task in enumerate(data["eval"]["tasks"]):
        name = task["lm_eval_task"]
        if name not in BUNDLED_TASKS and name not in HARNESS_TASKS:
            raise RecipeError(f"eval.tasks.{i}.lm_eval_task: {name!r} reads its data from the hub and has no bundled "
                              f"stand-in to rehearse with (stand-ins exist for {', '.join(sorted(BUNDLED_TASKS))})")
        put(f"eval.tasks.{i}.lm_eval_task", BUNDLED_TASKS.get(name, name))
        put(f"eval.tasks.{i}.limit", min(task["limit"] or EVAL_LIMIT, EVAL_LIMIT))
    put("eval.max_gen_toks", min(data["eval"].get("max_gen_toks") or EVAL_TOKENS, EVAL_TOKENS))
    if not with_vllm:
        put("backend", "hf")
        put("eval.backend", "hf")
    put("runtime.vllm.sleep_during_updates", False)  # sleep mode is CUDA-only
    put("runtime.vllm.enforce_eager", True)  # CPU vLLM starts in a third of the time without compiling
    rehearsed = Recipe.model_validate(data)
    rehearsed.description = f"Rehearsal of {recipe.name} on a CPU. " + recipe.description
    return rehearsed, changes


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    """The replacements as lines a user reads before the run starts."""
    lines = ["rehearsal: everything as the recipe says, except:"]
    lines += [f"  {path}: {before!r} -> {after!r}" for path, before, after in changes]
    return "\n".join(lines)
