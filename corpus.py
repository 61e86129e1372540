"""A corpus for inference.py: read in chunks that processes share, written chunk by chunk.

The input (.txt or .jsonl, either one gzip-compressed) is cut into chunks by byte offset: chunk k
holds the lines that start in bytes [k*B, (k+1)*B) of the (decompressed) text. Process i of N
(`--shard i/N`, or torchrun's RANK and WORLD_SIZE) takes the chunks k with k % N == i. In a plain
file it seeks to them and reads nothing else; a gzip file cannot be seeked, so each process
decompresses it whole but parses only its own lines.

Each chunk's output is committed into OUTPUT.parts/ atomically, then its record (counts, time),
which marks it done. A killed run resumes from the committed chunks. The process that commits
the last chunk concatenates them, in order, into OUTPUT, writes the summary beside it and removes
the parts folder. The parts folder's manifest records what the output depends on (the input, the
model's weights, the settings), so a --resume that would mix two different runs is refused.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import queue
import re
import shutil
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from data_loader import Word, split_words
from utils import PipelineError, acquire_lock, describe_changes, holder_is_gone, holder_of, is_running, output_lock

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
_CHUNK_RE = re.compile(r"chunk-(\d{8})\.json")


# ---------------------------------------------------------------------------
# Which part of the input this process takes

@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str) -> Shard:
    """`i/N` (0 <= i < N) as a Shard, or an error naming --shard."""
    match = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not match or int(match[1]) >= int(match[2]):
        raise PipelineError(f"--shard {spec}: expected i/N with 0 <= i < N (e.g. --shard 0/4 ... --shard 3/4 for "
                            "four processes).")
    return Shard(int(match[1]), int(match[2]))


def shard_of(spec: str | None, environ=os.environ) -> Shard:
    """--shard, else torchrun's RANK and WORLD_SIZE, else the whole input."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        if spec:
            raise PipelineError("--shard is for processes you start yourself; under torchrun each process "
                                "takes its share from RANK and WORLD_SIZE. Drop --shard.")
        return Shard(int(environ["RANK"]), int(environ["WORLD_SIZE"]))
    return parse_shard(spec) if spec else Shard(0, 1)


# ---------------------------------------------------------------------------
# Lines: what one input line holds, and what its output line is

@dataclass(frozen=True)
class LineFormat:
    is_jsonl: bool
    id_field: str | None = None      # carried to the output; every non-blank line must have it
    keep_fields: tuple[str, ...] = ()  # carried to the output (null where a line lacks one)


class CorpusLine(NamedTuple):
    text: str
    words: list[Word]
    fields: dict


def _words_of_tokens(tokens: list[str]) -> tuple[str, list[Word]]:
    """Pre-split tokens joined by single spaces, with their offsets in that text."""
    words, position = [], 0
    for token in tokens:
        words.append(Word(token, position, position + len(token)))
        position += len(token) + 1
    return " ".join(tokens), words


