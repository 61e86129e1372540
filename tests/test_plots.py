"""plots.py: the numbers each picture draws, read from real run folders and from edited copies;
the pictures themselves are checked as PNG files of the expected size, never pixel by pixel."""
import json
import shutil
import struct

import pytest

import plots
import train_kd
from conftest import read_json, write_config
from utils import PipelineError


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory, europeana, io_teacher):
    """A real two-epoch stage-1 run of the tiny pipeline, with report_to: tensorboard."""
    folder = tmp_path_factory.mktemp("plots")
    config = write_config(folder / "config.yaml", europeana, io_teacher,
                          training={"max_epochs": 2, "report_to": "tensorboard"})
    assert train_kd.main(["--config", str(config), "--output", str(folder / "run")]) == 0
    return folder / "run"


def test_a_finished_run_draws_losses_learning_rate_and_val_f1_with_the_best_epoch(tensorboard_run):
    log = [json.loads(line) for line in (tensorboard_run / "training_log.jsonl").read_text().splitlines()]
    summary = read_json(tensorboard_run / "training_summary.json")
    curves = plots.curves_data(tensorboard_run)
    train_lines = [r for r in log if "loss" in r]
    assert set(curves.terms) == {"loss", "ce", "kd", "hidden", "crf"}
    assert curves.terms["loss"] == [(r["step"], r["loss"]) for r in train_lines]
    assert curves.learning_rate == [(r["step"], r["lr"]) for r in train_lines]
    assert curves.val_f1 == [(h["epoch"], h["val"]["overall"]["f1"]) for h in summary["history"]]
    assert len(curves.val_f1) == 3 and curves.best_epoch == summary["best_epoch"] and curves.notes == []
    # each epoch's validation is in the log too, so a run that is still going has it
    val_lines = [r for r in log if "val_f1" in r]
    assert [(r["epoch"], r["val_f1"]) for r in val_lines] == curves.val_f1[1:]
    best_line = next(r for r in val_lines if r["epoch"] == summary["best_epoch"])
    for kind, scores in summary["val"]["per_type"].items():
        assert [best_line[f"val_{m}_{kind}"] for m in ("precision", "recall", "f1")] == \
            [scores[m] for m in ("precision", "recall", "f1")]
    # stage 1 drew it, 16 x 4.8 inches at 100 dpi, and the model card shows it
    assert png_size(tensorboard_run / plots.CURVES_FILE) == (1600, 480)
    assert "![Training curves: loss terms, learning rate and validation F1](training_curves.png)" in \
        (tensorboard_run / "README.md").read_text()


