"""
Data loading for NER distillation: format checks for the JSONL data and a French word
tokenizer that reproduces the tokenization of the training data.

Check data files before training (exit status 1 and a report if any file is broken):

    python data_loader.py data/wikiner_fr/train.jsonl data/wikiner_fr/val.jsonl
    python data_loader.py my.jsonl --label2id data/wikiner_fr/label2id.json

Data format, one sentence per line, tags in IOB2 (BIO):

    {"tokens": ["Jean", "habite", "à", "Paris"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}
"""

import argparse
import gc
import json
import math
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import DistributedSampler, Sampler

from utils import PipelineError

MAX_LISTED_PROBLEMS = 20
_TAG_RE = re.compile(r"O|[BI]-\S+")  # IOB2: O, B-X or I-X with X a non-empty type name
_SPACE_RE = re.compile(r"\s")

# -----------------------------------------------------------------------------
# data format validation


class DataFormatError(PipelineError):
    """A data or label file breaks the format; `problems` holds one 'file:line: what' each."""

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in {self.path}:"]
        lines += [f"  {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if n > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {n - MAX_LISTED_PROBLEMS} more problems")
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class Example:
    """One sentence: words, their BIO tags, and the 1-based line it came from."""
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    line: int


def check_label2id(label2id):
    """Problems (list of str) with a label->id mapping; empty when it is valid."""
    if not isinstance(label2id, dict):
        return [f"expected a JSON object label -> id, got {type(label2id).__name__}"]
    problems = [f"id of {label!r} is {i!r}, expected an integer"
                for label, i in label2id.items() if type(i) is not int]
    if problems:
        return problems
    ids = sorted(label2id.values())
    if ids != list(range(len(ids))):
        dupes = sorted(i for i, c in Counter(ids).items() if c > 1)
        problems.append(f"ids must be exactly 0..{len(ids) - 1} once each; got {ids}"
                        + (f" (duplicated: {dupes})" if dupes else ""))
    if "O" not in label2id:
        problems.append("label 'O' is missing")
    bad = [label for label in label2id if not (isinstance(label, str) and _TAG_RE.fullmatch(label))]
    problems += [f"label {label!r} is not 'O', 'B-X' or 'I-X'" for label in bad]
    types = {label[2:] for label in label2id if label not in bad and label != "O"}
    for t in sorted(types):
        problems += [f"label {p}-{t} is missing (every type needs both B- and I-)"
                     for p in "BI" if f"{p}-{t}" not in label2id]
    return problems


