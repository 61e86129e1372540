"""inference.py: input formats, order, blank lines, offsets, long inputs, bad input."""
import gzip
import json
import subprocess
import sys
import time

import pytest
import torch

import inference
from conftest import REPO
from data_loader import split_words
from decoding import predict
from models import load_model, save_model
from utils import PipelineError


def run(*args):
    return subprocess.run([sys.executable, "inference.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


TEXTS = ["Le docteur Martin a reçu Mme Lefèvre à l’hôpital de Saint-Étienne le 12/03 à 9h30.",
         "",
         "Jusqu'à hier , M. N'Diaye habitait rue Jean-Jaurès ,\tà Lyon  (69003)… 🙂",
         "RAS."]


def test_txt_and_jsonl_inputs_keep_order_blank_lines_and_offsets(tmp_path, stage1_artifact):
    source = tmp_path / "notes.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "entities.jsonl"
    assert inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(out)]) == 0
    rows = records(out)
    assert [r["text"] for r in rows] == TEXTS and rows[1] == {"text": "", "entities": []}
    model, tokenizer = load_model(stage1_artifact)
    expected = predict(model, tokenizer, [[w.text for w in split_words(t)] for t in TEXTS])
    for row, text, prediction in zip(rows, TEXTS, expected):
        words = split_words(text)
        assert sum(e["end"] - e["start"] for e in row["entities"]) == sum(t != "O" for t in prediction.tags)
        for entity in row["entities"]:
            assert entity["text"] == text[entity["start_char"]:entity["end_char"]]
            assert entity["start_char"] == words[entity["start"]].start
            assert entity["end_char"] == words[entity["end"] - 1].end
            assert prediction.tags[entity["start"]] == "B-" + entity["type"] and 0 < entity["score"] <= 1

    as_jsonl = tmp_path / "notes.jsonl"
    as_jsonl.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in TEXTS) + "\n"
                        + json.dumps({"tokens": ["M.", "Martin", "habite", "Lyon"]}) + "\n", encoding="utf-8")
    out2 = tmp_path / "entities2.jsonl"
    assert inference.main(["--model", str(stage1_artifact), "--input", str(as_jsonl), "--output", str(out2)]) == 0
    rows2 = records(out2)
    assert rows2[:4] == rows and rows2[4]["text"] == "M. Martin habite Lyon"
    for entity in rows2[4]["entities"]:
        assert entity["text"] == rows2[4]["text"][entity["start_char"]:entity["end_char"]]


def test_a_teacher_works_too_and_its_io_labels_become_bio_spans(tmp_path, io_teacher):
    source = tmp_path / "in.txt"
    source.write_text("Le maire de Rennes , M. Janvier , a reçu la Compagnie de l' Ouest .\n" * 3)
    out = tmp_path / "out.jsonl"
    assert inference.main(["--model", str(io_teacher), "--input", str(source), "--output", str(out)]) == 0
    rows = records(out)
    assert len(rows) == 3 and rows[0] == rows[2]
    assert all(e["type"] in {"PER", "LOC", "ORG", "MISC"} for e in rows[0]["entities"])


@pytest.fixture(scope="module")
def context_free_model(tmp_path_factory, stage1_artifact):
    """A student whose layers add nothing (zero output projections) and without position
    embeddings: each word's emissions depend on the word alone, so predictions through
    overlapping windows must not depend on where the windows are cut."""
    model, tokenizer = load_model(stage1_artifact)
    with torch.no_grad():
        model.backbone.base_model.embeddings.position_embeddings.weight.zero_()
        for layer in model.backbone.base_model.encoder.layer:
            for linear in (layer.attention.output.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
        model.backbone.classifier.weight.normal_()
        illegal = model.crf.transitions < -1000
        model.crf.transitions.normal_(std=0.5).masked_fill_(illegal, -1e4)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("cf") / "model")