def parse_line(raw: bytes, lines: LineFormat, where: Callable[[], str], split: bool = True) -> CorpusLine:
    """One input line; `where()` names its file and line in an error (no text is ever quoted).
    With split=False the line is only checked (its words are not computed)."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise PipelineError(f"{where()}: not valid UTF-8 (byte {error.start + 1}); save the file as UTF-8.") from None
    empty = {name: None for name in ([lines.id_field] if lines.id_field else []) + list(lines.keep_fields)}
    if not line.strip():
        return CorpusLine("", [], empty)
    words_of = split_words if split else (lambda _: [])
    if not lines.is_jsonl:
        return CorpusLine(line, words_of(line), {})
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise PipelineError(f"{where()}: invalid JSON at column {error.colno}: {error.msg}.") from None
    if not isinstance(record, dict):
        raise PipelineError(f"{where()}: expected a JSON object.")
    fields = dict(empty)
    if lines.id_field:
        if lines.id_field not in record:
            raise PipelineError(f"{where()}: no \"{lines.id_field}\" field. It is carried to the output, so every "
                                f"line needs one (the file's first line has one, or --id-field named it).")
        fields[lines.id_field] = record[lines.id_field]
    for name in lines.keep_fields:
        fields[name] = record.get(name)
    if isinstance(record.get("text"), str):
        return CorpusLine(record["text"], words_of(record["text"]), fields)
    tokens = record.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in tokens):
        text, words = _words_of_tokens(tokens)
        return CorpusLine(text, words if split else [], fields)
    raise PipelineError(f"{where()}: expected {{\"text\": \"...\"}} or {{\"tokens\": [\"...\", ...]}} with non-empty "
                        "tokens without spaces.")


def output_line(line: CorpusLine, entities: list[dict]) -> str:
    return json.dumps({**line.fields, "text": line.text, "entities": entities}, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------
# The input file and its chunks

@dataclass
class RawChunk:
    index: int
    lines: list[bytes]
    start: int                 # byte offset of its first line in the (decompressed) text
    first_line: int | None     # its first line's number, when the reader knows it (gzip)


@dataclass
class CorpusFile:
    """An input file, the size of its text and how many chunks it has (a gzip file is read once
    to know: this also finds a truncated or damaged one before any slow work)."""
    path: Path
    is_jsonl: bool
    is_gzip: bool
    text_bytes: int = 0
    chunk_bytes: int = 1 << 20

    @property
    def chunks(self) -> int:
        return -(-self.text_bytes // self.chunk_bytes)


def open_corpus(path: Path, chunk_bytes: int) -> CorpusFile:
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise PipelineError(f"--input {path}: expected a .txt or .jsonl file (or .txt.gz, .jsonl.gz).")
    if path.is_dir():
        raise PipelineError(f"--input {path}: is a folder; give a file.")
    if not path.is_file():
        raise PipelineError(f"--input {path}: no such file.")
    corpus = CorpusFile(path, ".jsonl" in name, name.endswith(".gz"), chunk_bytes=chunk_bytes)
    try:
        if not corpus.is_gzip:
            corpus.text_bytes = path.stat().st_size
            with path.open("rb"):
                pass  # readable
        else:
            with gzip.open(path, "rb") as stream:
                while block := stream.read(1 << 20):
                    corpus.text_bytes += len(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise PipelineError(f"--input {path}: truncated or damaged gzip data ({error}); nothing was written. Copy "
                            "the file again (`gzip -t` checks it).") from None
    except OSError as error:
        raise PipelineError(f"--input {path}: cannot be read ({error.strerror}).") from None
    return corpus


def first_line_has_field(corpus: CorpusFile, name: str) -> bool:
    """Whether the first line of a .jsonl input is an object with field `name`."""
    with (gzip.open(corpus.path, "rb") if corpus.is_gzip else corpus.path.open("rb")) as stream:
        raw = stream.readline().removeprefix(b"\xef\xbb\xbf")
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False  # reported with its line number when the line is read
    return isinstance(record, dict) and name in record


def read_chunks(corpus: CorpusFile, wanted: Callable[[int], bool]) -> Iterator[RawChunk]:
    """The chunks for which `wanted(k)` is true, in order (a chunk in which no line starts is empty)."""
    if corpus.is_gzip:
        yield from _gzip_chunks(corpus, wanted)
        return
    size, step = corpus.text_bytes, corpus.chunk_bytes
    with corpus.path.open("rb") as stream:
        for index in range(corpus.chunks):
            if not wanted(index):
                continue
            start, end = index * step, min((index + 1) * step, size)
            stream.seek(max(start - 1, 0))
            position = start
            if start:  # skip to the first line that starts at or after `start`
                position = start - 1 + len(stream.readline())
            lines = []
            while position < end and (raw := stream.readline()):
                lines.append(raw.removeprefix(b"\xef\xbb\xbf") if position == 0 else raw)
                position += len(raw)
            yield RawChunk(index, lines, position - sum(map(len, lines)), None)


def _gzip_chunks(corpus: CorpusFile, wanted: Callable[[int], bool]) -> Iterator[RawChunk]:
    step, number = corpus.chunk_bytes, 0
    current = RawChunk(0, [], 0, 1)
    try:
        with gzip.open(corpus.path, "rb") as stream:
            position = 0
            for raw in stream:
                index = position // step
                while index != current.index:  # this line starts a later chunk
                    if wanted(current.index):
                        yield current
                    current = RawChunk(current.index + 1, [], position, number + 1)
                if wanted(index):
                    current.lines.append(raw.removeprefix(b"\xef\xbb\xbf") if position == 0 else raw)
                position += len(raw)
                number += 1
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise PipelineError(f"--input {corpus.path}: truncated or damaged gzip data after line {number:,} "
                            f"({error}).") from None
    while current.index < corpus.chunks:
        if wanted(current.index):
            yield current
        current = RawChunk(current.index + 1, [], corpus.text_bytes, number + 1)


def line_where(corpus: CorpusFile, chunk: RawChunk, row: int) -> Callable[[], str]:
    """A function naming `path:line` of a chunk's row (counted only when an error needs it)."""
    def where() -> str:
        if chunk.first_line is not None:
            return f"{corpus.path}:{chunk.first_line + row}"
        offset = chunk.start + sum(len(raw) for raw in chunk.lines[:row])
        with corpus.path.open("rb") as stream:
            before = sum(stream.read(min(1 << 20, offset - done)).count(b"\n") for done in range(0, offset, 1 << 20))
        return f"{corpus.path}:{before + 1}"
    return where


