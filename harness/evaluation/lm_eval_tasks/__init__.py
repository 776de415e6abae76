"""Offline lm-eval task templates (rendered with absolute paths by harness.evaluation.lm_eval) and their functions."""
