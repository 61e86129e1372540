"""Word-level prediction shared by validation, evaluation and inference.

A sentence (a list of words) is encoded into one or more windows of subwords, the model
gives emissions for each word's first subword, overlapping windows are merged (each word
takes the emissions of the window where it sits furthest from a cut), and the whole
sentence is decoded at once: constrained Viterbi when the model has a CRF, argmax with
BIO repair otherwise. Decoding never returns an illegal BIO sequence.

Decoding asks a model for four things only, the `Tagger` interface: its labels, its CRF (or
None), its longest input, and token logits. `NERModel` and the ONNX Runtime model of
`precision.py` both implement it. `extract_entities` is the whole text -> entities path that
inference.py (and any server) uses.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from data_loader import EncodedWindow, Word, batches_by_length, collate_windows, encode_sentences, split_words
from models import bio_constraints, entity_type


@runtime_checkable
class Tagger(Protocol):
    """All that decoding may use of a model (`models.NERModel`, `precision.OnnxNERModel`)."""
    labels: tuple[str, ...]   # the label of each logit column
    crf: object | None        # a torchcrf.CRF whose scores drive Viterbi decoding, or None (argmax)
    max_subwords: int         # longest input the model takes, special tokens included

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, C) scores, on any device (the model in eval mode)."""


class Prediction(NamedTuple):
    tags: list[str]      # one BIO tag per word
    scores: list[float]  # probability of each word's tag (CRF marginal or softmax)


# ---------------------------------------------------------------------------
# Tags and spans

def repair_bio(tags: list[str]) -> list[str]:
    """Turn every I-X that does not continue an X entity into B-X."""
    repaired, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or entity_type(previous) != tag[2:]):
            tag = "B-" + tag[2:]
        repaired.append(tag)
        previous = tag
    return repaired


def io_to_bio(tags: list[str]) -> list[str]:
    """IO tags (I-X or bare X) to BIO: a new entity starts wherever the type changes."""
    converted, previous_type = [], "O"
    for tag in tags:
        kind = entity_type(tag)
        converted.append("O" if kind == "O" else ("I-" if kind == previous_type else "B-") + kind)
        previous_type = kind
    return converted


def map_entity_types(tags: list[str], type_map: dict[str, str]) -> list[str]:
    """Rename entity types (a teacher's MISC -> O, say), keeping B-/I- prefixes, then repair."""
    mapped = []
    for tag in tags:
        kind = type_map.get(entity_type(tag), entity_type(tag))
        mapped.append("O" if kind == "O" else tag[:2] + kind if tag[1:2] == "-" else "I-" + kind)
    return repair_bio(mapped)


class Span(NamedTuple):
    type: str
    start: int  # first word
    end: int    # one past the last word


def bio_spans(tags: list[str]) -> list[Span]:
    """Entities of a BIO sequence; an illegal I-X (after O or another type) starts a new one."""
    spans: list[Span] = []
    start, kind = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        tag_type = entity_type(tag)
        continues = tag.startswith("I-") and tag_type == kind
        if start is not None and not continues:
            spans.append(Span(kind, start, i))
            start, kind = None, None
        if tag != "O" and not continues:
            start, kind = i, tag_type
    return spans


def seqeval_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """seqeval strict IOB2 scores: {"overall": {precision, recall, f1, support}, "per_type": {...}}.

    Overall figures are micro-averaged over entities; both inputs must be BIO.
    """
    # imported here: seqeval pulls in scikit-learn (1.7 s), which a serving worker never needs at start
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2
    report = classification_report(gold, predicted, mode="strict", scheme=IOB2,
                                   output_dict=True, zero_division=0)
    pick = lambda row: {k: float(row[k]) for k in ("precision", "recall", "f1-score")} | {"support": int(row["support"])}
    rename = lambda row: {("f1" if k == "f1-score" else k): v for k, v in pick(row).items()}
    per_type = {name: rename(row) for name, row in report.items() if not name.endswith(" avg")}
    return {"overall": rename(report["micro avg"]), "per_type": dict(sorted(per_type.items()))}


def entities_of(words: list[Word], text: str, prediction: Prediction) -> list[dict]:
    """Entities of one sentence as inference writes them: word span (end exclusive), character
    span in `text` (words carry .start/.end offsets), and mean label probability."""
    found = []
    for span in bio_spans(prediction.tags):
        start_char, end_char = words[span.start].start, words[span.end - 1].end
        scores = prediction.scores[span.start:span.end]
        found.append({"text": text[start_char:end_char], "type": span.type, "start": span.start, "end": span.end,
                      "start_char": start_char, "end_char": end_char, "score": round(sum(scores) / len(scores), 4)})
    return found


