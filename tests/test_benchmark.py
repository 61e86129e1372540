"""benchmark.py: models with real shapes, one process per row, ratios, JSON; the training-step mode."""
import shutil

import pytest

import benchmark
from conftest import read_json
from models import count_parameters, heads_per_layer, neurons_per_layer
from utils import PipelineError


def test_camembert_base_shapes_give_the_expected_parameter_counts():
    teacher = benchmark.build_like("camembert-base", None, 0.0)
    assert count_parameters(teacher) == 110_035_205                 # 12 layers, 5 IO labels
    student = benchmark.build_like("camembert-base", 10, 0.25)
    # 10 layers, 7 BIO labels and a CRF: 95,861,062; minus 30 heads of 196,800 weights each
    assert count_parameters(student) == 95_861_062 - 30 * 196_800 == 89_957_062
    assert sum(heads_per_layer(student)) == 90 and min(heads_per_layer(student)) >= 1
    compact = benchmark.build_like("camembert-base", 10, 0.25, ffn_rate=0.3, vocab_size=16_000)
    # minus 922 of 3072 FFN neurons in each of 10 layers (768 + 768 + 1 weights each), and
    # 32,005 - 16,000 embedding rows of 768
    assert neurons_per_layer(compact) == [3072 - 922] * 10
    assert count_parameters(compact) == 89_957_062 - 10 * 922 * 1537 - 16_005 * 768 == 63_494_082


def test_rows_run_in_their_own_processes_with_ratios_to_the_first(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--like", "camembert-tiny", "--layers", "3", "--prune-rate", "0.25", "--sentences", "24",
                           "--repeats", "1", "--rounds", "2", "--latency-sentences", "4", "--precision", "fp32", "int8",
                           "--output", str(out)]) == 0
    rows = read_json(out)["rows"]
    assert [(r["label"].split(" ")[0], r["precision"]) for r in rows] == \
        [("teacher", "fp32"), ("student", "fp32"), ("student", "int8")]
    assert all("error" not in r and r["words_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert all(r["passes"] == 2 for r in rows)                   # one pass in each of two processes
    assert rows[1]["heads"] == rows[2]["heads"] == 9 and rows[0]["heads"] == 16
    assert rows[1]["parameters"] < rows[0]["parameters"]
    table = capsys.readouterr().out
    first = next(line for line in table.splitlines() if line.startswith("| teacher (camembert-tiny, random)"))
    assert [cell.strip() for cell in first.split("|")][2:7:4] == ["fp32", "1.00"]
    assert all(r["words_per_s_min"] <= r["words_per_s"] <= r["words_per_s_max"] for r in rows)
    assert read_json(out)["threads"] >= 1 and isinstance(read_json(out)["warnings"], list)


def test_a_busy_machine_is_reported():
    row = {"label": "student", "precision": "int8", "words_per_s": 1000, "words_per_s_min": 850,
           "words_per_s_max": 1050}
    steady = dict(row, label="teacher", words_per_s_min=980, words_per_s_max=1020)
    warnings = benchmark.busy_warnings([steady, row, {"label": "x", "precision": "fp32", "error": "e"}],
                                       load_at_start=0.2, cores=2, threads=2)
    assert warnings == ["student (int8): words/s varied by 20% between passes (850 to 1050); the machine was busy. "
                        "Rerun on an idle machine, or with more --rounds."]
    assert benchmark.busy_warnings([steady], load_at_start=1.7, cores=2, threads=2)[0].startswith(
        "the load average was 1.7 at start, with 2 cores of which the benchmark uses 2")
    assert benchmark.busy_warnings([steady], load_at_start=1.2, cores=8, threads=4) == []


def test_the_compact_student_is_measured_beside_the_plain_one(tmp_path):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--like", "camembert-tiny", "--layers", "3", "--prune-rate", "0.25", "--ffn-rate", "0.5",
                           "--vocab-size", "4000", "--sentences", "16", "--repeats", "1", "--rounds", "1",
                           "--latency-sentences", "2", "--precision", "fp32", "--output", str(out)]) == 0
    rows = read_json(out)["rows"]       # (int8 of uneven shapes: test_finetune_postprune.py)
    assert [(r["label"].split(" (")[0], r["precision"]) for r in rows] == \
        [("teacher", "fp32"), ("student", "fp32"), ("compact student", "fp32")]
    assert all("error" not in r for r in rows)
    # camembert-tiny: 64 hidden, 128 FFN neurons, 8,000 pieces; 3 layers keep 64 neurons and 4,000 pieces
    assert rows[1]["parameters"] - rows[2]["parameters"] == 3 * 64 * (64 + 64 + 1) + 4000 * 64
    assert "50% FFN neurons, vocabulary 4000" in rows[2]["label"]


@pytest.mark.parametrize("extra, message", [
    (["--model", "x", "--ffn-rate", "0.3"], "shape the compact student that --like builds"),
    (["--like", "camembert-tiny", "--ffn-rate", "1.2"], r"--ffn-rate 1.2: give the share"),
    (["--like", "camembert-tiny", "--vocab-size", "9000"], "between 1 and camembert-tiny's 8000"),
])
def test_bad_compact_flags(extra, message):
    with pytest.raises(PipelineError, match=message):
        benchmark.main(extra)


def test_training_step_ratio(tmp_path):
    out = tmp_path / "train.json"
    assert benchmark.main(["--like", "camembert-tiny", "--layers", "3", "--train", "--steps", "2", "--rounds", "1",
                           "--batch-size", "8", "--output", str(out)]) == 0
    train = read_json(out)["train"]
    assert train["plain"]["batch"] == train["kd"]["batch"] and train["plain"]["batch"][0] == 8
    assert train["kd_over_plain"] == pytest.approx(train["kd"]["step_ms"] / train["plain"]["step_ms"])


def test_needs_models():
    with pytest.raises(PipelineError, match="--like camembert-base"):
        benchmark.main([])


def test_a_model_that_cannot_be_loaded_fails_the_run_with_its_whole_message(tmp_path, stage1_artifact, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(stage1_artifact, broken)
    (broken / "tokenizer.json").unlink()
    out = tmp_path / "bench.json"
    assert benchmark.main(["--model", str(stage1_artifact), "--model", str(broken), "--precision", "fp32",
                           "--sentences", "8", "--repeats", "1", "--rounds", "1", "--latency-sentences", "2",
                           "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "failed (below)" in captured.out
    assert f"error: {broken} (fp32): {broken}: no tokenizer files (tokenizer.json" in captured.err
    assert "rerun the stage that wrote it." in captured.err  # the whole message, not cut
    assert read_json(out)["rows"][1]["error"].startswith(f"{broken}: no tokenizer files")
