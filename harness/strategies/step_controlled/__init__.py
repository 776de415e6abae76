"""Step-Controlled DPO (Lu et al., 2024, arXiv 2407.00782): negatives that go wrong from a chosen step of a correct
answer."""
