"""Run infrastructure: the run folder and its lock, checkpoints' JSON lines, the console, progress lines, metric
sinks, seeds and distributed placement."""
