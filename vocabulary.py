"""Vocabulary trimming: a student that keeps only the subword pieces its domain uses.

CamemBERT's 32,005 x 768 embedding matrix holds 24.6M parameters, and French medico-social
text uses a part of those pieces. With `student.trim_vocabulary`, stage 1 keeps:

- the special tokens,
- every piece the teacher's tokenizer produces on the train, val and test files and on the
  plain-text files of `student.vocabulary_files` (encoded as training and inference encode
  them: words first, then pieces),
- every single-character piece, so that any new text still tokenizes (and, for Unigram, the
  lowest-scoring piece, from which the score of an unknown character is derived).

The kept teacher ids, sorted, become the student's ids 0, 1, 2...; every id up to the padding
id is kept, so that the padding id, from which RoBERTa-style models number their positions,
does not move. The student's tokenizer is a rewritten tokenizer.json holding
only those pieces. Removing pieces never changes the segmentation of a text whose pieces were
all kept: Unigram picks the best-scoring segmentation, and the teacher's best one is still
there; WordPiece matches greedily, longest piece first, and every piece it accepted (even in a
word it ended up calling unknown) is kept, while the longer ones it tried were never in the
vocabulary. Training encodes once with the teacher's tokenizer and gives the student its ids
through `teacher_to_student_ids`, so teacher and student always see the same subwords.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn as nn
from transformers import AutoTokenizer

from data_loader import split_words
from utils import PipelineError

SUPPORTED_KINDS = ("Unigram", "WordPiece")  # CamemBERT and XLM-R; BERT
CHUNK_WORDS = 4096
METASPACE = "\u2581"
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # a byte-fallback piece


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PipelineError(f"student.trim_vocabulary: the teacher's tokenizer ({type(tokenizer).__name__}) is not a "
                            "fast tokenizer backed by a tokenizer.json; trimming rewrites that file. Set "
                            "student.trim_vocabulary to false for this teacher.")
    return json.loads(backend.to_str())


def tokenizer_kind(tokenizer) -> str:
    """The kind of the tokenizer's model ("Unigram" or "WordPiece"); any other kind is an error."""
    kind = _tokenizer_json(tokenizer)["model"]["type"]
    if kind not in SUPPORTED_KINDS:
        raise PipelineError(f"student.trim_vocabulary: the teacher's tokenizer is a {kind} tokenizer; trimming "
                            f"supports {' and '.join(SUPPORTED_KINDS)} tokenizers (CamemBERT, XLM-R, BERT). Set "
                            "student.trim_vocabulary to false for this teacher.")
    return kind


def read_vocabulary_texts(path: str | Path) -> Iterator[list[str]]:
    """The words of each non-blank line of a plain-text UTF-8 file (split as inference.py splits text)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"student.vocabulary_files: {path} is not a file.")
    try:
        lines = path.open("rb")
    except OSError as error:
        raise PipelineError(f"student.vocabulary_files: {path} cannot be read ({error.strerror}).") from None
    with lines:
        for number, raw in enumerate(lines, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, dropped as inference.py drops it
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise PipelineError(f"student.vocabulary_files: {path}:{number}: not UTF-8 text (byte "
                                    f"{error.start + 1}); give plain-text UTF-8 files, one text per line.") from None
            if "\x00" in line:
                raise PipelineError(f"student.vocabulary_files: {path}:{number}: a NUL byte: this is not a "
                                    "plain-text file.")
            words = split_words(line)
            if words:
                yield [word.text for word in words]


def pieces_used(tokenizer, sentences: Iterable[list[str]]) -> set[int]:
    """Teacher ids of the pieces that pre-split sentences encode to (streamed in chunks)."""
    return {i for words in _new_words([sentences]) for i in _encode(tokenizer, words)}


def _new_words(sources: Iterable[Iterable[list[str]]]) -> Iterator[list[str]]:
    """Every distinct word of the sentences of `sources`, once, in chunks of CHUNK_WORDS.

    Encoding distinct words only gives the same pieces as encoding the sentences (see
    `_encode`) about ten times faster: a corpus repeats its words. Only the words seen so far
    are held, never the encodings.
    """
    seen: set[str] = set()
    chunk: list[str] = []
    for sentences in sources:
        for sentence in sentences:
            for word in sentence:
                if word not in seen:
                    seen.add(word)
                    chunk.append(word)
                    if len(chunk) == CHUNK_WORDS:
                        yield chunk
                        chunk = []
    if chunk:
        yield chunk


def _encode(tokenizer, words: list[str]) -> list[int]:
    """The teacher ids of the words' pieces. A tokenizer given pre-split words normalizes,
    pre-tokenizes and segments each word on its own, so a word has the same pieces here as
    inside any sentence that training or inference encodes. (Not verbose: the chunk is far
    longer than the model's window, which does not matter here and is no reason to warn.)"""
    if not words:
        return []
    return tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)["input_ids"]


