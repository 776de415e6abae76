"""`harness doctor RECIPE`: a preflight of a recipe on the machine at hand, minutes before hours of GPU time.

It starts what the online stage starts, as the recipe starts it (the training copy on `runtime.device` beside the
generation engine with the `runtime` settings), then measures what decides whether the run fits and how long it
takes: free memory per device before and after, one DPO step at the recipe's widest pair with its peak memory,
decode tokens/s at the stage's batch sizes with and without an adapter, and an estimate of the online stage's
hours. Without a CUDA device it
says what it would check; with `--rehearse` it runs the same checks on the CPU stand-in (to test them, not to size
anything).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from harness.config.recipe import Recipe
from harness.errors import RecipeError
from harness.strategies.flow_dpo.config import FlowDPOConfig

CHECKS = [
    "free memory on every visible GPU",
    "the engine started as the online stage starts it (training copy on runtime.device, {backend} generation with "
    "the runtime section's settings), and the memory left afterwards",
    "one DPO step of the widest pair batch the recipe can make ({pairs} pairs of a {prompt}-token prompt and "
    "{chunk}-token completions) with gradient checkpointing {ckpt}, and its peak memory",
    "decode tokens/s at the online stage's batch sizes ({batch}: main chains; {wide}: rollouts) with the answer "
    "adapter, and with the base model",
    "an estimate of the online stage's hours ({questions} questions)",
]
QUESTION_TOKENS = 200
"""A long MetaMath question, in tokens (the prompt template comes on top)."""
TEMPLATE_TOKENS = 100
"""The Stop prompt's template, in tokens, where no tokenizer is loaded (the CPU plan); measured on a GPU."""


@dataclass
class Shape:
    """The largest things the recipe's online stage does."""

    prompt_tokens: int
    """Longest Stop prompt: template + question + the answer before the last chunk."""
    pairs_per_step: int
    """Most pairs one DPO step takes."""
    tokens_per_question: int
    """Generated tokens per training question, at most: main chain, a rollout to the end from every node, curves."""
    main_batch: int
    """Sequences decoded together in the main chains (and curves): one per question of a generation group."""
    rollout_batch: int
    """Sequences decoded together in the rollouts: one per node of every main chain of a group."""


def flow_settings(recipe: Recipe) -> FlowDPOConfig:
    """The recipe's Flow: the doctor sizes Flow-DPO runs (its shapes are the Flow's chunks and nodes)."""
    if not isinstance(recipe.strategy, FlowDPOConfig):
        raise RecipeError(f"harness doctor sizes Flow-DPO recipes; {recipe.name} runs {recipe.strategy.name}")
    return recipe.strategy


def recipe_shape(recipe: Recipe, template_tokens: int) -> Shape:
    flow, online, dpo = flow_settings(recipe), recipe.online, recipe.online.dpo
    chunk, chunks = flow.chunk_size, flow.max_chunks
    nodes = 2 * chunks - 1  # answer nodes and the stop decisions between them
    if dpo.update == "per_question":
        pairs = min(dpo.batch_pairs, nodes * flow.rollouts_per_node)
    else:
        pairs = dpo.batch_pairs
    answer_rollouts = sum(chunks - i for i in range(chunks)) * chunk
    stop_rollouts = sum(chunks - 1 - i for i in range(chunks - 1)) * chunk
    curves = (("frozen" in online.curves) + ("zero_shot" in online.curves)) * chunk * chunks
    group = online.question_batch
    return Shape(prompt_tokens=template_tokens + QUESTION_TOKENS + chunk * (chunks - 1), pairs_per_step=pairs,
                 tokens_per_question=chunk * chunks + flow.rollouts_per_node * (answer_rollouts + stop_rollouts)
                 + curves, main_batch=group, rollout_batch=group * nodes * flow.rollouts_per_node)


def plan(recipe: Recipe) -> str:
    shape = recipe_shape(recipe, template_tokens=TEMPLATE_TOKENS)
    lines = [f"harness doctor {recipe.name}: no CUDA device here, so nothing is measured. On a GPU it checks:"]
    lines += [f"  - {check}" for check in CHECKS]
    return "\n".join(lines).format(backend=recipe.backend, pairs=shape.pairs_per_step, prompt=shape.prompt_tokens,
                                   chunk=flow_settings(recipe).chunk_size,
                                   ckpt="on" if recipe.runtime.gradient_checkpointing else "off",
                                   batch=shape.main_batch, wide=shape.rollout_batch,
                                   questions=recipe.online.questions)


def gpu_memory() -> list[dict]:
    """Free and total GiB of every visible GPU."""
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append({"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i), "free_gib": free / 2**30,
                    "total_gib": total / 2**30})
    return out


