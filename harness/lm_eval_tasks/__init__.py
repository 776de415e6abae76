"""Offline lm-eval task templates (rendered with absolute paths by harness.evaluate) and their functions."""
