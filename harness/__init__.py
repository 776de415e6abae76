"""harness: reproducibility harness for step-level online preference learning on math reasoning."""

__version__ = "0.1.0"