def read_label2id(path):
    """Read and check a label2id.json (label -> id, ids 0..n-1, 'O' plus B-/I- pairs)."""
    path = Path(path)
    try:
        label2id = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise DataFormatError(path, [f"{path}: cannot read label file: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, [f"{path}: not valid UTF-8 at byte {e.start}"]) from None
    except json.JSONDecodeError as e:
        raise DataFormatError(path, [f"{path}:{e.lineno}: invalid JSON at column {e.colno}: {e.msg}"]) from None
    problems = check_label2id(label2id)
    if problems:
        raise DataFormatError(path, [f"{path}: {p}" for p in problems])
    return label2id


def _resolve_label2id(data_path, label2id):
    """(label set or None, label2id file or None) from a dict, a path, or the file beside the data."""
    if isinstance(label2id, dict):
        problems = check_label2id(label2id)
        if problems:
            raise DataFormatError("label2id", [f"label2id (dict): {p}" for p in problems])
        return frozenset(label2id), None
    if label2id is None:
        beside = Path(data_path).parent / "label2id.json"
        if not beside.is_file():
            return None, None
        label2id = beside
    return frozenset(read_label2id(label2id)), str(label2id)


def _token_problems(tokens):
    """Problems with a list of words: empty, or containing whitespace (NBSP included)."""
    # fast path in C: re's \s is exactly str.isspace, and whitespace is in the joined
    # string iff it is in some token
    if all(tokens) and not _SPACE_RE.search("".join(tokens)):
        return []
    return [f"tokens[{i}] is {tok!r}: " + ("empty" if not tok else "contains whitespace")
            for i, tok in enumerate(tokens) if not tok or any(c.isspace() for c in tok)]


@lru_cache(maxsize=16)
def _bio_sequence_re(labels):
    """Regex matching space-joined tags that form a valid BIO sequence over `labels` (None: any type)."""
    if labels is None:  # the backreference ties each I-X to the B-X that opened the entity
        return re.compile(r"(?:O|B-(\S+)(?: I-\1)*)(?: (?:O|B-(\S+)(?: I-\2)*))*")
    types = sorted({label[2:] for label in labels if label != "O"})
    one = "(?:" + "|".join(["O"] + [f"B-{re.escape(t)}(?: I-{re.escape(t)})*" for t in types]) + ")"
    return re.compile(f"{one}(?: {one})*")


def _tag_problems(tags, labels, labels_name):
    """Problems with a list of tags: BIO syntax, I-X after B-X/I-X, membership in the label set."""
    # fast path: one C-level regex over the joined tags, since a per-tag Python loop over
    # millions of tags is what would make a large file slow; the space count rules out a
    # tag that itself contains spaces passing as two tags
    joined = " ".join(tags)
    if joined.count(" ") == len(tags) - 1 and _bio_sequence_re(labels).fullmatch(joined):
        return []
    kinds = set(tags)
    bad_syntax = {t for t in kinds if not _TAG_RE.fullmatch(t)}
    unknown = set() if labels is None else kinds - labels - bad_syntax
    problems = []
    for i, (prev, tag) in enumerate(zip([None, *tags], tags)):
        if tag in bad_syntax:
            problems.append(f"ner_tags[{i}] is {tag!r}: not 'O', 'B-X' or 'I-X'")
        elif tag in unknown:
            problems.append(f"ner_tags[{i}] is {tag!r}: unknown tag (not in {labels_name})")
        elif tag[0] == "I" and (prev is None or prev[:2] not in ("B-", "I-") or prev[2:] != tag[2:]):
            after = "starts the sentence" if prev is None else f"follows {prev!r}"
            problems.append(f"ner_tags[{i}] is {tag!r} but {after}: "
                            f"I-{tag[2:]} must follow B-{tag[2:]} or I-{tag[2:]}")
    return problems


def _line_problems(obj, labels, labels_name):
    """Problems with one decoded JSON line; structural ones stop the later checks."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    missing = [k for k in ("tokens", "ner_tags") if k not in obj]
    if missing:
        return [f"missing key {k!r}" for k in missing]
    problems = []
    for key in ("tokens", "ner_tags"):
        value = obj[key]
        if not isinstance(value, list):
            problems.append(f"{key} must be a list of strings, got {type(value).__name__}")
            continue
        try:
            "".join(value)  # fast path: join fails on any non-string
        except TypeError:
            problems += [f"{key}[{i}] is {v!r}: expected a string"
                         for i, v in enumerate(value) if not isinstance(v, str)]
    if problems:
        return problems
    tokens, tags = obj["tokens"], obj["ner_tags"]
    if len(tokens) != len(tags) or not tokens:
        return [f"tokens and ner_tags must have the same non-zero length; "
                f"got {len(tokens)} tokens and {len(tags)} ner_tags"]
    return _token_problems(tokens) + _tag_problems(tags, labels, labels_name)


def _parse_line(raw, labels, labels_name):
    """(decoded JSON object, []) for a good raw line, else (None, its problems)."""
    try:
        text = raw.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at position {e.start + 1} of the line)"]
    if not text or text.isspace():
        return None, ["blank line (one sentence per line, no empty lines)"]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [f"invalid JSON at column {e.colno}: {e.msg}"]
    problems = _line_problems(obj, labels, labels_name)
    return (None if problems else obj), problems


@contextmanager
def _gc_paused():
    """Pause the cyclic GC: with 100k+ surviving objects its repeated full passes cost ~25%
    of a large read; refcounting still frees the per-line garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_examples(path, label2id=None):
    """
    Read a JSONL data file into a list of Example, checking every line.
    label2id: a dict, a path to a label2id.json, or None for the label2id.json beside the
    data file (tags are then only checked for BIO syntax if there is none).
    All problems are collected and raised together as one DataFormatError.
    """
    path = Path(path)
    labels, labels_file = _resolve_label2id(path, label2id)
    labels_name = labels_file or "label2id"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataFormatError(path, [f"{path}: cannot read data file: {e.strerror}"]) from None
    # bytes, not text: a bad byte must be reported on its line, not abort the whole read
    raw_lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline ends the last line, it does not start a new one
    examples, problems = [], []
    with _gc_paused():
        for lineno, raw in enumerate(raw_lines, start=1):
            obj, line_problems = _parse_line(raw, labels, labels_name)
            if line_problems:
                problems += [f"{path}:{lineno}: {p}" for p in line_problems]
            else:
                examples.append(Example(tuple(obj["tokens"]), tuple(obj["ner_tags"]), lineno))
    if not raw_lines:
        problems.append(f"{path}: no sentences (the file is empty)")
    if problems:
        raise DataFormatError(path, problems)
    return examples


def verify_data_format(path, label2id=None):
    """Check a data file (see read_examples), print a short summary and return it as a dict."""
    examples = read_examples(path, label2id)
    _, labels_file = _resolve_label2id(path, label2id)
    tag_counts = Counter(chain.from_iterable(ex.tags for ex in examples))
    per_type = {tag[2:]: n for tag, n in tag_counts.items() if tag[:2] == "B-"}  # one B- per entity
    summary = {
        "file": str(path),
        "sentences": len(examples),
        "tokens": sum(tag_counts.values()),
        "entities": sum(per_type.values()),
        "entities_per_type": dict(sorted(per_type.items())),
        "longest_sentence_words": max(len(ex.tokens) for ex in examples),
        "label2id_file": labels_file,
    }
    types = ", ".join(f"{t} {n}" for t, n in summary["entities_per_type"].items())
    checked = labels_file or ("the given label2id" if label2id is not None else
                              "no label2id.json (BIO syntax only)")
    print(f"{summary['file']}: OK\n"
          f"  {summary['sentences']} sentences, {summary['tokens']} tokens, "
          f"longest {summary['longest_sentence_words']} words\n"
          f"  {summary['entities']} entities{': ' + types if types else ''}\n"
          f"  tags checked against {checked}")
    return summary

# -----------------------------------------------------------------------------
# French word tokenizer (reproduces the tokenization of the training data)


class Word(NamedTuple):
    """A word and its character span: text == original[start:end]."""
    text: str
    start: int
    end: int


# combining marks and variation selectors: never separated from the character before them
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe00-\ufe0f\ufe20-\ufe2f"
_WCHAR = rf"[\w{_MARKS}]"  # letters, digits (and '_'), accents precomposed or combining
_EMOJI_BASE = "\U0001f000-\U0001faff\u2600-\u27bf\u2300-\u23ff\u2b00-\u2bff"
_EMOJI_MOD = "\ufe0f\U0001f3fb-\U0001f3ff"  # presentation selector, skin tones
_EMOJI_ONE = rf"[{_EMOJI_BASE}][{_EMOJI_MOD}]*"
# elided words, split after their apostrophe even when a letter follows (l'homme -> l' homme);
# quelqu' is split in the data too. aujourd'hui, prud'homme, O'Neill are not elisions.
_ELISIONS = r"l|d|j|m|n|s|t|c|qu|jusqu|lorsqu|puisqu|quoiqu|presqu|quelqu"
# one ordered alternation: the first alternative that matches at a position wins
_WORD_RE = re.compile(rf"""
    (?<!{_WCHAR}) (?i:{_ELISIONS}) ['’]   # an elision at the start of a word: l' d' Qu' jusqu'
  | (?:-(?=\d))? {_WCHAR}+ (?:          # a word (or a negative number: -2200), runs of word characters joined by
        (?: -                           #   a hyphen: lui-même, a-t-il, Île-de-France
          | ['’] (?=[^\W\d_])           #   an apostrophe before a letter: aujourd'hui, O'Neill
          | (?<=\d) [.,:/] (?=\d)       #   a separator inside a number: 3,5  1.000  10:30  1/10
        ) {_WCHAR}+ )*
  | \.{{2,}}                            # a run of periods is one token: ...
  | -+                                  # a dash is punctuation; -- stays one token as in the data
  | [\U0001f1e6-\U0001f1ff]{{2}}        # a flag: two regional indicators
  | {_EMOJI_ONE} (?:\u200d{_EMOJI_ONE})*  # an emoji, ZWJ sequences kept together
  | \S[{_MARKS}]*                       # anything else is one character of punctuation or symbol
""", re.VERBOSE)


def split_words(text):
    """Split French text into Words (text, start, end) the way the training data is tokenized."""
    return [Word(m.group(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]

# -----------------------------------------------------------------------------
# Encoding: words -> subwords -> windows -> padded batches
#
# Only the first subword of each word carries the word's label; the model's logits are
# gathered at those positions (`word_starts`), so every loss and decoder works on words.

@dataclass(frozen=True)
class EncodedWindow:
    """A run of whole words of one sentence, as model input."""
    input_ids: tuple[int, ...]            # special tokens included
    word_starts: tuple[int, ...]          # position of each word's first subword
    word_labels: tuple[int, ...] | None   # label id per word (None when predicting)
    sentence_index: int
    first_word: int                       # index in the sentence of the window's first word


@dataclass
class Batch:
    input_ids: torch.Tensor       # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    word_starts: torch.Tensor     # (B, W) first-subword positions, 0 on padding
    word_mask: torch.Tensor       # (B, W) bool, contiguous from the left
    word_labels: torch.Tensor | None  # (B, W), 0 on padding

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(*(move(getattr(self, f.name)) for f in fields(self)))


def subword_pieces(tokenizer, sentences: list[list[str]], chunk_size: int = 2048) -> list[list[list[int]]]:
    """Subword ids of every word; a word the tokenizer maps to nothing gets `<unk>`."""
    pieces_all = []
    for begin in range(0, len(sentences), chunk_size):
        chunk = sentences[begin:begin + chunk_size]
        encoded = tokenizer([list(words) for words in chunk], is_split_into_words=True,
                            add_special_tokens=False)
        for row, words in enumerate(chunk):
            pieces: list[list[int]] = [[] for _ in words]
            for token_id, word_id in zip(encoded["input_ids"][row], encoded.word_ids(row)):
                if word_id is not None:
                    pieces[word_id].append(token_id)
            pieces_all.append([p or [tokenizer.unk_token_id] for p in pieces])
    return pieces_all


def plan_windows(lengths: list[int], budget: int, overlap: int = 0,
                 breakable: list[bool] | None = None) -> list[tuple[int, int]]:
    """Cut a sentence (subword count per word) into word ranges of at most `budget` subwords.

    Consecutive windows share about `overlap` subwords of context. `breakable[k]` says a
    cut before word k is welcome (it does not split an entity); cuts prefer those places.
    """
    windows, start, count = [], 0, len(lengths)
    while start < count:
        end, used = start, 0
        while end < count and used + min(lengths[end], budget) <= budget:
            used += min(lengths[end], budget)
            end += 1
        if end < count and breakable is not None:
            cut = next((k for k in range(end, start, -1) if breakable[k]), end)
            end = cut
        windows.append((start, end))
        if end >= count:
            break
        next_start, context = end, 0
        while next_start - 1 > start and context + lengths[next_start - 1] <= overlap:
            next_start -= 1
            context += lengths[next_start]
        start = next_start
    return windows


def encode_sentences(tokenizer, sentences: list[list[str]], max_length: int, overlap: int = 0,
                     tags: list[list[str]] | None = None,
                     label2id: dict[str, int] | None = None) -> list[EncodedWindow]:
    """Encode sentences into windows of at most `max_length` subwords (specials included).

    Training passes `tags` and `overlap=0`: windows do not overlap, cuts avoid splitting
    entities, and an entity cut anyway restarts with B-X. No word is dropped; only a single
    word longer than a whole window loses its trailing subwords (its label is kept).
    """
    budget = max_length - 2
    windows = []
    for index, pieces in enumerate(subword_pieces(tokenizer, sentences)):
        sentence_tags = tags[index] if tags is not None else None
        breakable = None if sentence_tags is None else [not t.startswith("I-") for t in sentence_tags] + [True]
        for first, end in plan_windows([len(p) for p in pieces], budget, overlap, breakable):
            input_ids, word_starts = [tokenizer.cls_token_id], []
            for word_pieces in pieces[first:end]:
                word_starts.append(len(input_ids))
                input_ids.extend(word_pieces[:budget])
            input_ids.append(tokenizer.sep_token_id)
            labels = None
            if sentence_tags is not None:
                window_tags = list(sentence_tags[first:end])
                if window_tags[0].startswith("I-") and "B-" + window_tags[0][2:] in label2id:
                    window_tags[0] = "B-" + window_tags[0][2:]  # BIO labels: a window starts an entity
                labels = tuple(label2id[t] for t in window_tags)
            windows.append(EncodedWindow(tuple(input_ids), tuple(word_starts), labels, index, first))
    return windows


def collate_windows(windows: list[EncodedWindow], pad_id: int) -> Batch:
    """Pad a list of windows to the longest one (dynamic padding)."""
    size, words = max(len(w.input_ids) for w in windows), max(len(w.word_starts) for w in windows)
    input_ids = torch.full((len(windows), size), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), size), dtype=torch.long)
    word_starts = torch.zeros((len(windows), words), dtype=torch.long)
    word_mask = torch.zeros((len(windows), words), dtype=torch.bool)
    has_labels = windows[0].word_labels is not None
    word_labels = torch.zeros((len(windows), words), dtype=torch.long) if has_labels else None
    for row, window in enumerate(windows):
        n, w = len(window.input_ids), len(window.word_starts)
        input_ids[row, :n] = torch.tensor(window.input_ids)
        attention_mask[row, :n] = 1
        word_starts[row, :w] = torch.tensor(window.word_starts)
        word_mask[row, :w] = True
        if has_labels:
            word_labels[row, :w] = torch.tensor(window.word_labels)
    return Batch(input_ids, attention_mask, word_starts, word_mask, word_labels)


def join_batches(first: Batch, second: Batch, pad_id: int, fill_label: int = 0) -> Batch:
    """One batch of the rows of both, padded to the longer (words of unlabelled rows get `fill_label`)."""
    size = max(first.input_ids.size(1), second.input_ids.size(1))
    words = max(first.word_starts.size(1), second.word_starts.size(1))
    pad = lambda t, width, value: torch.nn.functional.pad(t, (0, width - t.size(1)), value=value)
    labels = [b.word_labels if b.word_labels is not None else torch.full_like(b.word_starts, fill_label)
              for b in (first, second)]
    return Batch(torch.cat([pad(b.input_ids, size, pad_id) for b in (first, second)]),
                 torch.cat([pad(b.attention_mask, size, 0) for b in (first, second)]),
                 torch.cat([pad(b.word_starts, words, 0) for b in (first, second)]),
                 torch.cat([pad(b.word_mask, words, False) for b in (first, second)]),
                 torch.cat([pad(l, words, fill_label) for l in labels]))


def batches_by_length(windows: list[EncodedWindow], batch_size: int, max_tokens: int | None = None,
                      sort: bool = True) -> list[list[int]]:
    """Window indices in batches of similar length (for evaluation and inference: no shuffling).

    A batch holds at most `batch_size` windows and, with `max_tokens`, at most that many tokens
    once padded (windows x the longest; a window longer than the budget is a batch of its own).
    `sort=False` keeps the input order (to measure what sorting gains).
    """
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids)) if sort else range(len(windows))
    batches, batch, longest = [], [], 0
    for index in order:
        size = len(windows[index].input_ids)
        fits = len(batch) < batch_size and (max_tokens is None or (len(batch) + 1) * max(longest, size) <= max_tokens)
        if batch and not fits:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(index)
        longest = max(longest, size)
    return batches + [batch] if batch else batches


