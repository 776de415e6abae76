"""Training on preference pairs: the pair type, the DPO learner for one named adapter, and the online stage's
checkpoints of adapters and learners."""
