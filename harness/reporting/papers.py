"""Published numbers as data: results/papers/<paper>.yaml, one file per paper, one schema for all.

Schema (unknown keys are errors; see results/papers/flow-dpo.yaml for a full example)::

    paper: flow-dpo                  # equals the file stem
    title / authors / arxiv / venue / code: str (venue, code may be null)
    notes: [str]                     # free-text facts worth keeping beside the numbers
    versions: {v1: "arXiv ...v1"}    # arXiv versions that publish different numbers ({} when one)
    default_version: v2 | null       # version used by lookups that name none
    models:     {KEY: {name, hub_id?, note?}}     # KEY is what recipes' `paper.model` names
    methods:    {KEY: {name, run_model?, note?}}  # run_model: the run's evaluate label (base, sft-flow, online-policy)
    benchmarks: {KEY: {name, note?}}              # KEY equals the recipe's eval task `name` (gsm8k, math)
    tables:                          # in order of preference: [paper] before [summary]
      - id: table1
        source: "arXiv 2410.22304, Table 1 [paper]"  # arXiv id + table/abstract + tag; cells inherit it
        version: v2 | null
        unit: percent
        delta_vs: METHOD | null      # what the cells' `delta` is measured against
        note: str | null
        numbers: {MODEL: {METHOD: {BENCHMARK: CELL}}}
          # CELL = a number | null (not published, e.g. '-' in the table) | {value, delta?, source?, note?}
    statements:                      # published claims with no table (e.g. progressive accuracy)
      - {id, model: KEY|null, metric, text, source, numbers: {NAME: number}, note?}
    hyperparameters:                 # published settings, one group per source
      - {id, name, source, values: {NAME: value}, note?}

Lookup: `paper_number(paper, model, method, benchmark) -> (value | None, source)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from harness.config.recipe import read_yaml_mapping, validate_named
from harness.errors import PaperError

# A wheel ships the paper files inside the package (harness/papers_data/, mapped in pyproject.toml); a checkout
# has none there, so it reads the top-level results/papers/.
_PACKAGE = Path(__file__).resolve().parent.parent
_PACKAGED_PAPERS = _PACKAGE / "papers_data"
PAPERS_DIR = _PACKAGED_PAPERS if _PACKAGED_PAPERS.is_dir() else _PACKAGE.parent / "results" / "papers"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Strict):
    name: str
    """Model name as the paper writes it."""
    hub_id: str | None = None
    """Hugging Face hub id, where known."""
    note: str | None = None


class MethodInfo(_Strict):
    name: str
    """Row name as the paper writes it."""
    run_model: str | None = None
    """The run's evaluate/done.json model label that measures this method (e.g. `sft-flow`)."""
    note: str | None = None


class BenchmarkInfo(_Strict):
    name: str
    """Benchmark name as the paper writes it."""
    note: str | None = None


class Cell(_Strict):
    value: float | None
    """The published number (None: not published)."""
    delta: float | None = None
    """A gain the paper states beside the number (against the table's `delta_vs`)."""
    source: str | None = None
    """Overrides the table's source for this cell."""
    note: str | None = None


class Table(_Strict):
    id: str
    source: str
    """arXiv id (+version) + table/abstract + tag, e.g. `arXiv 2410.22304, Table 1 [paper]`."""
    version: str | None = None
    unit: Literal["percent"] = "percent"
    delta_vs: str | None = None
    note: str | None = None
    numbers: dict[str, dict[str, dict[str, float | None | Cell]]]


class Statement(_Strict):
    id: str
    model: str | None
    """Model key the claim is about (None: every model)."""
    metric: str
    text: str
    source: str
    numbers: dict[str, float] = {}
    """The numbers the text states, by name (units in the name)."""
    note: str | None = None


class HyperGroup(_Strict):
    id: str
    name: str
    source: str
    values: dict[str, Any]
    note: str | None = None


