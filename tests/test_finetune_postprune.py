"""finetune_postprune.py on a pruned artifact: keeps the pruned shape, shares stage 1's loop."""
import pytest
import torch

import finetune_postprune
import prune_heads
import training
from conftest import read_json, write_config
from models import heads_per_layer, load_model
from utils import PipelineError


@pytest.fixture(scope="module")
def pruned_artifact(tmp_path_factory, europeana, io_teacher, stage1_artifact):
    folder = tmp_path_factory.mktemp("pruned")
    config = write_config(folder / "config.yaml", europeana, io_teacher)
    prune_heads.main(["--config", str(config), "--model", str(stage1_artifact), "--output", str(folder / "model")])
    return folder / "model"


def test_finetuning_keeps_the_pruned_shape_and_improves_val_f1(tmp_path, europeana, io_teacher, pruned_artifact):
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher, finetune={"learning_rate": 1e-3})
    out = tmp_path / "final"
    assert finetune_postprune.main(["--config", str(config), "--model", str(pruned_artifact),
                                    "--output", str(out), "--epochs", "1"]) == 0
    pruned, _ = load_model(pruned_artifact)
    final, _ = load_model(out)
    assert heads_per_layer(final) == heads_per_layer(pruned) and sum(heads_per_layer(final)) == 9
    assert final.info.pruned_heads == pruned.info.pruned_heads and final.info.stage == "finetuned"
    summary = read_json(out / "training_summary.json")
    assert summary["stage"] == "finetune" and summary["epochs_run"] == 1
    assert summary["config"]["finetune"]["epochs"] == 1 and summary["heads_per_layer"] == heads_per_layer(pruned)
    assert summary["val"]["overall"]["f1"] > summary["history"][0]["val"]["overall"]["f1"]
    log = (out / "training_log.jsonl").read_text().splitlines()
    assert log and '"kd"' in log[0] and '"hidden"' not in log[0]  # finetune weights: hidden 0 is skipped
    card = (out / "README.md").read_text()
    test_f1 = round(summary["test"]["overall"]["f1"], 4)
    assert f"      split: test\n    metrics:\n    - type: f1\n      value: {test_f1}\n" in card
    assert "fine-tuned student (stage 3)" in card and "## Data\n\n- train: `train.jsonl`" in card
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in card.splitlines() if line.startswith("| test")]
    assert {(r[1], r[4]) for r in rows} == {(kind, f"{row['f1']:.4f}") for kind, row in summary["test"]["per_type"].items()} \
        | {("overall (micro)", f"{summary['test']['overall']['f1']:.4f}")}
    assert not (out / "checkpoint").exists() and (tmp_path / "final.checkpoint" / "trainer_state.pt").is_file()
    # the final model's card shows its own training curves and stage 2's pruning map
    assert (out / "heads_pruned.png").read_bytes() == (pruned_artifact / "heads_pruned.png").read_bytes()
    assert "](training_curves.png)" in card and "](heads_pruned.png)" in card


def test_gold_labels_only_needs_no_teacher(tmp_path, europeana, pruned_artifact):
    config = write_config(tmp_path / "config.yaml", europeana, tmp_path / "no-such-teacher",
                          finetune={"use_teacher": False, "learning_rate": 1e-3})
    out = tmp_path / "final"
    assert finetune_postprune.main(["--config", str(config), "--model", str(pruned_artifact),
                                    "--output", str(out), "--epochs", "1"]) == 0
    summary = read_json(out / "training_summary.json")
    assert "teacher" not in summary["parameters"]
    assert '"kd"' not in (out / "training_log.jsonl").read_text()


class StopAfterThree(training.StopFlag):
    @property
    def requested(self):
        self.checks = getattr(self, "checks", 0) + 1
        if self.checks == 3:
            self.signal_name = "SIGINT"
        return self.signal_name is not None


