"""Recipes: one YAML file per paper table, one entry per row. Data, never code.

A table file (``recipes/<paper>/<table>.yaml``) may ``include:`` other YAML files (paths relative to
it, typically the paper's ``_paper.yaml``); included files are deep-merged underneath the including
file (mappings merge key by key, everything else is replaced). A file's ``defaults:`` mapping is
deep-merged underneath every row of the table, so a paper states its training setup once.

Every file is read with ``yaml.safe_load`` semantics (plus a refusal of duplicate keys) and validated
by the typed schema below; any error names the file, the row and the field.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.vocab import METRIC_KEYS

ROW_ID_MAX = 64  # a row id names a file (results/<scale>/<paper>/<table>/<row>.json): keep it short
ROW_ID = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
#: limits on what a recipe file may expand to (YAML aliases can multiply a small file: "alias bombs")
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 200_000
MAX_DEPTH = 64
PAPERS = ("csr-d2s", "amf-sparseinst", "isda", "sa-fpn", "sbr-cnn")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names file, row and field."""


# --------------------------------------------------------------------------------------- schema
class _Strict(BaseModel):
    # NaN and infinities are refused everywhere (published cells, tolerances, lr...): they compare as
    # nothing and strict JSON parsers reject the `--json` output that would carry them
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


Scalar = Union[bool, int, float, str, None]


class PaperInfo(_Strict):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="the folder name under recipes/")
    title: str
    authors: list[str]
    venue: Optional[str] = None
    framework: str = Field(description="toolbox the authors used, e.g. 'mmdetection 2.x'")
    hardware: str = Field(description="the authors' training hardware, as stated")
    source: str = Field(description="file name of the paper text in shared/papers/")
    notes: list[str] = []


class Column(_Strict):
    """A column of the paper's table, in the paper's order. ``key`` is a metric key or a factor."""

    key: str
    label: str


class DeclaredNew(_Strict):
    """Parameters a pretrained checkpoint is not expected to fill: a module the paper adds to a pretrained
    network. ``bench preflight`` fails a load that leaves any other parameter of its target unloaded."""

    keys: str = Field(min_length=1, max_length=200, description="glob over the model's state-dict keys, e.g. 'neck.*'")
    why: str = Field(min_length=1, max_length=400, description="why the checkpoint has no such weights")


class ModelSpec(_Strict):
    """An mmdet config (``config`` + ``overrides``), or a single module for layer-only rows."""

    config: Optional[str] = Field(None, description="'mmdet::<path>' (mmdet's bundled configs) or 'bench::<path>' (bench/configs)")
    overrides: dict[str, Any] = {}
    module: Optional[dict[str, Any]] = Field(None, description="a single registered module (layer-only rows)")
    input_size: Optional[list[int]] = Field(None, description="(H, W) used for FLOPs/profiling; default from train.input_size")
    declared_new: list[DeclaredNew] = Field([], description="parameters no pretrained checkpoint of the row fills "
                                                            "(bench.loadcheck); a DCN offset branch needs none")

    @model_validator(mode="after")
    def _one_of(self) -> "ModelSpec":
        if (self.config is None) == (self.module is None):
            raise ValueError("exactly one of 'config' or 'module' must be given")
        if self.config is not None and not re.match(r"^(mmdet|bench)::\S+\.py$", self.config):
            raise ValueError(f"config {self.config!r} must look like 'mmdet::dir/file.py' or 'bench::dir/file.py'")
        if self.module is not None and "type" not in self.module:
            raise ValueError("module needs a 'type'")
        return self