def parse_chunk(corpus: CorpusFile, lines: LineFormat, chunk: RawChunk, split: bool = True) -> list[CorpusLine]:
    return [parse_line(raw, lines, line_where(corpus, chunk, row), split) for row, raw in enumerate(chunk.lines)]


def check_chunks(corpus: CorpusFile, lines: LineFormat, wanted: Callable[[int], bool]) -> None:
    """Parse (without splitting words) every line of the wanted chunks: a bad line is reported
    before any slow work, and before anything is written."""
    for chunk in read_chunks(corpus, wanted):
        parse_chunk(corpus, lines, chunk, split=False)


def input_fingerprint(path: Path) -> dict:
    """Name, size and hashes of the first and last MiB: the same file copied elsewhere matches."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        head = hashlib.sha256(stream.read(1 << 20)).hexdigest()
        stream.seek(max(size - (1 << 20), 0))
        tail = hashlib.sha256(stream.read()).hexdigest()
    return {"name": path.name, "bytes": size, "head_sha256": head, "tail_sha256": tail}


# ---------------------------------------------------------------------------
# Reading ahead in a background thread

def read_ahead(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate over `items`, produced by a background thread up to `depth` ahead (tokenisation
    then runs while the model computes); an exception in the thread is raised here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as error:  # handed to the consumer, which raises it
            slots.put((done, error))

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# ---------------------------------------------------------------------------
# The parts folder: manifest, shard markers, committed chunks, assembling the output

def parts_folder(target: Path) -> Path:
    return target.with_name(target.name + ".parts")


def summary_path(target: Path) -> Path:
    return target.with_suffix(".summary.json") if target.suffix else target.with_name(target.name + ".summary.json")


def _marker(parts: Path, shard: Shard) -> Path:
    """`PID HOST START_TIME` of the process that runs this shard (PID 0 once it is done)."""
    return parts / f"shard-{shard.index}-of-{shard.count}"


def committed_chunks(parts: Path) -> set[int]:
    """Chunks whose output and record are both in the parts folder."""
    try:
        return {int(m[1]) for name in os.listdir(parts) if (m := _CHUNK_RE.fullmatch(name))}
    except FileNotFoundError:
        return set()


def _write_file(path: Path, data: bytes) -> None:
    """Write `path` atomically and durably: a temporary name, fsync, rename."""
    staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
    with staging.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def check_output(target: Path, shard: Shard, resume: bool, overwrite: bool) -> None:
    """The refusals that need no model: cheap, so run before any slow work (and again under the lock)."""
    parts = parts_folder(target)
    marker, started = _marker(parts, shard), (parts / "manifest.json").exists()
    pid, host = holder_of(marker)
    if pid is not None and not holder_is_gone(marker):
        raise PipelineError(f"--output {target}: shard {shard} is being run by process {pid} on {host}; wait "
                            "for it, or stop it first.")
    if overwrite:
        return
    if not started and target.exists() and not resume:
        raise PipelineError(f"--output {target} exists. Use --resume to keep it (it is complete), --overwrite "
                            "to replace it, or choose another --output.")
    if not started and not target.exists() and resume:
        raise PipelineError(f"--resume: there is no unfinished run of {target} (no {parts}); run without --resume.")
    if started and marker.exists() and not resume:
        raise PipelineError(f"--output {target}: an unfinished run is in {parts}. Use --resume to continue it, "
                            "or --overwrite to start again.")


def prepare_parts(target: Path, manifest: dict, shard: Shard, resume: bool, overwrite: bool) -> set[int] | None:
    """Make the parts folder ready for this shard; returns the chunks already committed (None
    when the output is complete and there is nothing to do). Refuses to mix two runs (see
    `check_output` for the other refusals)."""
    parts, marker = parts_folder(target), _marker(parts_folder(target), shard)
    with output_lock(target):
        check_output(target, shard, resume, overwrite)
        old = _read_json(parts / "manifest.json")
        if overwrite:
            if target.is_file():
                target.unlink()
            if old is not None and _compared(old) != _compared(manifest):
                shutil.rmtree(parts)
                old = None
            for index in committed_chunks(parts):
                if shard.owns(index):
                    (parts / f"chunk-{index:08d}.json").unlink()
        elif old is None and target.exists():  # check_output made sure this is a --resume: it is complete
            return None
        elif old is not None and _compared(old) != _compared(manifest):
            raise PipelineError(f"--output {target}: the unfinished run in {parts} was made otherwise "
                                f"({'; '.join(describe_changes(_compared(old), _compared(manifest)))}). Run it again "
                                "as it was to finish it, or use --overwrite to start this one.")
        parts.mkdir(parents=True, exist_ok=True)
        for leftover in parts.glob(".*.staging-*"):  # what a killed process was writing
            if not is_running(int(leftover.name.rpartition("-")[2])):
                leftover.unlink(missing_ok=True)
        if old is None:
            _write_file(parts / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        _write_file(marker, f"{os.getpid()} {socket.gethostname()} {time.time()}".encode())
        return committed_chunks(parts)


def _compared(manifest: dict) -> dict:
    """What the output depends on (not where the model or input lie)."""
    return {key: manifest[key] for key in ("input", "model", "settings")}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def commit_chunk(parts: Path, index: int, output: bytes, record: dict) -> None:
    """Commit one chunk: its output lines, then its record (which marks it done)."""
    _write_file(parts / f"chunk-{index:08d}.jsonl", output)
    _write_file(parts / f"chunk-{index:08d}.json", json.dumps(record).encode())


def release_shard(parts: Path, shard: Shard) -> None:
    """This shard's process is done: its marker keeps the start time but names no process."""
    marker = _marker(parts, shard)
    try:
        _write_file(marker, f"0 - {marker.read_text().split()[2]}".encode())
    except (FileNotFoundError, IndexError):
        pass


