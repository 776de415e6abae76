"""The `harness` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.recipe import RecipeError, list_recipes, load_recipe, recipe_path


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_recipes():
        try:
            recipe = load_recipe(name)
            rows.append((name, recipe.model.name, recipe.description.strip().split(". ")[0][:90]))
        except RecipeError as err:
            rows.append((name, "INVALID", str(err).splitlines()[0][:90]))
    from tabulate import tabulate

    print(tabulate(rows, headers=["recipe", "model", "description"]))
    return 0


def resolve_recipe(args: argparse.Namespace):
    """The recipe named on the command line with its overrides, rehearsed with `--rehearse` (what that replaced is
    printed to stderr)."""
    recipe = load_recipe(args.recipe, args.overrides)
    if getattr(args, "rehearse", False):
        from harness.rehearse import describe, rehearsal

        recipe, changes = rehearsal(recipe)
        print(describe(changes), file=sys.stderr)
    return recipe


def cmd_show(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args)
    print(f"# {recipe_path(args.recipe)}  hash {recipe.hash()}")
    print(recipe.to_yaml(), end="")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    targets = args.recipes or list_recipes()
    failed = 0
    for target in targets:
        try:
            recipe = load_recipe(target)
            print(f"ok      {target}  (hash {recipe.hash()})")
        except RecipeError as err:
            failed += 1
            print(f"INVALID {err}", file=sys.stderr)
    return 1 if failed else 0


def cmd_grade(args: argparse.Namespace) -> int:
    from harness.grading import grade_file

    print(json.dumps(grade_file(args.file, args.task)))
    return 0


def prepare_run(args: argparse.Namespace):
    from harness.rundir import RunDir

    recipe = resolve_recipe(args)
    run = RunDir(args.run_dir or RunDir.default_path(recipe, "rehearsal" if args.rehearse else None))
    run.prepare(recipe)
    print(f"run folder: {run.path}", file=sys.stderr)
    return recipe, run


def cmd_run(args: argparse.Namespace) -> int:
    from harness.pipeline import run_stage

    recipe, run = prepare_run(args)
    summary = run_stage(args.stage, recipe, run)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.pipeline import reproduce

    recipe, run = prepare_run(args)
    print(reproduce(recipe, run))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import write_report

    print(write_report(Path(args.run), Path(args.out) if args.out else None))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import compare, parse_fail_below

    text, code = compare([Path(r) for r in args.runs], args.paper, parse_fail_below(args.fail_below or []),
                         args.paper_model)
    print(text)
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import bench_flow

    recipe = load_recipe(args.recipe, args.overrides)
    result = bench_flow(recipe, args.questions or recipe.online.question_batch)
    if args.json:
        print(json.dumps(result))
    else:
        from tabulate import tabulate

        flat = {k: v for k, v in result.items() if not isinstance(v, dict)}
        flat |= {f"{k} (s)": v for k, v in result["phase_seconds"].items()}
        print(tabulate(flat.items(), headers=["measure", "value"], floatfmt=".3g"))
    return 0


REHEARSE_HELP = ("run the recipe on this CPU with a tiny stand-in of its model family, bundled data and cut sizes, "
                 "everything else as written (prints what it replaced)")


def cmd_doctor(args: argparse.Namespace) -> int:
    import torch

    from harness.doctor import doctor, plan, render

    recipe = resolve_recipe(args)
    if not torch.cuda.is_available() and not args.rehearse:
        print(plan(recipe))
        return 0
    report = doctor(recipe)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from harness.pipeline import STAGES

    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the recipes in recipes/").set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="print a resolved recipe and its hash")
    show.add_argument("recipe")
    show.add_argument("--rehearse", action="store_true", help="the recipe as `--rehearse` runs it")
    show.add_argument("overrides", nargs="*", help="key.sub=value")
    show.set_defaults(func=cmd_show)

    validate = sub.add_parser("validate", help="validate recipes (all in recipes/ when none given)")
    validate.add_argument("recipes", nargs="*")
    validate.set_defaults(func=cmd_validate)

    grade = sub.add_parser("grade", help="grade a jsonl of {prediction, answer} lines")
    grade.add_argument("file")
    grade.add_argument("--task", choices=["gsm8k", "math"], required=True)
    grade.set_defaults(func=cmd_grade)

    run = sub.add_parser("run", help="run one stage of the pipeline")
    run.add_argument("stage", choices=STAGES)
    run.add_argument("recipe")
    run.add_argument("--run-dir")
    run.add_argument("--rehearse", action="store_true", help=REHEARSE_HELP)
    run.add_argument("overrides", nargs="*", help="key.sub=value")
    run.set_defaults(func=cmd_run)

    reproduce = sub.add_parser("reproduce", help="run every stage (finished stages are skipped)")
    reproduce.add_argument("recipe")
    reproduce.add_argument("--run-dir")
    reproduce.add_argument("--rehearse", action="store_true", help=REHEARSE_HELP)
    reproduce.add_argument("overrides", nargs="*", help="key.sub=value")
    reproduce.set_defaults(func=cmd_reproduce)

    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    flow = bench_sub.add_parser("flow", help="batched Flow engine vs naive generation vs plain batched generate")
    flow.add_argument("--recipe", required=True)
    flow.add_argument("--questions", type=int, default=None,
                      help="questions to run (default: one generation group, online.question_batch)")
    flow.add_argument("--json", action="store_true", help="print one JSON object")
    flow.add_argument("overrides", nargs="*", help="key.sub=value")
    flow.set_defaults(func=cmd_bench)

    doc = sub.add_parser("doctor", help="GPU preflight: memory, engine start, one DPO step, decode speed, hours")
    doc.add_argument("recipe")
    doc.add_argument("--rehearse", action="store_true", help="run the checks on the CPU stand-in (tests them)")
    doc.add_argument("--json", action="store_true", help="print one JSON object")
    doc.add_argument("overrides", nargs="*", help="key.sub=value")
    doc.set_defaults(func=cmd_doctor)

    report = sub.add_parser("report", help="write RUN/report/ (markdown, HTML, PNGs) from a run folder")
    report.add_argument("run")
    report.add_argument("--out", help="also copy the report here (e.g. reports/NAME)")
    report.set_defaults(func=cmd_report)

    comp = sub.add_parser("compare", help="runs side by side (and a paper's numbers), with significance tests")
    comp.add_argument("runs", nargs="+")
    comp.add_argument("--paper", choices=["flow-dpo", "mcts-dpo", "scdpo"])
    comp.add_argument("--paper-model", help="model key in the paper file (default: the first run's recipe)")
    comp.add_argument("--fail-below", action="append", metavar="METRIC=DELTA",
                      help="exit 1 when a later run's METRIC is below the first run's by more than DELTA")
    comp.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may stand after options (`reproduce tiny --run-dir D a.b=1`): argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    from harness.data import DataError
    from harness.errors import NonFiniteLoss
    from harness.rundir import RunError

    try:
        return args.func(args)
    except (RecipeError, RunError, DataError, NonFiniteLoss, ValueError, FileNotFoundError) as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
