"""Per-question summaries of online/progress.jsonl that hold for every strategy.

A line is the core every strategy writes (`harness.run.progress.ProgressLine`) plus the strategy's own fields. The
report and `harness compare` read only the core by name; every other numeric field is summarised generically (its
mean per question), so a new strategy needs no report code of its own.
"""

from __future__ import annotations

from collections import Counter

from harness.run.progress import CORE_KEYS, PHASES


def strategy_fields(lines: list[dict]) -> list[str]:
    """The strategy's own numeric fields (not core, not `*_seconds`), in order of first appearance."""
    out: list[str] = []
    for line in lines:
        out += [k for k, v in line.items() if k not in out and _numeric(v) and not _core(k)]
    return out


def strategy_means(lines: list[dict]) -> dict[str, float]:
    """Mean per question of each strategy field, over the lines that carry it (a bool's mean is its share True)."""
    out = {}
    for key in strategy_fields(lines):
        values = [float(line[key]) for line in lines if _numeric(line.get(key))]
        out[key] = sum(values) / len(values)
    return out


def ends(lines: list[dict]) -> dict[str, int]:
    """How the answers ended (`end`: eos, length, the Flow's stop or max_chunks), counted; {} when not logged."""
    return dict(sorted(Counter(str(line["end"]) for line in lines if "end" in line).items()))


def agents(lines: list[dict]) -> list[str]:
    """Every agent named in a line's `pairs`, sorted."""
    return sorted({a for line in lines for a in (line.get("pairs") or {})})


def pairs_per_agent(lines: list[dict]) -> dict[str, dict]:
    """agent -> {total, per_question, questions_with_pairs}."""
    out = {}
    for agent in agents(lines):
        counts = [int((line.get("pairs") or {}).get(agent, 0)) for line in lines]
        out[agent] = {
            "total": sum(counts),
            "per_question": sum(counts) / len(lines),
            "questions_with_pairs": sum(1 for c in counts if c > 0),
        }
    return out


def pairs_by_node(lines: list[dict]) -> dict[str, dict[str, int]]:
    """Pairs per node index and agent: {"0": {agent: n}, ..., "naive": {agent: n}}.

    A `pair_nodes` label `kind:INDEX` counts under its index (a Flow chunk, a step depth); a label without an
    integer index (`naive`) is a row of its own, after the indices. The agent is the kind when it names one of the
    line's agents (the Flow's answer:2), else the line's only agent (MCTS-DPO's step:3 is the policy's); a label
    that fits neither counts under its kind.
    """
    columns = agents(lines)
    counts: dict[str, Counter] = {}
    for line in lines:
        own = list(line.get("pairs") or {})
        for label in line.get("pair_nodes") or []:
            kind, _, idx = str(label).partition(":")
            row = idx if idx.isdigit() else str(label)
            agent = kind if kind in own else own[0] if len(own) == 1 else kind
            columns += [] if agent in columns else [agent]
            counts.setdefault(row, Counter())[agent] += 1
    order = sorted((k for k in counts if k.isdigit()), key=int) + sorted(k for k in counts if not k.isdigit())
    return {row: {a: counts[row][a] for a in columns} for row in order}


def phase_seconds(lines: list[dict]) -> dict[str, float]:
    """Summed seconds of each `*_seconds` field, in order of first appearance (phases and sub-phases alike)."""
    keys: list[str] = []
    for line in lines:
        keys += [k for k in line if k.endswith("_seconds") and k not in keys]
    return {k: float(sum(line.get(k, 0.0) for line in lines)) for k in keys}


def wall_seconds(lines: list[dict]) -> float:
    """The online stage's time: the sum of the `PHASES` seconds (sub-phases are parts of them)."""
    return sum(v for k, v in phase_seconds(lines).items() if k in PHASES)


def tokens(lines: list[dict]) -> int:
    """Generated tokens, answers and pairs (curves not included)."""
    return sum(int(line.get("tokens", 0)) for line in lines)


def _core(key: str) -> bool:
    return key in CORE_KEYS or key in PHASES or key.endswith("_seconds")


def _numeric(value: object) -> bool:
    return isinstance(value, (int, float))  # bools too: a per-question flag averages to a share