class LengthGroupedBatchSampler(Sampler):
    """Batches of similar length (less padding), in a shuffled order, sharded for DDP.

    Indices come from a `DistributedSampler` (one replica when not distributed), so each
    rank sees its own shard and every rank has the same number of batches. Within groups
    of `group_batches` batches the indices are sorted by length; the batches are then
    shuffled. The order depends only on (seed, epoch), so a resumed run sees the same
    batches: `set_epoch(epoch, skip_batches=k)` skips the first k.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, group_batches: int = 50):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.shuffle, self.group_batches = shuffle, group_batches
        self.shards = DistributedSampler(range(len(lengths)), num_replicas=num_replicas, rank=rank,
                                         shuffle=shuffle, seed=seed)
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches
        self.shards.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        indices = list(self.shards)
        group = self.batch_size * self.group_batches
        batches = []
        for begin in range(0, len(indices), group):
            chunk = sorted(indices[begin:begin + group], key=lambda i: -self.lengths[i])
            batches.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self):
        return iter(self.batches()[self.skip_batches:])

    def __len__(self) -> int:
        return math.ceil(len(self.shards) / self.batch_size) - self.skip_batches


# -----------------------------------------------------------------------------
# command line


def main(argv=None):
    """Check each data file; print a summary or a report for each. Returns the exit status."""
    parser = argparse.ArgumentParser(description="Check NER JSONL data files.")
    parser.add_argument("files", nargs="+", help="JSONL data files")
    parser.add_argument("--label2id", help="label2id.json (default: the one beside each file)")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            verify_data_format(path, args.label2id)
        except DataFormatError as e:
            print(e, file=sys.stderr)
            failed += 1
    if failed:
        print(f"{failed} of {len(args.files)} files failed the format check", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
