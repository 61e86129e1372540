"""prune_heads.py on a stage-1 artifact: outputs, reload, re-pruning, and refusals that write nothing."""
import re
import shutil
import subprocess
import sys
import time

import pytest

import prune_heads
from conftest import REPO, read_json
from decoding import predict
from models import heads_per_layer, load_model
from utils import PipelineError

SENTENCES = [["Le", "préfet", "de", "Rennes", "a", "reçu", "M.", "Briand", "."]]


def test_prunes_a_quarter_of_the_heads_and_writes_three_outputs(tmp_path, tiny_config, stage1_artifact):
    out = tmp_path / "pruned"
    started = time.time()
    assert prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact),
                             "--rate", "0.25", "--output", str(out)]) == 0
    elapsed = time.time() - started
    model, tokenizer = load_model(out)
    assert sum(heads_per_layer(model)) == 9 and model.info.stage == "pruned"

    mask = read_json(out / "heads_pruned_mask.json")
    assert mask["rate"] == 0.25 and mask["total_heads"] == 12 and mask["pruned_this_run"] == 3
    assert len(mask["keep_mask"]) == 3 and all(len(row) == 4 for row in mask["keep_mask"])
    assert sum(map(sum, mask["keep_mask"])) == 9
    assert {int(l): h for l, h in mask["pruned_heads"].items()} == \
        {l: list(h) for l, h in model.info.pruned_heads.items()}
    for layer, heads in mask["pruned_heads"].items():
        assert all(mask["keep_mask"][int(layer)][h] == 0 for h in heads)
    assert len(mask["importance"]) == 1 and all(v is not None for row in mask["importance"][0] for v in row)

    summary = read_json(out / "pruning_summary.json")
    assert summary["parameters"]["after"] < summary["parameters"]["before"]
    assert summary["heads_per_layer"]["before"] == [4, 4, 4]
    for key in ("val_before", "val_after"):
        assert set(summary[key]["overall"]) == {"precision", "recall", "f1", "support"}
    assert 0 < summary["time_s"] <= round(elapsed, 1) + 0.1 and summary["config"]["pruning"]["rate"] == 0.25

    again, _ = load_model(out)
    assert predict(model, tokenizer, SENTENCES) == predict(again, tokenizer, SENTENCES)

    card = (out / "README.md").read_text()
    after = summary["val_after"]["overall"]
    assert card.startswith("---\nlanguage: fr\npipeline_tag: token-classification\n")
    assert f"      split: validation\n    metrics:\n    - type: f1\n      value: {round(after['f1'], 4)}\n" in card
    assert "pruned student (stage 2)" in card and "- Heads removed by pruning (layer: original head indices): " + \
        "; ".join(f"{l}: {list(h)}" for l, h in sorted(model.info.pruned_heads.items())) in card
    val_sentences = summary["data"]["validation"]["sentences"]
    assert f"- validation: `val.jsonl`, {val_sentences:,} sentences" in card and val_sentences > 0

    # the pruning map: drawn from the mask record, one round, the removed heads crossed
    from plots import PRUNING_FILE, pruning_data
    drawn = pruning_data(out)
    assert [r.importance for r in drawn.rounds] == mask["importance"] and drawn.neurons is None
    assert drawn.rounds[0].removed == {(int(l), h) for l, heads in mask["pruned_heads"].items() for h in heads}
    from test_plots import png_size
    assert png_size(out / PRUNING_FILE) == (550, 400)      # one panel of 3 layers x 4 heads
    assert f"![Attention-head importance and the heads pruning removed]({PRUNING_FILE})" in card


def test_pruning_a_pruned_artifact_again(tmp_path, tiny_config, stage1_artifact):
    once, twice = tmp_path / "once", tmp_path / "twice"
    prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact), "--output", str(once)])
    assert prune_heads.main(["--config", str(tiny_config), "--model", str(once), "--output", str(twice),
                             "--rate", "0.3", "--set", "pruning.steps=2"]) == 0
    mask = read_json(twice / "heads_pruned_mask.json")
    assert mask["heads_before"] == 9 and mask["pruned_this_run"] == 3 and mask["pruned_total"] == 6
    assert len(mask["importance"]) == 2 and sum(map(sum, mask["keep_mask"])) == 6
    first = read_json(once / "heads_pruned_mask.json")["pruned_heads"]
    assert all(set(h) <= set(mask["pruned_heads"][l]) for l, h in first.items())


@pytest.mark.parametrize("extra, message", [
    (["--rate", "1.0"], r"pruning rate 1.0 is outside \[0, 1\)"),
    (["--rate", "0.8", "--set", "pruning.min_heads_per_layer=2"], "allows at most 6"),
])
def test_bad_rates_write_nothing(tmp_path, tiny_config, stage1_artifact, extra, message):
    out = tmp_path / "pruned"
    with pytest.raises(PipelineError, match=message):
        prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact),
                          "--output", str(out), *extra])
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_folder_that_is_not_an_artifact_is_refused(tmp_path, tiny_config, io_teacher):
    result = subprocess.run([sys.executable, "prune_heads.py", "--config", str(tiny_config), "--model",
                             str(io_teacher), "--output", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a pipeline artifact" in result.stderr and str(io_teacher) in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_kept(tmp_path, tiny_config, stage1_artifact):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match="already exists and is not empty"):
        prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact), "--output", str(out)])
    assert (out / "keep.txt").read_text() == "mine"