def _wordpiece_accepted(tokenizer, model: dict, words: Iterable[str]) -> set[int]:
    """Every piece WordPiece's greedy matcher accepts on the words, also in words that end as
    unknown: exactly the pieces a trimmed vocabulary needs to match the same way."""
    vocab, prefix = model["vocab"], model["continuing_subword_prefix"]
    longest = model["max_input_chars_per_word"]
    backend = tokenizer.backend_tokenizer
    accepted: set[int] = set()
    for word in words:
        text = backend.normalizer.normalize_str(word) if backend.normalizer else word
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
        for piece, _ in pieces:
            if len(piece) > longest:
                continue
            start = 0
            while start < len(piece):
                end, match = len(piece), None
                while start < end:
                    candidate = (prefix if start else "") + piece[start:end]
                    if candidate in vocab:
                        match = candidate
                        break
                    end -= 1
                if match is None:
                    break
                accepted.add(vocab[match])
                start = end
    return accepted


def _always_kept(kind: str, model: dict) -> set[int]:
    """Ids kept whatever the text: the one-character pieces (with or without the word-start or
    continuation mark), so that any new text still tokenizes, and for Unigram the byte pieces
    of a byte-fallback model and the lowest-scoring piece. Unigram scores an unknown character
    10 below its lowest-scoring piece (tokenizers' K_UNK_PENALTY); without that piece the
    unknown score would rise and could change the segmentation of words with a character that
    only longer pieces hold. (CamemBERT's lowest is <unk>NOTUSED, -100.)"""
    if kind == "Unigram":
        vocab = model["vocab"]
        kept = {i for i, (piece, _) in enumerate(vocab) if len(piece.removeprefix(METASPACE)) <= 1}
        if model.get("byte_fallback"):
            kept |= {i for i, (piece, _) in enumerate(vocab) if _BYTE_PIECE.fullmatch(piece)}
        if vocab:
            kept.add(min(range(len(vocab)), key=lambda i: vocab[i][1]))
        return kept
    prefix = model["continuing_subword_prefix"]
    return {i for piece, i in model["vocab"].items() if len(piece.removeprefix(prefix)) == 1}


def kept_ids(tokenizer, sources: Iterable[Iterable[list[str]]]) -> list[int]:
    """The teacher ids a trimmed student keeps, sorted: special tokens, the pieces of every
    sentence of `sources` (each an iterable of pre-split sentences) and single characters."""
    kind = tokenizer_kind(tokenizer)
    model = _tokenizer_json(tokenizer)["model"]
    kept = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder) | _always_kept(kind, model)
    # the padding id keeps its value: RoBERTa-style models number positions from it
    kept |= set(range((tokenizer.pad_token_id or 0) + 1))
    for words in _new_words(sources):
        kept.update(_encode(tokenizer, words))
        if kind == "WordPiece":
            kept |= _wordpiece_accepted(tokenizer, model, words)
    return sorted(kept)


