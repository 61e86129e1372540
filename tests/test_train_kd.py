"""train_kd.py end to end on a slice of europeana_fr with a tiny IO-labelled teacher (CPU)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train_kd
import training
from conftest import REPO, read_json, stop_after, write_config
from data_loader import read_examples
from decoding import predict, seqeval_scores
from models import load_model


def run_script(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_one_epoch_beats_untrained_student_and_reloads_identically(tmp_path, tiny_config, europeana):
    out = tmp_path / "student"
    assert train_kd.main(["--config", str(tiny_config), "--output", str(out)]) == 0

    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_log.jsonl",
                 "training_summary.json", "README.md"):
        assert (out / name).is_file(), name
    # the checkpoint (optimizer state, several times the model's size) stays out of the model folder
    assert not (out / "checkpoint").exists() and (tmp_path / "student.checkpoint" / "trainer_state.pt").is_file()
    summary = read_json(out / "training_summary.json")
    untrained, trained = summary["history"][0]["val"]["overall"]["f1"], summary["val"]["overall"]["f1"]
    assert trained > untrained, (untrained, trained)
    assert summary["best_epoch"] == 1 and summary["test"]["overall"]["support"] > 0
    assert set(summary["val"]["per_type"]) <= {"PER", "LOC", "ORG"}
    assert summary["parameters"]["student"] < summary["parameters"]["teacher"]
    assert summary["config"]["student"]["num_layers"] == 3 and "torch" in summary["package_versions"]
    assert "MISC" in summary["label_projection"] and "folded into O" in summary["label_projection"]

    log = [read_json_line(l) for l in (out / "training_log.jsonl").read_text().splitlines()]
    val_lines = [r for r in log if "val_f1" in r]
    log = [r for r in log if "loss" in r]
    assert [r["step"] for r in log] == list(range(5, 5 * len(log) + 1, 5))
    assert [(r["epoch"], r["val_f1"]) for r in val_lines] == [(1, trained)]
    assert {"epoch", "step", "lr", "ce", "kd", "hidden", "crf", "loss", "samples_per_s"} <= set(log[0])

    model, tokenizer = load_model(out)
    assert model.info.teacher_layers == (0, 2, 3) and model.crf is not None
    sentences = [["Le", "maire", "de", "Rennes", ",", "M.", "Janvier", ",", "est", "venu", "."]] * 2
    again, _ = load_model(out)
    first, second = predict(model, tokenizer, sentences), predict(again, tokenizer, sentences)
    assert first == second and len(first[0].tags) == len(sentences[0])

    # the model keeps the window it was validated with, so inference scores what the summary says
    assert model.info.window == 64 and model.max_subwords == 64 < model.position_limit
    test = read_examples(europeana / "test.jsonl")
    predicted = [p.tags for p in predict(model, tokenizer, [list(e.tokens) for e in test])]
    assert seqeval_scores([list(e.tags) for e in test], predicted) == summary["test"]


def read_json_line(line):
    import json
    return json.loads(line)


StopAtCheck = stop_after(7)


def test_resumed_run_matches_uninterrupted_run(tmp_path, europeana, io_teacher, monkeypatch, capsys):
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          training={"max_epochs": 2, "checkpoint_every_steps": 4})
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train_kd.main(["--config", str(config), "--output", str(straight)]) == 0

    monkeypatch.setattr(training, "StopFlag", StopAtCheck)
    assert train_kd.main(["--config", str(config), "--output", str(interrupted)]) == 143
    checkpoint = torch.load(tmp_path / "interrupted.checkpoint" / "trainer_state.pt", weights_only=True)
    state = checkpoint["state"]
    assert (state["epoch"], state["global_step"]) == (0, 7) and state["batches_done"] == 7
    assert checkpoint["machine"] == {"device": "cpu", "cpu_threads": torch.get_num_threads(), "processes": 1,
                                     "torch": str(torch.__version__)}
    monkeypatch.setattr(training, "StopFlag", StopAtCheck.__mro__[1])
    # a resume that believes it runs with other threads says its numbers may drift (here they do not)
    record = training.machine_record
    monkeypatch.setattr(training, "machine_record", lambda runtime: {**record(runtime), "cpu_threads": 99})
    capsys.readouterr()
    with (interrupted / "training_log.jsonl").open("a") as log:
        log.write('{"epoch": 1, "step": 8, "lr": 0.0')  # a line that a kill -9 cut: dropped by the resume
    assert train_kd.main(["--config", str(config), "--output", str(interrupted), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "This machine differs" in said and f"cpu_threads: {torch.get_num_threads()} -> 99" in said
    assert "The config differs" not in said

    a, b = read_json(straight / "training_summary.json"), read_json(interrupted / "training_summary.json")
    assert a["val"] == b["val"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert [h["val"] for h in a["history"]] == [h["val"] for h in b["history"]]
    log_a = (straight / "training_log.jsonl").read_text().splitlines()
    log_b = (interrupted / "training_log.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in read_json_line(l).items() if k != "samples_per_s"} for l in lines]
    assert strip(log_a) == strip(log_b)
    model_a, _ = load_model(straight)
    model_b, _ = load_model(interrupted)
    for (name, p), q in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(p, q), name


def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path, europeana, io_teacher):
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          training={"max_epochs": 3, "log_every_steps": 1})
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train_kd.py", "--config", str(config), "--output", str(out)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "training_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.stat().st_size > 0):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Stopped by SIGTERM" in stdout and "--resume" in stdout and "Traceback" not in stderr
    assert (tmp_path / "run.checkpoint" / "trainer_state.pt").is_file()
    resumed = run_script("train_kd.py", "--config", config, "--output", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from epoch" in resumed.stdout
    assert read_json(out / "training_summary.json")["epochs_run"] == 3


def test_refuses_non_empty_output_and_keeps_it(tmp_path, tiny_config):
    out = tmp_path / "previous"
    out.mkdir()
    (out / "results.txt").write_text("earlier results")
    result = run_script("train_kd.py", "--config", tiny_config, "--output", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "already exists and is not empty" in result.stderr and "--overwrite" in result.stderr
    assert (out / "results.txt").read_text() == "earlier results"


def test_bad_data_is_reported_before_anything_is_written(tmp_path, europeana, io_teacher):
    broken = tmp_path / "data"
    broken.mkdir()
    for name in ("val.jsonl", "test.jsonl", "label2id.json"):
        (broken / name).write_text((europeana / name).read_text())
    (broken / "train.jsonl").write_text(
        '{"tokens": ["Jean", "habite"], "ner_tags": ["B-PER", "O"]}\n'
        '{"tokens": ["à", "Paris"], "ner_tags": ["O", "I-LOC"]}\n')
    config = write_config(tmp_path / "config.yaml", broken, io_teacher)
    result = run_script("train_kd.py", "--config", config, "--output", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{broken / 'train.jsonl'}:2:" in result.stderr and "I-LOC" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cuda_out_of_memory_names_the_keys_to_lower(tmp_path, tiny_config, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(training, "combined_loss", out_of_memory)
    with pytest.raises(training.PipelineError) as error:
        train_kd.main(["--config", str(tiny_config), "--output", str(tmp_path / "oom")])
    message = str(error.value)
    assert "out of memory" in message and "16 windows x" in message
    for key in ("training.batch_size", "training.grad_accumulation_steps", "data.max_seq_length",
                "training.mixed_precision"):
        assert key in message


def test_two_process_ddp_run_on_gloo(tmp_path, tiny_config):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(port), "train_kd.py", "--config", str(tiny_config),
                             "--output", str(out), "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(out / "training_summary.json")
    assert summary["world_size"] == 2
    # 748 training windows: each rank takes 374, in ceil(374 / 16) = 24 batches of 16
    assert summary["optimizer_steps"] == 24 and summary["val"]["overall"]["support"] > 0
    assert result.stdout.count("Best model (epoch") == 1  # rank 0 alone reports and writes
    load_model(out)


def test_a_training_step_never_waits_for_the_device(io_teacher, europeana):
    """No op that copies a value to the host (.item(), bool(tensor), boolean-mask indexing)."""
    from conftest import BIO_LABELS
    from data_loader import collate_windows, encode_sentences, read_examples
    from losses import KDMapping
    from models import build_student, load_teacher, project_labels
    from config import LossWeights
    teacher, tokenizer = load_teacher(str(io_teacher))
    projection = project_labels(list(teacher.labels), list(BIO_LABELS))
    student = build_student(teacher, [0, 2, 3], list(BIO_LABELS), projection, use_crf=True).train()
    examples = read_examples(europeana / "train.jsonl")[:8]
    windows = encode_sentences(tokenizer, [list(e.tokens) for e in examples], 64,
                               tags=[list(e.tags) for e in examples], label2id={l: i for i, l in enumerate(BIO_LABELS)})
    batch = collate_windows(windows, tokenizer.pad_token_id)
    weights, mapping = LossWeights(ce=0.5, kd=0.5, hidden=0.1, crf=1.0), KDMapping.from_projection(projection)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        loss, terms = training.step_loss(student, student, teacher, batch, weights, 2.5, mapping)
        loss.backward()
    ops = {event.name for event in profile.events()}
    assert set(terms) == {"ce", "kd", "hidden", "crf"} and "aten::addmm" in ops
    assert not ops & {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero"}, \
        ops & {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero"}


def test_a_trimmed_vocabulary_student_segments_like_the_teacher_and_resumes_exactly(tmp_path, europeana, io_teacher,
                                                                                     monkeypatch, capsys):
    from transformers import AutoTokenizer
    from conftest import SHARED_DATA
    from data_loader import read_examples
    from vocabulary import read_vocabulary_texts
    notes = tmp_path / "notes.txt"                       # unlabelled domain text: its pieces are kept too
    notes.write_text("".join(" ".join(e.tokens) + "\n" for e in read_examples(SHARED_DATA / "wikiner_fr" / "val.jsonl")[:40]),
                     encoding="utf-8")
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          student={"trim_vocabulary": True, "vocabulary_files": [str(notes)]},
                          training={"max_epochs": 1, "checkpoint_every_steps": 4})
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train_kd.main(["--config", str(config), "--output", str(straight)]) == 0
    assert "Vocabulary trimmed from" in capsys.readouterr().out

    teacher_tokenizer = AutoTokenizer.from_pretrained(io_teacher)
    model, tokenizer = load_model(straight)
    assert len(tokenizer) < len(teacher_tokenizer) and model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id == teacher_tokenizer.pad_token_id
    texts = [list(e.tokens) for name in ("train", "val", "test") for e in read_examples(europeana / f"{name}.jsonl")]
    texts += list(read_vocabulary_texts(notes))
    segment = lambda tok, words: tok.convert_ids_to_tokens(tok(words, is_split_into_words=True)["input_ids"])
    assert all(segment(tokenizer, words) == segment(teacher_tokenizer, words) for words in texts)
    summary = read_json(straight / "training_summary.json")
    assert summary["parameters"]["student"] == sum(p.numel() for p in model.parameters())

    monkeypatch.setattr(training, "StopFlag", StopAtCheck)
    assert train_kd.main(["--config", str(config), "--output", str(interrupted)]) == 143
    monkeypatch.setattr(training, "StopFlag", StopAtCheck.__mro__[1])
    assert train_kd.main(["--config", str(config), "--output", str(interrupted), "--resume"]) == 0
    resumed, _ = load_model(interrupted)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), resumed.state_dict().values()))
    sentences = [["Le", "maire", "de", "Rennes", ",", "M.", "Janvier", ",", "est", "venu", "."]]
    assert len(predict(resumed, tokenizer, sentences)[0].tags) == len(sentences[0])


def test_bad_vocabulary_files_stop_stage_one_before_anything_is_written(tmp_path, europeana, io_teacher):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"premi\xe8re ligne\n")
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          student={"trim_vocabulary": True, "vocabulary_files": [str(notes)]})
    result = run_script("train_kd.py", "--config", config, "--output", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{notes}:1: not UTF-8 text" in result.stderr and "premi" not in result.stderr
    assert not (tmp_path / "out").exists()
    missing = write_config(tmp_path / "missing.yaml", europeana, io_teacher,
                           student={"trim_vocabulary": True, "vocabulary_files": [str(tmp_path / "absent.txt")]})
    result = run_script("train_kd.py", "--config", missing, "--output", tmp_path / "out")
    assert result.returncode == 2 and "student.vocabulary_files[0]: no such file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_resume_never_runs_code_from_a_checkpoint(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert train_kd.main(["--config", str(tiny_config), "--output", str(out)]) == 0   # a real checkpoint
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"state": Payload()}, tmp_path / "run.checkpoint" / "trainer_state.pt")
    result = run_script("train_kd.py", "--config", tiny_config, "--output", out, "--resume")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot be read as a training checkpoint" in result.stderr and not marker.exists()


def test_resume_finds_a_checkpoint_inside_an_older_run_and_moves_it_out(tmp_path, europeana, io_teacher, monkeypatch):
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          training={"max_epochs": 2, "checkpoint_every_steps": 4})
    out, sibling = tmp_path / "run", tmp_path / "run.checkpoint"
    monkeypatch.setattr(training, "StopFlag", StopAtCheck)
    assert train_kd.main(["--config", str(config), "--output", str(out)]) == 143
    sibling.rename(out / "checkpoint")        # where runs before the move kept it
    monkeypatch.setattr(training, "StopFlag", StopAtCheck.__mro__[1])
    assert train_kd.main(["--config", str(config), "--output", str(out), "--resume"]) == 0
    assert (sibling / "trainer_state.pt").is_file() and not (out / "checkpoint").exists()


def test_a_left_over_checkpoint_is_never_mistaken_for_a_new_run(tmp_path, tiny_config, capsys):
    out, sibling = tmp_path / "run", tmp_path / "run.checkpoint"
    assert train_kd.main(["--config", str(tiny_config), "--output", str(out)]) == 0
    shutil.rmtree(out)                         # the model folder deleted by hand, its checkpoint left
    result = run_script("train_kd.py", "--config", tiny_config, "--output", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{sibling} holds the checkpoint of an earlier run" in result.stderr and "--resume" in result.stderr
    before = (sibling / "trainer_state.pt").stat().st_mtime_ns
    assert train_kd.main(["--config", str(tiny_config), "--output", str(out), "--overwrite"]) == 0
    assert (sibling / "trainer_state.pt").stat().st_mtime_ns != before