def _started(parts: Path, shards: int) -> list[float]:
    """When each shard of this run started (the third word of its marker)."""
    times = []
    for marker in parts.glob(f"shard-*-of-{shards}"):
        try:
            times.append(float(marker.read_text().split()[2]))
        except (OSError, IndexError, ValueError):
            pass
    return times


def assemble(target: Path, chunks: int, shards: int) -> dict | None:
    """If every chunk is committed and no other process is at it, concatenate them into `target`
    (atomically), write the summary and remove the parts folder; returns the summary, or None
    when some chunk is still missing (another shard will assemble)."""
    parts = parts_folder(target)
    if len(committed_chunks(parts) & set(range(chunks))) < chunks:
        return None
    try:  # one process assembles (the lock goes with the parts folder); a dead one's lock is taken over
        acquire_lock(parts / "assembling", wait_s=0)
    except PipelineError:
        return None  # another process is assembling, or has just done it and removed the folder
    manifest = json.loads((parts / "manifest.json").read_text())
    records = [json.loads((parts / f"chunk-{k:08d}.json").read_text()) for k in range(chunks)]
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
    with staging.open("wb") as out:
        for k in range(chunks):
            with (parts / f"chunk-{k:08d}.jsonl").open("rb") as part:
                shutil.copyfileobj(part, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, target)
    summary = run_summary(manifest, records, _started(parts, shards), shards)
    _write_file(summary_path(target), (json.dumps(summary, indent=2) + "\n").encode())
    shutil.rmtree(parts, ignore_errors=True)
    return summary


def run_summary(manifest: dict, records: list[dict], started: list[float], shards: int) -> dict:
    """Totals over every chunk, and the speed of this run (the chunks done since its first
    process started, over the time since then)."""
    total = lambda key, rows: sum(r[key] for r in rows)
    since = min(started) if started else time.time()
    now_done = [r for r in records if r["finished"] >= since]
    wall = max(time.time() - since, 1e-9)
    return {"input": manifest["input"]["name"], "model": manifest["model_name"],
            "settings": manifest["settings"], "processes": shards, "chunks": len(records),
            "lines": total("lines", records), "blank_lines": total("blank_lines", records),
            "words": total("words", records), "entities": total("entities", records),
            "peak_rss_mib": max((r["peak_rss_mib"] for r in records), default=None),  # of the largest process
            "this_run": {"chunks": len(now_done), "resumed_chunks": len(records) - len(now_done),
                         "lines": total("lines", now_done), "words": total("words", now_done),
                         "wall_time_s": round(wall, 2), "lines_per_s": round(total("lines", now_done) / wall, 1),
                         "words_per_s": round(total("words", now_done) / wall, 1)}}


# ---------------------------------------------------------------------------
# Progress

@dataclass
class Progress:
    """Lines/s, words/s and the time left of this process, as one line every `interval` seconds."""
    shard: Shard
    chunks_to_do: int
    interval: float
    started: float = field(default_factory=time.monotonic)
    chunks: int = 0
    lines: int = 0
    words: int = 0
    _last: float = field(default_factory=time.monotonic)

    def update(self, lines: int, words: int) -> str | None:
        """Count a chunk; the progress line when one is due."""
        self.chunks, self.lines, self.words = self.chunks + 1, self.lines + lines, self.words + words
        now = time.monotonic()
        if now - self._last < self.interval and self.chunks < self.chunks_to_do:
            return None
        self._last = now
        return self.line(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        left = elapsed / self.chunks * (self.chunks_to_do - self.chunks)
        where = f"shard {self.shard}: " if self.shard.count > 1 else ""
        return (f"{where}{self.chunks}/{self.chunks_to_do} chunks, {self.lines:,} lines: {self.lines / elapsed:,.1f} "
                f"lines/s, {self.words / elapsed:,.0f} words/s, {_duration(left)} left")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