def test_interrupted_finetuning_resumes_to_the_same_model(tmp_path, europeana, io_teacher, pruned_artifact,
                                                          monkeypatch):
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher, finetune={"learning_rate": 1e-3})
    args = ["--config", str(config), "--model", str(pruned_artifact), "--epochs", "1"]
    assert finetune_postprune.main(args + ["--output", str(tmp_path / "a")]) == 0
    original = training.StopFlag
    monkeypatch.setattr(training, "StopFlag", StopAfterThree)
    assert finetune_postprune.main(args + ["--output", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(training, "StopFlag", original)
    with pytest.raises(PipelineError, match="already exists and is not empty"):
        finetune_postprune.main(args + ["--output", str(tmp_path / "b")])
    assert finetune_postprune.main(args + ["--output", str(tmp_path / "b"), "--resume"]) == 0
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert heads_per_layer(b) == heads_per_layer(a)


@pytest.fixture(scope="module")
def compact_artifact(tmp_path_factory, europeana, io_teacher):
    """Stage 1 with a trimmed vocabulary (half an epoch), then heads and FFN neurons pruned."""
    import train_kd
    folder = tmp_path_factory.mktemp("compact")
    config = write_config(folder / "config.yaml", europeana, io_teacher, student={"trim_vocabulary": True},
                          training={"max_epochs": 1})
    assert train_kd.main(["--config", str(config), "--output", str(folder / "student")]) == 0
    assert prune_heads.main(["--config", str(config), "--model", str(folder / "student"),
                             "--output", str(folder / "pruned"), "--ffn-rate", "0.3"]) == 0
    return folder / "pruned"


def test_a_compact_student_finetunes_with_the_teacher_and_resumes_exactly(tmp_path, europeana, io_teacher,
                                                                           compact_artifact, monkeypatch):
    from models import neurons_per_layer
    from transformers import AutoTokenizer
    compact, tokenizer = load_model(compact_artifact)
    assert len(tokenizer) < len(AutoTokenizer.from_pretrained(io_teacher))      # the teacher's vocabulary is larger
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher, finetune={"learning_rate": 1e-3})
    args = ["--config", str(config), "--model", str(compact_artifact), "--epochs", "1"]
    assert finetune_postprune.main(args + ["--output", str(tmp_path / "a")]) == 0
    final, _ = load_model(tmp_path / "a")
    assert neurons_per_layer(final) == neurons_per_layer(compact) and sum(neurons_per_layer(final)) < 3 * 128
    assert final.config.vocab_size == compact.config.vocab_size
    log = (tmp_path / "a" / "training_log.jsonl").read_text().splitlines()
    assert '"kd"' in log[0]                                         # distilled through the id lookup
    monkeypatch.setattr(training, "StopFlag", StopAfterThree)
    assert finetune_postprune.main(args + ["--output", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(training, "StopFlag", StopAfterThree.__mro__[1])
    assert finetune_postprune.main(args + ["--output", str(tmp_path / "b"), "--resume"]) == 0
    resumed, _ = load_model(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(final.state_dict().values(), resumed.state_dict().values()))


def test_a_compact_student_exports_to_int8(compact_artifact, tmp_path, europeana):
    import shutil
    import numpy as np
    import precision
    from data_loader import read_examples
    from decoding import predict
    copy = shutil.copytree(compact_artifact, tmp_path / "compact")
    model, tokenizer = load_model(copy)
    threads = torch.get_num_threads()
    try:
        int8, _ = precision.for_inference(model, str(copy), "int8", torch.device("cpu"))
        sentences = [list(e.tokens) for e in read_examples(europeana / "val.jsonl")[:60]]
        fp32, quantized = predict(model, tokenizer, sentences), predict(int8, tokenizer, sentences)
    finally:
        torch.set_num_threads(threads)
    agree = np.mean([a == b for p, q in zip(fp32, quantized) for a, b in zip(p.tags, q.tags)])
    assert (copy / "model.int8.onnx").is_file() and agree > 0.97


def test_a_teacher_that_lacks_the_students_pieces_is_refused(tmp_path, europeana, bio_teacher, compact_artifact):
    config = write_config(tmp_path / "config.yaml", europeana, bio_teacher)
    with pytest.raises(PipelineError, match="does not share the student's vocabulary"):
        finetune_postprune.main(["--config", str(config), "--model", str(compact_artifact),
                                 "--output", str(tmp_path / "out"), "--epochs", "1"])
    assert not (tmp_path / "out").exists()
