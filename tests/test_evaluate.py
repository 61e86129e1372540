"""evaluate.py: scores in the data's label space, size and speed, agreement with inference.py."""
import json

import evaluate
import inference
from conftest import read_json
from data_loader import read_examples
from decoding import seqeval_scores


def test_report_for_teacher_and_student_agrees_with_inference(tmp_path, europeana, io_teacher, stage1_artifact,
                                                              capsys):
    data = europeana / "test.jsonl"
    report = tmp_path / "report.json"
    picture = tmp_path / "f1.png"
    assert evaluate.main(["--model", str(io_teacher), "--model", str(stage1_artifact), "--data", str(data),
                          "--output", str(report), "--latency-sentences", "5", "--plot", str(picture)]) == 0
    from test_plots import png_size
    width, height = png_size(picture)
    assert height == 500 and width >= 700
    printed = capsys.readouterr().out
    assert "| model" in printed and "F1 PER" in printed and str(stage1_artifact) in printed

    teacher_row, student_row = read_json(report)["models"]
    assert teacher_row["stage"] == "teacher" and student_row["stage"] == "kd"
    assert set(teacher_row["per_type"]) <= {"PER", "LOC", "ORG"}       # MISC folded into O
    assert teacher_row["parameters"] > student_row["parameters"] > 0
    for row in (teacher_row, student_row):
        assert row["words_per_s"] > 0 and row["p50_latency_ms"] > 0
        assert row["overall"]["support"] == sum(t["support"] for t in row["per_type"].values())

    examples = read_examples(data)
    source = tmp_path / "test_tokens.jsonl"
    source.write_text("".join(json.dumps({"tokens": list(e.tokens)}, ensure_ascii=False) + "\n" for e in examples))
    out = tmp_path / "entities.jsonl"
    assert inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(out)]) == 0
    predicted = []
    for example, line in zip(examples, out.read_text().splitlines()):
        tags = ["O"] * len(example.tokens)
        for entity in json.loads(line)["entities"]:
            tags[entity["start"]] = "B-" + entity["type"]
            for i in range(entity["start"] + 1, entity["end"]):
                tags[i] = "I-" + entity["type"]
        predicted.append(tags)
    from_inference = seqeval_scores([list(e.tags) for e in examples], predicted)
    assert from_inference["overall"] == student_row["overall"]
    assert from_inference["per_type"] == student_row["per_type"]


def test_a_named_config_that_does_not_exist_is_an_error(europeana, stage1_artifact, tmp_path):
    import pytest
    from config import ConfigError
    with pytest.raises(ConfigError, match="typo.yaml"):
        evaluate.main(["--model", str(stage1_artifact), "--data", str(europeana / "val.jsonl"),
                       "--config", str(tmp_path / "typo.yaml")])


def test_a_report_that_cannot_be_written_or_would_replace_the_data_is_refused_first(europeana, stage1_artifact,
                                                                                    tmp_path, monkeypatch):
    import pytest
    from utils import PipelineError
    monkeypatch.setattr(evaluate, "measure", lambda *a, **k: pytest.fail("work started before the check"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PipelineError, match="--output .*cannot write in .*a_file"):
        evaluate.main(["--model", str(stage1_artifact), "--data", str(europeana / "val.jsonl"),
                       "--output", str(tmp_path / "a_file" / "report.json")])
    with pytest.raises(PipelineError, match="is the input file"):
        evaluate.main(["--model", str(stage1_artifact), "--data", str(europeana / "val.jsonl"),
                       "--output", str(europeana / "val.jsonl")])
