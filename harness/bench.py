"""`harness bench flow`: what the batched Flow engine buys over naive generation, and how close it is to the ceiling.

On the same questions it measures
  (a) engine:  the Flow's main chains, then one rollout from every node continued to the end, all rollouts of a
               group of `online.question_batch` questions in one batch (exactly what online learning does);
  (b) naive:   the same work one sequence at a time, chunk by chunk, every chunk re-encoding its prefix;
  (c) ceiling: plain batched `generate` of the same model (the same backend), at the engine's mean rollout
               batch size.
Speeds are kept answer tokens per second of wall time: tokens of the final traces beyond the prefixes they share
(draft tokens discarded after a Stop yes, and redrawn alternatives, count as time, not tokens; so do stop
decisions).
"""

from __future__ import annotations

import time

from harness.data import load_source
from harness.generation.engine import Engine
from harness.recipe import Recipe, RecipeError
from harness.seeds import seed_for
from harness.strategies.answers import one_pass
from harness.strategies.flow import Flow
from harness.strategies.flow_dpo import nodes, rollouts_many
from harness.strategies.flow_dpo_config import FlowDPOConfig


def bench_flow(recipe: Recipe, questions: int) -> dict:
    if not isinstance(recipe.strategy, FlowDPOConfig):
        raise RecipeError(f"harness bench flow measures the Flow: recipe {recipe.name} runs {recipe.strategy.name}")
    engine = Engine(recipe)
    records = load_source(recipe.data.train).records[:questions]
    cfg, flow_cfg = recipe.online, recipe.strategy
    # warm-up: first-call allocations are not the engine's cost
    one_pass(engine.backend, engine.prompter, records[:1], None, engine.base_answer_budget(), 0.0, 1.0, [0])

    flow = Flow(engine.backend, engine.prompter, flow_cfg)
    prefill, cached = engine.backend.prefill_tokens, engine.backend.cached_tokens
    start = time.perf_counter()
    main_seconds, batch_sizes, engine_tokens = 0.0, [], 0
    for first in range(0, len(records), cfg.question_batch):
        group = records[first : first + cfg.question_batch]
        t0 = time.perf_counter()
        mains = flow.run([flow.start(r.question, r.answer, r.task, seed_for(cfg.seed, first + k))
                          for k, r in enumerate(group)])
        main_seconds += time.perf_counter() - t0
        branches = rollouts_many(flow, mains, flow_cfg.rollouts_per_node, flow_cfg.max_resample_tries)
        batch_sizes.append(sum(map(len, branches)))
        engine_tokens += sum(kept_tokens(m, b) for m, b in zip(mains, branches))
    engine_seconds = time.perf_counter() - start
    engine_stats = flow.stats
    prefill, cached = engine.backend.prefill_tokens - prefill, engine.backend.cached_tokens - cached

    # The naive reference writes chunk by chunk (re-encoding the prefix every chunk), one sequence at a time.
    naive_tokens = 0
    naive = Flow(NoReuse(engine.backend), engine.prompter, flow_cfg.model_copy(update={"speculative": False}))
    start = time.perf_counter()
    for index, record in enumerate(records):
        main = naive.run([naive.start(record.question, record.answer, record.task, seed_for(cfg.seed, index))])[0]
        branches = [(node, naive.branch(main, node, flow_cfg.max_resample_tries, j)) for node in nodes(main)
                    for j in range(flow_cfg.rollouts_per_node)]
        for _, alt in branches:  # one sequence at a time
            naive.run([alt])
        naive_tokens += kept_tokens(main, branches)
    naive_seconds = time.perf_counter() - start

    batch = max(1, round(sum(batch_sizes) / len(batch_sizes)))
    prompts = [engine.prompter.answer_prompt(r.question) for r in records][:batch]
    prompts += prompts * (batch // max(1, len(prompts)))
    prompts = prompts[:batch]
    engine.backend.reset_cache("answer")  # plain generation: no KV kept from the engine's calls
    start = time.perf_counter()
    samples = engine.backend.generate(prompts, "answer", flow_cfg.answer_budget(), flow_cfg.temperature,
                                      flow_cfg.top_p, seed=1)
    ceiling_seconds = time.perf_counter() - start
    ceiling_tokens = sum(len(s[0].token_ids) for s in samples)

    engine_tps = engine_tokens / engine_seconds
    naive_tps = naive_tokens / naive_seconds
    ceiling_tps = ceiling_tokens / ceiling_seconds
    return {
        "recipe": recipe.name,
        "questions": len(records),
        "mean_rollout_batch": sum(batch_sizes) / len(batch_sizes),
        "engine_tokens": engine_tokens,
        "engine_tokens_drawn": engine_stats.tokens,
        "engine_seconds": engine_seconds,
        "engine_tokens_per_s": engine_tps,
        "naive_tokens": naive_tokens,
        "naive_seconds": naive_seconds,
        "naive_tokens_per_s": naive_tps,
        "speedup": engine_tps / naive_tps,
        "ceiling_batch": batch,
        "ceiling_tokens_per_s": ceiling_tps,
        "ceiling_fraction": engine_tps / ceiling_tps,
        # the engine's prompt tokens not encoded (HF: shared in a call's prompt trees or kept from an earlier
        # call; vLLM: served by its prefix cache)
        "prefix_cache_share": cached / max(1, prefill),
        "phase_seconds": {
            "main_chain": main_seconds,
            "rollouts": engine_seconds - main_seconds,
            "answer_generation": engine_stats.generate_seconds,
            "stop_decisions": engine_stats.stop_seconds,
        },
    }


class NoReuse:
    """A backend that forgets its kept KV before every call: the naive reference re-encodes every prefix."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.eos_token_ids = inner.eos_token_ids

    def generate(self, prompts, adapter, *args, **kwargs):
        self.inner.reset_cache(adapter)
        return self.inner.generate(prompts, adapter, *args, **kwargs)

    def next_token_logprobs(self, prompts, adapter, token_ids):
        self.inner.reset_cache(adapter)
        return self.inner.next_token_logprobs(prompts, adapter, token_ids)

    def reset_cache(self, adapter) -> None:
        self.inner.reset_cache(adapter)


def kept_tokens(main, branches) -> int:
    """Answer tokens of a main chain and its rollouts' own continuations (what the work produced)."""
    return len(main.answer_ids) + sum(sum(len(c) for c in alt.chunks[i + (kind == "stop"):])
                                      for (kind, i), alt in branches)
