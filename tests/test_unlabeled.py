"""unlabeled.py and distillation from unlabelled notes: file checks, the stream (cycling, exact resume,
DDP shares), pseudo-labels, the partial CRF loss, and stage 1 end to end with resume."""
import gzip
import json
import subprocess
import sys

import pytest
import torch
from torchcrf import CRF

import train_kd
import training
from conftest import REPO, read_json, stop_after, write_config
from data_loader import collate_windows, join_batches, read_examples
from losses import crf_nll, partial_crf_nll, pseudo_label_targets
from models import load_teacher
from unlabeled import UnlabeledStream, check_unlabeled_files
from utils import PipelineError


@pytest.fixture(scope="module")
def notes(tmp_path_factory, europeana):
    """The europeana test sentences as unlabelled notes: a .txt with blank lines, and a .jsonl.gz."""
    folder = tmp_path_factory.mktemp("notes")
    sentences = [" ".join(e.tokens) for e in read_examples(europeana / "test.jsonl")]
    with (folder / "notes.txt").open("w", encoding="utf-8") as f:
        for i, sentence in enumerate(sentences[:60]):
            f.write(sentence + ("\n\n" if i % 10 == 0 else "\n"))
    with gzip.open(folder / "more.jsonl.gz", "wt", encoding="utf-8") as f:
        for sentence in sentences[60:90]:
            f.write(json.dumps({"text": sentence, "id": 1}) + "\n")
    return folder


@pytest.fixture(scope="module")
def tokenizer(io_teacher):
    return load_teacher(str(io_teacher))[1]


def test_files_are_checked_and_blank_lines_counted(notes):
    scan = check_unlabeled_files([str(notes / "notes.txt"), str(notes / "more.jsonl.gz")])
    assert (scan.notes, scan.blank_lines) == (90, 6)
    assert scan.describe() == "90 unlabelled notes in 2 file(s) (6 blank lines skipped)"


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "missing.txt: no such file."),
    ("empty.txt", b"", "empty.txt: no note in it (the file is empty or blank)."),
    ("blank.txt", b"\n  \n", "blank.txt: no note in it"),
    ("latin1.txt", "Une note.\nLe docteur Lefèvre\n".encode("latin-1"), "latin1.txt:2: not UTF-8 text (byte 15)"),
    ("notext.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "notext.jsonl:2: expected an object with a \"text\" string."),
    ("broken.jsonl", b'{"text": \n', "broken.jsonl:1: invalid JSON at column"),
    ("notes.csv", b"a\n", "notes.csv: expected a .txt, .txt.gz, .jsonl or .jsonl.gz file."),
])
def test_bad_files_are_named_with_their_line_never_their_text(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PipelineError) as error:
        check_unlabeled_files([str(path)])
    assert f"data.unlabeled_files: {path}" in str(error.value) and message in str(error.value)
    assert "Lefèvre" not in str(error.value) and "body" not in str(error.value)


def test_the_stream_cycles_and_resumes_at_exactly_the_same_window(notes, tokenizer):
    files = [str(notes / "notes.txt"), str(notes / "more.jsonl.gz")]
    whole = UnlabeledStream(files, tokenizer, 32, block_lines=1000)
    per_cycle = 0
    while whole.state()["cycle"] == 0:
        whole.take(1)
        per_cycle += 1
    assert per_cycle >= 90                                   # every note gives at least one window
    stream = UnlabeledStream(files, tokenizer, 32, block_lines=7)
    first = [w.input_ids for w in stream.take(per_cycle)]
    assert stream.state()["cycle"] == 1
    again = [w.input_ids for w in stream.take(per_cycle)]
    assert again == first                                    # the second pass reads the same windows
    position = stream.state()
    expected = [w.input_ids for w in stream.take(150)]
    resumed = UnlabeledStream(files, tokenizer, 32, block_lines=7)
    resumed.restore(position)
    assert [w.input_ids for w in resumed.take(150)] == expected


