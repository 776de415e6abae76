"""MCTS-DPO's tree logic on hand-built trees: every expected number is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from harness.strategies.mcts_dpo.tree import (
    Node,
    Search,
    attach,
    backup,
    commit_index,
    completion,
    label_smoothing,
    prior,
    puct,
    select_child,
)


def child(parent: Node, value: float, prior_: float = 0.5, step: list[int] | None = None,
          terminal: bool = False) -> Node:
    return Node(step=step or [len(parent.step) + 1], parent=parent, value=value, prior=prior_, terminal=terminal)


def test_prior_is_length_normalised():
    # 4 tokens of summed log-prob -2: exp(-2 / 4 ** 1.25) = exp(-2 / (4 * sqrt 2)) = exp(-1 / (2 sqrt 2)) = 0.70219
    assert prior(-2.0, 4, 1.25) == pytest.approx(0.70218850)
    assert prior(-2.0, 4, 1.0) == pytest.approx(math.exp(-0.5))


def test_puct_trades_value_for_exploration():
    root = Node(step=[], N=4)
    a = child(root, 0.0, prior_=0.2)
    b = child(root, 0.0, prior_=0.9)
    root.children = [a, b]
    a.Q, a.N, b.Q, b.N = 0.5, 3, 0.1, 0
    # c = 1: a = 0.5 + 0.2 * sqrt(4) / (1 + 3) = 0.6; b = 0.1 + 0.9 * 2 / 1 = 1.9 -> the unvisited b
    assert puct(a, 1.0) == pytest.approx(0.6)
    assert puct(b, 1.0) == pytest.approx(1.9)
    assert select_child(root, 1.0) is b
    # c = 0.1: a = 0.5 + 0.01 = 0.51; b = 0.1 + 0.18 = 0.28 -> the better-valued a
    assert select_child(root, 0.1) is a


def test_attach_starts_q_at_parent_v_plus_r():
    root = Node(step=[])
    a = child(root, 0.6)
    attach(root, [a])
    assert a.Q == pytest.approx(0.6)  # root V 0 + r (0.6 - root value 0)
    a.V = 0.1
    a1 = child(a, 0.5)
    attach(a, [a1])
    assert a1.r == pytest.approx(-0.1)  # 0.5 - 0.6
    assert a1.Q == pytest.approx(0.0)  # a.V 0.1 + r -0.1


def test_backup_visit_weighted_values():
    root = Node(step=[])
    a, b = child(root, 0.6), child(root, 0.2)
    attach(root, [a, b])
    a1, a2 = child(a, 1.0), child(a, 0.4)
    attach(a, [a1, a2])  # a.V = 0: a1.Q = 0.4, a2.Q = -0.2
    root.N, a.N, b.N = 2, 1, 1

    backup([root, a, a1])
    # a1: Q = r 0.4 + V 0 = 0.4, N 1
    # a: V = (1 * 0.4 + 1 * -0.2) / 2 = 0.1, Q = 0.6 + 0.1 = 0.7, N 2
    # root: V = (2 * 0.7 + 1 * 0.2) / 3 = 0.53333, N 3; its Q stays (it has no step)
    assert (a1.Q, a1.N) == (pytest.approx(0.4), 1)
    assert (a.V, a.Q, a.N) == (pytest.approx(0.1), pytest.approx(0.7), 2)
    assert (root.V, root.Q, root.N) == (pytest.approx(1.6 / 3), 0.0, 3)

    backup([root, a, a1])
    # a: V = (2 * 0.4 + 1 * -0.2) / 3 = 0.2, Q = 0.8, N 3; root: V = (3 * 0.8 + 1 * 0.2) / 4 = 0.65, N 4
    assert (a.V, a.Q, a.N) == (pytest.approx(0.2), pytest.approx(0.8), 3)
    assert (root.V, root.N) == (pytest.approx(0.65), 4)


def test_label_smoothing_from_visits():
    assert label_smoothing(3, 1, 0.5) == pytest.approx(0.25)  # 1 / (3 + 1)
    assert label_smoothing(1, 3, 0.5) == 0.5  # 3 / 4 = 0.75, capped
    assert label_smoothing(0, 2, 1.0) == pytest.approx(2 / 3)  # 2 / (max(1, 0) + 2)
    assert label_smoothing(4, 0, 0.5) == 0.0


def test_commit_prefers_visits_times_diversity():
    root = Node(step=[])
    x, y = child(root, 0.9), child(root, 0.1)
    attach(root, [x, y])
    x.N, y.N = 5, 4
    x.children = [child(x, 0.0), child(x, 0.0)]
    x.children[0].N, x.children[1].N = 2, 2  # gap 0: 5 * 1 = 5
    y.children = [child(y, 0.0), child(y, 0.0)]
    y.children[0].N, y.children[1].N = 3, 0  # gap 3: 4 * 4 = 16
    assert commit_index(root, diversity=False) == 0
    assert commit_index(root, diversity=True) == 1
    y.children = None
    y.N = 5  # equal visits: the higher Q wins
    assert commit_index(root, diversity=False) == 0


def test_completion_follows_only_children():
    root = Node(step=[])
    b = child(root, 0.2, step=[7, 8])
    b.children = [child(b, 0.0, step=[9])]
    b.children[0].children = [child(b.children[0], 0.0, step=[10]), child(b.children[0], 0.0, step=[11])]
    assert completion(b) == [7, 8, 9]  # stops above the node with two children


def test_position_names_the_child_taken_at_each_depth():
    root = Node(step=[])
    a, b = child(root, 0.0, step=[1]), child(root, 0.0, step=[1])  # equal steps and values: still two positions
    root.children = [a, b]
    b.children = [child(b, 0.0, step=[2]), child(b, 0.0, step=[3])]
    assert [root.position(), a.position(), b.position(), b.children[1].position()] == ["", "0", "1", "1.1"]


def test_search_simulations_commits_and_pairs():
    """A scripted search worked through by hand (simulations 1, x2 from the question, horizon 2, c = 1)."""
    search = Search(simulations=1, root_factor=2, horizon=2, c_puct=1.0, diversity=False)
    root = search.root
    expanded = []

    def expand(node: Node, children: list[Node]) -> None:
        assert search.leaf() is node
        expanded.append(node)
        search.expanded(children)

    # Simulation 1: root.N 1; expand root. a.Q 0.6, b.Q 0.2; PUCT a = 0.6 + 0.5 = 1.1 > b = 0.7 -> a.
    a, b = child(root, 0.6, step=[1]), child(root, 0.2, step=[2])
    expand(root, [a, b])
    # expand a: a1.Q = 0 + (1.6 - 0.6) = 1.0, a2.Q = -0.5 - 0.6 = -1.1; backup [root, a]: a.Q 0.6, a.N 1,
    # root.V = (0.6 + 0.2) / 2 = 0.4, root.N 2; PUCT a1 = 1.0 + 0.5 > a2 -> a1 (terminal: the simulation ends)
    a1, a2 = child(a, 1.6, step=[3], terminal=True), child(a, -0.5, step=[4], terminal=True)
    expand(a, [a1, a2])
    assert (a.Q, a.N, root.V, root.N) == (pytest.approx(0.6), 1, pytest.approx(0.4), 2)
    # End of simulation 1, backup [root, a, a1]: a1.Q 1.0, N 1; a.V = (1.0 - 1.1) / 2 = -0.05, a.Q 0.55, N 2;
    # root.V = (2 * 0.55 + 0.2) / 3, N 3.
    # Simulation 2: root.N 4; PUCT a = 0.55 + 0.5 * 2 / 3 = 0.883 < b = 0.2 + 0.5 * 2 / 1 = 1.2 -> expand b.
    b1 = child(b, -0.8, step=[5], terminal=True)
    expand(b, [b1])
    assert (a1.Q, a1.N, a.V, a.Q, a.N) == (pytest.approx(1.0), 1, pytest.approx(-0.05), pytest.approx(0.55), 2)
    assert b1.Q == pytest.approx(-1.0)  # b.V 0 + (-0.8 - 0.2)
    # backup [root, b]: b.Q 0.2, N 1, root.N 5; b1 terminal ends it, backup [root, b, b1]: b1.Q -1.0, N 1;
    # b.V -1.0, b.Q -0.8, N 2; root.V = (2 * 0.55 + 2 * -0.8) / 4 = -0.125, N 6.
    # Commit: a and b both 2 visits, a has the higher Q -> a. Search from a (1 simulation): a.N 3; PUCT
    # a1 = 1.0 + 0.5 * sqrt 3 / 2 > a2 = -1.1 + 0.5 * sqrt 3 -> a1, terminal: backup [a, a1]: a1.N 2,
    # a.V = (2 * 1.0 - 1.1) / 3 = 0.3, a.Q 0.9, a.N 4. Commit a1 (2 visits against 0): terminal, done.
    assert search.leaf() is None
    assert expanded == [root, a, b]
    assert (b.Q, b.N, root.V, root.N) == (pytest.approx(-0.8), 2, pytest.approx(-0.125), 6)
    assert (a.V, a.Q, a.N, a1.N) == (pytest.approx(0.3), pytest.approx(0.9), 4, 2)
    assert search.committed == [root, a, a1]
    assert search.simulations_run == 3
    assert search.tree_nodes() == 5

    first, second = search.pairs(cap=0.5)
    # depth 0, frozen when the search left the root: a (Q 0.55, N 2) over b (Q -0.8, N 2): 2 / (2 + 2) = 0.5
    assert (first.parent, first.chosen.node, first.rejected.node) == (root, a, b)
    assert (first.chosen.Q, first.rejected.Q) == (pytest.approx(0.55), pytest.approx(-0.8))
    assert first.label_smoothing == pytest.approx(0.5)
    # depth 1: a1 (Q 1.0, N 2) over a2 (Q -1.1, N 0): 0 / 2 = 0
    assert (second.parent, second.chosen.node, second.rejected.node) == (a, a1, a2)
    assert second.label_smoothing == 0.0
    # b's only child rides on b's completion; the pair prompt after a is a's step
    assert completion(b) == [2, 5]
    assert a.answer_ids() == [1]
