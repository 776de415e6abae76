"""lm-eval metric keys (`metric,filter`) of evaluate/done.json records: which one is the headline, how to name it."""

from __future__ import annotations


def headline_metric(record: dict) -> str | None:
    """Table-1 metric of an lm-eval record: the recipe's (`eval.tasks[].metric`), else flexible-extract for
    gsm8k-like tasks, else the first metric."""
    metrics = list((record.get("metrics") or {}).keys())
    if not metrics:
        return None
    if record.get("headline") in metrics:
        return record["headline"]
    gsm = "gsm8k" in str(record.get("task", "")) or "gsm8k" in str(record.get("lm_eval_task", ""))
    if gsm and "exact_match,flexible-extract" in metrics:
        return "exact_match,flexible-extract"
    return metrics[0]


def metric_filter(metric: str) -> str:
    """`exact_match,flexible-extract` -> `flexible-extract` (lm-eval's `metric,filter` key)."""
    return metric.split(",", 1)[1] if "," in metric else "none"


def metric_label(metric: str) -> str:
    """Short name of an lm-eval `metric,filter` key: the filter of exact_match, the metric of filter none."""
    name, _, filt = metric.partition(",")
    if filt in ("", "none"):
        return name
    return filt if name == "exact_match" else metric