def test_ddp_ranks_read_disjoint_shares_that_cover_every_note(notes, tokenizer):
    files = [str(notes / "notes.txt")]
    whole = UnlabeledStream(files, tokenizer, 512, block_lines=5)
    everything = [w.input_ids for w in whole.take(60)]
    shares = []
    for rank in range(3):
        stream = UnlabeledStream(files, tokenizer, 512, rank=rank, world_size=3, block_lines=5)
        shares.append([w.input_ids for w in stream.take(20)])
    assert sorted(sum(shares, [])) == sorted(everything)
    assert not set(shares[0]) & set(shares[1]) and not set(shares[1]) & set(shares[2])


def test_pseudo_labels_project_io_to_bio_and_mask_unconfident_words():
    teacher_labels = ("O", "I-LOC", "I-PER", "I-MISC", "I-ORG")
    label2id = {l: i for i, l in enumerate(("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"))}
    confident = lambda label: [10.0 if l == label else 0.0 for l in teacher_labels]
    unsure = [1.0, 1.0, 1.2, 0.0, 0.0]
    rows = [[confident("I-PER"), confident("I-PER"), confident("O"), confident("I-LOC"), confident("I-MISC")],
            [unsure, confident("I-ORG"), confident("I-LOC"), [0.0] * 5, [0.0] * 5]]
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    labels, known = pseudo_label_targets(torch.tensor(rows), mask, teacher_labels, label2id, {"MISC": "O"}, 0.9)
    names = {i: l for l, i in label2id.items()}
    assert [names[i] for i in labels[0].tolist()] == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    assert [names[i] for i in labels[1, :3].tolist()] == ["B-PER", "B-ORG", "B-LOC"]
    assert known.tolist() == [[True] * 5, [False, True, True, False, False]]


def test_the_partial_crf_loss_is_the_crf_loss_when_every_word_is_known():
    torch.manual_seed(0)
    crf = CRF(5, batch_first=True)
    emissions, labels = torch.randn(3, 6, 5), torch.randint(0, 5, (3, 6))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    full = crf_nll(crf, emissions, labels, mask)
    assert torch.allclose(partial_crf_nll(crf, emissions, labels, mask, mask), full, atol=1e-5)
    assert partial_crf_nll(crf, emissions, labels, torch.zeros_like(mask), mask).abs() < 1e-5   # nothing known
    some = mask & torch.tensor([[True, False] * 3] * 3)
    value = partial_crf_nll(crf, emissions, labels, some, mask)
    assert 0 < value * some.sum() < full * mask.sum()          # fewer constraints, a likelier set of paths


def test_joined_batches_keep_each_row_and_label_unlabelled_words_o(tokenizer):
    from data_loader import encode_sentences
    labelled = encode_sentences(tokenizer, [["Jean", "habite", "Paris"]], 32, tags=[["B-PER", "O", "B-LOC"]],
                                label2id={"O": 0, "B-PER": 1, "B-LOC": 3})
    unlabelled = encode_sentences(tokenizer, [["Une", "longue", "note", "sans", "étiquette", "du", "tout"]], 32)
    a, b = collate_windows(labelled, 1), collate_windows(unlabelled, 1)
    joined = join_batches(a, b, pad_id=1, fill_label=0)
    assert joined.input_ids.shape == (2, b.input_ids.size(1)) and joined.word_labels.shape == (2, 7)
    assert joined.input_ids[0, :a.input_ids.size(1)].tolist() == a.input_ids[0].tolist()
    assert joined.input_ids[0, a.input_ids.size(1):].eq(1).all() and joined.word_labels[0, :3].tolist() == [1, 0, 3]
    assert joined.word_mask.sum(dim=1).tolist() == [3, 7] and joined.word_labels[1].eq(0).all()


def test_stage_one_distils_on_unlabelled_notes_and_records_them(tmp_path, europeana, io_teacher, notes):
    files = [str(notes / "notes.txt"), str(notes / "more.jsonl.gz")]
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher, data={"unlabeled_files": files},
                          distillation={"pseudo_labels": True, "unlabeled_per_labeled": 0.5})
    out = tmp_path / "student"
    assert train_kd.main(["--config", str(config), "--output", str(out)]) == 0
    log = [json.loads(l) for l in (out / "training_log.jsonl").read_text().splitlines()]
    assert {"kd_unlabeled", "hidden_unlabeled", "pseudo_crf_unlabeled"} <= set(log[0])
    assert "ce_unlabeled" not in log[0] and "crf_unlabeled" not in log[0]
    summary = read_json(out / "training_summary.json")
    assert summary["unlabeled"] == {"files": files, "notes": 90, "blank_lines": 6, "per_labeled": 0.5,
                                    "weight": 1.0, "pseudo_labels": True, "pseudo_label_threshold": 0.9}
    assert "- unlabeled: `notes.txt`, `more.jsonl.gz`, 90 notes" in (out / "README.md").read_text()


