"""`harness sweep RECIPE key=v1,v2,...`: the same recipe once per value of one field, and a combined report.

`--with other=w1,w2,...` changes another field along with it, one value per swept value (a chunk-size ablation
keeps the answer budget: chunk_size=10,30 --with max_chunks=3,1). Each value gets its own run folder,
ROOT/<key>=<value>, prepared and resumed like any run: a sweep started again after a kill skips what finished
and goes on where it stopped. The combined report is harness/reporting/sweep_report.py.
"""

from __future__ import annotations

from pathlib import Path

from harness.config.recipe import load_recipe, parse_override
from harness.errors import RecipeError
from harness.reporting.sweep_report import write_sweep_report
from harness.run.console import say
from harness.run.folder import RunDir


def split_values(text: str) -> list[str]:
    """`a,[b, c],d` -> ["a", "[b, c]", "d"]: commas inside brackets, braces or quotes do not split."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return [v.strip() for v in values]


def field_values(text: str) -> tuple[str, list[str]]:
    """`key=v1,v2,...`: the field and its values (each as written, parsed as YAML by the recipe override)."""
    keys, _ = parse_override(text)
    return ".".join(keys), split_values(text.split("=", 1)[1])


def sweep_spec(text: str) -> tuple[str, list[str]]:
    """The swept field and its values: two or more, all different (each names its run folder)."""
    key, values = field_values(text)
    if len(values) < 2 or any(not v for v in values) or len(set(values)) != len(values):
        raise RecipeError(f"sweep {text!r}: give two or more distinct values, key=v1,v2,...")
    return key, values


def zipped_specs(key: str, values: list[str], along: list[str]) -> dict[str, list[str]]:
    """The fields changed along with the swept one (`--with`), each with one value per swept value (values may
    repeat: only the swept ones name folders)."""
    out = {}
    for text in along:
        other, others = field_values(text)
        if len(others) != len(values) or any(not v for v in others) or other == key or other in out:
            raise RecipeError(f"sweep --with {text!r}: give another field, with one value per value of {key} "
                              f"({len(values)})")
        out[other] = others
    return out


def run_sweep(recipe_name: str, spec: str, overrides: list[str], root: Path, stages: list[str],
              along: list[str] = ()) -> Path:
    """Run `stages` of the recipe for every value (in order), then write the combined report; its path."""
    from harness.generation.lazy import LazyEngine
    from harness.stages.pipeline import run_stage

    key, values = sweep_spec(spec)
    zipped = zipped_specs(key, values, list(along))
    recipes = [load_recipe(recipe_name, [*overrides, f"{key}={value}",
                                         *[f"{other}={others[i]}" for other, others in zipped.items()]])
               for i, value in enumerate(values)]  # all valid first
    for value, recipe in zip(values, recipes):
        run = RunDir(root / f"{key}={value}")
        run.prepare(recipe)
        say(f"sweep {key}={value}: {run.path}")
        engine = LazyEngine(recipe)
        try:
            for stage in stages:
                run_stage(stage, recipe, run, engine)
        finally:
            engine.close()
    return write_sweep_report(root, key, values, zipped)
