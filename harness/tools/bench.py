"""`harness bench flow`: what the batched Flow engine buys over naive generation, and how close it is to the ceiling.

On the same questions it measures
  (a) engine:  the Flow's main chains and one rollout from every node continued to the end, a group of
               `online.question_batch` questions at a time, in the recipe's `runtime.schedule` (exactly what online
               learning does); `continuous` starts a node's rollout beside the main chains still being written;
  (b) phased:  the same work main chains first, then rollouts (its two phases are timed apart);
  (c) naive:   the same work one sequence at a time, chunk by chunk, every chunk re-encoding its prefix;
  (d) ceiling: plain batched `generate` of the same model (the same backend), at the engine's mean rollout
               batch size;
  (e) workers (`--workers 1,2,...`): the online loop's `explore` of the same groups on that many generation
               workers (Ray actors, `runtime.generation_workers`), generated tokens per second of wall time.
Speeds are kept answer tokens per second of wall time: tokens of the final traces beyond the prefixes they share
(draft tokens discarded after a Stop yes, and redrawn alternatives, count as time, not tokens; so do stop
decisions). Each phase's ceiling fraction is its own tokens per second over the ceiling's.
"""

from __future__ import annotations

import time

from harness.config.recipe import Recipe
from harness.data.records import Record, load_source
from harness.errors import RecipeError
from harness.generation.engine import Engine
from harness.run.seeds import seed_for
from harness.stages.online import windows
from harness.strategies.flow_dpo.config import FlowDPOConfig
from harness.strategies.flow_dpo.flow import Flow
from harness.strategies.flow_dpo.strategy import explore_continuous, nodes, rollouts_many
from harness.strategies.one_pass import one_pass


def bench_flow(recipe: Recipe, questions: int, workers: list[int] | None = None) -> dict:
    if not isinstance(recipe.strategy, FlowDPOConfig):
        raise RecipeError(f"harness bench flow measures the Flow: recipe {recipe.name} runs {recipe.strategy.name}")
    engine = Engine(recipe)
    records = load_source(recipe.data.train).records[:questions]
    flow_cfg = recipe.strategy
    # warm-up: first-call allocations are not the engine's cost
    one_pass(engine.backend, engine.prompter, records[:1], None, engine.base_answer_budget(), 0.0, 1.0, [0])

    prefill, cached = engine.backend.prefill_tokens, engine.backend.cached_tokens
    run = run_engine(engine, recipe, records, continuous=recipe.runtime.schedule == "continuous")
    prefill, cached = engine.backend.prefill_tokens - prefill, engine.backend.cached_tokens - cached
    phased = run_engine(engine, recipe, records, continuous=False)
    naive_tokens, naive_seconds = run_naive(engine, recipe, records)

    batch = max(1, round(phased["rollout_rows"] / phased["groups"]))
    prompts = [engine.prompter.answer_prompt(r.question) for r in records][:batch]
    prompts += prompts * (batch // max(1, len(prompts)))
    prompts = prompts[:batch]
    engine.backend.reset_cache("answer")  # plain generation: no KV kept from the engine's calls
    start = time.perf_counter()
    samples = engine.backend.generate(prompts, "answer", flow_cfg.answer_budget(), flow_cfg.temperature,
                                      flow_cfg.top_p, seed=1)
    ceiling_seconds = time.perf_counter() - start
    ceiling_tps = sum(len(s[0].token_ids) for s in samples) / ceiling_seconds

    engine_tps = run["tokens"] / run["seconds"]
    naive_tps = naive_tokens / naive_seconds
    scaling = [bench_workers(recipe, engine, records, count) for count in workers or []]

    def phase(tokens: int, seconds: float) -> dict:
        return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                "ceiling_fraction": tokens / seconds / ceiling_tps}

    return {
        "recipe": recipe.name,
        "questions": len(records),
        "schedule": recipe.runtime.schedule,
        "mean_rollout_batch": phased["rollout_rows"] / phased["groups"],
        "engine_tokens": run["tokens"],
        "engine_tokens_drawn": run["drawn"],
        "engine_seconds": run["seconds"],
        "engine_tokens_per_s": engine_tps,
        "phased_tokens": phased["tokens"],
        "phased_tokens_per_s": phased["tokens"] / phased["seconds"],
        "schedule_speedup": engine_tps / (phased["tokens"] / phased["seconds"]),
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
        "phases": {
            # the phased order's two phases: a group's main chains decode at the group's batch, its rollouts at
            # the rollout batch; what the continuous schedule recovers is the gap between the two
            "main_chain": phase(phased["main_tokens"], phased["main_seconds"]),
            "rollouts": phase(phased["tokens"] - phased["main_tokens"], phased["seconds"] - phased["main_seconds"]),
            # the engine's own calls: answer chunks (every token drawn, kept or not) and Stop decisions (no tokens)
            "answer_generation": phase(run["drawn"], run["generate_seconds"]),
            "stop_decisions": {"seconds": run["stop_seconds"], "share": run["stop_seconds"] / run["seconds"],
                               # the engine's ceiling fraction if its chunk calls drew at the ceiling and its Stop
                               # decisions took the time they took: what scheduling alone could reach
                               "bound_fraction": run["tokens"] / (run["drawn"] / ceiling_tps + run["stop_seconds"])
                               / ceiling_tps},
        },
        "workers": scaling,
        "phase_seconds": {
            "main_chain": phased["main_seconds"],
            "rollouts": phased["seconds"] - phased["main_seconds"],
            "answer_generation": run["generate_seconds"],
            "stop_decisions": run["stop_seconds"],
        },
    }