def trim_tokenizer(tokenizer, kept: list[int]):
    """A tokenizer of the same class holding only the `kept` teacher ids, renumbered by rank.

    Written out and loaded back the way every saved model folder is, so that it round-trips
    through `save_pretrained` and `AutoTokenizer.from_pretrained` unchanged.
    """
    kind = tokenizer_kind(tokenizer)
    new_id = {old: new for new, old in enumerate(kept)}
    missing = [t for t in tokenizer.all_special_ids if t not in new_id]
    assert not missing, f"special token ids {missing} not kept"
    content = _tokenizer_json(tokenizer)
    model = content["model"]
    if kind == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept if old < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        by_id = {i: piece for piece, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new_id[old] for old in kept if old in by_id}
    content["added_tokens"] = [dict(token, id=new_id[token["id"]]) for token in content["added_tokens"]
                               if token["id"] in new_id]
    _renumber_post_processor(content.get("post_processor"), new_id)
    if content.get("padding") and content["padding"].get("pad_id") is not None:  # padding baked into the file
        content["padding"]["pad_id"] = new_id[content["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        (Path(scratch) / "tokenizer.json").write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
        settings_file = Path(scratch) / "tokenizer_config.json"
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in settings:
            settings["added_tokens_decoder"] = {str(new_id[int(i)]): v for i, v in settings["added_tokens_decoder"].items()
                                                if int(i) in new_id}
        settings_file.write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        trimmed = AutoTokenizer.from_pretrained(scratch, **_loading_options(tokenizer))
    assert len(trimmed) == len(kept), (len(trimmed), len(kept))
    return trimmed


def _loading_options(tokenizer) -> dict:
    return {"add_prefix_space": True} if getattr(tokenizer, "add_prefix_space", None) else {}


def _renumber_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """Special-token ids inside the post-processor (CLS/SEP or <s>/</s> around each input)."""
    if not processor:
        return
    for key in ("cls", "sep"):  # RobertaProcessing, BertProcessing: [token, id]
        if isinstance(processor.get(key), list):
            processor[key][1] = new_id[processor[key][1]]
    for special in (processor.get("special_tokens") or {}).values():  # TemplateProcessing
        special["ids"] = [new_id[i] for i in special["ids"]]
    for inner in processor.get("processors") or []:  # Sequence
        _renumber_post_processor(inner, new_id)


def trim_embeddings(model, kept: list[int]) -> None:
    """Keep only the `kept` rows of the word embeddings (renumbered by rank), in place.

    `model` is an NERModel or a Hugging Face token classifier. The config's vocabulary size and
    special ids follow, and so does the padding index that RoBERTa-style models derive their
    position ids from.
    """
    backbone = getattr(model, "backbone", model)
    embeddings = backbone.base_model.embeddings
    old = embeddings.word_embeddings
    new_id = {teacher_id: i for i, teacher_id in enumerate(kept)}
    config = backbone.config
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if value is not None:
            setattr(config, name, new_id.get(value))
    new = nn.Embedding(len(kept), old.embedding_dim, padding_idx=config.pad_token_id,
                       device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.tensor(kept, device=old.weight.device)])
    embeddings.word_embeddings = new
    if hasattr(embeddings, "padding_idx"):
        embeddings.padding_idx = config.pad_token_id
    config.vocab_size = len(kept)


def teacher_to_student_ids(teacher_tokenizer, student_tokenizer) -> torch.Tensor:
    """(teacher vocabulary,) the student id of each teacher id, matched by piece; the student's
    unknown-token id for the pieces it does not have."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    foreign = sum(piece not in teacher_vocab for piece in student_vocab)
    if foreign:
        raise PipelineError(f"the teacher (teacher.model_name) does not share the student's vocabulary: {foreign} "
                            f"of the student's {len(student_vocab)} pieces are not in the teacher's. Set "
                            "teacher.model_name to the teacher that stage 1 used.")
    lookup = torch.full((max(teacher_vocab.values()) + 1,), student_tokenizer.unk_token_id, dtype=torch.long)
    for piece, student_id in student_vocab.items():
        lookup[teacher_vocab[piece]] = student_id
    return lookup


def describe_trim(before: int, after: int, parameters_saved: int) -> str:
    """One line for stage 1's output."""
    return (f"Vocabulary trimmed from {before:,} to {after:,} pieces ({after / before:.1%}): "
            f"{parameters_saved / 1e6:.2f}M embedding parameters saved.")