# ---------------------------------------------------------------------------
# Emissions and CRF decoding

def word_level_emissions(logits: torch.Tensor, word_starts: torch.Tensor) -> torch.Tensor:
    """Gather the first-subword logits of each word, packed left: (B, T, C), (B, W) -> (B, W, C)."""
    index = word_starts.unsqueeze(-1).expand(-1, -1, logits.size(-1))
    return logits.gather(1, index)


def _constrained_scores(model: Tagger) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CRF start, transition and end scores with illegal BIO moves set to -inf."""
    allowed_start, allowed_transition = bio_constraints(list(model.labels))
    crf = model.crf
    start = crf.start_transitions.detach().float().cpu().masked_fill(~allowed_start, float("-inf"))
    transitions = crf.transitions.detach().float().cpu().masked_fill(~allowed_transition, float("-inf"))
    return start, transitions, crf.end_transitions.detach().float().cpu()


def viterbi_decode(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                   transitions: torch.Tensor, end: torch.Tensor) -> list[list[int]]:
    """Best label sequence per row. emissions (B, W, C), mask (B, W) contiguous from 0."""
    batch, length, _ = emissions.shape
    score = start + emissions[:, 0]                                    # (B, C)
    backpointers = []
    for t in range(1, length):
        candidates = score.unsqueeze(2) + transitions                  # (B, C_prev, C)
        best, best_prev = candidates.max(dim=1)
        step = mask[:, t].unsqueeze(1)
        score = torch.where(step, best + emissions[:, t], score)
        backpointers.append(torch.where(step, best_prev, torch.arange(score.size(1)).expand_as(best_prev)))
    score = score + end
    paths = []
    lengths = mask.sum(dim=1).tolist()
    for b in range(batch):
        label = int(score[b].argmax())
        path = [label]
        for t in range(lengths[b] - 2, -1, -1):
            label = int(backpointers[t][b, label])
            path.append(label)
        paths.append(path[::-1])
    return paths


def crf_marginals(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                  transitions: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per-word label marginals P(y_t = c | x) by forward-backward: (B, W, C)."""
    batch, length, _ = emissions.shape
    lengths = mask.sum(dim=1)
    alphas = [start + emissions[:, 0]]
    for t in range(1, length):
        step = torch.logsumexp(alphas[-1].unsqueeze(2) + transitions, dim=1) + emissions[:, t]
        alphas.append(torch.where(mask[:, t].unsqueeze(1), step, alphas[-1]))
    betas = [end.expand(batch, -1).clone()]
    for t in range(length - 2, -1, -1):
        step = torch.logsumexp(transitions + (emissions[:, t + 1] + betas[0]).unsqueeze(1), dim=2)
        is_last = (lengths - 1 == t).unsqueeze(1)
        betas.insert(0, torch.where(is_last, end.expand(batch, -1), torch.where(mask[:, t + 1].unsqueeze(1), step, betas[0])))
    alpha, beta = torch.stack(alphas, dim=1), torch.stack(betas, dim=1)   # (B, W, C)
    log_z = torch.logsumexp(alphas[-1] + end, dim=1)                     # (B,)
    return torch.exp(alpha + beta - log_z.view(-1, 1, 1)) * mask.unsqueeze(-1)


def decode_emissions(model: Tagger, emissions: list[torch.Tensor], group_size: int = 64) -> list[Prediction]:
    """Decode whole-sentence word emissions (each (W, C), float) into BIO predictions.

    Sentences are decoded in groups of similar length, so that one long text among many short
    ones costs no padding (memory stays that of `group_size` texts, not of all of them).
    """
    predictions: list[Prediction | None] = [Prediction([], []) if e.size(0) == 0 else None for e in emissions]
    by_length = sorted((i for i, e in enumerate(emissions) if e.size(0) > 0), key=lambda i: emissions[i].size(0))
    for begin in range(0, len(by_length), group_size):
        group = by_length[begin:begin + group_size]
        for i, prediction in zip(group, _decode_group(model, [emissions[i] for i in group])):
            predictions[i] = prediction
    return predictions


