"""One module per paper method (its settings beside it in `<method>_config.py`), all behind the protocol of
`base.py`. `build_strategy` imports only the chosen one."""

from __future__ import annotations

from importlib import import_module

from harness.strategies.base import Strategy, StrategyConfig

CLASSES = {
    "flow_dpo": "harness.strategies.flow_dpo:FlowDPO",
    "naive_dpo": "harness.strategies.naive_dpo:NaiveDPO",
    "mcts_dpo": "harness.strategies.mcts_dpo:MCTSDPO",
    "step_controlled": "harness.strategies.step_controlled:StepControlled",
}
"""Strategy name (`online.strategy.name`) -> the class implementing it."""


def build_strategy(cfg: StrategyConfig, engine) -> Strategy:
    """The strategy named by `cfg`, generating with `engine`."""
    module, cls = CLASSES[cfg.name].split(":")
    return getattr(import_module(module), cls)(cfg, engine)