def dpo_step(engine, recipe: Recipe, shape: Shape) -> dict:
    """One optimizer step of the widest pair batch, on random ids, with the recipe's learner settings."""
    from harness.training.learner import DPOLearner
    from harness.training.pairs import Pair

    gen = torch.Generator().manual_seed(0)
    vocab = engine.tokenizer.vocab_size
    device = next(engine.model.parameters()).device  # the training copy's GPU, not vLLM's
    chunk = flow_settings(recipe).chunk_size

    def ids(n: int) -> list[int]:
        return torch.randint(vocab, (n,), generator=gen).tolist()

    settings = recipe.online.dpo.model_copy(update={"update": "accumulate", "batch_pairs": shape.pairs_per_step})
    learner = DPOLearner(engine.model, "answer", settings, engine.tokenizer.pad_token_id,
                         recipe.runtime.dpo_micro_batch_tokens)
    learner.add([Pair("answer", ids(shape.prompt_tokens), ids(chunk), ids(chunk))
                 for _ in range(shape.pairs_per_step)])
    state = {name: p.detach().clone() for name, p in engine.model.named_parameters() if p.requires_grad}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    learner.step(seed=0)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # leave the engine as it was: the step was a measurement
        for name, p in engine.model.named_parameters():
            if name in state:
                p.copy_(state[name])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"pairs": shape.pairs_per_step, "prompt_tokens": shape.prompt_tokens, "completion_tokens": chunk,
            "seconds": seconds, "peak_gib": peak}


def decode_speed(engine, recipe: Recipe, adapter: str | None, batch: int) -> float:
    """Generated tokens per second for a batch of question-long prompts, each writing one chunk."""
    gen = torch.Generator().manual_seed(1)
    tokens = flow_settings(recipe).chunk_size
    vocab = engine.tokenizer.vocab_size
    prompts = [torch.randint(vocab, (QUESTION_TOKENS,), generator=gen).tolist() for _ in range(batch)]
    engine.backend.reset_cache(adapter)
    start = time.perf_counter()
    samples = engine.backend.generate(prompts, adapter, tokens, recipe.strategy.temperature, seed=0)
    made = sum(len(s.token_ids) for row in samples for s in row)
    return made / (time.perf_counter() - start)


def doctor(recipe: Recipe) -> dict:
    """Every check, as figures (GiB, seconds, tokens/s, hours)."""
    from harness.generation.engine import Engine

    report: dict = {"recipe": recipe.name, "backend": recipe.backend, "runtime": recipe.runtime.model_dump()}
    report["memory_before"] = gpu_memory()
    start = time.perf_counter()
    engine = Engine(recipe)
    engine.start_backend()  # as the online stage has it: vLLM's start-up and memory count here
    report["engine_start_seconds"] = time.perf_counter() - start
    report["memory_with_engine"] = gpu_memory()
    template = len(engine.prompter.spliced(flow_settings(recipe).stop_prompt, [], question=""))
    shape = recipe_shape(recipe, template)
    report["dpo_step"] = dpo_step(engine, recipe, shape)
    speed = {"main_chains": decode_speed(engine, recipe, "answer", shape.main_batch),
             "rollouts": decode_speed(engine, recipe, "answer", shape.rollout_batch),
             "main_chains_base_model": decode_speed(engine, recipe, None, shape.main_batch)}
    report["decode_tokens_per_second"] = speed
    report["projection"] = projection(recipe, shape, speed, report["dpo_step"]["seconds"])
    engine.close()
    return report


def projection(recipe: Recipe, shape: Shape, speed: dict, step_seconds: float) -> dict:
    """Hours of the online stage if every trace ran to `max_chunks` and every node gave a pair: main chains and
    curves at their batch's speed, rollouts at theirs, and the DPO steps. Prefill, Stop decisions and adapter
    reloads are left out, and traces usually end earlier, so it is an estimate, not a bound."""
    online, dpo, flow = recipe.online, recipe.online.dpo, flow_settings(recipe)
    chunk, chunks = flow.chunk_size, flow.max_chunks
    chains = chunk * chunks * (1 + ("frozen" in online.curves) + ("zero_shot" in online.curves))
    rollouts = shape.tokens_per_question - chains
    steps = len(online.train_agents()) * online.questions
    if dpo.update != "per_question":  # a step per batch of pairs, a pair per node at most
        steps = max(1, steps * (2 * chunks - 1) // dpo.batch_pairs)
    seconds = online.questions * (chains / speed["main_chains"] + rollouts / speed["rollouts"])
    return {"tokens_per_question": shape.tokens_per_question, "dpo_steps": steps,
            "online_hours_estimate": (seconds + steps * step_seconds) / 3600}


def render(report: dict) -> str:
    """The figures as a short table a user reads."""
    from tabulate import tabulate

    rows = [(m["device"] + " free before", f"{m['free_gib']:.1f} of {m['total_gib']:.1f} GiB")
            for m in report["memory_before"]]
    rows += [(m["device"] + " free with engine", f"{m['free_gib']:.1f} GiB") for m in report["memory_with_engine"]]
    step, speed = report["dpo_step"], report["decode_tokens_per_second"]
    rows += [("engine start", f"{report['engine_start_seconds']:.0f} s"),
             ("DPO step", f"{step['pairs']} pairs x ({step['prompt_tokens']} + {step['completion_tokens']}) tokens: "
                          f"{step['seconds']:.1f} s" + (f", peak {step['peak_gib']:.1f} GiB"
                                                        if step["peak_gib"] is not None else "")),
             ("decode, main chains", f"{speed['main_chains']:.0f} tokens/s "
                                     f"(base model {speed['main_chains_base_model']:.0f})"),
             ("decode, rollouts", f"{speed['rollouts']:.0f} tokens/s"),
             ("online stage, estimate", f"{report['projection']['online_hours_estimate']:.2f} h "
                                        f"({report['projection']['tokens_per_question']} tokens per question)")]
    return tabulate(rows, headers=["check", report["recipe"]])
