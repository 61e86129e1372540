"""Shared helpers for the scripts: the validated config system first, other helpers below.

Config usage from a script:

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)

    python train_kd.py --config configs/kd_camembert.yaml --set training.max_epochs=1
"""

import contextlib
import copy
import dataclasses
import difflib
import importlib.metadata
import json
import math
import operator
import os
import random
import re
import shutil
import sys
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Union, get_args, get_origin, get_type_hints

import torch
import yaml


class PipelineError(Exception):
    """A problem the user can fix (bad data, config, model folder, GPU memory...).

    Stage scripts report it as one paragraph and exit non-zero, without a traceback.
    """


# =============================================================================
# Config: YAML -> frozen dataclasses, one per section.
# Each field's valid range lives in its metadata (min, gt, max, lt, choices) and
# is checked by the one generic walker `_build`; only cross-field rules are explicit.
# =============================================================================

DEFAULT_CONFIG = "configs/kd_camembert.yaml"


def _field(default, **checks):
    """A dataclass field whose metadata holds its checks: min (>=), gt (>), max (<=), lt (<), choices."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=checks)
    return field(default=default, metadata=checks)


@dataclass(frozen=True)
class TeacherConfig:
    model_name: str = "Jean-Baptiste/camembert-ner"  # hub id or local folder; not checked at load time


@dataclass(frozen=True)
class StudentConfig:
    num_layers: int = _field(10, min=1)
    layers: Optional[list[int]] = _field(None, min=0)  # teacher layer ids; None = spread evenly
    use_crf: bool = True


@dataclass(frozen=True)
class DataConfig:
    # Paths resolve against the current directory, not against the config file.
    train_file: str = "data/train.jsonl"
    val_file: str = "data/val.jsonl"
    test_file: Optional[str] = "data/test.jsonl"
    label2id_file: str = "data/label2id.json"
    max_seq_length: int = _field(256, min=8, max=4096)


@dataclass(frozen=True)
class LossWeights:
    """total loss = ce * CE + kd * KD + hidden * hidden-state MSE + crf * CRF NLL"""
    ce: float = _field(0.5, min=0)
    kd: float = _field(0.5, min=0)
    hidden: float = _field(0.1, min=0)
    crf: float = _field(1.0, min=0)


@dataclass(frozen=True)
class DistillationConfig:
    temperature: float = _field(2.5, gt=0)
    weights: LossWeights = _field(LossWeights())
    label_map: dict[str, str] = _field({})  # teacher entity type -> student entity type or "O"


@dataclass(frozen=True)
class PruningConfig:
    rate: float = _field(0.25, min=0, lt=1)
    min_heads_per_layer: int = _field(1, min=1)
    steps: int = _field(1, min=1)
    max_batches: Optional[int] = _field(None, min=1)  # caps the val batches used to score heads
    normalize: str = _field("l2", choices=("l2", "none"))
    batch_size: int = _field(16, min=1)


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = _field(16, min=1)
    eval_batch_size: int = _field(64, min=1)
    learning_rate: float = _field(2.0e-5, gt=0)
    max_epochs: int = _field(10, min=1)
    warmup_ratio: float = _field(0.1, min=0, max=1)
    weight_decay: float = _field(0.01, min=0)
    grad_accumulation_steps: int = _field(1, min=1)
    max_grad_norm: float = _field(1.0, min=0)  # 0 = no clipping
    mixed_precision: str = _field("auto", choices=("auto", "bf16", "fp16", "fp32"))
    early_stopping_patience: int = _field(3, min=0)  # 0 = off
    log_every_steps: int = _field(50, min=1)
    checkpoint_every_steps: int = _field(500, min=0)  # 0 = only at epoch end
    crf_learning_rate: float = _field(5.0e-3, gt=0)  # CRF transitions start near 0 and need a larger step
    seed: int = 42
    num_workers: int = _field(0, min=0)


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = _field(2, min=1)
    learning_rate: float = _field(3.0e-5, gt=0)
    use_teacher: bool = True
    weights: LossWeights = _field(LossWeights(ce=1.0, kd=0.5, hidden=0.0, crf=1.0))


@dataclass(frozen=True)
class Config:
    """The whole config; build it with `load_config`, which checks it. Meanings: configs/kd_camembert.yaml."""
    teacher: TeacherConfig = _field(TeacherConfig())
    student: StudentConfig = _field(StudentConfig())
    data: DataConfig = _field(DataConfig())
    distillation: DistillationConfig = _field(DistillationConfig())
    pruning: PruningConfig = _field(PruningConfig())
    training: TrainingConfig = _field(TrainingConfig())
    finetune: FinetuneConfig = _field(FinetuneConfig())

    def __str__(self):
        # YAML reads better in a terminal than the one-line dataclass repr
        return yaml.safe_dump(config_to_dict(self), sort_keys=False).rstrip()


class ConfigError(PipelineError):
    """A mistake in a config file or a --set override. The message names the source and the key
    path; `key` keeps the path (None for file-level problems)."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 2e-5, 1E3, 1.0e5 as floats (YAML 1.1 wants '2.0e-05')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_BOUNDS = {"min": (">=", operator.ge), "gt": (">", operator.gt), "max": ("<=", operator.le), "lt": ("<", operator.lt)}


