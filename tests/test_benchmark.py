"""benchmark.py: models with real shapes, one process per row, ratios, JSON; the training-step mode."""
import pytest

import benchmark
from conftest import read_json
from models import count_parameters, heads_per_layer
from utils import PipelineError


def test_camembert_base_shapes_give_the_expected_parameter_counts():
    teacher = benchmark.build_like("camembert-base", None, 0.0)
    assert count_parameters(teacher) == 110_035_205                 # 12 layers, 5 IO labels
    student = benchmark.build_like("camembert-base", 10, 0.25)
    # 10 layers, 7 BIO labels and a CRF: 95,861,062; minus 30 heads of 196,800 weights each
    assert count_parameters(student) == 95_861_062 - 30 * 196_800 == 89_957_062
    assert sum(heads_per_layer(student)) == 90 and min(heads_per_layer(student)) >= 1


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
    assert [cell.strip() for cell in first.split("|")][2:6:3] == ["fp32", "1.00"]


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