class Paper(_Strict):
    paper: str
    title: str
    authors: str
    arxiv: str
    venue: str | None = None
    code: str | None = None
    notes: list[str] = []
    versions: dict[str, str] = {}
    default_version: str | None = None
    models: dict[str, ModelInfo]
    methods: dict[str, MethodInfo]
    benchmarks: dict[str, BenchmarkInfo]
    tables: list[Table]
    statements: list[Statement] = []
    hyperparameters: list[HyperGroup] = []

    @model_validator(mode="after")
    def _keys_declared(self) -> Paper:
        def check(where: str, key: str | None, known: dict) -> None:
            if key is not None and key not in known:
                raise ValueError(f"{where}: {key!r} is not declared (declared: {', '.join(known) or 'none'})")

        check("default_version", self.default_version, self.versions)
        for i, table in enumerate(self.tables):
            at = f"tables.{i}"
            check(f"{at}.version", table.version, self.versions)
            check(f"{at}.delta_vs", table.delta_vs, self.methods)
            for model, rows in table.numbers.items():
                check(f"{at}.numbers", model, self.models)
                for method, cells in rows.items():
                    check(f"{at}.numbers.{model}", method, self.methods)
                    for bench in cells:
                        check(f"{at}.numbers.{model}.{method}", bench, self.benchmarks)
        for i, st in enumerate(self.statements):
            check(f"statements.{i}.model", st.model, self.models)
        return self

    # ---- lookups ---------------------------------------------------------------------------------
    def numbers(self, version: str | None = None) -> list[PaperNumber]:
        """Every published cell in file order (preferred source first); `version` filters versioned tables."""
        out = []
        for table in self.tables:
            if version is not None and table.version not in (None, version):
                continue
            for model, rows in table.numbers.items():
                for method, cells in rows.items():
                    for bench, cell in cells.items():
                        c = cell if isinstance(cell, Cell) else Cell(value=cell)
                        source = c.source or table.source
                        if c.value is None:
                            source += ": not published"
                        out.append(
                            PaperNumber(
                                self.paper,
                                model,
                                method,
                                bench,
                                c.value,
                                source,
                                c.delta,
                                table.delta_vs if c.delta is not None else None,
                                table.version,
                                table.id,
                            )
                        )
        return out

    def number(
        self, model: str, method: str, benchmark: str, version: str | None = None
    ) -> PaperNumber | None:
        """The preferred published cell (None when this combination is not in the file)."""
        self._check_key("model", model, self.models)
        self._check_key("method", method, self.methods)
        self._check_key("benchmark", benchmark, self.benchmarks)
        version = version or self.default_version
        if version is not None:
            self._check_key("version", version, self.versions)
        for row in self.numbers(version):
            if (row.model, row.method, row.benchmark) == (model, method, benchmark):
                return row
        return None

    def method_for_run_model(self, label: str) -> str | None:
        """The method whose `run_model` is this evaluate label (e.g. `sft-flow` -> `sft_flow`)."""
        return next((key for key, m in self.methods.items() if m.run_model == label), None)

    def statements_for(self, model: str | None) -> list[Statement]:
        """Statements about this model and about every model."""
        return [s for s in self.statements if s.model is None or model is None or s.model == model]

    def _check_key(self, kind: str, key: str, known: dict) -> None:
        if key not in known:
            raise PaperError(f"{paper_path(self.paper)}: no {kind} {key!r} (known: {', '.join(known)})")


@dataclass(frozen=True)
class PaperNumber:
    """One published number with where it comes from."""

    paper: str
    model: str
    method: str
    benchmark: str
    value: float | None
    source: str
    delta: float | None = None
    delta_vs: str | None = None
    version: str | None = None
    table: str = ""


def paper_path(name: str) -> Path:
    return PAPERS_DIR / f"{name}.yaml"


def list_papers() -> list[str]:
    """Names of the papers with a results/papers/<name>.yaml file."""
    return sorted(p.stem for p in PAPERS_DIR.glob("*.yaml"))


def load_paper(name: str) -> Paper:
    """Load and validate results/papers/<name>.yaml (cached). Errors name the file and the key path."""
    path = paper_path(name)
    if not path.is_file():
        raise PaperError(f"{path}: no such paper file (known: {', '.join(list_papers()) or 'none'})")
    return _load(path)


def load_paper_file(path: Path) -> Paper:
    """Load and validate a paper file at any path (the file stem must equal its `paper` key)."""
    return _load(Path(path))


@lru_cache(maxsize=16)
def _load(path: Path) -> Paper:
    return validate_named(Paper, read_yaml_mapping(path, PaperError), path, "paper", PaperError)


def paper_number(
    paper: Paper | str, model: str, method: str, benchmark: str, version: str | None = None
) -> tuple[float | None, str]:
    """(value, source) of a published number; value None when not published (the source says why).

    Unknown model/method/benchmark/version keys raise PaperError naming the file and the key.
    """
    p = load_paper(paper) if isinstance(paper, str) else paper
    row = p.number(model, method, benchmark, version)
    if row is None:
        return None, f"{paper_path(p.paper).name}: no number for {model}/{method}/{benchmark}"
    return row.value, row.source