def test_ffn_neurons_are_pruned_recorded_and_pruned_again(tmp_path, tiny_config, stage1_artifact):
    from models import neurons_per_layer
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact), "--output", str(once),
                             "--ffn-rate", "0.25"]) == 0
    model, tokenizer = load_model(once)
    assert sum(neurons_per_layer(model)) == 384 - 96 and sum(heads_per_layer(model)) == 9
    record = read_json(once / "ffn_pruned_mask.json")
    assert record["neurons_before"] == [128] * 3 and record["neurons_after"] == neurons_per_layer(model)
    assert record["pruned_this_run"] == record["pruned_total"] == 96
    assert {int(l): tuple(n) for l, n in record["pruned_neurons"].items()} == model.info.pruned_neurons
    assert len(record["importance_per_layer"]) == 1 and len(record["importance_per_layer"][0]) == 3
    summary = read_json(once / "pruning_summary.json")
    assert summary["ffn_neurons_per_layer"] == {"before": [128] * 3, "after": neurons_per_layer(model)}
    assert read_json(once / "heads_pruned_mask.json")["pruned_this_run"] == 3

    assert prune_heads.main(["--config", str(tiny_config), "--model", str(once), "--output", str(twice),
                             "--rate", "0.2", "--ffn-rate", "0.25"]) == 0
    again, _ = load_model(twice)
    assert sum(neurons_per_layer(again)) == 288 - 72 and sum(heads_per_layer(again)) == 7
    first = {int(l): set(n) for l, n in record["pruned_neurons"].items()}
    assert all(first[l] <= set(again.info.pruned_neurons[l]) for l in first)
    assert predict(again, tokenizer, SENTENCES) == predict(load_model(twice)[0], tokenizer, SENTENCES)


def test_the_plain_pipeline_writes_no_ffn_record(tmp_path, tiny_config, stage1_artifact):
    out = tmp_path / "pruned"
    assert prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact), "--output", str(out)]) == 0
    assert not (out / "ffn_pruned_mask.json").exists()
    assert "ffn_neurons_per_layer" not in read_json(out / "pruning_summary.json")
    record = read_json(out / "config.json")["ner_pipeline"]
    assert "pruned_neurons" not in record and record["format_version"] == 1      # readable by older code


@pytest.mark.parametrize("extra, message", [
    (["--ffn-rate", "1.0"], r"FFN pruning rate \(pruning.ffn_rate, --ffn-rate\) 1.0 is outside \[0, 1\)"),
    (["--ffn-rate", "0.2", "--set", "pruning.min_ffn_neurons_per_layer=200"], "larger than layer 0's 128"),
    (["--set", "pruning.ffn_rate=-0.1"], r"pruning.ffn_rate: expected a number >= 0 and < 1"),
])
def test_bad_ffn_settings_write_nothing(tmp_path, tiny_config, stage1_artifact, extra, message):
    out = tmp_path / "pruned"
    result = subprocess.run([sys.executable, "prune_heads.py", "--config", str(tiny_config), "--model",
                             str(stage1_artifact), "--output", str(out), *extra],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_second_run_into_the_same_output_is_refused_while_the_first_runs(tmp_path, tiny_config, stage1_artifact):
    output = tmp_path / "pruned"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "pruned.lock").write_text(f"{holder.pid} {__import__('socket').gethostname()}")
        with pytest.raises(PipelineError, match=rf"pruned is in use by process {holder.pid} .*delete .*pruned.lock"):
            prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact), "--output", str(output)])
        assert not output.exists()
    finally:
        holder.kill()
        holder.wait()
    # its holder is gone: the lock is taken over, and released when the run ends
    assert prune_heads.main(["--config", str(tiny_config), "--model", str(stage1_artifact), "--output",
                             str(output)]) == 0
    assert (output / "pruning_summary.json").is_file() and not (tmp_path / "pruned.lock").exists()


def test_an_unfinished_training_run_is_pruned_only_when_asked(tmp_path, tiny_config, stage1_artifact):
    unfinished = shutil.copytree(stage1_artifact, tmp_path / "unfinished")
    (unfinished / "training_summary.json").unlink(missing_ok=True)
    (unfinished / "training_log.jsonl").write_text('{"epoch": 1, "step": 10, "loss": 0.5}\n')  # stopped in epoch 2
    args = ["--config", str(tiny_config), "--model", str(unfinished), "--output", str(tmp_path / "pruned")]
    with pytest.raises(PipelineError, match="did not finish .*--resume, or prune it as it is with --allow-unfinished"):
        prune_heads.main(args)
    assert not (tmp_path / "pruned").exists()
    assert prune_heads.main(args + ["--allow-unfinished"]) == 0