def test_long_input_gives_the_same_result_whatever_the_windows(tmp_path, context_free_model):
    model, tokenizer = load_model(context_free_model)
    words = ("Le docteur Martin a reçu Mme Lefèvre à Saint-Étienne , puis la CPAM de Lyon a écrit . " * 40).split()
    one_pass = predict(model, tokenizer, [words], max_length=512)   # 2 windows of up to 512 subwords
    windowed = predict(model, tokenizer, [words], max_length=32)    # dozens of 32-subword windows
    assert len(windowed[0].tags) == len(words) == 720
    assert windowed[0].tags == one_pass[0].tags
    assert windowed[0].scores == pytest.approx(one_pass[0].scores, abs=1e-5)

    source = tmp_path / "long.txt"
    source.write_text(" ".join(words) + "\nCourt .\n")
    out = tmp_path / "out.jsonl"
    assert inference.main(["--model", str(context_free_model), "--input", str(source), "--output", str(out),
                           "--max-length", "32"]) == 0
    rows = records(out)
    spans = [(e["start"], e["end"]) for e in rows[0]["entities"]]
    from decoding import bio_spans
    assert spans == [(s.start, s.end) for s in bio_spans(one_pass[0].tags)] and rows[1]["text"] == "Court ."


def test_input_is_read_and_predicted_chunk_by_chunk(tmp_path, stage1_artifact, monkeypatch):
    source = tmp_path / "many.txt"
    source.write_text("".join(f"Ligne {i} à Paris .\n" for i in range(50)))
    seen = []
    real_predict = inference.predict_windows

    def counting_predict(model, windows, num_words, *args, **kwargs):
        seen.append(len(num_words))
        return real_predict(model, windows, num_words, *args, **kwargs)
    monkeypatch.setattr(inference, "predict_windows", counting_predict)
    out = tmp_path / "out.jsonl"
    chunk_mb = 200 / (1 << 20)  # 200 bytes: the lines (19 or 20 bytes) that start in them
    assert inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(out),
                           "--chunk-mb", str(chunk_mb)]) == 0
    assert len(seen) == -(-source.stat().st_size // 200) and sum(seen) == 50 and seen == [11, 10, 10, 10, 9]
    assert [r["text"] for r in records(out)] == [f"Ligne {i} à Paris ." for i in range(50)]
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert (summary["lines"], summary["words"], summary["chunks"], summary["processes"]) == (50, 250, len(seen), 1)
    assert sum(len(r["entities"]) for r in records(out)) == summary["entities"]
    assert not (tmp_path / "out.jsonl.parts").exists() and not (tmp_path / "out.jsonl.lock").exists()


@pytest.mark.parametrize("content, message", [
    (b'{"text": "ok"}\n{"tokens": "Paris"}\n', "bad.jsonl:2: expected"),
    (b'{"text": "ok"}\n{"text": "ok"}\n{"text": \n', "bad.jsonl:3: invalid JSON"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "bad.jsonl:2: not valid UTF-8"),
    (b'{"tokens": ["Jean", "a b"]}\n', "bad.jsonl:1: expected"),
])
def test_bad_lines_are_named_and_leave_no_output(tmp_path, stage1_artifact, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content)
    with pytest.raises(PipelineError, match=message):
        inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(tmp_path / "o.jsonl")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_missing_input_and_wrong_model_folder(tmp_path, stage1_artifact):
    with pytest.raises(PipelineError, match="nope.txt: no such file"):
        inference.main(["--model", str(stage1_artifact), "--input", str(tmp_path / "nope.txt"),
                        "--output", str(tmp_path / "o.jsonl")])
    (tmp_path / "in.txt").write_text("Bonjour .\n")
    (tmp_path / "empty_model").mkdir()
    wrong = run("--model", tmp_path / "empty_model", "--input", tmp_path / "in.txt", "--output", tmp_path / "o.jsonl")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "empty_model is neither a pipeline artifact nor a Hugging Face model folder" in wrong.stderr
    assert not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------------------
# A corpus: shards, resuming, formats

NOTES = [" ".join(["Le docteur Martin a reçu Mme Lefèvre à Lyon ."] * (1 + i % 7) + [f"Note {i} ."]) for i in range(300)]


@pytest.fixture(scope="module")
def notes(tmp_path_factory, stage1_artifact):
    """300 notes of mixed length, and their entities from one process in one pass."""
    folder = tmp_path_factory.mktemp("notes")
    source = folder / "notes.txt"
    source.write_text("\n".join(NOTES) + "\n", encoding="utf-8")
    expected = folder / "expected.jsonl"
    assert inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(expected)]) == 0
    return source, expected.read_bytes()


SMALL_CHUNKS = ["--chunk-mb", str(2000 / (1 << 20))]  # 2,000 bytes: about 20 chunks


