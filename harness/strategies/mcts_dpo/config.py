"""Settings of MCTS-DPO (Xie et al., arXiv 2405.00451v2): the step-level tree search and its pairs.

Follows v2 of the paper: its Table 1 "MCTS-DPO" row (results/papers/mcts-dpo.yaml), the search without
ground-truth guidance (v1's headline numbers are v2's "with ground-truth guidance" row). Where the paper leaves a
detail open it follows the authors' code (github.com/YuxiXie/MCTS-DPO, mcts_rl/algorithms/mcts/); the defaults are
the settings of its scripts/mcts_mathqa.sh.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.config.section import PromptTemplate
from harness.config.strategy import PolicyConfig


class MCTSDPOConfig(PolicyConfig):
    name: Literal["mcts_dpo"] = "mcts_dpo"
    """MCTS-DPO: a tree search over reasoning steps with the live policy; at each committed depth the highest-Q
    step is preferred to the lowest-Q sibling, with visit-count label smoothing."""
    step_delimiters: list[str] = ["\n"]
    """A step ends with the first token whose text contains one of these (none: steps end by length only)."""
    max_step_tokens: int = Field(144, ge=1)
    """Most tokens of one step."""
    max_depth: int = Field(3, ge=1)
    """Search horizon below the current search root, and the depth after which one step finishes the answer
    (code: `depth_limit` with `force_terminating_on_depth_limit`)."""
    simulations: int = Field(64, ge=1)
    """Simulations per committed depth (code: `n_iters`)."""
    root_simulation_factor: int = Field(4, ge=1)
    """The first search, from the question, runs this many times `simulations` (code: `MCTS.search`)."""
    breadth_root: int = Field(2, ge=1)
    """Steps sampled when the question itself is expanded (b1; code: `n_init_actions`)."""
    breadth: int = Field(2, ge=1)
    """Steps sampled when a deeper node is expanded (b2; code: `n_actions`)."""
    root_temperature: float | None = Field(None, ge=0.0)
    """Sampling temperature of the first step (None: `temperature`; code: `init_temperature`)."""
    c_puct: float = Field(1.0, ge=0.0)
    """PUCT exploration weight c (code: `w_exp`)."""
    length_power: float = Field(1.25, gt=0.0)
    """The prior is exp(sum log-prob / len ** length_power) (code: `mcts_length_penalty`)."""
    commit_diversity: bool = True
    """Commit to the child maximising visits x (1 + visit gap among its own children) rather than visits alone
    (code: `consider_diversity`, on unless `breadth` is 1)."""
    eval_prompt: PromptTemplate
    """Self-evaluation prompt of the policy; `{partial_answer}` (required) gets the partial answer's ids, `{question}`,
    `{solution}` (the gold solution, empty when the data has none) and `{answer}` (the gold answer) their text. Its
    next token is read as the verdict."""
    eval_correct: list[str] = Field(["B"], min_length=1)
    """Texts whose last token is a "correct" verdict; the self-evaluation confidence is the sum of their next-token
    probabilities."""
    correct_reward: float = 1.0
    """Outcome reward added to the value of a terminal node whose answer is correct."""
    wrong_reward: float = -1.0
    """Outcome reward added to the value of a terminal node whose answer is wrong."""
    solved_only: bool = True
    """Keep a question's pairs only when the search committed to a correct answer ended by EOS (code: `--filter`,
    `check_available` in mcts_rl/utils.py)."""
    max_pairs: int = Field(8, ge=1)
    """Most pairs per question, from the shallowest committed depth down (code: `max_n_sample`)."""
    visit_label_smoothing: bool = True
    """Give each pair the conservative-DPO smoothing N_l / (N_w + N_l) of its visit counts (code:
    `--conservative`); off: the recipe's `online.dpo.label_smoothing`."""
    label_smoothing_cap: float = Field(0.5, ge=0.0, le=0.5)
    """Most label smoothing a pair gets from its visit counts."""

    @model_validator(mode="after")
    def _placeholders(self) -> MCTSDPOConfig:
        if "{question}" not in self.answer_prompt.user:
            raise ValueError("answer_prompt.user must contain {question}")
        if "{partial_answer}" not in self.eval_prompt.user:
            raise ValueError("eval_prompt.user must contain {partial_answer}")
        return self
