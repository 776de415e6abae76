"""Flow-DPO (Deng & Mineiro, arXiv 2410.22304) as a strategy: the Flow answers, one rollout from every node of
its main chain, a pair where correctness differs.

At answer node i the alternative is a resampled chunk i that differs from the original; at stop node i it is the
opposite decision. Each alternative continues the Flow to a final answer. Where the original and the rollout
differ in correctness, the node's agent gets a pair: prompt = the node's input ids, chosen = the output on the
path that ended correct, rejected = the other. All rollouts of a question run as one batch.
"""

from __future__ import annotations

import time

from harness.data.records import Record
from harness.strategies.base import Explored, Play, Solution, solve_then_play
from harness.strategies.flow_dpo.config import FlowDPOConfig
from harness.strategies.flow_dpo.flow import Flow, FlowStats, Trace
from harness.training.pairs import Pair

Node = tuple[str, int]


def nodes(trace: Trace) -> list[Node]:
    """The main chain's nodes in order: answer i, then stop i where Stop was asked after chunk i."""
    out: list[Node] = []
    for i in range(len(trace.chunks)):
        out.append(("answer", i))
        if i < len(trace.decisions) and trace.decisions[i] is not None:
            out.append(("stop", i))
    return out


def rollouts(flow: Flow, trace: Trace, per_node: int, tries: int) -> list[tuple[Node, Trace]]:
    """`per_node` alternatives at every node of one main chain, continued to the end in one batched run."""
    return rollouts_many(flow, [trace], per_node, tries)[0]


def rollouts_many(flow: Flow, traces: list[Trace], per_node: int, tries: int) -> list[list[tuple[Node, Trace]]]:
    """The rollouts of several main chains (a group of questions) in one batched Flow run."""
    groups = [[(node, flow.branch(trace, node, tries, j)) for node in nodes(trace) for j in range(per_node)]
              for trace in traces]
    flow.run([alt for group in groups for _, alt in group])
    return groups