def _optional_of(tp):
    """X for Optional[X], else None."""
    if get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
        return next(a for a in get_args(tp) if a is not type(None))


def _describe(tp, meta):
    """What a value must be, in words: 'an integer >= 1', 'one of 'l2', 'none'', ..."""
    if _optional_of(tp):
        return "null or " + _describe(_optional_of(tp), meta)
    if get_origin(tp) is list:
        return "a list with each item " + _describe(get_args(tp)[0], meta)
    if get_origin(tp) is dict:
        return "a mapping of string to string"
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    bounds = [f"{sign} {meta[k]}" for k, (sign, _) in _BOUNDS.items() if k in meta]
    return " ".join([_TYPE_NAMES[tp], " and ".join(bounds)]).strip()


def _check_value(value, tp, meta, key):
    """Return `value` converted to type `tp`, or raise ConfigError naming `key`."""
    expected = _describe(tp, meta)
    def wrong():
        return ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})", key)

    if _optional_of(tp):
        if value is None:
            return None
        tp = _optional_of(tp)
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise wrong()
        return [_check_value(v, get_args(tp)[0], meta, f"{key}[{i}]") for i, v in enumerate(value)]
    if get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise wrong()
        return {_check_value(k, str, {}, f"{key} (a key)"): _check_value(v, str, {}, f"{key}.{k}")
                for k, v in value.items()}
    number = isinstance(value, (int, float)) and not isinstance(value, bool)  # bool is an int in Python
    if tp is int and number and (isinstance(value, int) or value.is_integer()):
        value = int(value)  # 1e3 -> 1000
    elif tp is float and number and math.isfinite(value):
        value = float(value)
    elif not (tp in (bool, str) and isinstance(value, tp)):
        raise wrong()
    in_range = all(test(value, meta[k]) for k, (_, test) in _BOUNDS.items() if k in meta)
    if not in_range or value not in meta.get("choices", (value,)):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}", key)
    return value


def _unknown_key(key, valid):
    """ConfigError for an unknown key, suggesting the closest valid one."""
    prefix, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, valid, n=1)
    hint = (f"did you mean '{'.'.join(filter(None, [prefix, close[0]]))}'?" if close
            else "valid keys here: " + ", ".join(valid))
    return ConfigError(f"unknown key '{key}'; {hint}", key)


def _build(default, raw, prefix=""):
    """Return a copy of dataclass `default` with the keys of mapping `raw` checked and applied.
    Missing keys keep the value in `default` (so a partial finetune.weights keeps finetune's defaults)."""
    if raw is None:  # an empty section in YAML
        return default
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {raw!r}", prefix)
    hints, names = get_type_hints(type(default)), [f.name for f in fields(default)]
    for name in raw:
        if name not in names:
            raise _unknown_key(".".join(filter(None, [prefix, str(name)])), names)
    values = {}
    for f in fields(default):
        if f.name in raw:
            key = ".".join(filter(None, [prefix, f.name]))
            if dataclasses.is_dataclass(hints[f.name]):
                values[f.name] = _build(getattr(default, f.name), raw[f.name], key)
            else:
                values[f.name] = _check_value(raw[f.name], hints[f.name], f.metadata, key)
    return dataclasses.replace(default, **values)


def _check_consistency(config):
    """Cross-field rules that one field's metadata cannot express."""
    layers, num_layers = config.student.layers, config.student.num_layers
    if layers is not None and len(layers) != num_layers:
        raise ConfigError(f"student.layers: expected {num_layers} teacher layer ids (one per student layer, "
                          f"student.num_layers={num_layers}), got {len(layers)}: {layers}", "student.layers")
    if layers is not None and len(set(layers)) != len(layers):
        raise ConfigError(f"student.layers: teacher layer ids must be distinct, got {layers}", "student.layers")
    for key in ("distillation.weights", "finetune.weights"):
        section, _, name = key.partition(".")
        if all(w == 0 for w in dataclasses.astuple(getattr(getattr(config, section), name))):
            raise ConfigError(f"{key}: all loss weights are 0; set at least one of ce, kd, hidden, crf > 0", key)


def _check_files(data):
    """Every configured data file must exist; paths resolve against the current directory."""
    for f in fields(data):
        path = getattr(data, f.name)
        if f.name.endswith("_file") and path is not None and not os.path.isfile(path):
            raise ConfigError(f"data.{f.name}: file not found: '{path}' (relative paths are resolved against "
                              f"the current directory, {os.getcwd()}, not the config file)", f"data.{f.name}")


