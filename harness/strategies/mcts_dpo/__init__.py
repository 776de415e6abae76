"""MCTS-DPO (Xie et al., 2024, arXiv 2405.00451): step-level pairs from a Monte Carlo tree search over solution
steps."""
