"""`harness doctor RECIPE`: a preflight of a recipe on the machine at hand, minutes before hours of GPU time.

It starts what the online stage starts, as the recipe starts it (the training copy on `runtime.device` beside the
generation engine with the `runtime` settings), then measures what decides whether the run fits and how long it
takes: free memory per device before and after, one DPO step at the recipe's widest pair with its peak memory,
decode tokens/s with and without an adapter, and the projected hours of the online stage. Without a CUDA device it
says what it would check; with `--rehearse` it runs the same checks on the CPU stand-in (to test them, not to size
anything).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from harness.recipe import Recipe

CHECKS = [
    "free memory on every visible GPU",
    "the engine started as the online stage starts it (training copy on runtime.device, {backend} generation with "
    "the runtime section's settings), and the memory left afterwards",
    "one DPO step of the widest pair batch the recipe can make ({pairs} pairs of a {prompt}-token prompt and "
    "{chunk}-token completions) with gradient checkpointing {ckpt}, and its peak memory",
    "decode tokens/s at a batch of {batch} with the base model and with the answer adapter",
    "the projected hours of the online stage ({questions} questions)",
]
QUESTION_TOKENS = 200
"""A long MetaMath question, in tokens (the prompt template comes on top)."""


@dataclass
class Shape:
    """The largest things the recipe's online stage does."""

    prompt_tokens: int
    """Longest Stop prompt: template + question + the answer before the last chunk."""
    pairs_per_step: int
    """Most pairs one DPO step takes."""
    tokens_per_question: int
    """Generated tokens per training question, at most: main chain, a rollout to the end from every node, curves."""


def recipe_shape(recipe: Recipe, template_tokens: int) -> Shape:
    flow, online = recipe.flow, recipe.online
    chunk, chunks = flow.chunk_size, flow.max_chunks
    nodes = 2 * chunks - 1  # answer nodes and the stop decisions between them
    if online.update == "per_question":
        pairs = min(online.batch_pairs, nodes * online.rollouts_per_node)
    else:
        pairs = online.batch_pairs
    answer_rollouts = sum(chunks - i for i in range(chunks)) * chunk
    stop_rollouts = sum(chunks - 1 - i for i in range(chunks - 1)) * chunk
    curves = (("frozen" in online.curves) + ("zero_shot" in online.curves)) * chunk * chunks
    return Shape(prompt_tokens=template_tokens + QUESTION_TOKENS + chunk * (chunks - 1), pairs_per_step=pairs,
                 tokens_per_question=chunk * chunks + online.rollouts_per_node * (answer_rollouts + stop_rollouts)
                 + curves)


def plan(recipe: Recipe) -> str:
    shape = recipe_shape(recipe, template_tokens=100)
    lines = [f"harness doctor {recipe.name}: no CUDA device here, so nothing is measured. On a GPU it checks:"]
    lines += [f"  - {check}" for check in CHECKS]
    return "\n".join(lines).format(backend=recipe.backend, pairs=shape.pairs_per_step, prompt=shape.prompt_tokens,
                                   chunk=recipe.flow.chunk_size, ckpt="on" if recipe.runtime.gradient_checkpointing
                                   else "off", batch=decode_batch(recipe), questions=recipe.online.questions)


def decode_batch(recipe: Recipe) -> int:
    return min(64, recipe.runtime.hf.max_batch) if recipe.backend == "hf" else 64


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
    from harness.learner import DPOLearner, Pair

    gen = torch.Generator().manual_seed(0)
    vocab = len(engine.tokenizer)
    chunk = recipe.flow.chunk_size

    def ids(n: int) -> list[int]:
        return torch.randint(vocab, (n,), generator=gen).tolist()

    learner = DPOLearner(engine.model, "answer", recipe.online.model_copy(update={"update": "accumulate",
                                                                                   "batch_pairs":
                                                                                   shape.pairs_per_step}),
                         engine.tokenizer.pad_token_id, recipe.runtime.dpo_micro_batch_tokens)
    learner.add([Pair("answer", ids(shape.prompt_tokens), ids(chunk), ids(chunk))
                 for _ in range(shape.pairs_per_step)])
    state = {name: p.detach().clone() for name, p in engine.model.named_parameters() if p.requires_grad}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    learner.step(seed=0)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # leave the engine as it was: the step was a measurement
        for name, p in engine.model.named_parameters():
            if name in state:
                p.copy_(state[name])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"pairs": shape.pairs_per_step, "prompt_tokens": shape.prompt_tokens, "completion_tokens": chunk,
            "seconds": seconds, "peak_gib": peak}


