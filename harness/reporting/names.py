"""What the report calls the online curves and the Table-1 models (shared by the report, its plots and summary)."""

from __future__ import annotations

CURVE_NAMES = {
    "trained": "trained online",
    "frozen": "frozen (untrained)",
    "zero_shot": "zero-shot (base, one pass)",
}
ONLINE_POLICY = "online-policy"
"""The evaluate stage's label of a one-agent method's online-trained adapter (the model those papers report)."""
ROW_ORDER = ["base", ONLINE_POLICY, "sft-ground_truth", "sft-self", "sft-flow"]
ROW_NAMES = {
    "base": "zero-shot (base)",
    ONLINE_POLICY: "online-trained policy",
    "sft-ground_truth": "SFT ground truth",
    "sft-self": "SFT self-generated",
    "sft-flow": "SFT Flow-generated",
}
