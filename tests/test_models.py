"""models.py: label projection, teacher loading, student construction, head removal, save/load."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from transformers import AutoModelForTokenClassification, BertConfig, BertTokenizer, RobertaConfig, RobertaTokenizer

import models
from conftest import BIO_LABELS, EUROPEANA, REPO
from decoding import predict
from models import (ILLEGAL_TRANSITION_SCORE, ModelLoadError, build_student, count_parameters, heads_per_layer,
                    load_model, load_teacher, project_labels, remove_attention_heads, save_model,
                    select_teacher_layers)
from utils import PipelineError

IO_LABELS = ["O", "I-LOC", "I-PER", "I-MISC", "I-ORG"]
SENTENCES = [["Le", "docteur", "Martin", "habite", "à", "Rennes", "depuis", "1906", "."],
             ["La", "Compagnie", "des", "chemins", "de", "fer", "de", "l'", "Ouest", "recrute", "."]]


# --- label projection ------------------------------------------------------------------

def test_projection_of_the_real_teacher_labels_onto_bio_without_misc():
    projection = project_labels(IO_LABELS, list(BIO_LABELS))
    assert projection.types == ("O", "PER", "LOC", "ORG") and not projection.full_label
    by_label = dict(zip(IO_LABELS, (projection.types[i] for i in projection.teacher_type_ids)))
    assert by_label == {"O": "O", "I-LOC": "LOC", "I-PER": "PER", "I-MISC": "O", "I-ORG": "ORG"}
    assert [projection.types[i] for i in projection.student_type_ids] == \
        ["O", "PER", "PER", "LOC", "LOC", "ORG", "ORG"]
    assert projection.unknown_to_teacher == ()
    text = projection.describe()
    assert "teacher I-MISC -> student O (folded into O" in text and "teacher I-PER -> student PER" in text


def test_projection_label_map_and_types_unknown_to_the_teacher():
    student = ["O", "B-PER", "I-PER", "B-DISO", "I-DISO", "B-ORG", "I-ORG"]
    projection = project_labels(IO_LABELS, student, {"MISC": "ORG"})
    assert projection.teacher_type_map["MISC"] == "ORG" and projection.teacher_type_map["LOC"] == "O"
    assert projection.unknown_to_teacher == ("DISO",)
    assert "left out of KD: DISO" in projection.describe()


def test_identical_label_sets_use_the_full_distribution_in_student_order():
    teacher = ["B-PER", "O", "I-PER"]
    projection = project_labels(teacher, ["O", "B-PER", "I-PER"])
    assert projection.full_label and projection.teacher_order == (1, 0, 2)
    assert "full label distribution" in projection.describe()


@pytest.mark.parametrize("label_map, message", [
    ({"MISK": "O"}, "'MISK' is not a teacher entity type"),
    ({"MISC": "EVENT"}, "'EVENT', which is not a student type"),
])
def test_bad_label_map_is_named(label_map, message):
    with pytest.raises(PipelineError, match=message):
        project_labels(IO_LABELS, list(BIO_LABELS), label_map)


# --- layer selection ---------------------------------------------------------------------

def test_layers_spread_evenly_keeping_first_and_last():
    assert select_teacher_layers(12, 10) == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11]
    assert select_teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert select_teacher_layers(12, 12) == list(range(12))
    assert select_teacher_layers(12, 1) == [11]
    assert select_teacher_layers(4, 2, [1, 3]) == [1, 3]


@pytest.mark.parametrize("teacher_layers, count, explicit, message", [
    (4, 5, None, "student.num_layers is 5 but the teacher has only 4"),
    (4, 2, [0, 4], "between 0 and 3"),
    (4, 2, [2, 1], "increasing"),
    (4, 3, [0, 1], "give 3"),
])
def test_bad_layer_choices_are_explained(teacher_layers, count, explicit, message):
    with pytest.raises(PipelineError, match=message):
        select_teacher_layers(teacher_layers, count, explicit)


# --- teacher loading -----------------------------------------------------------------------

def test_teacher_loads_frozen_in_eval_mode_with_io_labels(io_teacher):
    teacher, tokenizer = load_teacher(str(io_teacher))
    assert teacher.labels == tuple(IO_LABELS) and teacher.crf is None
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert tokenizer.pad_token_id == teacher.backbone.config.pad_token_id


def test_missing_local_teacher_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder.*teacher.model_name"):
        load_teacher(str(tmp_path / "nowhere"))


def test_unreachable_hub_id_says_what_was_tried_and_how_to_fix():
    # huggingface_hub reads HF_HUB_OFFLINE at import: set it for a fresh process, as a user would
    code = ("from models import load_teacher; from utils import run_cli; "
            "run_cli(lambda argv: load_teacher('someone-unknown/no-such-ner-model'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr
    assert "someone-unknown/no-such-ner-model" in message and "HF_HUB_OFFLINE is set" in message
    assert "internet" in message and "local folder" in message


def test_base_model_without_classifier_is_refused(tmp_path, io_teacher):
    teacher, tokenizer = load_teacher(str(io_teacher))
    base = tmp_path / "base"
    teacher.backbone.base_model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    config["architectures"] = ["CamembertForTokenClassification"]
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no token-classification head"):
        load_teacher(str(base))


# --- student construction ------------------------------------------------------------------

def test_student_copies_embeddings_layers_and_classifier_rows(io_teacher):
    teacher, _ = load_teacher(str(io_teacher))
    projection = project_labels(list(teacher.labels), list(BIO_LABELS))
    student = build_student(teacher, [0, 3], list(BIO_LABELS), projection, use_crf=True)
    base_s, base_t = student.backbone.base_model, teacher.backbone.base_model
    for key, value in base_t.embeddings.state_dict().items():
        assert torch.equal(base_s.embeddings.state_dict()[key], value), key
    for layer_s, layer_id in zip(base_s.encoder.layer, [0, 3]):
        for key, value in base_t.encoder.layer[layer_id].state_dict().items():
            assert torch.equal(layer_s.state_dict()[key], value), (layer_id, key)
    weight_s, weight_t = student.backbone.classifier.weight, teacher.backbone.classifier.weight
    teacher_row = {label: weight_t[i] for i, label in enumerate(teacher.labels)}
    for row, label in enumerate(BIO_LABELS):
        source = "O" if label == "O" else "I-" + label[2:]
        assert torch.equal(weight_s[row], teacher_row[source]), label
    assert student.info.teacher_layers == (0, 3) and student.backbone.config.num_hidden_layers == 2
    assert count_parameters(student) < count_parameters(teacher)


def test_crf_starts_with_illegal_bio_moves_forbidden(io_teacher):
    teacher, _ = load_teacher(str(io_teacher))
    student = build_student(teacher, [0, 1], list(BIO_LABELS), project_labels(IO_LABELS, list(BIO_LABELS)), True)
    index = {label: i for i, label in enumerate(BIO_LABELS)}
    transitions, start = student.crf.transitions, student.crf.start_transitions
    for a, b in [("O", "I-PER"), ("B-PER", "I-LOC"), ("I-LOC", "I-PER")]:
        assert transitions[index[a], index[b]] == ILLEGAL_TRANSITION_SCORE
    for a, b in [("B-PER", "I-PER"), ("I-PER", "I-PER"), ("O", "B-LOC"), ("I-ORG", "B-ORG")]:
        assert abs(transitions[index[a], index[b]]) < 1
    assert start[index["I-ORG"]] == ILLEGAL_TRANSITION_SCORE and abs(start[index["B-ORG"]]) < 1


# --- saving and loading ----------------------------------------------------------------------

@pytest.fixture
def student(io_teacher):
    torch.manual_seed(0)
    teacher, tokenizer = load_teacher(str(io_teacher))
    model = build_student(teacher, [0, 2, 3], list(BIO_LABELS), project_labels(IO_LABELS, list(BIO_LABELS)), True)
    with torch.no_grad():
        model.crf.transitions.add_(torch.randn_like(model.crf.transitions) * 0.1)
    return model.eval(), tokenizer


def logits_of(model, tokenizer):
    encoded = tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(encoded["input_ids"], encoded["attention_mask"]).logits


def test_save_and_load_round_trip_is_exact(tmp_path, student):
    model, tokenizer = student
    previous = os.umask(0o022)
    try:
        save_model(model, tokenizer, tmp_path / "saved", stage="kd")
    finally:
        os.umask(previous)
    assert (tmp_path / "saved" / "model.safetensors").stat().st_mode & 0o777 == 0o644  # not safetensors' 0600
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == \
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    record = json.loads((tmp_path / "saved" / "config.json").read_text())["ner_pipeline"]
    assert record["labels"] == list(BIO_LABELS) and record["use_crf"] is True
    assert record["teacher_layers"] == [0, 2, 3] and record["pruned_heads"] == {} and record["stage"] == "kd"
    loaded, loaded_tokenizer = load_model(tmp_path / "saved")
    assert torch.equal(logits_of(model, tokenizer), logits_of(loaded, loaded_tokenizer))
    assert torch.equal(model.crf.transitions, loaded.crf.transitions)
    assert predict(model, tokenizer, SENTENCES) == predict(loaded, loaded_tokenizer, SENTENCES)
    assert not list(tmp_path.glob(".*saving*"))


def test_pruned_model_reloads_with_its_shapes(tmp_path, student):
    model, tokenizer = student
    before = logits_of(model, tokenizer)
    remove_attention_heads(model, {0: [1], 2: [0, 3]})
    remove_attention_heads(model, {0: [2]})  # original indices, on an already pruned layer
    assert heads_per_layer(model) == [2, 4, 2] and model.info.pruned_heads == {0: (1, 2), 2: (0, 3)}
    assert model.backbone.base_model.encoder.layer[0].attention.self.query.out_features == 2 * 16
    save_model(model, tokenizer, tmp_path / "pruned")
    loaded, _ = load_model(tmp_path / "pruned")
    assert heads_per_layer(loaded) == [2, 4, 2] and loaded.info.pruned_heads == {0: (1, 2), 2: (0, 3)}
    after = logits_of(model, tokenizer)
    assert torch.equal(after, logits_of(loaded, tokenizer)) and not torch.allclose(before, after)


def test_removing_heads_twice_or_all_of_them_is_refused(student):
    model, _ = student
    remove_attention_heads(model, {1: [0]})
    with pytest.raises(PipelineError, match="already pruned"):
        remove_attention_heads(model, {1: [0]})
    with pytest.raises(PipelineError, match="cannot remove all"):
        remove_attention_heads(model, {1: [1, 2, 3]})


def test_loading_is_strict(tmp_path, student):
    from safetensors.torch import load_file, save_file
    model, tokenizer = student
    save_model(model, tokenizer, tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights.pop("classifier.bias")
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ModelLoadError, match="do not match config.json .missing: classifier.bias"):
        load_model(tmp_path / "m")

    save_model(model, tokenizer, tmp_path / "n")
    config = json.loads((tmp_path / "n" / "config.json").read_text())
    config["ner_pipeline"]["pruned_heads"] = {"1": [0]}  # the weights were not pruned
    (tmp_path / "n" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"shapes: .*layer.1.attention.self.key.bias \(64,\) instead of \(48,\)"):
        load_model(tmp_path / "n")


def test_not_an_artifact_or_missing_folder(tmp_path, io_teacher):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="not a pipeline artifact"):
        load_model(io_teacher)


def test_a_crash_while_saving_keeps_the_previous_model(tmp_path, student, monkeypatch):
    model, tokenizer = student
    out = tmp_path / "run"
    save_model(model, tokenizer, out)
    (out / "training_log.jsonl").write_text("{}\n")
    before = (out / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(models, "save_file", crash)
    with torch.no_grad():
        model.backbone.classifier.bias.add_(1.0)
    with pytest.raises(OSError):
        save_model(model, tokenizer, out)
    assert (out / "model.safetensors").read_bytes() == before and (out / "training_log.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    load_model(out)


# --- other BERT-family layouts -----------------------------------------------------------------

def _words():
    with (EUROPEANA / "train.jsonl").open() as lines:
        return [w for _, line in zip(range(300), lines) for w in json.loads(line)["tokens"]]


def _bert_teacher(folder):
    words = _words()
    chars = sorted({c for w in words for c in w.lower()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + \
        [w for w, _ in Counter(w.lower() for w in words).most_common(300)]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer.from_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, id2label=dict(enumerate(IO_LABELS)),
                        label2id={l: i for i, l in enumerate(IO_LABELS)})
    return AutoModelForTokenClassification.from_config(config), tokenizer


def _roberta_teacher(folder):
    from tokenizers import ByteLevelBPETokenizer
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([" ".join(_words())], vocab_size=600,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir()
    trainer.save_model(str(folder))
    tokenizer = RobertaTokenizer.from_pretrained(folder, add_prefix_space=True)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
                           id2label=dict(enumerate(IO_LABELS)), label2id={l: i for i, l in enumerate(IO_LABELS)})
    return AutoModelForTokenClassification.from_config(config), tokenizer


@pytest.mark.parametrize("make", [_bert_teacher, _roberta_teacher], ids=["bert", "roberta"])
def test_bert_and_roberta_layouts_distil_prune_save_and_reload(tmp_path, make):
    backbone, tokenizer = make(tmp_path / "raw")
    backbone.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    teacher, tokenizer = load_teacher(str(tmp_path / "teacher"))
    student = build_student(teacher, [0, 2], list(BIO_LABELS), project_labels(IO_LABELS, list(BIO_LABELS)), False)
    remove_attention_heads(student, {1: [3]})
    save_model(student, tokenizer, tmp_path / "student")
    loaded, loaded_tokenizer = load_model(tmp_path / "student")
    assert heads_per_layer(loaded) == [4, 3]
    sentences = SENTENCES + [["mot"] * 700]  # longer than the position embeddings: windows
    first, second = predict(student, tokenizer, sentences), predict(loaded, loaded_tokenizer, sentences)
    assert first == second and [len(p.tags) for p in first] == [len(s) for s in sentences]


def test_incomplete_or_foreign_model_files_are_refused_with_what_to_do(tmp_path, stage1_artifact, io_teacher):
    import shutil
    from safetensors.torch import load_file
    no_tokenizer = shutil.copytree(stage1_artifact, tmp_path / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no_tokenizer: no tokenizer files .*rerun the stage that wrote it"):
        load_model(no_tokenizer)
    foreign = shutil.copytree(stage1_artifact, tmp_path / "foreign")
    model, _ = load_model(stage1_artifact)
    rows = model.backbone.get_input_embeddings().num_embeddings
    tokenizer = BertTokenizer(str(_vocab_file(tmp_path, rows + 100)))  # another model's, bigger vocabulary
    tokenizer.save_pretrained(foreign)
    with pytest.raises(ModelLoadError, match=rf"the tokenizer has {rows + 100:,} pieces but the model's embedding "
                                             rf"matrix has {rows:,} rows"):
        load_model(foreign)
    truncated = shutil.copytree(stage1_artifact, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated/model.safetensors is truncated or corrupt"):
        load_model(truncated)
    pickled = shutil.copytree(io_teacher, tmp_path / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="pytorch_model.bin \\(a pickle, which can run code when loaded\\); "
                                             "this pipeline loads safetensors only. Convert it once"):
        models.load_teacher(str(pickled))
    cut_teacher = shutil.copytree(io_teacher, tmp_path / "cut_teacher")
    weights = cut_teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="safetensors weights are truncated or corrupt"):
        models.load_teacher(str(cut_teacher))


def _vocab_file(folder, size):
    path = folder / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(size - 5)]))
    return path
