"""The search tree of MCTS-DPO (Xie et al., arXiv 2405.00451v2): nodes, PUCT, backup, commitment and
step-level pairs, as the authors' code does them (github.com/YuxiXie/MCTS-DPO, mcts_rl/algorithms/mcts/mcts/mcts.py
and mcts_rl/algorithms/mcts/trainer.py). Pure logic: no model, no backend, no torch.

Quantities of a node (the code's names):
- `value`: its evaluation, the policy's self-evaluation confidence plus the outcome reward at a terminal node;
- `r = value - parent.value` (the root's r is its value): the step's gain;
- `V`: visit-weighted mean of the children's Q, each child weighing max(1, N);
- `Q = r + V`, set to `r + parent.V` when the node is created;
- `N`: visits; `p = exp(sum log-prob / len ** length_power)`: the step's length-normalised prior.

A simulation (code: `MCTS.iterate`) starts at the search root (N += 1), descends by PUCT to a leaf, then expands
and follows PUCT down newly expanded nodes until it reaches a terminal node or the search horizon; after every
expansion below the search root the path is backed up, and once more at the end. After the simulations of one
depth the search commits to one child of the search root and searches again from it, until it commits to a
terminal node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Node:
    step: list[int]
    """Token ids of the step that leads here (empty at the root)."""
    parent: Node | None = None
    prior: float = 1.0
    """Length-normalised probability of the step under the policy."""
    value: float = 0.0
    """Evaluation: self-evaluation confidence, plus the outcome reward when terminal."""
    terminal: bool = False
    """The answer ends here (EOS or the answer budget)."""
    correct: bool | None = None
    """Graded outcome of a terminal node."""
    children: list[Node] | None = None
    """None until expanded."""
    N: int = 0
    V: float = 0.0
    Q: float = 0.0
    depth: int = field(init=False)

    def __post_init__(self) -> None:
        self.depth = 0 if self.parent is None else self.parent.depth + 1

    @property
    def r(self) -> float:
        return self.value if self.parent is None else self.value - self.parent.value

    def answer_ids(self) -> list[int]:
        """The steps from the root to this node, concatenated."""
        steps = []
        node: Node | None = self
        while node is not None:
            steps.append(node.step)
            node = node.parent
        return [t for step in reversed(steps) for t in step]

    def position(self) -> str:
        """Where the node sits in its tree: the index of the child taken at each depth, e.g. "0.1" ("" at the
        root). It depends only on the question's own search, so it names the node's random draws."""
        indices = []
        node: Node = self
        while node.parent is not None:
            indices.append(next(i for i, sibling in enumerate(node.parent.children) if sibling is node))
            node = node.parent
        return ".".join(map(str, reversed(indices)))


def prior(logprobs_sum: float, length: int, length_power: float) -> float:
    """exp(sum log-prob / length ** length_power) (code: `MCTSNode.p`, length_penalty 1.25)."""
    return math.exp(logprobs_sum / length**length_power)


def puct(child: Node, c_puct: float) -> float:
    """Q + c * p * sqrt(N_parent) / (1 + N_child)."""
    return child.Q + c_puct * child.prior * math.sqrt(child.parent.N) / (1 + child.N)


def select_child(node: Node, c_puct: float) -> Node:
    """The child with the highest PUCT score (the first of equals)."""
    return max(node.children, key=lambda child: puct(child, c_puct))


def attach(node: Node, children: list[Node]) -> None:
    """Make `children` (created with `parent=node` and evaluated) the node's children; Q starts at r + parent V."""
    for child in children:
        child.Q = node.V + child.r
    node.children = children


def backup(path: list[Node]) -> None:
    """Code `MCTS._back_propagate`: the last node's Q from its own V, then every node above gets V as the
    visit-weighted mean of its children's Q and Q = r + V (not the absolute root, which has no step); all N + 1."""
    last = path[-1]
    last.Q = last.r + last.V
    last.N += 1
    for node in reversed(path[:-1]):
        weights = [max(1, child.N) for child in node.children]
        node.V = sum(w * child.Q for w, child in zip(weights, node.children)) / sum(weights)
        node.N += 1
        if node.parent is not None:
            node.Q = node.r + node.V


def visit_gap(node: Node) -> int:
    """Spread of the visit counts of a node's children (0 when it has none): code `calculate_diversity_score`."""
    if not node.children:
        return 0
    visits = [child.N for child in node.children]
    return max(visits) - min(visits)


