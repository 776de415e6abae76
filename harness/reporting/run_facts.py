"""What `harness compare` shows of each run beside its metrics: the strategy, its cost per question, and the paired
test of its progressive accuracy against run 1 on the questions both runs answered.

The paired test is McNemar's exact test on `correct_before` of the question ids both progress logs carry: runs on
the same stream answer the same questions, so the unpaired z-test of the metrics table is conservative for them.
"""

from __future__ import annotations

from harness.reporting import online_lines
from harness.reporting.run_folder import RunView
from harness.reporting.stats import mcnemar_exact


def run_facts(run: RunView) -> dict:
    """Strategy name, questions logged, pairs per question per agent, generated tokens and wall seconds per question.

    Wall seconds are the sum of the online phases' seconds (`harness.run.progress.PHASES`); None where no line is
    logged.
    """
    lines = run.progress
    n = len(lines)
    return {
        "strategy": run.strategy,
        "questions": n,
        "pairs_per_question": {a: p["per_question"] for a, p in online_lines.pairs_per_agent(lines).items()},
        "tokens_per_question": online_lines.tokens(lines) / n if n else None,
        "seconds_per_question": online_lines.wall_seconds(lines) / n if n else None,
    }


def answers(run: RunView) -> dict[str, bool]:
    """Question id -> correct_before, for the lines that carry both."""
    return {str(line["id"]): bool(line["correct_before"]) for line in run.progress if "id" in line and
            "correct_before" in line}


def paired(first: RunView, later: RunView) -> dict:
    """`later` vs `first` on their shared question ids: the 2x2 counts, Δ points (later − first) and McNemar's p.

    `same_ids` is False when either run has a question the other lacks; Δ and p are then over the shared ids only,
    and None when there is none.
    """
    a, b = answers(first), answers(later)
    shared = [q for q in a if q in b]
    first_only = sum(a[q] and not b[q] for q in shared)
    later_only = sum(b[q] and not a[q] for q in shared)
    return {
        "shared": len(shared),
        "only_in_first": sum(q not in b for q in a),
        "only_in_later": sum(q not in a for q in b),
        "same_ids": set(a) == set(b),
        "both_right": sum(a[q] and b[q] for q in shared),
        "first_only_right": first_only,
        "later_only_right": later_only,
        "both_wrong": sum(not a[q] and not b[q] for q in shared),
        "delta_points": 100 * (later_only - first_only) / len(shared) if shared else None,
        "p_value": mcnemar_exact(first_only, later_only) if shared else None,
    }