def decode_speed(engine, recipe: Recipe, adapter: str | None) -> float:
    """Generated tokens per second for a batch of long prompts, every sequence running to its budget."""
    gen = torch.Generator().manual_seed(1)
    batch, tokens = decode_batch(recipe), recipe.flow.chunk_size
    vocab = engine.tokenizer.vocab_size
    prompts = [torch.randint(vocab, (QUESTION_TOKENS,), generator=gen).tolist() for _ in range(batch)]
    engine.backend.reset_cache(adapter)
    start = time.perf_counter()
    samples = engine.backend.generate(prompts, adapter, tokens, recipe.flow.temperature, seed=0)
    made = sum(len(s.token_ids) for row in samples for s in row)
    return made / (time.perf_counter() - start)


def doctor(recipe: Recipe) -> dict:
    """Every check, as figures (GiB, seconds, tokens/s, hours)."""
    from harness.engine import Engine

    report: dict = {"recipe": recipe.name, "backend": recipe.backend, "runtime": recipe.runtime.model_dump()}
    report["memory_before"] = gpu_memory()
    start = time.perf_counter()
    engine = Engine(recipe)
    report["engine_start_seconds"] = time.perf_counter() - start
    report["memory_with_engine"] = gpu_memory()
    template = len(engine.prompter.stop_prompt("", []))
    shape = recipe_shape(recipe, template)
    report["dpo_step"] = dpo_step(engine, recipe, shape)
    base = decode_speed(engine, recipe, None)
    adapted = decode_speed(engine, recipe, "answer")
    report["decode_tokens_per_second"] = {"base": base, "answer_adapter": adapted}
    steps = len(recipe.online.train_agents) * recipe.online.questions
    if recipe.online.update == "accumulate":  # roughly: a step per batch of pairs, pairs ~ nodes per question
        steps = max(1, steps * (2 * recipe.flow.max_chunks - 1) // recipe.online.batch_pairs)
    hours = (recipe.online.questions * shape.tokens_per_question / adapted
             + steps * report["dpo_step"]["seconds"]) / 3600
    report["projection"] = {"tokens_per_question_at_most": shape.tokens_per_question, "dpo_steps_at_most": steps,
                            "online_hours_at_most": hours}
    engine.close()
    return report


def render(report: dict) -> str:
    """The figures as a short table a user reads."""
    from tabulate import tabulate

    rows = [(m["device"] + " free before", f"{m['free_gib']:.1f} of {m['total_gib']:.1f} GiB")
            for m in report["memory_before"]]
    rows += [(m["device"] + " free with engine", f"{m['free_gib']:.1f} GiB") for m in report["memory_with_engine"]]
    step = report["dpo_step"]
    rows += [("engine start", f"{report['engine_start_seconds']:.0f} s"),
             ("DPO step", f"{step['pairs']} pairs x ({step['prompt_tokens']} + {step['completion_tokens']}) tokens: "
                          f"{step['seconds']:.1f} s" + (f", peak {step['peak_gib']:.1f} GiB"
                                                        if step["peak_gib"] is not None else "")),
             ("decode, base model", f"{report['decode_tokens_per_second']['base']:.0f} tokens/s"),
             ("decode, answer adapter", f"{report['decode_tokens_per_second']['answer_adapter']:.0f} tokens/s"),
             ("online stage, at most", f"{report['projection']['online_hours_at_most']:.1f} h "
                                       f"({report['projection']['tokens_per_question_at_most']} tokens per question)")]
    return tabulate(rows, headers=["check", report["recipe"]])