def commit_index(node: Node, diversity: bool) -> int:
    """The child a search commits to (code: `_get_simulated_pi` at temperature 0): the most visited, each count
    multiplied by 1 + its own children's visit gap when `diversity`; ties go to the higher Q, then V, then the
    first."""
    def key(i: int) -> tuple[float, float, float]:
        child = node.children[i]
        visits = child.N * (visit_gap(child) + 1) if diversity else child.N
        return visits, child.Q, child.V

    return max(range(len(node.children)), key=key)


def label_smoothing(chosen_visits: int, rejected_visits: int, cap: float) -> float:
    """Conservative-DPO smoothing of a pair from visit counts (code `calculate_preference_confidence`):
    N_l / (max(1, N_w) + N_l), at most `cap`."""
    return min(rejected_visits / (max(1, chosen_visits) + rejected_visits), cap)


def completion(node: Node) -> list[int]:
    """A sibling's completion in a pair: its step, then the steps of any chain of only children below it (code:
    `post_tree_construct`; e.g. the one step that finishes the answer at the last depth)."""
    ids = list(node.step)
    while node.children is not None and len(node.children) == 1:
        node = node.children[0]
        ids += node.step
    return ids


@dataclass
class Sibling:
    """A child of a committed node as it stood when the search committed (later searches update it)."""

    node: Node
    Q: float
    N: int


@dataclass
class StepPair:
    """Chosen and rejected children of a committed node."""

    parent: Node
    chosen: Sibling
    rejected: Sibling
    label_smoothing: float


class Search:
    """The search of one question: simulations from the current search root, then commit to one of its children,
    until the committed node is terminal. Expansion is the caller's: `leaf()` names the node to expand next,
    `expanded(children)` hands back its evaluated children."""

    def __init__(self, simulations: int, root_factor: int, horizon: int, c_puct: float, diversity: bool) -> None:
        self.simulations = simulations
        self.horizon = horizon
        self.c_puct = c_puct
        self.diversity = diversity
        self.root = Node(step=[])
        self.at = self.root
        """The current search root."""
        self.left = simulations * root_factor  # the code searches 4x longer from the question
        self.path: list[Node] | None = None
        """The simulation in progress."""
        self.committed: list[Node] = [self.root]
        self.siblings: list[list[Sibling]] = []
        """The children of each committed node (but the last), frozen when the search left it."""
        self.simulations_run = 0

    @property
    def done(self) -> bool:
        return self.committed[-1].terminal

    def stops(self, node: Node) -> bool:
        """A simulation ends at a terminal node or at the horizon below the search root."""
        return node.terminal or node.depth - self.at.depth >= self.horizon

    def leaf(self) -> Node | None:
        """The node to expand next; None once the search has committed to a terminal node."""
        while not self.done:
            if self.path is None:
                if self.left == 0:
                    self._commit()
                    continue
                self.at.N += 1
                self.path = self._select()
            node = self.path[-1]
            if not self.stops(node):
                return node
            backup(self.path)
            self.path = None
            self.left -= 1
            self.simulations_run += 1
        return None

    def expanded(self, children: list[Node]) -> None:
        """The leaf's evaluated children (at least one): attach, back up, and follow PUCT one level down."""
        node = self.path[-1]
        attach(node, children)
        if node.parent is not None:
            backup(self.path)
        self.path.append(select_child(node, self.c_puct))

    def _select(self) -> list[Node]:
        path = [self.at]
        while path[-1].children and not self.stops(path[-1]):
            path.append(select_child(path[-1], self.c_puct))
        return path

    def _commit(self) -> None:
        node = self.at
        self.siblings.append([Sibling(child, child.Q, child.N) for child in node.children])
        child = node.children[commit_index(node, self.diversity)]
        self.committed.append(child)
        self.at, self.left = child, self.simulations

    def pairs(self, cap: float) -> list[StepPair]:
        """At each committed depth with two or more children: the highest-Q child against the lowest-Q one (ties
        by visits), with its visit-count label smoothing; none where every child has the same Q."""
        out = []
        for parent, siblings in zip(self.committed, self.siblings):
            if len(siblings) < 2:
                continue
            ranked = sorted(siblings, key=lambda s: (s.Q, s.N))
            low, high = ranked[0], ranked[-1]
            if high.Q > low.Q:
                out.append(StepPair(parent, high, low, label_smoothing(high.N, low.N, cap)))
        return out

    def tree_nodes(self) -> int:
        """Nodes below the root."""
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            for child in node.children or []:
                count += 1
                stack.append(child)
        return count
