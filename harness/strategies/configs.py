"""The strategies a recipe can name in `online.strategy`: a union told apart by its `name` field, so that only
the chosen method's block is validated (and an unknown key in it is an error naming that method's fields)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from harness.strategies.flow_dpo_config import FlowDPOConfig
from harness.strategies.mcts_dpo_config import MCTSDPOConfig
from harness.strategies.naive_dpo_config import NaiveDPOConfig
from harness.strategies.step_controlled_config import StepControlledConfig

MEMBERS = (FlowDPOConfig, MCTSDPOConfig, StepControlledConfig, NaiveDPOConfig)
StrategyChoice = Annotated[FlowDPOConfig | MCTSDPOConfig | StepControlledConfig | NaiveDPOConfig,
                           Field(discriminator="name")]
TAGS = {member.model_fields["name"].default for member in MEMBERS}
"""The `name` of every strategy."""