def _read_yaml(path):
    """The YAML mapping in `path` ({} for an empty file), or ConfigError naming the file (and line)."""
    try:
        with open(path, encoding="utf-8") as file:
            raw = yaml.load(file, Loader=_Loader)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror} "
                          f"(relative paths start from the current directory, {os.getcwd()})") from None
    except yaml.YAMLError as err:
        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # an unclosed bracket is only noticed at the end of the file; say where it opened
        opened = f" ({err.context} at line {context.line + 1})" if context and err.context else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', None) or err}{opened}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (teacher, student, ...), got {raw!r}")
    return raw or {}


def _apply_override(raw, item):
    """Write one `--set key.path=value` (value parsed as YAML) into the nested mapping `raw`;
    unknown keys are caught later by `_build`, like those in the file."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.max_epochs=1")
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item}: value is not valid YAML: {getattr(err, 'problem', None) or err}") from None
    *sections, name = key.strip().split(".")
    for section in sections:
        if not isinstance(raw.get(section), dict):
            raw[section] = {}  # missing or empty in the file; the override wins
        raw = raw[section]
    raw[name] = value


def _blame(key, path, overrides):
    """Where a bad `key` came from: the last --set that wrote it (or a key above or below it), else the file."""
    base = re.split(r"[\[ ]", key or "")[0]  # 'student.layers[1]' -> 'student.layers'
    for item in reversed(overrides):
        written = item.partition("=")[0].strip()
        if base and ((written + ".").startswith(base + ".") or base.startswith(written + ".")):
            return f"{path}, --set {item}"
    return str(path)


def load_config(path=DEFAULT_CONFIG, overrides=(), check_files=True):
    """Read the YAML config at `path`, apply `overrides` ("key.path=value" strings, from --set),
    check every key, type and range, and return the frozen Config. Missing sections and keys
    take their defaults. With `check_files`, the data files must exist (relative paths resolve
    against the current directory). Any mistake raises ConfigError naming the file or --set and the key."""
    raw = _read_yaml(path)
    for item in overrides:
        _apply_override(raw, item)
    try:
        config = _build(Config(), raw)
        _check_consistency(config)
        if check_files:
            _check_files(config.data)
    except ConfigError as err:
        raise ConfigError(f"{_blame(err.key, path, overrides)}: {err}", err.key) from None
    return config


def config_to_dict(config):
    """The config as a plain nested dict (JSON-serialisable), to save beside artifacts."""
    return dataclasses.asdict(config)


def add_config_args(parser):
    """Add --config and repeatable --set KEY=VALUE (dest `overrides`) to an argparse parser."""
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="YAML config file (default: %(default)s); data paths in it are relative "
                             "to the current directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, VALUE parsed as YAML; repeatable, e.g. "
                             "--set training.max_epochs=1 --set teacher.model_name=/path/to/teacher "
                             "--set student.layers='[0, 5, 11]'")
    return parser

# =============================================================================
# End of config section.
# =============================================================================

# ---------------------------------------------------------------------------
# The CLI wrapper that reports user-fixable errors

def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a stage's main(); user-fixable errors become a clear message and exit code 2."""
    try:
        code = main(argv)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)


# ---------------------------------------------------------------------------
# Run environment: seed, device, precision, distributed

def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, and its place in a torchrun job."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(device: str = "auto") -> Runtime:
    """Pick the device and, under torchrun (RANK in the environment), join the process group."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device {device} asked for, but no CUDA GPU is visible "
                            "(check nvidia-smi and that torch is a CUDA build).")
    if "RANK" not in os.environ:
        return Runtime(torch.device("cuda" if use_cuda else "cpu") if device == "auto" else torch.device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"), rank, world_size, local_rank)


def close_runtime(runtime: Runtime) -> None:
    if runtime.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def resolve_precision(mode: str, device: torch.device) -> str:
    """`auto` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if mode == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise PipelineError("training.mixed_precision: fp16 needs a CUDA GPU; use fp32 or bf16 on CPU.")
    return mode


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for the chosen precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------
# Files: output folders, atomic writes, run records

def prepare_output_dir(path: str | Path, overwrite: bool = False, resume: bool = False,
                       create: bool = True) -> Path:
    """Make sure writing into `path` loses nothing: refuse a non-empty folder unless asked.

    With `create=False` only the checks run (nothing is deleted or made).
    """
    path = Path(path)
    if overwrite and resume:
        raise PipelineError("--overwrite and --resume exclude each other: --resume continues the "
                            f"run in {path}, --overwrite deletes it.")
    if resume:
        if not path.is_dir():
            raise PipelineError(f"--resume: {path} does not exist; there is no run to resume.")
        return path
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{path} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise PipelineError(f"{path} already exists and is not empty. Use --overwrite to replace "
                                "its contents, --resume to continue an interrupted run, or choose "
                                "another --output.")
        if create:
            shutil.rmtree(path)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Rows of cells as an aligned Markdown table (for terminals and the README alike)."""
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    render = lambda line: "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
    return "\n".join([render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [render(r) for r in rows])


def publish_dir(staging: Path, final: Path) -> Path:
    """Move a fully written folder into place (replacing `final`, which the caller checked)."""
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide the results."""
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "tokenizers", "seqeval", "pytorch-crf", "safetensors"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
