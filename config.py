"""The config: YAML -> validated, frozen dataclasses, one per section.

Each field's valid range lives in its metadata (min, gt, max, lt, choices) and is checked by
the one generic walker `_build`; only cross-field rules are explicit. From a script:

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)

    python train_kd.py --config configs/kd_camembert.yaml --set training.max_epochs=1

A training setting is one field of `TrainingConfig` (plus its line in the YAML and its README
row): the loop reads it from there. Stage 3 runs the same settings with its own epochs,
learning rate and loss weights, applied in one place, `stage_config`.
"""
import copy
import dataclasses
import difflib
import math
import operator
import os
import re
import types
from dataclasses import dataclass, field, fields
from typing import Optional, Union, get_args, get_origin, get_type_hints

import yaml

from utils import PipelineError

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
    trim_vocabulary: bool = False  # keep only the pieces the data uses (+ special and single-character ones)
    vocabulary_files: list[str] = _field([])  # plain-text files (one text per line) whose pieces are kept too


@dataclass(frozen=True)
class DataConfig:
    # Paths resolve against the current directory, not against the config file.
    train_file: str = "data/train.jsonl"
    val_file: str = "data/val.jsonl"
    test_file: Optional[str] = "data/test.jsonl"
    label2id_file: str = "data/label2id.json"
    max_seq_length: int = _field(256, min=8, max=4096)
    unlabeled_files: list[str] = _field([])  # unlabelled notes (.txt/.txt.gz one per line, .jsonl "text") for KD


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
    unlabeled_weight: float = _field(1.0, min=0)  # scales the teacher terms on unlabelled windows
    unlabeled_per_labeled: float = _field(2.0, gt=0)  # unlabelled windows per labelled window in a batch
    pseudo_labels: bool = False  # the teacher's confident decoded tags train the student's CRF too
    pseudo_label_threshold: float = _field(0.9, min=0, max=1)  # word-level teacher probability to keep a tag


@dataclass(frozen=True)
class PruningConfig:
    rate: float = _field(0.25, min=0, lt=1)
    min_heads_per_layer: int = _field(1, min=1)
    steps: int = _field(1, min=1)
    max_batches: Optional[int] = _field(None, min=1)  # caps the val batches used to score heads
    normalize: str = _field("l2", choices=("l2", "none"))
    batch_size: int = _field(16, min=1)
    ffn_rate: float = _field(0.0, min=0, lt=1)  # fraction of feed-forward neurons to remove too
    min_ffn_neurons_per_layer: int = _field(64, min=1)


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
    report_to: str = _field("none", choices=("none", "tensorboard"))  # live curves in RUN/tensorboard/


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


def _check_files(config):
    """Every configured data file must exist; paths resolve against the current directory."""
    where = f"(relative paths are resolved against the current directory, {os.getcwd()}, not the config file)"
    for f in fields(config.data):
        path = getattr(config.data, f.name)
        if f.name.endswith("_file") and path is not None and not os.path.isfile(path):
            raise ConfigError(f"data.{f.name}: file not found: '{path}' {where}", f"data.{f.name}")
    for i, path in enumerate(config.student.vocabulary_files):
        if not os.path.isfile(path):
            raise ConfigError(f"student.vocabulary_files[{i}]: no such file: '{path}' {where}",
                              f"student.vocabulary_files[{i}]")


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
            _check_files(config)
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


TRAINING_STAGES = ("kd", "finetune")


def stage_config(config, stage):
    """The config as training stage `stage` runs it. Stage 1 ("kd") uses it as it is; stage 3
    ("finetune") runs the same `training` settings with the epochs and learning rate of the
    `finetune` section, and its loss weights in place of `distillation.weights`."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {TRAINING_STAGES}")
    if stage == "kd":
        return config
    finetune = config.finetune
    return dataclasses.replace(
        config,
        training=dataclasses.replace(config.training, max_epochs=finetune.epochs,
                                     learning_rate=finetune.learning_rate),
        distillation=dataclasses.replace(config.distillation, weights=finetune.weights))
