"""export.py: zero-padded full shapes with identical logits, plain transformers in a fresh process, crf.json
and the README's reference decoder, the ONNX files, the model card, bad input."""
import json
import re
import subprocess
import sys

import pytest
import torch

import export
from conftest import REPO
from data_loader import collate_windows, encode_sentences, read_examples
from decoding import predict
from models import crf_record, full_shape_backbone, load_model, remove_attention_heads, remove_ffn_neurons, save_model

SENTENCES = [["Le", "docteur", "Martin", "a", "reçu", "Mme", "Lefèvre", "à", "Saint-Étienne", "."],
             ["RAS", "."], ["M.", "N'Diaye", "habite", "rue", "Jean-Jaurès", "à", "Lyon", "(", "69003", ")", "."]]


@pytest.fixture(scope="module")
def pruned_model(tmp_path_factory, stage1_artifact):
    """Heads and FFN neurons removed, and a CRF whose scores matter (random, not the untrained zeros)."""
    torch.manual_seed(3)
    model, tokenizer = load_model(stage1_artifact)
    remove_attention_heads(model, {0: [1], 2: [0, 3]})
    remove_ffn_neurons(model, {0: [2, 40], 1: [0, 5, 7, 30, 31]})
    with torch.no_grad():
        for name in ("start_transitions", "end_transitions", "transitions"):
            getattr(model.crf, name).add_(torch.randn_like(getattr(model.crf, name)) * 3)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("pruned") / "student_pruned", stage="pruned")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, pruned_model, europeana):
    out = tmp_path_factory.mktemp("export") / "student_export"
    assert export.main(["--model", str(pruned_model), "--output", str(out), "--data",
                        str(europeana / "test.jsonl"), "--onnx"]) == 0
    return out


def test_zero_padding_restores_full_shapes_with_the_same_logits(pruned_model):
    model, tokenizer = load_model(pruned_model)
    full = full_shape_backbone(model)
    config = model.config
    layer = full.base_model.encoder.layer[2]
    assert layer.attention.self.query.weight.shape == (config.hidden_size, config.hidden_size)
    assert full.base_model.encoder.layer[1].intermediate.dense.out_features == config.intermediate_size
    head_size = config.hidden_size // config.num_attention_heads
    for pruned in (0, 3):                                      # layer 2 lost heads 0 and 3
        rows = slice(pruned * head_size, (pruned + 1) * head_size)
        assert layer.attention.self.query.weight[rows].abs().sum() == 0
        assert layer.attention.self.value.bias[rows].abs().sum() == 0
        assert layer.attention.output.dense.weight[:, rows].abs().sum() == 0
    assert layer.attention.self.key.weight[head_size:3 * head_size].abs().sum() > 0
    assert full.base_model.encoder.layer[1].output.dense.weight[:, [0, 5, 7, 30, 31]].abs().sum() == 0
    batch = collate_windows(encode_sentences(tokenizer, SENTENCES, 64), tokenizer.pad_token_id)
    with torch.no_grad():
        ours = model.token_logits(batch.input_ids, batch.attention_mask)
        theirs = full(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.attention_mask.bool()
    assert torch.allclose(ours[mask], theirs[mask], atol=1e-5, rtol=0)
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in model.parameters())


def test_export_writes_a_standard_folder_a_card_and_the_crf(exported, pruned_model):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "crf.json",
            "README.md", "export_summary.json", "onnx"} <= names
    config = json.loads((exported / "config.json").read_text())
    assert "ner_pipeline" not in config and config["architectures"] == ["CamembertForTokenClassification"]
    model, _ = load_model(pruned_model)
    assert config["id2label"] == {str(i): label for i, label in enumerate(model.labels)}
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in tokenizer_config and tokenizer_config["model_max_length"] == model.position_limit
    crf = json.loads((exported / "crf.json").read_text())
    assert crf == json.loads(json.dumps(crf_record(model)))
    assert crf["labels"] == list(model.labels) and len(crf["transitions"]) == len(model.labels)
    o, i_per = model.labels.index("O"), model.labels.index("I-PER")
    assert crf["transitions"][o][i_per] == -1e4 and crf["start"][i_per] == -1e4   # O -> I-PER is not BIO
    summary = json.loads((exported / "export_summary.json").read_text())
    assert summary["max_logit_difference"] < 1e-4 and summary["pruned_heads"] == {"0": [1], "2": [0, 3]}
    assert summary["pruned_neurons"] == {"0": [2, 40], "1": [0, 5, 7, 30, 31]}
    with_crf, plain = summary["scores"]["test, CRF decoding"], summary["scores"]["test, plain pipeline (no CRF)"]
    assert with_crf["overall"]["support"] == plain["overall"]["support"] > 0
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlanguage: fr\npipeline_tag: token-classification\n")
    assert "**A plain `pipeline(\"token-classification\")` decodes without the CRF**" in card
    assert f"F1 {with_crf['overall']['f1']:.4f} with the CRF, {plain['overall']['f1']:.4f} with a plain pipeline" in card
    assert "Heads removed by pruning (layer: original head indices): 0: [1]; 2: [0, 3]." in card
    assert "- type: f1\n      value: " + str(round(with_crf["overall"]["f1"], 4)) in card
    assert (exported / "model.safetensors").stat().st_mode & 0o044 == 0o044   # readable by a container's user