def test_the_curves_follow_their_input_and_the_same_input_gives_the_same_file(tensorboard_run, tmp_path):
    copy = shutil.copytree(tensorboard_run, tmp_path / "copy")
    before = plots.curves_data(copy)
    lines = (copy / "training_log.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "kd": first["kd"] * 2})
    (copy / "training_log.jsonl").write_text("\n".join(lines) + "\n")
    after = plots.curves_data(copy)
    assert after.terms["kd"][0] == (first["step"], first["kd"] * 2) and after.terms["kd"][1:] == before.terms["kd"][1:]
    a, b = plots.draw_curves(after, tmp_path / "a.png"), plots.draw_curves(after, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    assert plots.draw_curves(before, tmp_path / "c.png").read_bytes() != a.read_bytes()


def test_a_run_still_going_with_a_cut_last_line_gives_what_is_there_with_a_note(tensorboard_run, tmp_path):
    run = tmp_path / "going"
    run.mkdir()
    text = (tensorboard_run / "training_log.jsonl").read_text()
    (run / "training_log.jsonl").write_text(text + text.splitlines()[0][:17])   # a line being written
    curves = plots.curves_data(run)
    lines = len(text.splitlines())
    assert curves.notes == [f"training_log.jsonl: line {lines + 1} is incomplete (the run is writing it, or was "
                            "stopped): left out", "the run has not finished: what its log holds so far"]
    summary = read_json(tensorboard_run / "training_summary.json")
    assert curves.val_f1 == [(h["epoch"], h["val"]["overall"]["f1"]) for h in summary["history"][1:]]
    best = max(curves.val_f1, key=lambda p: p[1])[0]
    assert curves.best_epoch == best and len(curves.terms["loss"]) == len(plots.curves_data(tensorboard_run).terms["loss"])
    assert plots.main(["--run", str(run)]) == 0 and png_size(run / plots.CURVES_FILE) == (1600, 480)


def test_a_folder_without_a_log_still_gives_a_picture_that_says_so(tmp_path, capsys):
    assert plots.main(["--run", str(tmp_path)]) == 0
    curves = plots.curves_data(tmp_path)
    assert curves.notes == ["no training_log.jsonl in the run folder"] and curves.terms == {} and curves.val_f1 == []
    assert png_size(tmp_path / plots.CURVES_FILE) == (1600, 480) and "Written" in capsys.readouterr().out
    with pytest.raises(PipelineError, match="no such folder"):
        plots.main(["--run", str(tmp_path / "none")])


def test_tensorboard_event_files_read_back_as_the_logged_values(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tensorboard_run / "tensorboard"))
    events.Reload()
    log = [json.loads(line) for line in (tensorboard_run / "training_log.jsonl").read_text().splitlines()]
    train, val = [r for r in log if "loss" in r], [r for r in log if "val_f1" in r]
    # event files hold float32: equal to the log's values to float32 precision
    read = lambda tag: ([e.step for e in events.Scalars(tag)], pytest.approx([e.value for e in events.Scalars(tag)],
                                                                              rel=1e-6))
    for name in ("loss", "ce", "kd", "hidden", "crf", "samples_per_s", "lr"):
        assert read(f"train/{name}") == ([r["step"] for r in train], [r[name] for r in train]), name
    assert read("val/f1") == ([r["step"] for r in val], [r["val_f1"] for r in val]) and len(val) == 2
    assert read("val/precision") == ([r["step"] for r in val], [r["val_precision"] for r in val])
    per_type = [k[len("val_"):] for k in val[0] if k.startswith(("val_precision_", "val_recall_", "val_f1_"))]
    assert len(per_type) >= 3 and all(f"val/{k}" in events.Tags()["scalars"] for k in per_type)


def test_report_to_tensorboard_without_the_package_says_what_to_install(monkeypatch):
    import importlib.util
    import training
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(PipelineError, match=r"pip install tensorboard\), or set training.report_to: none"):
        training.check_report_to("tensorboard")
    training.check_report_to("none")


def test_the_pruning_map_has_a_panel_per_round_and_the_neuron_bars(tmp_path):
    (tmp_path / "heads_pruned_mask.json").write_text(json.dumps({
        "rate": 0.5, "total_heads": 6, "pruned_total": 3,
        "importance": [[[0.1, 0.9, 0.5], [0.7, 0.2, 0.8]], [[None, 0.9, 0.4], [0.6, None, 0.8]]],
        "pruned_per_step": [{"0": [0], "1": [1]}, {"0": [2]}]}))
    data = plots.pruning_data(tmp_path)
    assert [r.removed for r in data.rounds] == [{(0, 0), (1, 1)}, {(0, 2)}] and data.neurons is None
    assert data.rounds[1].importance[0][0] is None and data.title.endswith("3 of 6 heads removed (rate 0.5)")
    one = png_size(plots.draw_pruning(data, tmp_path / "one.png"))
    (tmp_path / "ffn_pruned_mask.json").write_text(json.dumps({"intermediate_size": 128, "neurons_after": [96, 100]}))
    data = plots.pruning_data(tmp_path)
    assert data.neurons == [(96, 32), (100, 28)]
    two = png_size(plots.draw_pruning(data, tmp_path / "two.png"))
    assert two[0] == one[0] * 3 // 2 and two[1] == one[1]   # a third panel of the same width


def test_the_comparison_has_a_bar_per_model_and_type_with_size_and_speed():
    rows = [{"model": "artifacts/teacher", "precision": "fp32", "parameters": 110_000_000, "words_per_s": 812.4,
             "overall": {"f1": 0.8}, "per_type": {"PER": {"f1": 0.9}, "LOC": {"f1": 0.7}}},
            {"model": "artifacts/student_final", "precision": "int8", "parameters": 65_400_000, "words_per_s": 2200,
             "overall": {"f1": 0.78}, "per_type": {"PER": {"f1": 0.88}}}]
    data = plots.comparison_data(rows)
    assert data.types == ["LOC", "PER", "overall"]
    assert data.bars == [("teacher (fp32): 110.0M parameters, 812 words/s", [0.7, 0.9, 0.8]),
                         ("student_final (int8): 65.4M parameters, 2200 words/s", [None, 0.88, 0.78])]


def test_the_committed_pictures_are_small_pngs():
    from conftest import REPO
    pictures = sorted((REPO / "docs").glob("*.png"))
    assert {p.name for p in pictures} >= {"demo_training_curves.png", "demo_heads_pruned.png", "demo_f1_per_type.png"}
    for path in pictures:
        png_size(path)
        assert path.stat().st_size < 200_000, path.name
