"""Pipeline stages (`pipeline.py` runs them in order): baseline, online, compile, evaluate; each reads and writes
only the run folder and is skipped once done. `workers.py` runs a strategy's generation on Ray actors."""