PLAIN_TRANSFORMERS = r"""
import json, sys
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline
folder, sentences = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForTokenClassification.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
batch = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
ner = pipeline("token-classification", model=folder, aggregation_strategy="first", device=-1)
found = ner(" ".join(sentences[0]))
project = [m for m in sys.modules if m.split(".")[0] in {"models", "decoding", "data_loader", "utils", "export"}]
print(json.dumps({"logits": logits.tolist(), "mask": batch["attention_mask"].tolist(), "project": project,
                  "entities": [{k: e[k] for k in ("entity_group", "start", "end")} for e in found]}))
"""


def test_plain_transformers_loads_it_in_a_fresh_process_with_the_same_logits(exported, pruned_model, tmp_path):
    result = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(exported), json.dumps(SENTENCES)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "newly initialized" not in result.stderr and "UNEXPECTED" not in result.stderr
    out = json.loads(result.stdout)
    assert out["project"] == []
    model, tokenizer = load_model(pruned_model)
    batch = tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model.token_logits(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    assert out["mask"] == batch["attention_mask"].tolist()
    assert torch.allclose(torch.tensor(out["logits"])[mask], ours[mask], atol=1e-5, rtol=0)
    assert all(e["entity_group"] in {"PER", "LOC", "ORG"} for e in out["entities"])


def readme_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    [block] = [b for b in blocks if containing in b]
    return block


def test_the_readme_reference_decoder_gives_the_project_crf_tags(exported, pruned_model, europeana):
    namespace = {}
    exec(readme_block("def crf_tags"), namespace)
    assert len(readme_block("def crf_tags").strip().splitlines()) <= 32
    exported_model, exported_tokenizer, crf = namespace["load"](str(exported))
    sentences = SENTENCES + [list(e.tokens) for e in read_examples(europeana / "test.jsonl")[:40]]
    model, tokenizer = load_model(pruned_model)
    expected = [p.tags for p in predict(model, tokenizer, sentences)]
    assert [namespace["crf_tags"](exported_model, exported_tokenizer, crf, words) for words in sentences] == expected
    assert any(tag != "O" for tags in expected for tag in tags)


def test_the_onnx_files_run_in_plain_onnxruntime_with_the_readme_recipe(exported, pruned_model):
    recipe = readme_block("onnxruntime.InferenceSession").replace("artifacts/student_10L_export", str(exported))
    namespace = {}
    exec(recipe, namespace)
    model, tokenizer = load_model(pruned_model)
    words = ["Jean", "Dupont", "habite", "à", "Rennes"]
    batch = tokenizer([words], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        ours = model.token_logits(batch["input_ids"], batch["attention_mask"])[0]
    assert namespace["encoding"].ids == batch["input_ids"][0].tolist()
    logits = torch.from_numpy(namespace["logits"])
    assert logits.shape == ours.shape and (logits.argmax(-1) == ours.argmax(-1)).float().mean() > 0.9
    import onnxruntime
    session = onnxruntime.InferenceSession(str(exported / "onnx" / "model.onnx"))
    fp32 = session.run(["logits"], {"input_ids": batch["input_ids"].numpy(),
                                    "attention_mask": batch["attention_mask"].numpy()})[0][0]
    assert torch.allclose(torch.from_numpy(fp32), ours, atol=1e-4)


def test_bad_requests_are_refused_before_anything_is_written(tmp_path, pruned_model, exported, io_teacher):
    run = lambda *args: subprocess.run([sys.executable, "export.py", *map(str, args)], cwd=REPO,
                                       capture_output=True, text=True, timeout=300)
    same = run("--model", pruned_model, "--output", pruned_model)
    assert same.returncode == 2 and "is the --model folder" in same.stderr and "Traceback" not in same.stderr
    existing = run("--model", pruned_model, "--output", exported)
    assert existing.returncode == 2 and "--overwrite" in existing.stderr
    teacher = run("--model", io_teacher, "--output", tmp_path / "out")
    assert teacher.returncode == 2 and "not a pipeline artifact" in teacher.stderr
    missing = run("--model", pruned_model, "--output", tmp_path / "out", "--data", tmp_path / "nope.jsonl")
    assert missing.returncode == 2 and "nope.jsonl: no such file" in missing.stderr
    assert not (tmp_path / "out").exists()
