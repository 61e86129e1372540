"""precision.py: int8 through ONNX Runtime (pruned heads, dynamic shapes, cache), bf16, errors."""
import builtins
import errno
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import inference
import precision
from conftest import OnlyTagger, read_json
from data_loader import read_examples
from decoding import Tagger, predict
from models import load_model, remove_attention_heads, save_model
from utils import PipelineError


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The int8 path leaves torch one thread (ONNX Runtime takes the cores): restore it for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pruned_copy(tmp_path, stage1_artifact):
    model, tokenizer = load_model(stage1_artifact)
    remove_attention_heads(model, {0: [1], 2: [0, 3]})
    return save_model(model, tokenizer, tmp_path / "pruned")


def test_int8_export_of_a_pruned_model_handles_any_batch_and_length(pruned_copy, europeana):
    import onnxruntime
    model, tokenizer = load_model(pruned_copy)
    int8_model, _ = precision.for_inference(model, str(pruned_copy), "int8", torch.device("cpu"))
    assert not model.training and not model.backbone.training    # the export left the model as it was
    assert (pruned_copy / "model.onnx").is_file() and (pruned_copy / "model.int8.onnx").is_file()

    ids = torch.randint(5, 1000, (5, 70))
    mask = torch.ones_like(ids)
    mask[3:, 50:] = 0
    session = onnxruntime.InferenceSession(str(pruned_copy / "model.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        reference = model(ids, mask).logits.numpy()
    real = mask.bool().numpy()
    assert exported.shape == (5, 70, 7) and np.abs(exported - reference)[real].max() < 1e-4
    quantized = int8_model.token_logits(ids, mask).numpy()
    assert np.abs(quantized - reference)[real].max() < 0.5

    sentences = [list(e.tokens) for e in read_examples(europeana / "val.jsonl")[:60]]
    fp32, int8 = predict(model, tokenizer, sentences), predict(int8_model, tokenizer, sentences)
    agree = np.mean([a == b for p, q in zip(fp32, int8) for a, b in zip(p.tags, q.tags)])
    assert [len(p.tags) for p in int8] == [len(s) for s in sentences] and agree > 0.97
    # both kinds of model serve decoding through the Tagger interface and nothing else
    assert isinstance(model, Tagger) and isinstance(int8_model, Tagger)
    assert predict(OnlyTagger(int8_model), tokenizer, sentences) == int8
    assert predict(OnlyTagger(model), tokenizer, sentences) == fp32


def test_export_is_cached_until_the_weights_change(pruned_copy):
    model, _ = load_model(pruned_copy)
    folder = precision.export_folder(str(pruned_copy))
    precision.export_onnx(model, folder)
    stamp = (pruned_copy / "model.int8.onnx").stat().st_mtime_ns
    precision.export_onnx(model, folder)
    assert (pruned_copy / "model.int8.onnx").stat().st_mtime_ns == stamp
    with torch.no_grad():
        model.backbone.classifier.bias.add_(1.0)
    precision.export_onnx(model, folder)
    meta = read_json(pruned_copy / "onnx_export.json")
    assert (pruned_copy / "model.int8.onnx").stat().st_mtime_ns != stamp
    assert meta["weights_sha256"] == precision.weights_fingerprint(model)


def test_hub_ids_and_read_only_folders_export_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / ".cache" / "ner_pipeline" / "onnx"
    assert precision.export_folder("Jean-Baptiste/camembert-ner") == cache / "Jean-Baptiste--camembert-ner"
    writable = tmp_path / "model"
    writable.mkdir()
    assert precision.export_folder(str(writable)) == writable and list(writable.iterdir()) == []
    # a folder that refuses new files (a read-only volume; permission bits do not stop root, so the
    # refusal is what the check must rely on)
    read_only = tmp_path / "mounted" / "model"
    read_only.mkdir(parents=True)
    read_only.chmod(0o555)
    real_temporary_file = tempfile.TemporaryFile

    def refusing(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == read_only:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_temporary_file(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "TemporaryFile", refusing)
    try:
        assert precision.export_folder(str(read_only)) == cache / str(read_only).strip("/").replace("/", "--")
    finally:
        read_only.chmod(0o755)


def test_bf16_runs_and_warns_on_a_cpu_without_bf16(stage1_artifact, monkeypatch):
    model, tokenizer = load_model(stage1_artifact)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    messages = []
    same, autocast = precision.for_inference(model, str(stage1_artifact), "bf16", torch.device("cpu"),
                                             log=messages.append)
    assert same is model and "no native bf16" in messages[0]
    [prediction] = predict(model, tokenizer, [["Le", "maire", "de", "Rennes", "."]], autocast=autocast)
    assert len(prediction.tags) == 5


def test_int8_needs_the_cpu_and_onnxruntime(stage1_artifact, monkeypatch):
    model, _ = load_model(stage1_artifact)
    with pytest.raises(PipelineError, match="int8 runs on the CPU"):
        precision.for_inference(model, str(stage1_artifact), "int8", torch.device("cuda"))
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(PipelineError, match="pip install onnx onnxruntime"):
        precision.for_inference(model, str(stage1_artifact), "int8", torch.device("cpu"))


def test_scripts_take_a_precision(tmp_path, europeana, pruned_copy):
    source = tmp_path / "in.txt"
    source.write_text("Le maire de Rennes a écrit à M. Briand .\n\nLa Compagnie de l' Ouest .\n")
    out = tmp_path / "out.jsonl"
    assert inference.main(["--model", str(pruned_copy), "--input", str(source), "--output", str(out),
                           "--precision", "int8"]) == 0
    assert [json.loads(l)["text"] for l in out.read_text().splitlines()][1] == ""
    report = tmp_path / "report.json"
    assert evaluate.main(["--model", str(pruned_copy), "--data", str(europeana / "val.jsonl"), "--precision",
                          "fp32", "int8", "--output", str(report), "--latency-sentences", "3"]) == 0
    fp32, int8 = read_json(report)["models"]
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
    assert abs(fp32["overall"]["f1"] - int8["overall"]["f1"]) < 0.05