StopAtCheck = stop_after(6)


def test_a_resumed_run_reads_the_same_unlabelled_windows(tmp_path, europeana, io_teacher, notes, monkeypatch):
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          data={"unlabeled_files": [str(notes / "notes.txt")]},
                          training={"max_epochs": 2, "checkpoint_every_steps": 4})
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train_kd.main(["--config", str(config), "--output", str(straight)]) == 0
    monkeypatch.setattr(training, "StopFlag", StopAtCheck)
    assert train_kd.main(["--config", str(config), "--output", str(interrupted)]) == 143
    position = torch.load(tmp_path / "interrupted.checkpoint" / "trainer_state.pt",
                          weights_only=True)["state"]["unlabeled_positions"]
    assert len(position) == 1 and position[0] != {"cycle": 0, "file": 0, "offset": 0, "line": 0, "taken": 0}
    monkeypatch.setattr(training, "StopFlag", StopAtCheck.__mro__[1])
    assert train_kd.main(["--config", str(config), "--output", str(interrupted), "--resume"]) == 0
    strip = lambda path: [{k: v for k, v in json.loads(l).items() if k != "samples_per_s"}
                          for l in (path / "training_log.jsonl").read_text().splitlines()]
    assert strip(straight) == strip(interrupted)
    a, b = read_json(straight / "training_summary.json"), read_json(interrupted / "training_summary.json")
    assert a["val"] == b["val"] and a["test"] == b["test"]


def test_unused_unlabelled_files_warn_and_bad_ones_stop_before_anything_is_written(tmp_path, europeana, io_teacher,
                                                                                     notes):
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          data={"unlabeled_files": [str(notes / "notes.txt")]},
                          distillation={"weights": {"ce": 1.0, "kd": 0.0, "hidden": 0.0, "crf": 1.0}})
    result = subprocess.run([sys.executable, "train_kd.py", "--config", str(config), "--output", str(tmp_path / "a")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning: data.unlabeled_files is set but not used: kd and hidden are 0" in result.stdout
    assert "kd_unlabeled" not in (tmp_path / "a" / "training_log.jsonl").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Mme Lefèvre"}\n{"note": "Mme Lefèvre"}\n', encoding="utf-8")
    config = write_config(tmp_path / "bad.yaml", europeana, io_teacher, data={"unlabeled_files": [str(bad)]})
    result = subprocess.run([sys.executable, "train_kd.py", "--config", str(config), "--output", str(tmp_path / "b")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"data.unlabeled_files: {bad}:2: expected an object" in result.stderr and "Lefèvre" not in result.stderr
    assert not (tmp_path / "b").exists()


def test_under_ddp_each_rank_reads_its_share_and_the_checkpoint_keeps_every_position(tmp_path, europeana,
                                                                                   io_teacher, notes):
    import os
    import socket
    config = write_config(tmp_path / "config.yaml", europeana, io_teacher,
                          data={"unlabeled_files": [str(notes / "notes.txt")]})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(port), "train_kd.py", "--config", str(config),
                             "--output", str(tmp_path / "ddp"), "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    positions = torch.load(tmp_path / "ddp.checkpoint" / "trainer_state.pt",
                           weights_only=True)["state"]["unlabeled_positions"]
    assert len(positions) == 2 and positions[0] != positions[1]
    # each rank: 24 steps of up to 16 labelled windows, two unlabelled windows per labelled one, from its share
    tokenizer = load_teacher(str(io_teacher))[1]
    for rank, position in enumerate(positions):
        replay = UnlabeledStream([str(notes / "notes.txt")], tokenizer, 64, rank=rank, world_size=2)
        taken = 0
        while replay.state() != position and taken < 1000:
            replay.take(1)
            taken += 1
        assert 23 * 32 < taken <= 24 * 32
