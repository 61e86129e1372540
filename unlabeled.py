"""Unlabelled notes for distillation, streamed: read in blocks of lines, cut into windows, cycled.

Files are `.txt` or `.txt.gz` (one note per line) or `.jsonl` / `.jsonl.gz` (a "text" field per
line). Notes are split into words as inference.py splits them, then into windows of subwords.
The stream never holds more than one block of lines and its windows, whatever the file sizes;
after the last file it starts again at the first.

Its position (the cycle, the file, the byte offset and line number of the block being read, and
the windows already taken from it) is part of the training checkpoint: a resumed run rereads that
block and continues with exactly the windows an uninterrupted run would have taken. Under DDP,
rank r of n keeps the lines whose number is r modulo n, so the ranks share the notes.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from data_loader import EncodedWindow, encode_sentences, split_words
from utils import PipelineError

BLOCK_LINES = 512
SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
FIELD = "data.unlabeled_files"


def _kind(path: Path) -> tuple[bool, bool]:
    """(is_jsonl, is_gzip) from the file name, or an error naming the expected suffixes."""
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise PipelineError(f"{FIELD}: {path}: expected a .txt, .txt.gz, .jsonl or .jsonl.gz file.")
    return ".jsonl" in name, name.endswith(".gz")


def _open(path: Path):
    _, is_gzip = _kind(path)
    return gzip.open(path, "rb") if is_gzip else path.open("rb")


def note_of_line(raw: bytes, path: Path, number: int, is_jsonl: bool) -> str | None:
    """The note of one line, None for a blank line; a PipelineError names the file and line."""
    if number == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise PipelineError(f"{FIELD}: {path}:{number}: not UTF-8 text (byte {error.start + 1}); save the file "
                            "as UTF-8.") from None
    if not line.strip():
        return None
    if not is_jsonl:
        return line
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise PipelineError(f"{FIELD}: {path}:{number}: invalid JSON at column {error.colno}: {error.msg}.") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise PipelineError(f"{FIELD}: {path}:{number}: expected an object with a \"text\" string.")
    return record["text"] if record["text"].strip() else None


@dataclass(frozen=True)
class UnlabeledScan:
    """What a check of the files found (for the run summary)."""
    files: tuple[str, ...]
    notes: int
    blank_lines: int

    def describe(self) -> str:
        return (f"{self.notes:,} unlabelled notes in {len(self.files)} file(s)"
                + (f" ({self.blank_lines:,} blank lines skipped)" if self.blank_lines else ""))


def check_unlabeled_files(files: list[str]) -> UnlabeledScan:
    """Read every file once, before any slow step: missing, unreadable, empty, not UTF-8 or a
    .jsonl line without "text" is an error naming the file and line. Memory stays constant."""
    notes = blank = 0
    for name in files:
        path = Path(name)
        is_jsonl, _ = _kind(path)
        if not path.is_file():
            raise PipelineError(f"{FIELD}: {path}: no such file.")
        found = 0
        try:
            with _open(path) as lines:
                for number, raw in enumerate(lines, start=1):
                    if note_of_line(raw, path, number, is_jsonl) is None:
                        blank += 1
                    else:
                        found += 1
        except (OSError, EOFError) as error:
            raise PipelineError(f"{FIELD}: {path}: cannot be read ({error}).") from None
        if not found:
            raise PipelineError(f"{FIELD}: {path}: no note in it (the file is empty or blank).")
        notes += found
    return UnlabeledScan(tuple(files), notes, blank)


class UnlabeledStream:
    """Windows of unlabelled notes, handed out in order by `take`, cycling over the files."""

    def __init__(self, files: list[str], tokenizer, max_length: int, rank: int = 0, world_size: int = 1,
                 block_lines: int = BLOCK_LINES):
        self.files = [Path(f) for f in files]
        self.tokenizer, self.max_length = tokenizer, max_length
        self.rank, self.world_size, self.block_lines = rank, world_size, block_lines
        self.position = {"cycle": 0, "file": 0, "offset": 0, "line": 0, "taken": 0}
        self._handle, self._handle_file = None, None
        self._block: list[EncodedWindow] = []
        self._next = None  # (file, offset, line) of the block after the current one
        self._load_block()

    def state(self) -> dict:
        """The position, as plain integers (saved in the checkpoint)."""
        return dict(self.position)

    def restore(self, state: dict) -> None:
        """Continue from a position that `state` returned."""
        self.position = {key: int(state[key]) for key in ("cycle", "file", "offset", "line", "taken")}
        self._close()
        self._load_block()

    def take(self, count: int) -> list[EncodedWindow]:
        """The next `count` windows (the stream cycles, so there are always enough)."""
        windows: list[EncodedWindow] = []
        while len(windows) < count:
            available = self._block[self.position["taken"]:self.position["taken"] + count - len(windows)]
            windows += available
            self.position["taken"] += len(available)
            if self.position["taken"] >= len(self._block):
                self._advance()
        return windows

    # -- reading -----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Move to the next block that has windows for this rank (across files and cycles)."""
        first_cycle = self.position["cycle"]
        while True:
            file, offset, line = self._next
            cycle = self.position["cycle"]
            if file >= len(self.files):
                file, offset, line, cycle = 0, 0, 0, cycle + 1
                self._close()
            self.position = {"cycle": cycle, "file": file, "offset": offset, "line": line, "taken": 0}
            self._load_block()
            if self._block:
                return
            if cycle > first_cycle + 1:  # a whole pass over the files gave this rank nothing
                raise PipelineError(f"{FIELD}: no note for DDP rank {self.rank} of {self.world_size}: the files "
                                    "hold fewer notes than there are processes.")

    def _load_block(self) -> None:
        """Read the block at the current position, encode it, skip the windows already taken."""
        file, offset, line = self.position["file"], self.position["offset"], self.position["line"]
        path = self.files[file]
        is_jsonl, _ = _kind(path)
        if self._handle is None or self._handle_file != file or self._handle.tell() != offset:
            self._close()
            self._handle, self._handle_file = _open(path), file
            self._handle.seek(offset)
        notes, number, raw = [], line, b""
        for _ in range(self.block_lines):
            raw = self._handle.readline()
            if not raw:
                break
            number += 1
            if (number - 1) % self.world_size != self.rank:
                continue
            note = note_of_line(raw, path, number, is_jsonl)
            if note is not None:
                notes.append([w.text for w in split_words(note)])
        at_end = not raw
        self._next = (file + 1, 0, 0) if at_end else (file, self._handle.tell(), number)
        if at_end:
            self._close()
        self._block = encode_sentences(self.tokenizer, notes, self.max_length) if notes else []
        if self.position["taken"] > len(self._block):
            raise PipelineError(f"{FIELD}: {path} changed since the checkpoint was written (line {line + 1} "
                                "onwards); resume needs the same files.")

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle, self._handle_file = None, None