def test_torchrun_two_processes_write_what_one_process_writes(tmp_path, stage1_artifact, notes):
    source, expected = notes
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "inference.py", "--model", str(stage1_artifact), "--input", str(source), "--output",
                           str(out), *SMALL_CHUNKS], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes() == expected
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["processes"] == 2 and summary["lines"] == 300 and summary["this_run"]["resumed_chunks"] == 0
    assert "shard 0/2" in done.stdout or "shard 1/2" in done.stdout  # the first to finish says who writes the file


def test_shards_started_by_hand_and_gzip_jsonl_with_ids(tmp_path, stage1_artifact, notes):
    source, expected = notes
    rows = [{"id": f"n{i}", "site": i % 3, "text": t} for i, t in enumerate(NOTES)]
    packed = tmp_path / "notes.jsonl.gz"
    packed.write_bytes(gzip.compress("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()))
    out = tmp_path / "out.jsonl"
    common = ["--model", str(stage1_artifact), "--input", str(packed), "--output", str(out), "--keep-fields", "site",
              *SMALL_CHUNKS]
    assert inference.main(common + ["--shard", "1/2"]) == 0 and not out.exists()
    assert inference.main(common + ["--shard", "0/2"]) == 0
    got = records(out)
    assert [(r["id"], r["site"]) for r in got] == [(r["id"], r["site"]) for r in rows]
    plain = [json.loads(line) for line in expected.decode().splitlines()]
    assert [{k: r[k] for k in ("text", "entities")} for r in got] == plain


def test_a_killed_run_resumes_to_the_same_file(tmp_path, stage1_artifact, notes):
    source, expected = notes
    big = tmp_path / "big.txt"
    big.write_text(source.read_text(encoding="utf-8") * 4, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "inference.py", "--model", str(stage1_artifact), "--input", str(big), "--output",
               str(out), "--chunk-mb", str(500 / (1 << 20))]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "out.jsonl.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("chunk-*.json"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    process.wait()
    committed = len(list(parts.glob("chunk-*.json")))
    total = -(-big.stat().st_size // 500)
    assert 5 <= committed < total and not out.exists()

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "Use --resume to continue it, or --overwrite" in again.stderr
    changed = subprocess.run(command + ["--resume", "--batch-size", "8"], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert changed.returncode == 2 and "made otherwise (settings.batch_size: 32 -> 8)" in changed.stderr
    resumed = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert out.read_bytes() == expected * 4
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["this_run"]["resumed_chunks"] >= committed and summary["lines"] == 1200
    assert not parts.exists() and not list(tmp_path.glob(".*"))


def test_outputs_are_never_replaced_silently_nor_the_input(tmp_path, stage1_artifact, notes):
    source, expected = notes
    out = tmp_path / "out.jsonl"
    args = ["--model", str(stage1_artifact), "--input", str(source), "--output", str(out)]
    out.write_text("previous results\n")
    with pytest.raises(PipelineError, match="out.jsonl exists. Use --resume to keep it .* --overwrite"):
        inference.main(args)
    assert out.read_text() == "previous results\n"
    assert inference.main(args + ["--resume"]) == 0 and out.read_text() == "previous results\n"
    assert inference.main(args + ["--overwrite"]) == 0 and out.read_bytes() == expected

    link = tmp_path / "link.txt"
    link.symlink_to(source)
    with pytest.raises(PipelineError, match="link.txt is the input file .*notes.txt: writing it would destroy"):
        inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(link)])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PipelineError, match="cannot write in .*a_file"):
        inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output",
                        str(tmp_path / "a_file" / "out.jsonl")])


def test_a_missing_id_and_wrong_flags_are_reported_before_anything_is_written(tmp_path, stage1_artifact):
    source = tmp_path / "notes.jsonl"
    source.write_text('{"id": 1, "text": "Jean à Paris"}\n{"text": "Marie à Lyon"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(PipelineError, match=r"notes.jsonl:2: no \"id\" field"):
        inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(out)])
    with pytest.raises(PipelineError, match="--shard 3/2: expected i/N"):
        inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(out), "--shard", "3/2"])
    with pytest.raises(PipelineError, match="--max-tokens 16: must hold one whole window"):
        inference.main(["--model", str(stage1_artifact), "--input", str(source), "--output", str(out),
                        "--id-field", "text", "--max-tokens", "16"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.jsonl"]
