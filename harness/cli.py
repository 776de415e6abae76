"""The `harness` command."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from harness.config.recipe import list_recipes, load_recipe, recipe_path
from harness.errors import HarnessError, RecipeError
from harness.run.console import configure, say

# OS errors about the user's files and disks (a path named on the command line, a read-only or full run folder):
# said in a sentence that names the file. Any other OSError is a bug and keeps its traceback.
USER_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
               errno.EDQUOT, errno.EEXIST, errno.ENAMETOOLONG}


def user_error(err: BaseException) -> str | None:
    """The sentence the CLI prints for a user-facing error; None for a bug."""
    if isinstance(err, HarnessError):
        return str(err)
    if isinstance(err, OSError) and err.errno in USER_ERRNOS:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror or err} (errno {errno.errorcode.get(err.errno, err.errno)})"
    return None


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_recipes():
        try:
            recipe = load_recipe(name)
            first = recipe.description.strip().split(". ")[0].rstrip(".") + "."
            rows.append((name, recipe.model.name, first))
        except RecipeError as err:
            rows.append((name, "INVALID", str(err).splitlines()[0]))
    from tabulate import tabulate

    print(tabulate(rows, headers=["recipe", "model", "description"], maxcolwidths=[None, None, 64]))
    return 0


def resolve_recipe(args: argparse.Namespace):
    """The recipe named on the command line with its overrides, rehearsed with `--rehearse` (what that replaced is
    printed to stderr)."""
    recipe = load_recipe(args.recipe, args.overrides)
    if getattr(args, "rehearse", False):
        from harness.tools.rehearse import describe, rehearsal

        recipe, changes = rehearsal(recipe)
        say(describe(changes))
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
    from harness.grading.files import grade_file

    print(json.dumps(grade_file(args.file, args.task)))
    return 0


def prepare_run(args: argparse.Namespace):
    from harness.run.folder import RunDir

    recipe = resolve_recipe(args)
    run = RunDir(args.run_dir or RunDir.default_path(recipe, "rehearsal" if args.rehearse else None))
    run.prepare(recipe)
    say(f"run folder: {run.path}")
    if recipe.model.trust_remote_code:
        say(f"warning: model.trust_remote_code is true: loading {recipe.model.name} runs the Python code of its "
            "repository on this machine")
    return recipe, run


def cmd_run(args: argparse.Namespace) -> int:
    from harness.stages.pipeline import run_stage

    recipe, run = prepare_run(args)
    summary = run_stage(args.stage, recipe, run)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.stages.pipeline import reproduce

    recipe, run = prepare_run(args)
    print(reproduce(recipe, run))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.stages.pipeline import STAGES
    from harness.tools.sweep import run_sweep, sweep_spec

    key, _ = sweep_spec(args.spec)
    root = Path(args.run_dir) if args.run_dir else Path.cwd() / "results" / "runs" / f"{args.recipe}-sweep-{key}"
    stages = [s for s in STAGES if s != "report"] if args.stages == "all" else ["online"]
    report = run_sweep(args.recipe, args.spec, args.overrides, root, stages, args.along or [])
    print(f"sweep report: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report, then print it as `--format` (text: a terminal summary; md; json)."""
    from harness.reporting.report import write_report
    from harness.reporting.summary import render_report, want_color

    md = write_report(Path(args.run), Path(args.out) if args.out else None)
    if args.format != "text":  # stdout carries only the document; where it was written goes to stderr
        print(f"report: {md}", file=sys.stderr)
    print(render_report(md.parent, args.format, want_color(sys.stdout)), end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison as `--format`; exit 1 when a `--fail-below` check fails."""
    from harness.reporting.compare import compare, parse_fail_below

    text, code = compare([Path(r) for r in args.runs], args.paper, parse_fail_below(args.fail_below or []),
                         args.paper_model, fmt=args.format)
    print(text, end="")
    return code


def worker_counts(text: str) -> list[int]:
    """`--workers 1,2,4`: positive worker counts."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give worker counts of 1 or more, e.g. 1,2,4")
    return counts


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.tools.bench import bench_flow

    recipe = load_recipe(args.recipe, args.overrides)
    result = bench_flow(recipe, args.questions or recipe.online.question_batch, args.workers)
    if args.json:
        print(json.dumps(result))
    else:
        from tabulate import tabulate

        flat = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
        flat |= {f"{k} (s)": v for k, v in result["phase_seconds"].items()}
        flat |= {f"{k} ceiling fraction": v["ceiling_fraction"] for k, v in result["phases"].items()
                 if "ceiling_fraction" in v}
        flat |= {f"{w['workers']} workers tokens/s": w["tokens_per_s"] for w in result["workers"]}
        print(tabulate(flat.items(), headers=["measure", "value"], floatfmt=".3g"))
    return 0


REHEARSE_HELP = ("run the recipe on this CPU with a tiny stand-in of its model family, bundled data and cut sizes, "
                 "everything else as written (prints what it replaced)")