def run_engine(engine: Engine, recipe: Recipe, records: list[Record], continuous: bool) -> dict:
    """The Flow's main chains and rollouts over `records`, a group of `online.question_batch` at a time."""
    cfg, flow_cfg = recipe.online, recipe.strategy
    flow = Flow(engine.backend, engine.prompter, flow_cfg)
    out = {"tokens": 0, "main_tokens": 0, "main_seconds": 0.0, "rollout_rows": 0, "groups": 0}
    start = time.perf_counter()
    for first, end in windows(0, len(records), recipe):  # the online loop's groups, with its seeds
        group = records[first:end]
        mains = [flow.start(r.question, r.answer, r.task, seed_for(cfg.seed, first + k)) for k, r in enumerate(group)]
        t0 = time.perf_counter()
        if continuous:
            branches = explore_continuous(flow, mains, flow_cfg.rollouts_per_node, flow_cfg.max_resample_tries,
                                          cfg.question_batch)
        else:
            flow.run(mains)
            out["main_seconds"] += time.perf_counter() - t0
            branches = rollouts_many(flow, mains, flow_cfg.rollouts_per_node, flow_cfg.max_resample_tries)
        out["rollout_rows"] += sum(map(len, branches))
        out["groups"] += 1
        out["tokens"] += sum(kept_tokens(m, b) for m, b in zip(mains, branches))
        out["main_tokens"] += sum(len(m.answer_ids) for m in mains)
    return out | {"seconds": time.perf_counter() - start, "drawn": flow.stats.tokens,
                  "generate_seconds": flow.stats.generate_seconds, "stop_seconds": flow.stats.stop_seconds}


def bench_workers(recipe: Recipe, engine: Engine, records: list[Record], count: int) -> dict:
    """The online loop's `explore` over `records`, a group at a time, on `count` generation workers (1: in-process);
    what every question's answer and exploration generated, per second of wall time (workers' start-up excluded)."""
    from harness.stages.workers import generation_pool
    from harness.strategies import build_strategy

    cfg = recipe.online
    sized = recipe.model_copy(update={"runtime": recipe.runtime.model_copy(update={"generation_workers": count})})
    with generation_pool(sized, engine) as pool:  # as the online stage holds it: the driver's backend closed
        generation = pool or build_strategy(cfg.strategy, engine)
        generation.solve(records[:1], [0])  # warm-up, as the engine had: first-call allocations are not the cost
        tokens, start = 0, time.perf_counter()
        for first, end in windows(0, len(records), recipe):
            explored = generation.explore(records[first:end], [seed_for(cfg.seed, k) for k in range(first, end)])
            tokens += sum(s.tokens + p.tokens for s, p in zip(explored.solutions, explored.plays))
        seconds = time.perf_counter() - start
    return {"workers": count, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def run_naive(engine: Engine, recipe: Recipe, records: list[Record]) -> tuple[int, float]:
    """The naive reference: chunk by chunk (re-encoding the prefix every chunk), one sequence at a time."""
    cfg, flow_cfg = recipe.online, recipe.strategy
    tokens = 0
    naive = Flow(NoReuse(engine.backend), engine.prompter, flow_cfg.model_copy(update={"speculative": False}))
    start = time.perf_counter()
    for index, record in enumerate(records):
        main = naive.run([naive.start(record.question, record.answer, record.task, seed_for(cfg.seed, index))])[0]
        branches = [(node, naive.branch(main, node, flow_cfg.max_resample_tries, j)) for node in nodes(main)
                    for j in range(flow_cfg.rollouts_per_node)]
        for _, alt in branches:  # one sequence at a time
            naive.run([alt])
        tokens += kept_tokens(main, branches)
    return tokens, time.perf_counter() - start


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