class TrainSpec(_Strict):
    """The training setup as the paper states it. ``None`` means the paper does not say (see notes)."""

    dataset: Literal["coco", "cityscapes"] = "coco"
    train_split: Optional[str] = None
    eval_split: Optional[Literal["val2017", "test-dev", "minival", "cityscapes-val", "cityscapes-test"]] = None
    epochs: Optional[int] = Field(None, ge=1, le=10_000)
    iters: Optional[int] = Field(None, ge=1, le=100_000_000)
    batch_size: Optional[int] = Field(None, ge=1, le=65_536, description="total images per iteration over all GPUs")
    gpus: Optional[int] = Field(None, ge=1, le=4_096)
    gpu_model: Optional[str] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = Field(None, gt=0)
    momentum: Optional[float] = Field(None, ge=0, le=1)
    weight_decay: Optional[float] = Field(None, ge=0)
    lr_schedule: Optional[str] = Field(None, description="e.g. 'step', 'poly', 'cosine'")
    lr_steps: Optional[list[int]] = Field(None, description="epochs (or iterations) where the lr decays")
    warmup: Optional[str] = None
    lr_scaling: Literal["linear", "none"] = Field(
        "linear", description="when the run's total batch differs from the paper's: scale lr linearly or keep it")
    input_size: Optional[str] = Field(None, description="as stated, e.g. '1333x800' or 'short side 640-800, max 1333'")
    backbone: Optional[str] = None
    pretrain: Optional[str] = None
    augmentation: Optional[str] = None
    seeds: Optional[int] = Field(None, ge=1, le=1_000)

    @field_validator("lr_steps")
    @classmethod
    def _steps(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and any(s < 1 or s > 100_000_000 for s in v):
            raise ValueError("lr steps must be positive epoch or iteration numbers")
        return v

    @model_validator(mode="after")
    def _schedule(self) -> "TrainSpec":
        if self.epochs is not None and self.iters is not None:
            raise ValueError("give epochs or iters, not both")
        return self


class Claim(_Strict):
    """One statement of the paper about a row, in a checkable form.

    ``delta`` is the difference the paper states in words, signed as *this row minus the row it is
    compared with* ("boosts by 0.8 AP": +0.8; "2.1 fewer GFLOPs": -2.1), in the metric's units, or in
    percent of the other row's value when ``relative``. ``vs`` names that other row when it is not the
    row's ``baseline`` (a row id of the same table, or 'paper/table/row')."""

    text: str = Field(description="the paper's words, quoted or paraphrased, with the section")
    metric: Optional[str] = Field(None, description="the metric key the stated delta is in")
    delta: Optional[float] = Field(None, description="the stated difference, this row minus `vs` (or the baseline)")
    relative: bool = Field(False, description="the delta is in percent of the compared row's value ('+2.6%')")
    approximate: bool = Field(False, description="the paper hedges the figure ('about 0.7 AP')")
    vs: Optional[str] = Field(None, description="the row compared against, when not the row's baseline")

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in METRIC_KEYS:
            raise ValueError(f"unknown metric {v!r}{_did_you_mean(v, METRIC_KEYS)}")
        return v

    @model_validator(mode="after")
    def _delta_needs_metric(self) -> "Claim":
        if self.delta is not None and self.metric is None:
            raise ValueError("a claim's delta needs the metric it is in (claim.metric)")
        if (self.relative or self.approximate) and self.delta is None:
            raise ValueError("'relative' and 'approximate' qualify a stated delta: give claim.delta")
        return self


def _nonnegative_tolerances(v: dict) -> dict:
    for key, tol in v.items():
        if tol < 0:
            raise ValueError(f"tolerance.{key} must be >= 0, got {tol}")
    return v


class Row(_Strict):
    """One row of a paper's table.

    ``fidelity`` says how closely the implementation a runnable row trains follows the original system:
    ``faithful`` (the architecture and training setup of the paper, or of its official code where the paper
    is silent, with nothing knowingly changed) or ``approximate`` (something differs: each difference is one
    line of ``deviations``). Absent, nothing is claimed ("unstated"): the rows that predate the field run
    mmdet's own implementation of a system or a paper's modules as the paper describes them (their readings
    are in ``bench/models/*.md``), and are shown without a fidelity word rather than as faithful."""

    id: str
    label: str
    position: int = Field(ge=1)
    factors: dict[str, Scalar] = Field({}, description="the non-metric cells of the row, keyed by column key")
    model: Optional[ModelSpec] = None
    reference_only: Optional[str] = Field(None, description="why this row is not runnable (a system outside mmdet and these papers)")
    fidelity: Optional[Literal["faithful", "approximate"]] = Field(
        None, description="how closely the runnable implementation follows the original: 'faithful' or "
                          "'approximate' (then list each difference in 'deviations'); absent: unstated")
    deviations: list[str] = Field([], description="each way an 'approximate' row's implementation differs from the "
                                                  "original system (architecture, training setup), one line each")
    train: TrainSpec = TrainSpec()
    published: dict[str, Optional[float]] = {}
    published_notes: dict[str, str] = Field({}, description="one note per unknown (null) published cell, and any doubtful one")
    baseline: Optional[str] = Field(None, description="row id (same table) or 'paper/table/row' this row is an ablation of")
    claim: Optional[list[Claim]] = Field(
        None, description="the paper's claim(s) about this row: a string (words only), a mapping "
                          "{text, metric, delta, relative, approximate, vs} or a list of them")
    tolerance: dict[str, float] = Field({}, description="per-metric tolerance for 'matches' (absolute, in metric units)")
    notes: list[str] = []

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if len(v) > ROW_ID_MAX:
            raise ValueError(f"row id {v[:20]!r}... is {len(v)} characters long; at most {ROW_ID_MAX}")
        if not ROW_ID.match(v):
            raise ValueError(f"row id {v!r} must be lower-case letters, digits and . _ + - (a stable slug)")
        return v

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v: dict) -> dict:
        return _nonnegative_tolerances(v)

    @field_validator("claim", mode="before")
    @classmethod
    def _claims(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        if isinstance(v, list):
            return [{"text": c} if isinstance(c, str) else c for c in v]
        return v

    @property
    def claim_text(self) -> Optional[str]:
        """The claims' words, joined (what a page quotes)."""
        return " ".join(c.text for c in self.claim) if self.claim else None

    @property
    def stated_claims(self) -> list[Claim]:
        """The claims that state a difference (metric and delta)."""
        return [c for c in self.claim or [] if c.delta is not None]

    @field_validator("published", "published_notes", "tolerance")
    @classmethod
    def _metric_keys(cls, v: dict) -> dict:
        for key in v:
            if key not in METRIC_KEYS:
                raise ValueError(f"unknown metric {key!r}{_did_you_mean(key, METRIC_KEYS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Row":
        if self.model is None and self.reference_only is None:
            raise ValueError("a row needs a 'model' or a 'reference_only' reason")
        if self.fidelity is not None and self.reference_only is not None:
            raise ValueError("fidelity: a reference-only row runs nothing; give 'fidelity' only with a 'model'")
        if self.deviations and self.fidelity != "approximate":
            raise ValueError(f"deviations: only an 'approximate' row lists deviations (fidelity is "
                             f"{self.fidelity or 'absent'!r}); a row that differs from the original is approximate")
        if self.fidelity == "approximate" and not self.deviations:
            raise ValueError("deviations: an 'approximate' row must say how it differs from the original "
                             "(one line per deviation)")
        if any(not d.strip() for d in self.deviations):
            raise ValueError("deviations: an empty deviation says nothing; write what differs")
        for key, value in self.published.items():
            if value is None and key not in self.published_notes:
                raise ValueError(f"published.{key} is unknown (null) but has no published_notes.{key} saying why")
        return self


class Table(_Strict):
    paper: PaperInfo
    table: str = Field(description="'table-ii', 'table-4': as the paper numbers it")
    number: str = Field(description="as printed: 'II', '4'")
    title: str
    caption: Optional[str] = None
    columns: list[Column]
    tolerance: dict[str, float] = {}
    truncated: list[str] = Field([], description="metrics the paper prints truncated, not rounded (37.99 -> '37.9')")
    precision: dict[str, int] = Field({}, description="decimals the paper prints for a metric where the YAML number "
                                                     "cannot show them (44,170K params: params_M 3)")
    notes: list[str] = []
    rows: list[Row]

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v: dict) -> dict:
        return _nonnegative_tolerances(v)

    @field_validator("table")
    @classmethod
    def _table_name(cls, v: str) -> str:
        if not re.match(r"^table-([ivx]+|\d+)$", v):
            raise ValueError(f"table name {v!r} must be 'table-<number>' with the paper's numbering (table-ii, table-4)")
        return v

    @model_validator(mode="after")
    def _rows(self) -> "Table":
        seen: set[str] = set()
        for i, row in enumerate(self.rows, start=1):
            if row.id in seen:
                raise ValueError(f"rows[{i - 1}].id: duplicate row id {row.id!r}")
            seen.add(row.id)
            if row.position != i:
                raise ValueError(f"rows[{i - 1}].position: row {row.id!r} has position {row.position}, "
                                 f"expected {i} (rows are listed in paper order)")
        cols = {c.key for c in self.columns}
        for i, row in enumerate(self.rows):
            for key in row.factors:
                if key not in cols:
                    raise ValueError(f"rows[{i}].factors.{key}: no column with key {key!r}{_did_you_mean(key, cols)}")
            for key in row.published:
                if key not in cols:
                    raise ValueError(f"rows[{i}].published.{key}: metric is not among the table's columns")
            if row.baseline and "/" not in row.baseline and row.baseline not in seen:
                raise ValueError(f"rows[{i}].baseline: no row {row.baseline!r} in this table"
                                 f"{_did_you_mean(row.baseline, seen)}")
        ids = [r.id for r in self.rows]
        for i, row in enumerate(self.rows):
            for j, c in enumerate(row.claim or []):
                where = f"rows[{i}].claim[{j}]"
                if c.metric is not None and c.metric not in cols:
                    raise ValueError(f"{where}.metric: {c.metric!r} is not among the table's columns"
                                     f"{_did_you_mean(c.metric, cols)}")
                if c.vs is not None and "/" not in c.vs and c.vs not in ids:
                    raise ValueError(f"{where}.vs: no row {c.vs!r} in this table{_did_you_mean(c.vs, ids)}")
                if c.vs is not None and c.vs == row.id:
                    raise ValueError(f"{where}.vs: a row cannot be compared with itself")
                if c.delta is not None and c.vs is None and not row.baseline:
                    raise ValueError(f"{where}: a stated delta needs the row it is measured against "
                                     "(claim.vs, or the row's baseline)")
        return self

    # -- derived ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.paper.slug}/{self.table}"

    @property
    def metric_columns(self) -> list[Column]:
        return [c for c in self.columns if c.key in METRIC_KEYS]

    @property
    def factor_columns(self) -> list[Column]:
        return [c for c in self.columns if c.key not in METRIC_KEYS]

    def row(self, row_id: str) -> Row:
        for r in self.rows:
            if r.id == row_id:
                return r
        raise RecipeError(f"{self.name}: no row {row_id!r}{_did_you_mean(row_id, [r.id for r in self.rows])}")


# --------------------------------------------------------------------------------------- loading
class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """safe_load that refuses duplicate keys (a silent overwrite hides typos). libyaml's parser where
    PyYAML has it (about 10x faster than the pure-Python one), the same safe constructors either way."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def check_size(data: Any, path: Path | str, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a document nested deeper than ``max_depth`` or holding more than ``max_values`` values once
    its YAML aliases are expanded (a few lines of anchors can stand for billions of values, which
    validation would then walk). Iterative: a self-referencing alias cannot loop or recurse."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_values:
            raise RecipeError(f"{path}: expands to more than {max_values} values (YAML aliases?): refused")
        if depth > max_depth:
            raise RecipeError(f"{path}: nested too deeply (more than {max_depth} levels)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            count += len(node)  # the keys
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key (``over`` wins); anything else is replaced by ``over``."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = deep_merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def read_yaml(path: Path, _stack: tuple[Path, ...] = (), root: Path | None = None,
              _read: list | None = None) -> dict:
    """Read one recipe file with its ``include:`` chain resolved (no defaults applied yet). Includes
    stay inside ``root``, the recipes folder (default: the folder above the table's paper folder).
    ``_read``: a list that receives (resolved path, sha256 of its bytes) of every file read."""
    path = Path(path)
    root = (Path(root) if root is not None else path.parent.parent).resolve()
    if path.resolve() in _stack:
        raise RecipeError(f"{path}: include cycle: {' -> '.join(str(p) for p in _stack + (path,))}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise RecipeError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB: not a recipe")
        if _read is not None:
            _read.append((str(path.resolve()), hashlib.sha256(raw).hexdigest()))
        data = yaml.load(raw.decode("utf-8"), Loader=_StrictLoader)
    except OSError as e:
        raise RecipeError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text: {e}") from None
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(e):  # libyaml's own limit
            raise RecipeError(f"{path}: nested too deeply (libyaml: {str(e).splitlines()[-1].strip()})") from None
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    check_size(data, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe file must be a mapping, got {type(data).__name__}")
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        if not isinstance(inc, str):
            raise RecipeError(f"{path}: field include: must be a file name or a list of them, got {inc!r}")
        target = (path.parent / inc).resolve()
        if not target.is_relative_to(root):
            raise RecipeError(f"{path}: field include: {inc!r} leaves the recipes folder {root}: refused")
        merged = deep_merge(merged, read_yaml(path.parent / inc, _stack + (path.resolve(),), root, _read))
    return deep_merge(merged, data)


def _format_loc(raw: dict, loc: tuple) -> str:
    """'row 3 (id 'csr'), field published.mask_AP5' from a pydantic error location."""
    if len(loc) >= 2 and loc[0] == "rows" and isinstance(loc[1], int):
        rows = raw.get("rows") or []
        rid = rows[loc[1]].get("id") if loc[1] < len(rows) and isinstance(rows[loc[1]], dict) else None
        where = f"row {loc[1] + 1}" + (f" (id {rid!r})" if rid else "")
        rest = ".".join(str(p) for p in loc[2:])
        return where + (f", field {rest}" if rest else "")
    return "field " + ".".join(str(p) for p in loc) if loc else "table"


def _explain(e: dict) -> str:
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        field = str(e["loc"][-1])
        return f"unknown key {field!r}"
    if e["type"] == "missing":
        return "required field is missing"
    if e["type"] == "literal_error":
        return f"{msg} (got {e.get('input')!r})"
    return msg


def _row_error_loc(raw: dict, msg: str) -> str:
    """Model-level errors say 'rows[i].field: ...': name the row by number and id."""
    m = re.match(r"rows\[(\d+)\]\.?([^:]*): (.*)", msg)
    if not m:
        return msg
    i, field, rest = int(m.group(1)), m.group(2), m.group(3)
    return f"{_format_loc(raw, ('rows', i) + tuple(p for p in field.split('.') if p))}: {rest}"


#: what a cached table depends on besides its files: the schema's code
_SCHEMA_FILES = (Path(__file__), Path(__file__).with_name("vocab.py"))


def _table_cache_path(path: Path) -> Path:
    from bench.diskcache import cache_dir, sources_fingerprint

    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "tables" / sources_fingerprint(*_SCHEMA_FILES) / f"{key}.json"


def _cached_table(path: Path) -> Optional[Table]:
    """The table validated earlier from files with exactly these bytes (every include included)."""
    from bench.diskcache import read_json

    entry = read_json(_table_cache_path(path))
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
        return None
    for item in entry["files"]:
        try:
            name, digest = item
            with open(name, "rb") as f:
                if hashlib.sha256(f.read(MAX_FILE_BYTES + 1)).hexdigest() != digest:
                    return None
        except (OSError, ValueError, TypeError):
            return None
    try:
        return Table.model_validate(entry["table"])
    except (ValidationError, KeyError, TypeError):
        return None


def load_table(path: Path) -> Table:
    """Load and validate one table recipe; raise RecipeError naming file, row and field.

    A table validated before from the same file bytes (and includes) under the same schema code is read
    from bench's cache instead of parsed again; an invalid table is never cached."""
    path = Path(path)
    table = _cached_table(path)
    if table is not None:
        return table
    read: list = []
    table = _load_table(path, read)
    from bench.diskcache import write_json

    write_json(_table_cache_path(path), {"files": read, "table": table.model_dump(mode="json")})
    return table


def _load_table(path: Path, read: list) -> Table:
    raw = read_yaml(path, _read=read)
    defaults = raw.pop("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise RecipeError(f"{path}: field defaults: must be a mapping")
    rows = raw.get("rows")
    if isinstance(rows, list):
        raw["rows"] = [deep_merge(defaults, r) if isinstance(r, dict) else r for r in rows]
    try:
        table = Table.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            if not loc or e["type"] == "value_error" and e["msg"].removeprefix("Value error, ").startswith("rows["):
                lines.append(f"{path}: {_row_error_loc(raw, e['msg'].removeprefix('Value error, '))}")
            elif (e["type"] == "value_error" and len(loc) == 2 and loc[0] == "rows"
                  and (m := re.match(r"([a-z_][a-z0-9_.]*): (.*)", _explain(e), re.S))):
                # a row's own check that names its field ("fidelity: ..."): 'row 2 (id ...), field fidelity: ...'
                lines.append(f"{path}: {_format_loc(raw, loc + tuple(m.group(1).split('.')))}: {m.group(2)}")
            else:
                lines.append(f"{path}: {_format_loc(raw, loc)}: {_explain(e)}")
        raise RecipeError("\n".join(dict.fromkeys(lines))) from None
    expected = path.stem
    if table.table != expected:
        raise RecipeError(f"{path}: field table: {table.table!r} does not match the file name {expected!r}")
    if table.paper.slug != path.parent.name:
        raise RecipeError(f"{path}: field paper.slug: {table.paper.slug!r} does not match the folder {path.parent.name!r}")
    return table


# --------------------------------------------------------------------------------------- catalogue
def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def default_recipes_dir() -> Path:
    env = os.environ.get("BENCH_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "recipes"


class Catalogue:
    """All table recipes under a folder, addressed as 'paper/table' (or a unique bare 'table')."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_recipes_dir()
        if not self.root.is_dir():
            raise RecipeError(f"{self.root}: recipes folder not found (set BENCH_RECIPES or --recipes)")
        self.paths: dict[str, Path] = {}
        for p in sorted(self.root.glob("*/*.yaml")):
            if not p.name.startswith("_"):
                self.paths[f"{p.parent.name}/{p.stem}"] = p
        self._cache: dict[str, Table] = {}

    def names(self) -> list[str]:
        def order(name: str):
            paper, table = name.split("/")
            num = table.removeprefix("table-")
            return (PAPERS.index(paper) if paper in PAPERS else 99, paper, _roman_or_int(num))
        return sorted(self.paths, key=order)

    def resolve(self, name: str) -> str:
        """Full 'paper/table' for a user-typed name; refuse ambiguous and unknown names helpfully."""
        name = name.strip().lower().rstrip("/")
        if name.endswith(".yaml"):
            name = name[:-5]
        if name in self.paths:
            return name
        if "/" not in name:
            hits = [n for n in self.paths if n.split("/")[1] == name]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise RecipeError(f"table name {name!r} is ambiguous; say which paper: {', '.join(sorted(hits))}")
        pool = list(self.paths) + sorted({n.split('/')[1] for n in self.paths})
        raise RecipeError(f"unknown table {name!r}{_did_you_mean(name, pool)}; `bench list` shows all tables")

    def load(self, name: str) -> Table:
        full = self.resolve(name)
        if full not in self._cache:
            self._cache[full] = load_table(self.paths[full])
        return self._cache[full]

    def tables(self) -> list[Table]:
        return [self.load(n) for n in self.names()]

    def find_row(self, ref: str, context: Table) -> tuple[Table, Row]:
        """A row reference: 'row-id' in ``context``'s table or 'paper/table/row-id'."""
        if "/" not in ref:
            return context, context.row(ref)
        table_name, _, row_id = ref.rpartition("/")
        table = self.load(table_name)
        return table, table.row(row_id)


_ROMAN = {"i": 1, "v": 5, "x": 10}


def _roman_or_int(s: str) -> int:
    if s.isdigit():
        return int(s)
    total = 0
    for a, b in zip(s, s[1:] + " "):
        va, vb = _ROMAN.get(a, 0), _ROMAN.get(b, 0)
        total += -va if va < vb else va
    return total