def cmd_doctor(args: argparse.Namespace) -> int:
    import torch

    from harness.tools.doctor import doctor, plan, render

    recipe = resolve_recipe(args)
    if not torch.cuda.is_available() and not args.rehearse:
        print(plan(recipe))
        return 0
    report = doctor(recipe)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def verbosity(suppress: bool) -> argparse.ArgumentParser:
    """-q / -v / --debug, accepted before the command and after it (`harness reproduce tiny -q`)."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only errors and the final summary", **default)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="library output on the console too (it always goes to RUN/logs/)", **default)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error", **default)
    return common


def build_parser() -> argparse.ArgumentParser:
    from harness.stages.pipeline import STAGES

    parser = argparse.ArgumentParser(prog="harness", description=__doc__, parents=[verbosity(False)])
    sub = parser.add_subparsers(dest="command", required=True)
    flags = [verbosity(True)]

    sub.add_parser("list", parents=flags, help="list the recipes in recipes/").set_defaults(func=cmd_list)

    show = sub.add_parser("show", parents=flags, help="print a resolved recipe and its hash")
    show.add_argument("recipe")
    show.add_argument("--rehearse", action="store_true", help="the recipe as `--rehearse` runs it")
    show.add_argument("overrides", nargs="*", help="key.sub=value")
    show.set_defaults(func=cmd_show)

    validate = sub.add_parser("validate", parents=flags, help="validate recipes (all in recipes/ when none given)")
    validate.add_argument("recipes", nargs="*")
    validate.set_defaults(func=cmd_validate)

    grade = sub.add_parser("grade", parents=flags, help="grade a jsonl of {prediction, answer} lines")
    grade.add_argument("file")
    grade.add_argument("--task", choices=["gsm8k", "math"], required=True)
    grade.set_defaults(func=cmd_grade)

    run = sub.add_parser("run", parents=flags, help="run one stage of the pipeline")
    run.add_argument("stage", choices=STAGES)
    run.add_argument("recipe")
    run.add_argument("--run-dir")
    run.add_argument("--rehearse", action="store_true", help=REHEARSE_HELP)
    run.add_argument("overrides", nargs="*", help="key.sub=value")
    run.set_defaults(func=cmd_run)

    reproduce = sub.add_parser("reproduce", parents=flags, help="run every stage (finished stages are skipped)")
    reproduce.add_argument("recipe")
    reproduce.add_argument("--run-dir")
    reproduce.add_argument("--rehearse", action="store_true", help=REHEARSE_HELP)
    reproduce.add_argument("overrides", nargs="*", help="key.sub=value")
    reproduce.set_defaults(func=cmd_reproduce)

    sweep = sub.add_parser("sweep", parents=flags,
                           help="run a recipe once per value of one field (key=v1,v2,...) and report them together")
    sweep.add_argument("recipe")
    sweep.add_argument("spec", help="the swept field and its values, e.g. online.strategy.chunk_size=4,12,36")
    sweep.add_argument("--run-dir", help="root folder of the sweep (default ./results/runs/RECIPE-sweep-KEY)")
    sweep.add_argument("--with", dest="along", action="append", metavar="KEY=W1,W2,...",
                       help="another field changed along with the swept one, one value per swept value (repeatable)")
    sweep.add_argument("--stages", choices=["online", "all"], default="online",
                       help="what each run does: the online stage (default) or every stage")
    sweep.add_argument("overrides", nargs="*", help="key.sub=value, the same for every run")
    sweep.set_defaults(func=cmd_sweep)

    bench = sub.add_parser("bench", parents=flags, help="benchmarks that print their figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    flow = bench_sub.add_parser("flow", parents=flags,
                                help="batched Flow engine vs naive generation vs plain batched generate")
    flow.add_argument("--recipe", required=True)
    flow.add_argument("--questions", type=int, default=None,
                      help="questions to run (default: one generation group, online.question_batch)")
    flow.add_argument("--workers", default=None, metavar="1,2,...", type=worker_counts,
                      help="also time the online loop's generation on that many Ray workers each (needs the ray extra)")
    flow.add_argument("--json", action="store_true", help="print one JSON object")
    flow.add_argument("overrides", nargs="*", help="key.sub=value")
    flow.set_defaults(func=cmd_bench)

    doc = sub.add_parser("doctor", parents=flags,
                         help="GPU preflight: memory, engine start, one DPO step, decode speed, hours")
    doc.add_argument("recipe")
    doc.add_argument("--rehearse", action="store_true", help="run the checks on the CPU stand-in (tests them)")
    doc.add_argument("--json", action="store_true", help="print one JSON object")
    doc.add_argument("overrides", nargs="*", help="key.sub=value")
    doc.set_defaults(func=cmd_doctor)

    report = sub.add_parser("report", parents=flags, help="write RUN/report/ (markdown, HTML, PNGs) from a run folder")
    report.add_argument("run")
    report.add_argument("--out", help="also copy the report here (e.g. reports/NAME)")
    report.add_argument("--format", choices=["text", "md", "json"], default="text",
                        help="what to print: a terminal summary (default), report.md or report.json")
    report.set_defaults(func=cmd_report)

    comp = sub.add_parser("compare", parents=flags,
                          help="runs side by side (and a paper's numbers), with significance tests")
    comp.add_argument("runs", nargs="+")
    comp.add_argument("--paper", choices=["flow-dpo", "mcts-dpo", "scdpo"])
    comp.add_argument("--paper-model", help="model key in the paper file (default: the first run's recipe)")
    comp.add_argument("--fail-below", action="append", metavar="METRIC=DELTA",
                      help="exit 1 when a later run's METRIC is below the first run's by more than DELTA")
    comp.add_argument("--format", choices=["text", "md", "json"], default="text",
                      help="an aligned terminal table (default), markdown tables, or one JSON object")
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
    configure(quiet=args.quiet, verbose=args.verbose)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader of stdout went away (`harness show tiny | head -1`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        sentence = user_error(err)
        if sentence is None or args.debug:
            raise
        print(f"harness: error: {sentence} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
