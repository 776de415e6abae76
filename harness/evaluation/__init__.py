"""Evaluation with lm-evaluation-harness: its offline task YAMLs (bundled data, rendered inside the package) and
the glue that evaluates a base model and its adapters and keeps lm-eval's own records and samples."""
