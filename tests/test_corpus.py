"""corpus.py: shards, chunks of plain and gzip files, line numbers in errors, the background
reader, the parts folder's refusals, progress."""
import gzip
import json
import os
import subprocess
import sys
import time

import pytest

import corpus
from corpus import LineFormat, Progress, Shard, open_corpus, parse_shard, read_ahead, read_chunks, shard_of
from utils import PipelineError, output_lock


def test_shard_specs():
    assert parse_shard("1/4") == Shard(1, 4) and parse_shard(" 0/1 ") == Shard(0, 1)
    for bad in ("3/2", "2/2", "a/b", "0/0", "1", "-1/2", "1/2/3"):
        with pytest.raises(PipelineError, match=f"--shard {bad.strip()}: expected i/N with 0 <= i < N"):
            parse_shard(bad)
    assert shard_of(None, {}) == Shard(0, 1) and shard_of("2/3", {}) == Shard(2, 3)
    assert shard_of(None, {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2)
    with pytest.raises(PipelineError, match="under torchrun"):
        shard_of("0/2", {"RANK": "1", "WORLD_SIZE": "2"})


def _lines(count):
    """Lines of varied length, some longer than the chunks in the tests, the first with a BOM."""
    lines = [("x" * (i * 37 % 300)) + f" {i}\n" for i in range(count)]
    lines[5] = "\n"
    return lines


@pytest.mark.parametrize("chunk_bytes", [1, 64, 1000, 1 << 20])
@pytest.mark.parametrize("compressed", [False, True])
def test_chunks_hold_every_line_once_in_order_and_shards_split_them(tmp_path, chunk_bytes, compressed):
    lines = _lines(200)
    data = b"\xef\xbb\xbf" + "".join(lines).encode()
    path = tmp_path / ("in.txt.gz" if compressed else "in.txt")
    path.write_bytes(gzip.compress(data) if compressed else data)
    source = open_corpus(path, chunk_bytes)
    assert source.text_bytes == len(data) and source.chunks == -(-len(data) // chunk_bytes)
    every = list(read_chunks(source, lambda k: True))
    assert [c.index for c in every] == list(range(source.chunks))
    assert [raw.decode() for c in every for raw in c.lines] == lines
    for count in (2, 3):
        shards = [list(read_chunks(source, Shard(i, count).owns)) for i in range(count)]
        assert all(c.index % count == i for i, chunks in enumerate(shards) for c in chunks)
        merged = sorted((c for chunks in shards for c in chunks), key=lambda c: c.index)
        assert [raw.decode() for c in merged for raw in c.lines] == lines
    if chunk_bytes == 64:  # lines longer than a chunk leave chunks in which no line starts
        assert any(not c.lines for c in every)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_bad_line_is_named_by_its_line_number_whatever_the_chunk(tmp_path, compressed):
    rows = [json.dumps({"id": i, "text": f"note {i}"}) + "\n" for i in range(300)]
    rows[236] = '{"text": "no id"}\n'
    data = "".join(rows).encode()
    path = tmp_path / ("n.jsonl.gz" if compressed else "n.jsonl")
    path.write_bytes(gzip.compress(data) if compressed else data)
    source = open_corpus(path, 100)
    with pytest.raises(PipelineError, match=rf"n.jsonl{'.gz' if compressed else ''}:237: no \"id\" field") as error:
        corpus.check_chunks(source, LineFormat(True, "id"), lambda k: True)
    assert "no id" not in str(error.value)  # no text of the file in a message
    assert corpus.first_line_has_field(source, "id") and not corpus.first_line_has_field(source, "nope")


def test_truncated_gzip_and_wrong_inputs_are_refused_before_any_work(tmp_path):
    whole = gzip.compress(os.urandom(200_000).hex().encode() + b"\n")
    (tmp_path / "cut.txt.gz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(PipelineError, match="cut.txt.gz: truncated or damaged gzip data"):
        open_corpus(tmp_path / "cut.txt.gz", 1 << 20)
    (tmp_path / "notes.csv").write_text("a\n")
    with pytest.raises(PipelineError, match=r"expected a .txt or .jsonl file \(or .txt.gz, .jsonl.gz\)"):
        open_corpus(tmp_path / "notes.csv", 1 << 20)
    with pytest.raises(PipelineError, match="missing.txt: no such file"):
        open_corpus(tmp_path / "missing.txt", 1 << 20)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(PipelineError, match="folder.txt: is a folder"):
        open_corpus(tmp_path / "folder.txt", 1 << 20)


def test_read_ahead_keeps_order_raises_errors_and_stops_when_left():
    assert list(read_ahead(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise PipelineError("f.txt:2: broken")
    with pytest.raises(PipelineError, match="f.txt:2: broken"):
        list(read_ahead(failing()))

    produced = []

    def endless():
        for i in range(10 ** 9):
            produced.append(i)
            yield i
    for item in read_ahead(endless(), depth=2):
        if item == 5:
            break
    time.sleep(0.3)
    assert len(produced) <= 5 + 4  # the producer stopped soon after the consumer left


def test_the_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    target = tmp_path / "out.jsonl"
    with output_lock(target):
        assert (tmp_path / "out.jsonl.lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(PipelineError, match=rf"in use by process {os.getpid()} .*delete .*out.jsonl.lock"):
            with output_lock(target, wait_s=0.3):
                pass
    assert not (tmp_path / "out.jsonl.lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out.jsonl.lock").write_text(f"{dead.stdout.strip()} {os.uname().nodename}")
    with output_lock(target, wait_s=0.3):  # its holder is gone
        pass


def _manifest(**settings):
    return {"input": {"name": "in.txt", "bytes": 10}, "model": {"weights_sha256": "ab"},
            "settings": {"batch_size": 32, **settings}, "model_name": "m"}


def test_parts_folder_refusals(tmp_path):
    target, one = tmp_path / "out.jsonl", Shard(0, 1)
    assert corpus.prepare_parts(target, _manifest(), one, resume=False, overwrite=False) == set()
    parts = corpus.parts_folder(target)
    corpus.commit_chunk(parts, 0, b"{}\n", {"lines": 1})
    with pytest.raises(PipelineError, match="shard 0/1 is being run by process"):  # this very process
        corpus.prepare_parts(target, _manifest(), one, resume=True, overwrite=False)
    corpus.release_shard(parts, one)
    with pytest.raises(PipelineError, match="an unfinished run is in .*Use --resume to continue it"):
        corpus.check_output(target, one, resume=False, overwrite=False)
    with pytest.raises(PipelineError, match=r"made otherwise \(settings.batch_size: 32 -> 8\)"):
        corpus.prepare_parts(target, _manifest(batch_size=8), one, resume=True, overwrite=False)
    corpus.release_shard(parts, one)
    assert corpus.prepare_parts(target, _manifest(), one, resume=True, overwrite=False) == {0}
    corpus.release_shard(parts, one)
    # a second shard of the same run joins without --resume; it does not see the first's chunk as its own
    assert corpus.prepare_parts(target, _manifest(), Shard(1, 2), resume=False, overwrite=False) == {0}
    corpus.release_shard(parts, Shard(1, 2))
    assert corpus.prepare_parts(target, _manifest(batch_size=8), one, resume=False, overwrite=True) == set()
    assert json.loads((parts / "manifest.json").read_text())["settings"]["batch_size"] == 8
    target.write_text("done\n")
    corpus.release_shard(parts, one)
    import shutil
    shutil.rmtree(parts)
    with pytest.raises(PipelineError, match="out.jsonl exists. Use --resume to keep it"):
        corpus.check_output(target, one, resume=False, overwrite=False)
    assert corpus.prepare_parts(target, _manifest(), one, resume=True, overwrite=False) is None
    with pytest.raises(PipelineError, match="--resume: there is no unfinished run of .*other.jsonl"):
        corpus.check_output(tmp_path / "other.jsonl", one, resume=True, overwrite=False)


def test_progress_reports_rates_and_time_left():
    progress = Progress(Shard(1, 2), chunks_to_do=4, interval=0.0)
    progress.started -= 10
    line = progress.update(lines=100, words=2000)
    assert line.startswith("shard 1/2: 1/4 chunks, 100 lines: 10.0 lines/s, 200 words/s, 0m30s left")
    quiet = Progress(Shard(0, 1), chunks_to_do=3, interval=3600)
    assert quiet.update(10, 10) is None and quiet.update(10, 10) is None
    assert quiet.update(10, 10).startswith("3/3 chunks, 30 lines")  # the last chunk always reports