def explore_continuous(flow: Flow, mains: list[Trace], per_node: int, tries: int,
                       in_flight: int | None = None) -> list[list[tuple[Node, Trace]]]:
    """The main chains of new questions and their rollouts in one schedule: the rollouts from a node start in the
    round the main chain passes it (an answer node's first draw in the same call as the main chain's chunk there,
    a stop node's next chunk right after the decision), and every round is one batched call for all chunks and
    one for all Stop decisions of every trace in flight, so the batch stays full while the main chains are still
    being written. At most `in_flight` questions are worked on at once (None: all): the next one enters as soon as
    one has its main chain and every rollout finished. Each trace draws from its own streams (`Flow.branch`), so
    the traces equal `rollouts_many` after `Flow.run` (the phased order) whatever `in_flight` is, up to the float
    rounding of batched kernels."""
    flow.reset_caches()
    groups: list[list[tuple[Node, Trace]]] = [[] for _ in mains]
    waiting = list(range(len(mains)))
    working: list[int] = []

    def branch_reached() -> list[Trace]:
        """Rollouts from the nodes each main chain reached since the last round, in node order."""
        new = []
        for q in working:
            main = mains[q]
            reached = nodes(main)
            if main.pending == "chunk":  # the chunk it writes this round: a rollout may draw beside it
                reached.append(("answer", len(main.chunks)))
            branched = [(node, flow.branch(main, node, tries, j))
                        for node in reached[len(groups[q]) // per_node :] for j in range(per_node)]
            groups[q] += branched
            new += [alt for _, alt in branched]
        return new

    while True:
        working = [q for q in working if not finished(mains[q], groups[q], per_node)]
        while waiting and len(working) < (in_flight or len(mains)):
            working.append(waiting.pop(0))
        in_round = [t for q in working for t in [mains[q], *(alt for _, alt in groups[q])]]
        if not flow.step(in_round, branch_reached) and not waiting:
            return groups


def finished(main: Trace, group: list[tuple[Node, Trace]], per_node: int) -> bool:
    """A question's main chain has ended, and so has every rollout from each of its nodes."""
    return main.done and len(group) == per_node * len(nodes(main)) and all(alt.done for _, alt in group)


def new_tokens(branches: list[tuple[Node, Trace]]) -> int:
    """Answer tokens the rollouts generated beyond the prefix they share with the main chain (redraws included)."""
    return sum(alt.discarded_tokens + sum(len(t) for t in alt.chunks[i + (kind == "stop"):])
               for (kind, i), alt in branches)


def stop_calls(trace: Trace, branches: list[tuple[Node, Trace]]) -> int:
    """Stop decisions asked of the Stop LLM for a main chain and its rollouts (forced ones are not asked)."""
    asked = sum(p is not None for p in trace.stop_probs)
    return asked + sum(p is not None for (_, i), alt in branches for p in alt.stop_probs[i:])


def make_pairs(flow: Flow, trace: Trace, branches: list[tuple[Node, Trace]]) -> list[Pair]:
    pairs = []
    for (kind, i), alt in branches:
        if alt.correct == trace.correct:
            continue
        win, lose = (trace, alt) if trace.correct else (alt, trace)
        if kind == "answer":
            prompt = trace.prompt_ids + [t for chunk in trace.chunks[:i] for t in chunk]
            chosen, rejected = win.chunks[i], lose.chunks[i]
            if chosen == rejected:  # no differing alternative could be drawn: nothing to prefer
                continue
        else:
            prompt = flow.stop_prompt(trace.question, [t for chunk in trace.chunks[: i + 1] for t in chunk])
            yes, no = [flow.yes_id], [flow.no_id]
            chosen, rejected = (yes, no) if win.decisions[i] else (no, yes)
        pairs.append(Pair(agent=kind, prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected,
                          node=f"{kind}:{i}"))
    return pairs


class FlowDPO:
    """The trained Flow answers (adapters `answer` and `stop`); the frozen Flow is the same with adapters disabled,
    which for zero-initialised LoRA is the never-updated Flow."""

    def __init__(self, cfg: FlowDPOConfig, engine) -> None:
        self.cfg = cfg
        self.agents = cfg.agents()
        self.trained = Flow(engine.backend, engine.prompter, cfg, "answer", "stop")
        self.frozen = Flow(engine.backend, engine.prompter, cfg, None, None)
        self.schedule, self.in_flight = engine.schedule, engine.in_flight

    def solve(self, records: list[Record], seeds: list[int], trained: bool = True,
              temperature: float | None = None) -> list[Solution]:
        flow = self.trained if trained else self.frozen
        if temperature is not None:
            flow = Flow(flow.backend, flow.prompter, self.cfg.model_copy(update={"temperature": temperature}),
                        flow.answer_adapter, flow.stop_adapter)
        return self._solutions(records, flow.run([flow.start(r.question, r.answer, r.task, s)
                                                  for r, s in zip(records, seeds)]))

    def play(self, solutions: list[Solution]) -> list[Play]:
        mains = [s.state for s in solutions]
        branches = rollouts_many(self.trained, mains, self.cfg.rollouts_per_node, self.cfg.max_resample_tries)
        return self._plays(mains, branches)

    def explore(self, records: list[Record], seeds: list[int]) -> Explored:
        if self.schedule == "phased":
            return solve_then_play(self, records, seeds)
        t0 = time.perf_counter()
        flow = self.trained
        mains = [flow.start(r.question, r.answer, r.task, s) for r, s in zip(records, seeds)]
        branches = explore_continuous(flow, mains, self.cfg.rollouts_per_node, self.cfg.max_resample_tries,
                                      self.in_flight)
        return Explored(self._solutions(records, mains), self._plays(mains, branches),
                        {"generate_seconds": time.perf_counter() - t0, "rollout_seconds": 0.0})

    def _solutions(self, records: list[Record], traces: list[Trace]) -> list[Solution]:
        return [Solution(record=r, prompt_ids=t.prompt_ids, answer_ids=t.answer_ids, text=t.text,
                         extracted=t.extracted, correct=t.correct, tokens=len(t.answer_ids) + t.discarded_tokens,
                         seed=t.seed, log={"chunks": len(t.chunks), "end": t.end}, state=t)
                for r, t in zip(records, traces)]

    def _plays(self, mains: list[Trace], branches: list[list[tuple[Node, Trace]]]) -> list[Play]:
        return [Play(pairs=make_pairs(self.trained, main, own), tokens=new_tokens(own),
                     log={"nodes": len(own), "stop_decisions": stop_calls(main, own)})
                for main, own in zip(mains, branches)]

    def timings(self) -> dict[str, float]:
        stats, self.trained.stats = self.trained.stats, FlowStats()
        return {"answer_gen_seconds": stats.generate_seconds, "stop_seconds": stats.stop_seconds}


STRATEGY = FlowDPO
"""What `build_strategy` builds for `online.strategy.name: flow_dpo`."""
