"""Tests for the config system in config.py: every mistake must raise a ConfigError whose
message names where it came from and the key path. Run: python -m pytest tests/test_config.py -q"""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from config import Config, ConfigError, LossWeights, add_config_args, config_to_dict, load_config

MAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "kd_camembert.yaml"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data_overrides(tmp_path):
    """--set overrides pointing the data section at tiny files that exist."""
    names = {"train_file": "train.jsonl", "val_file": "val.jsonl", "test_file": "test.jsonl",
             "label2id_file": "label2id.json"}
    for name in names.values():
        write(tmp_path / name, "{}\n")
    return [f"data.{key}={tmp_path / name}" for key, name in names.items()]


def error_of(*args, **kwargs):
    """The message of the ConfigError that load_config raises."""
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


def test_main_yaml_equals_defaults():
    assert load_config(MAIN_CONFIG, check_files=False) == Config()


def test_missing_sections_and_keys_take_defaults(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", "training:\n  seed: 7\nfinetune:\n  weights: {ce: 2}\n"),
                         check_files=False)
    assert config.training == dataclasses.replace(Config().training, seed=7)
    # a partial finetune.weights keeps finetune's own defaults, not LossWeights' class defaults
    assert config.finetune.weights == LossWeights(ce=2.0, kd=0.5, hidden=0.0, crf=1.0)
    assert config.student == Config().student
    assert load_config(write(tmp_path / "empty.yaml", ""), check_files=False) == Config()


def test_overrides_of_each_type(data_overrides):
    config = load_config(MAIN_CONFIG, data_overrides + [
        "training.max_epochs=1", "training.learning_rate=2e-5", "distillation.weights.hidden=1E-3",
        "training.warmup_ratio=0", "teacher.model_name=/path/to/teacher", "student.num_layers=3",
        "student.layers=[0, 5, 11]", "data.test_file=null", "student.use_crf=false",
        "distillation.label_map={MISC: O}", "pruning.max_batches=4", "training.batch_size=1e2"])
    assert config.training.max_epochs == 1 and type(config.training.max_epochs) is int
    assert config.training.learning_rate == 2e-5 and type(config.training.learning_rate) is float
    assert config.distillation.weights.hidden == 1e-3
    assert config.training.warmup_ratio == 0.0 and type(config.training.warmup_ratio) is float
    assert config.teacher.model_name == "/path/to/teacher"
    assert config.student.layers == [0, 5, 11] and config.student.use_crf is False
    assert config.data.test_file is None
    assert config.distillation.label_map == {"MISC": "O"}
    assert config.pruning.max_batches == 4
    assert config.training.batch_size == 100 and type(config.training.batch_size) is int


def test_exponent_floats_in_yaml_file(tmp_path):
    path = write(tmp_path / "c.yaml", "training:\n  learning_rate: 2e-5\n  weight_decay: 1.0e2\n"
                                      "finetune:\n  learning_rate: 3E-5\n")
    config = load_config(path, check_files=False)
    assert (config.training.learning_rate, config.training.weight_decay) == (2e-5, 100.0)
    assert config.finetune.learning_rate == 3e-5


def test_last_override_wins():
    assert load_config(MAIN_CONFIG, ["training.seed=1", "training.seed=2"], check_files=False).training.seed == 2


def test_unknown_top_level_key_suggests(tmp_path):
    path = write(tmp_path / "c.yaml", "trainng:\n  batch_size: 4\n")
    assert error_of(path, check_files=False) == f"{path}: unknown key 'trainng'; did you mean 'training'?"


def test_unknown_nested_key_suggests(tmp_path):
    path = write(tmp_path / "c.yaml", "training:\n  batchsize: 4\n")
    message = error_of(path, check_files=False)
    assert message == f"{path}: unknown key 'training.batchsize'; did you mean 'training.batch_size'?"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message = error_of(write(tmp_path / "c.yaml", "teacher:\n  zzz: 1\n"), check_files=False)
    assert "unknown key 'teacher.zzz'; valid keys here: model_name" in message


def test_unknown_key_via_set():
    message = error_of(MAIN_CONFIG, ["training.batchsize=4"], check_files=False)
    assert "--set training.batchsize=4" in message
    assert "unknown key 'training.batchsize'; did you mean 'training.batch_size'?" in message
    assert "did you mean 'pruning'?" in error_of(MAIN_CONFIG, ["prunning.rate=0.1"], check_files=False)


def test_malformed_set():
    message = error_of(MAIN_CONFIG, ["training.max_epochs"], check_files=False)
    assert message.startswith("--set 'training.max_epochs': expected KEY=VALUE")
    assert error_of(MAIN_CONFIG, ["=3"], check_files=False).startswith("--set '=3': expected KEY=VALUE")


