"""Flow-DPO's pair rule: one rollout from every node of the main chain, a pair where correctness differs.

Written by hand: no library makes node-level pairs from rollouts of a multi-agent Flow.
At answer node i the alternative is a resampled chunk i that differs from the original; at stop node i it is the
opposite decision. Each alternative continues the Flow to a final answer. Where the original and the rollout
differ in correctness, the node's agent gets a pair: prompt = the node's input ids, chosen = the output on the
path that ended correct, rejected = the other. All rollouts of a question run as one batch.
"""

from __future__ import annotations

from harness.flow import Flow, Trace
from harness.learner import Pair

Node = tuple[str, int]


def nodes(trace: Trace) -> list[Node]:
    """The main chain's nodes in order: answer i, then stop i where Stop was asked after chunk i."""
    out: list[Node] = []
    for i in range(len(trace.chunks)):
        out.append(("answer", i))
        if i < len(trace.decisions) and trace.decisions[i] is not None:
            out.append(("stop", i))
    return out


def rollouts(flow: Flow, trace: Trace, per_node: int, tries: int, seed: int) -> list[tuple[Node, Trace]]:
    """`per_node` alternatives at every node of one main chain, continued to the end in one batched run."""
    return rollouts_many(flow, [trace], per_node, tries, seed)[0]


def rollouts_many(flow: Flow, traces: list[Trace], per_node: int, tries: int,
                  seed: int) -> list[list[tuple[Node, Trace]]]:
    """The rollouts of several main chains (a group of questions) in one batched Flow run."""
    groups = [[(node, flow.branch(trace, node, tries)) for node in nodes(trace) for _ in range(per_node)]
              for trace in traces]
    flow.run([alt for group in groups for _, alt in group], seed)
    return groups


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
    prompter = flow.prompter
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
            prompt = prompter.stop_prompt(trace.question, [t for chunk in trace.chunks[: i + 1] for t in chunk])
            yes, no = [prompter.yes_id], [prompter.no_id]
            chosen, rejected = (yes, no) if win.decisions[i] else (no, yes)
        pairs.append(Pair(agent=kind, prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected,
                          node=f"{kind}:{i}"))
    return pairs