def _decode_group(model: Tagger, emissions: list[torch.Tensor]) -> list[Prediction]:
    predictions: list[Prediction | None] = [None] * len(emissions)
    nonempty = list(range(len(emissions)))
    padded = torch.nn.utils.rnn.pad_sequence([emissions[i] for i in nonempty], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence(
        [torch.ones(emissions[i].size(0), dtype=torch.bool) for i in nonempty], batch_first=True)
    labels = model.labels
    if model.crf is not None:
        scores = _constrained_scores(model)
        paths = viterbi_decode(padded, mask, *scores)
        probabilities = crf_marginals(padded, mask, *scores)
        for row, (i, path) in enumerate(zip(nonempty, paths)):
            probs = probabilities[row, torch.arange(len(path)), torch.tensor(path)].tolist()
            predictions[i] = Prediction([labels[c] for c in path], probs)
        return predictions
    probabilities = padded.softmax(dim=-1)
    best_prob, best = probabilities.max(dim=-1)
    is_io = not any(label.startswith("B-") for label in labels)
    for row, i in enumerate(nonempty):
        n = emissions[i].size(0)
        tags = [labels[c] for c in best[row, :n].tolist()]
        predictions[i] = Prediction(io_to_bio(tags) if is_io else repair_bio(tags), best_prob[row, :n].tolist())
    return predictions


# ---------------------------------------------------------------------------
# Prediction over windows

def merge_window_emissions(windows: list[tuple[int, int, torch.Tensor]], num_words: int) -> torch.Tensor:
    """Stitch per-window word emissions (first word, end word, (n, C)) into (num_words, C).

    Where two windows overlap, the cut is the middle of the overlap, so each word takes
    the emissions of the window in which it has the most context.
    """
    windows = sorted(windows, key=lambda w: w[0])
    merged = windows[0][2].new_empty(num_words, windows[0][2].size(-1))
    for k, (first, end, values) in enumerate(windows):
        own_from = first if k == 0 else (first + windows[k - 1][1]) // 2
        own_to = end if k == len(windows) - 1 else (windows[k + 1][0] + end) // 2
        merged[own_from:own_to] = values[own_from - first:own_to - first]
    return merged


@contextmanager
def _eval_mode(model: Tagger):
    """A torch model predicts without dropout, then goes back to the mode it was in."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def predict_windows(model: Tagger, windows: list[EncodedWindow], num_words: list[int],
                    pad_id: int, batch_size: int = 64, device: torch.device | str = "cpu",
                    autocast=nullcontext, max_tokens: int | None = None,
                    sort_by_length: bool = True) -> list[Prediction]:
    """Predict every sentence from its encoded windows (see `encode_sentences`), in batches of
    similar length (see `data_loader.batches_by_length`); the order of the result is the input's."""
    per_sentence: list[list[tuple[int, int, torch.Tensor]]] = [[] for _ in num_words]
    with _eval_mode(model):
        for indices in batches_by_length(windows, batch_size, max_tokens, sort_by_length):
            chunk = [windows[i] for i in indices]
            batch = collate_windows(chunk, pad_id).to(device)
            with autocast():
                logits = model.token_logits(batch.input_ids, batch.attention_mask)
            emissions = word_level_emissions(logits.float(), batch.word_starts).cpu()
            for row, window in enumerate(chunk):
                count = len(window.word_starts)
                per_sentence[window.sentence_index].append(
                    (window.first_word, window.first_word + count, emissions[row, :count]))
    merged = [merge_window_emissions(parts, n) if n else torch.zeros(0, len(model.labels))
              for parts, n in zip(per_sentence, num_words)]
    return decode_emissions(model, merged)


def predict(model: Tagger, tokenizer, sentences: list[list[str]], batch_size: int = 64,
            max_length: int | None = None, device: torch.device | str = "cpu",
            autocast=nullcontext) -> list[Prediction]:
    """BIO tags and scores for each sentence of words, long ones through overlapping windows."""
    max_length = min(max_length or model.max_subwords, model.max_subwords)
    windows = encode_sentences(tokenizer, sentences, max_length, overlap=max_length // 4)
    return predict_windows(model, windows, [len(s) for s in sentences], tokenizer.pad_token_id,
                           batch_size, device, autocast)


def extract_entities(model: Tagger, tokenizer, texts: list[str], words: list[list[Word] | None] | None = None,
                     batch_size: int = 32, max_length: int | None = None, device: torch.device | str = "cpu",
                     autocast=nullcontext) -> list[list[dict]]:
    """The entities of each text, as inference.py writes them (see `entities_of`).

    Each text is split into words (`data_loader.split_words`) unless `words` gives them (with
    their character offsets in the text), then predicted through overlapping windows (never
    truncated) and decoded with the CRF when the model has one.
    """
    words = [split_words(text) if given is None else given
             for text, given in zip(texts, words or [None] * len(texts))]
    predictions = predict(model, tokenizer, [[w.text for w in ws] for ws in words], batch_size=batch_size,
                          max_length=max_length, device=device, autocast=autocast)
    return [entities_of(ws, text, prediction) for ws, text, prediction in zip(words, texts, predictions)]