def test_set_into_a_value_is_rejected():
    message = error_of(MAIN_CONFIG, ["training.seed.x=1"], check_files=False)
    assert "--set training.seed.x=1" in message and "training.seed: expected an integer" in message


@pytest.mark.parametrize("override, expected", [
    ("training.batch_size=abc", "training.batch_size: expected an integer >= 1, got 'abc' (str)"),
    ("training.batch_size=2.5", "training.batch_size: expected an integer >= 1, got 2.5 (float)"),
    ("training.batch_size=true", "training.batch_size: expected an integer >= 1, got True (bool)"),
    ("training.learning_rate=fast", "training.learning_rate: expected a number > 0, got 'fast' (str)"),
    ("training.learning_rate=true", "training.learning_rate: expected a number > 0, got True (bool)"),
    ("student.use_crf=1", "student.use_crf: expected true or false, got 1 (int)"),
    ("teacher.model_name=12", "teacher.model_name: expected a string, got 12 (int)"),
    ("data.train_file=null", "data.train_file: expected a string, got None (NoneType)"),
    ("student.layers=[0, x, 11]", "student.layers[1]: expected an integer >= 0, got 'x' (str)"),
    ("student.layers=5", "student.layers: expected null or a list with each item an integer >= 0, got 5 (int)"),
    ("distillation.label_map={MISC: 1}", "distillation.label_map.MISC: expected a string, got 1 (int)"),
    ("distillation.weights=3", "distillation.weights: expected a mapping of keys, got 3"),
])
def test_wrong_type_names_key(override, expected):
    message = error_of(MAIN_CONFIG, [override], check_files=False)
    assert message == f"{MAIN_CONFIG}, --set {override}: {expected}"


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path / "c.yaml", "training:\n  max_epochs: 1.5\n")
    assert error_of(path, check_files=False) == f"{path}: training.max_epochs: expected an integer >= 1, got 1.5 (float)"


@pytest.mark.parametrize("override, expected", [
    ("training.batch_size=0", "training.batch_size: expected an integer >= 1, got 0"),
    ("training.learning_rate=0", "training.learning_rate: expected a number > 0, got 0.0"),
    ("pruning.rate=1", "pruning.rate: expected a number >= 0 and < 1, got 1.0"),
    ("training.warmup_ratio=1.5", "training.warmup_ratio: expected a number >= 0 and <= 1, got 1.5"),
    ("data.max_seq_length=4", "data.max_seq_length: expected an integer >= 8 and <= 4096, got 4"),
    ("pruning.max_batches=0", "pruning.max_batches: expected null or an integer >= 1, got 0"),
    ("distillation.weights.kd=-1", "distillation.weights.kd: expected a number >= 0, got -1.0"),
    ("student.layers=[0, -1]", "student.layers[1]: expected an integer >= 0, got -1"),
    ("training.mixed_precision=fp8", "training.mixed_precision: expected one of 'auto', 'bf16', 'fp16', 'fp32', got 'fp8'"),
    ("pruning.normalize=L2", "pruning.normalize: expected one of 'l2', 'none', got 'L2'"),
])
def test_out_of_range_or_bad_choice_names_key(override, expected):
    assert error_of(MAIN_CONFIG, [override], check_files=False) == f"{MAIN_CONFIG}, --set {override}: {expected}"


def test_layers_length_must_match_num_layers():
    message = error_of(MAIN_CONFIG, ["student.layers=[0, 5, 11]"], check_files=False)
    assert "student.layers: expected 10 teacher layer ids" in message and "got 3" in message
    message = error_of(MAIN_CONFIG, ["student.num_layers=2", "student.layers=[3, 3]"], check_files=False)
    assert "student.layers: teacher layer ids must be distinct, got [3, 3]" in message


def test_all_zero_weights_rejected():
    zeros = [f"finetune.weights.{name}=0" for name in ("ce", "kd", "hidden", "crf")]
    message = error_of(MAIN_CONFIG, zeros, check_files=False)
    assert "finetune.weights: all loss weights are 0; set at least one of ce, kd, hidden, crf > 0" in message
    message = error_of(MAIN_CONFIG, ["distillation.weights={ce: 0, kd: 0, hidden: 0, crf: 0}"], check_files=False)
    assert "distillation.weights: all loss weights are 0" in message


def test_data_files_checked(data_overrides, tmp_path):
    assert load_config(MAIN_CONFIG, data_overrides).data.train_file == str(tmp_path / "train.jsonl")
    missing = tmp_path / "nope.jsonl"
    message = error_of(MAIN_CONFIG, data_overrides + [f"data.val_file={missing}"])
    assert f"data.val_file: file not found: '{missing}'" in message
    assert "relative paths are resolved against the current directory" in message
    # a null test file is not checked
    load_config(MAIN_CONFIG, data_overrides + ["data.test_file=null"])


