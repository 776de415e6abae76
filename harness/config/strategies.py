"""The strategies a recipe can name in `online.strategy`: a union told apart by its `name` field, so that only
the chosen method's block is validated (and an unknown key in it is an error naming that method's fields).

A method is two modules: `harness/strategies/<name>/config.py` (its settings, a member of the union below) and
`harness/strategies/<name>/strategy.py` (its code, exposing the class as `STRATEGY`)."""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import Field

from harness.strategies.flow_dpo.config import FlowDPOConfig
from harness.strategies.mcts_dpo.config import MCTSDPOConfig
from harness.strategies.naive_dpo.config import NaiveDPOConfig
from harness.strategies.step_controlled.config import StepControlledConfig

Members = FlowDPOConfig | MCTSDPOConfig | StepControlledConfig | NaiveDPOConfig
StrategyChoice = Annotated[Members, Field(discriminator="name")]
TAGS = {member.model_fields["name"].default for member in get_args(Members)}
"""The `name` of every strategy (also the name of its module)."""