def test_data_paths_relative_to_current_directory(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "label2id.json"):
        write(tmp_path / "d" / name, "{}\n")
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    path = write(config_dir / "c.yaml", "data:\n  train_file: d/train.jsonl\n  val_file: d/val.jsonl\n"
                                        "  test_file: d/test.jsonl\n  label2id_file: d/label2id.json\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(path).data.train_file == "d/train.jsonl"  # not rewritten
    monkeypatch.chdir(config_dir)
    assert f"{path}: data.train_file: file not found: 'd/train.jsonl'" in error_of(path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path / "c.yaml", "training:\n  batch_size: 16\n  seed: [1, 2\n")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid YAML at line ")
    assert "(while parsing a flow sequence at line 3)" in message  # where the bracket opened
    path = write(tmp_path / "d.yaml", "training:\n  batch_size: 16\n   seed: 3\n")
    assert error_of(path).startswith(f"{path}: invalid YAML at line 3")


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "c.yaml", "- 1\n- 2\n")
    assert error_of(path).startswith(f"{path}: expected a mapping of sections")


def test_missing_config_file(tmp_path):
    path = tmp_path / "missing.yaml"
    assert error_of(path).startswith(f"{path}: cannot read config file: ")


def test_config_is_frozen():
    config = load_config(MAIN_CONFIG, check_files=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.training.batch_size = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.training = None


def test_config_to_dict_and_str():
    config = load_config(MAIN_CONFIG, ["student.num_layers=3", "student.layers=[0, 5, 11]"], check_files=False)
    as_dict = json.loads(json.dumps(config_to_dict(config)))
    assert as_dict["student"]["layers"] == [0, 5, 11]
    assert as_dict["distillation"]["weights"]["kd"] == 0.5
    text = str(config)
    assert "training:\n  batch_size: 16\n" in text and "learning_rate: 2.0e-05" in text


def test_add_config_args():
    parser = add_config_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert args.config == "configs/kd_camembert.yaml" and args.overrides == []
    args = parser.parse_args(["--config", "x.yaml", "--set", "training.max_epochs=1", "--set", "training.seed=3"])
    assert args.config == "x.yaml" and args.overrides == ["training.max_epochs=1", "training.seed=3"]


def test_stage_config_applies_the_finetune_section_in_one_place():
    from config import stage_config
    config = load_config(MAIN_CONFIG, ["training.batch_size=7", "finetune.epochs=4", "finetune.learning_rate=1e-4",
                                       "finetune.weights.kd=0.25"], check_files=False)
    assert stage_config(config, "kd") is config
    finetune = stage_config(config, "finetune")
    assert (finetune.training.max_epochs, finetune.training.learning_rate) == (4, 1e-4)
    assert finetune.distillation.weights == config.finetune.weights and finetune.distillation.weights.kd == 0.25
    # every other training setting is stage 1's, unchanged
    shared = {f.name for f in dataclasses.fields(config.training)} - {"max_epochs", "learning_rate"}
    assert all(getattr(finetune.training, name) == getattr(config.training, name) for name in shared)
    assert finetune.training.batch_size == 7 and finetune.distillation.temperature == config.distillation.temperature
    with pytest.raises(ValueError, match="unknown training stage"):
        stage_config(config, "prune")


def test_every_config_key_has_a_readme_row():
    """Adding a setting = one dataclass field, one line in the main YAML and one README row."""
    import yaml
    readme = (MAIN_CONFIG.parents[1] / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    in_yaml = yaml.safe_load(MAIN_CONFIG.read_text(encoding="utf-8"))
    no_row, no_line = [], []
    for section, values in config_to_dict(Config()).items():
        for key in values:
            if not any(f"`{section}.{key}" in row or (f"`{section}." in row and f"`{key}`" in row) for row in rows):
                no_row.append(f"{section}.{key}")
            if key not in (in_yaml.get(section) or {}):
                no_line.append(f"{section}.{key}")
    assert (no_row, no_line) == ([], [])


def test_the_compact_config_is_the_main_one_plus_two_keys():
    main = load_config(MAIN_CONFIG, check_files=False)
    compact = load_config(MAIN_CONFIG.with_name("kd_camembert_compact.yaml"), check_files=False)
    assert compact == dataclasses.replace(main, student=dataclasses.replace(main.student, trim_vocabulary=True),
                                          pruning=dataclasses.replace(main.pruning, ffn_rate=0.3))
