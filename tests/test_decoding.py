"""Tests for decoding.py: BIO handling, constrained Viterbi and marginals against brute force,
window merging and seqeval on hand-built tags (CPU, pure tensors, well under a second)."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from seqeval.metrics import f1_score
from torchcrf import CRF

from data_loader import split_words

from conftest import OnlyTagger
from decoding import (Prediction, Span, Tagger, bio_spans, crf_marginals, decode_emissions, extract_entities,
                      io_to_bio, map_entity_types, merge_window_emissions, predict, repair_bio, seqeval_scores,
                      viterbi_decode, word_level_emissions)
from models import ILLEGAL_TRANSITION_SCORE, bio_constraints

BIO = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
O, B_PER, I_PER, B_LOC, I_LOC = range(5)


def is_legal(tags):
    """Strict BIO: every I-X follows B-X or I-X."""
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            return False
        previous = tag
    return True


# ---------------------------------------------------------------------------
# Tags and spans


@pytest.mark.parametrize("tags, expected", [
    ([], []),
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),     # legal: unchanged
    (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),                       # leading I-X
    (["O", "I-LOC", "I-LOC"], ["O", "B-LOC", "I-LOC"]),                       # I-X after O
    (["B-PER", "I-LOC", "I-LOC"], ["B-PER", "B-LOC", "I-LOC"]),               # I-Y after B-X
    (["B-PER", "I-PER", "I-LOC", "I-PER"], ["B-PER", "I-PER", "B-LOC", "B-PER"]),
])
def test_repair_bio(tags, expected):
    assert repair_bio(tags) == expected


@pytest.mark.parametrize("tags, expected", [
    ([], []),
    (["I-PER", "I-PER", "O", "I-LOC", "I-PER"], ["B-PER", "I-PER", "O", "B-LOC", "B-PER"]),
    (["PER", "PER", "LOC", "O"], ["B-PER", "I-PER", "B-LOC", "O"]),           # bare type names
    (["O", "I-MISC"], ["O", "B-MISC"]),
])
def test_io_to_bio(tags, expected):
    assert io_to_bio(tags) == expected


@pytest.mark.parametrize("tags, type_map, expected", [
    (["B-MISC", "I-MISC", "B-PER"], {"MISC": "O"}, ["O", "O", "B-PER"]),
    (["B-PER", "I-MISC"], {"MISC": "PER"}, ["B-PER", "I-PER"]),
    (["O", "I-MISC"], {"MISC": "ORG"}, ["O", "B-ORG"]),                       # repaired after renaming
    (["B-MISC", "I-PER"], {"MISC": "O"}, ["O", "B-PER"]),                     # fold, then repair I-PER
    (["PER", "MISC", "LOC"], {"MISC": "O"}, ["B-PER", "O", "B-LOC"]),         # bare names get a prefix
    (["B-LOC", "I-LOC"], {}, ["B-LOC", "I-LOC"]),
])
def test_map_entity_types(tags, type_map, expected):
    assert map_entity_types(tags, type_map) == expected


@pytest.mark.parametrize("tags, expected", [
    ([], []),
    (["B-PER", "I-PER", "O", "B-LOC"], [Span("PER", 0, 2), Span("LOC", 3, 4)]),
    (["B-PER", "B-PER"], [Span("PER", 0, 1), Span("PER", 1, 2)]),             # adjacent entities
    (["O", "I-PER", "I-PER"], [Span("PER", 1, 3)]),                           # illegal I-X after O starts one
    (["B-PER", "I-LOC"], [Span("PER", 0, 1), Span("LOC", 1, 2)]),             # I-LOC after B-PER: new LOC
    (["O", "O", "B-ORG", "I-ORG"], [Span("ORG", 2, 4)]),                      # entity at the end
    (["I-LOC"], [Span("LOC", 0, 1)]),
])
def test_bio_spans(tags, expected):
    assert bio_spans(tags) == expected


# ---------------------------------------------------------------------------
# Constrained CRF scores and brute force


def constrained(seed, labels=BIO):
    """Random start/transition/end scores with illegal BIO moves at -inf (as _constrained_scores)."""
    generator = torch.Generator().manual_seed(seed)
    num = len(labels)
    allowed_start, allowed_transition = bio_constraints(list(labels))
    start = torch.randn(num, generator=generator).masked_fill(~allowed_start, float("-inf"))
    transitions = torch.randn(num, num, generator=generator).masked_fill(~allowed_transition, float("-inf"))
    end = torch.randn(num, generator=generator)
    return start, transitions, end


def score_of(path, emissions, start, transitions, end):
    """Path score as a float; emissions (n, C)."""
    score = start[path[0]] + emissions[0, path[0]]
    for t in range(1, len(path)):
        score = score + transitions[path[t - 1], path[t]] + emissions[t, path[t]]
    return float(score + end[path[-1]])


def all_scores(emissions, start, transitions, end):
    """{path: score} over every label sequence of len(emissions)."""
    n, num = emissions.shape
    return {p: score_of(p, emissions, start, transitions, end)
            for p in itertools.product(range(num), repeat=n)}


def random_batch(seed, lengths, num=len(BIO)):
    generator = torch.Generator().manual_seed(seed + 100)
    emissions = torch.randn(len(lengths), max(lengths), num, generator=generator) * 2
    mask = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return emissions, mask


def test_bio_constraints_shape():
    allowed_start, allowed_transition = bio_constraints(list(BIO))
    assert allowed_start.tolist() == [True, True, False, True, False]
    assert allowed_transition[O].tolist() == [True, True, False, True, False]
    assert allowed_transition[B_PER].tolist() == [True, True, True, True, False]
    assert allowed_transition[I_LOC].tolist() == [True, True, False, True, True]


@pytest.mark.parametrize("seed", range(5))
def test_viterbi_matches_brute_force(seed):
    start, transitions, end = constrained(seed)
    lengths = [4, 3, 1, 2]
    emissions, mask = random_batch(seed, lengths)
    paths = viterbi_decode(emissions, mask, start, transitions, end)
    assert [len(p) for p in paths] == lengths
    for b, n in enumerate(lengths):
        scores = all_scores(emissions[b, :n], start, transitions, end)
        legal = {p: s for p, s in scores.items() if s > float("-inf")}
        assert all(is_legal([BIO[c] for c in p]) for p in legal)
        assert len(legal) < len(scores)
        best = max(legal, key=legal.get)
        assert tuple(paths[b]) == best


def test_viterbi_never_outputs_illegal_transitions():
    start, transitions, end = (torch.zeros(5), torch.zeros(5, 5), torch.zeros(5))
    allowed_start, allowed_transition = bio_constraints(list(BIO))
    start = start.masked_fill(~allowed_start, float("-inf"))
    transitions = transitions.masked_fill(~allowed_transition, float("-inf"))
    emissions = torch.zeros(2, 3, 5)
    emissions[0, 0, O], emissions[0, 1, I_PER], emissions[0, 2, I_PER] = 10.0, 100.0, 100.0   # O I-PER I-PER
    emissions[1, 0, I_LOC], emissions[1, 1, I_PER] = 100.0, 100.0                           # I-LOC I-PER
    mask = torch.tensor([[True, True, True], [True, True, False]])
    paths = viterbi_decode(emissions, mask, start, transitions, end)
    # best legal: B-PER I-PER I-PER (0 + 100 + 100) beats O B-PER I-PER (10 + 0 + 100)
    assert paths[0] == [B_PER, I_PER, I_PER]
    # I-LOC cannot start and I-PER cannot follow LOC: B-PER I-PER (0 + 100) is the best legal path
    assert paths[1] == [B_PER, I_PER]
    assert all(is_legal([BIO[c] for c in p]) for p in paths)


@pytest.mark.parametrize("seed", range(3))
def test_crf_marginals_match_brute_force(seed):
    start, transitions, end = constrained(seed)
    lengths = [4, 2, 1, 3]
    emissions, mask = random_batch(seed, lengths)
    marginals = crf_marginals(emissions, mask, start, transitions, end)
    assert marginals.shape == (4, 4, 5)
    for b, n in enumerate(lengths):
        scores = all_scores(emissions[b, :n], start, transitions, end)
        top = max(scores.values())
        weights = {p: math.exp(s - top) for p, s in scores.items()}
        total = sum(weights.values())
        expected = torch.zeros(n, 5, dtype=torch.float64)
        for p, w in weights.items():
            for t, c in enumerate(p):
                expected[t, c] += w / total
        assert torch.allclose(marginals[b, :n].double(), expected, atol=1e-5)
        assert torch.allclose(marginals[b, :n].sum(dim=-1), torch.ones(n), atol=1e-5)
        assert marginals[b, n:].abs().sum().item() == 0.0
        assert marginals[b, 0, I_PER].item() == 0.0 and marginals[b, 0, I_LOC].item() == 0.0


def test_viterbi_and_marginals_ignore_extra_padding_columns():
    """Rows all shorter than W: padding with garbage changes neither paths nor real marginals."""
    start, transitions, end = constrained(7)
    emissions, mask = random_batch(7, [3, 2])
    padded = torch.cat([emissions, torch.full((2, 2, 5), 50.0)], dim=1)          # W = 5
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    assert viterbi_decode(padded, padded_mask, start, transitions, end) == \
        viterbi_decode(emissions, mask, start, transitions, end)
    marginals = crf_marginals(padded, padded_mask, start, transitions, end)
    assert torch.allclose(marginals[:, :3], crf_marginals(emissions, mask, start, transitions, end), atol=1e-6)
    assert marginals[:, 3:].abs().sum().item() == 0.0


# ---------------------------------------------------------------------------
# decode_emissions (uses only model.labels and model.crf)


def one_hot_rows(indices, num=5, high=4.0):
    rows = torch.zeros(len(indices), num)
    for t, c in enumerate(indices):
        rows[t, c] = high
    return rows


def test_decode_without_crf_argmax_and_repair():
    model = SimpleNamespace(labels=BIO, crf=None)
    emissions = one_hot_rows([I_PER, I_PER, O, I_LOC, B_PER])
    (prediction,) = decode_emissions(model, [emissions])
    assert prediction.tags == ["B-PER", "I-PER", "O", "B-LOC", "B-PER"]
    expected_prob = math.exp(4.0) / (math.exp(4.0) + 4)
    assert prediction.scores == pytest.approx([expected_prob] * 5, abs=1e-6)


def test_decode_without_crf_io_labels_become_bio():
    model = SimpleNamespace(labels=("O", "I-PER", "I-LOC"), crf=None)
    emissions = one_hot_rows([1, 1, 2, 0, 1], num=3)
    (prediction,) = decode_emissions(model, [emissions])
    assert prediction.tags == ["B-PER", "I-PER", "B-LOC", "O", "B-PER"]
    assert prediction.scores == pytest.approx([math.exp(4.0) / (math.exp(4.0) + 2)] * 5, abs=1e-6)


def test_decode_empty_sentences_keep_their_position():
    model = SimpleNamespace(labels=BIO, crf=None)
    predictions = decode_emissions(model, [torch.zeros(0, 5), one_hot_rows([B_PER, I_PER]),
                                           torch.zeros(0, 5), one_hot_rows([B_LOC])])
    assert len(predictions) == 4
    assert predictions[0] == Prediction([], []) and predictions[2] == Prediction([], [])
    assert predictions[1].tags == ["B-PER", "I-PER"]
    assert predictions[3].tags == ["B-LOC"]
    assert decode_emissions(model, [torch.zeros(0, 5)]) == [Prediction([], [])]
    assert decode_emissions(model, []) == []


def crf_stand_in():
    """A CRF with zero learnt scores and illegal moves at ILLEGAL_TRANSITION_SCORE (as NERModel)."""
    crf = CRF(len(BIO), batch_first=True)
    allowed_start, allowed_transition = bio_constraints(list(BIO))
    with torch.no_grad():
        crf.start_transitions.zero_().masked_fill_(~allowed_start, ILLEGAL_TRANSITION_SCORE)
        crf.transitions.zero_().masked_fill_(~allowed_transition, ILLEGAL_TRANSITION_SCORE)
        crf.end_transitions.zero_()
    return SimpleNamespace(labels=BIO, crf=crf)


def test_decode_with_crf_is_legal_with_probabilities():
    model = crf_stand_in()
    favour_illegal = one_hot_rows([O, I_PER, I_PER], high=10.0)
    favour_illegal[0, O] = 3.0
    leading_i = one_hot_rows([I_LOC, O], high=10.0)
    leading_i[0, B_LOC] = 1.0                        # B-LOC O (11) beats O O (10)
    predictions = decode_emissions(model, [favour_illegal, torch.zeros(0, 5), leading_i])
    # B-PER I-PER I-PER (0 + 10 + 10) beats O B-PER I-PER (3 + 0 + 10)
    assert predictions[0].tags == ["B-PER", "I-PER", "I-PER"]
    assert predictions[1] == Prediction([], [])
    assert predictions[2].tags == ["B-LOC", "O"]
    for prediction in (predictions[0], predictions[2]):
        assert is_legal(prediction.tags)
        assert len(prediction.scores) == len(prediction.tags)
        assert all(0.0 < s <= 1.0 for s in prediction.scores)


def test_decode_with_crf_scores_are_marginals_of_the_path():
    model = crf_stand_in()
    emissions = one_hot_rows([B_PER, I_PER, O], high=2.0)
    (prediction,) = decode_emissions(model, [emissions])
    assert prediction.tags == ["B-PER", "I-PER", "O"]
    allowed_start, allowed_transition = bio_constraints(list(BIO))
    start = torch.zeros(5).masked_fill(~allowed_start, float("-inf"))
    transitions = torch.zeros(5, 5).masked_fill(~allowed_transition, float("-inf"))
    scores = all_scores(emissions, start, transitions, torch.zeros(5))
    total = sum(math.exp(s) for s in scores.values())
    expected = [sum(math.exp(s) for p, s in scores.items() if p[t] == c) / total
                for t, c in enumerate([B_PER, I_PER, O])]
    assert prediction.scores == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------
# Word-level emissions and windows


def test_word_level_emissions_gathers_first_subwords():
    logits = torch.arange(8.0).view(1, 4, 2)          # token t has [2t, 2t + 1]
    words = word_level_emissions(logits, torch.tensor([[1, 3, 0]]))
    assert words.shape == (1, 3, 2)
    assert words.tolist() == [[[2.0, 3.0], [6.0, 7.0], [0.0, 1.0]]]


def window(first, end, tag):
    """Window emissions (end - first, 2): column 0 = window tag, column 1 = sentence word index."""
    values = torch.zeros(end - first, 2)
    values[:, 0] = tag
    values[:, 1] = torch.arange(first, end, dtype=torch.float)
    return first, end, values


def test_merge_two_overlapping_windows_cuts_in_the_middle():
    merged = merge_window_emissions([window(0, 6, 1), window(3, 10, 2)], 10)
    assert merged.shape == (10, 2)
    assert merged[:, 0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]      # cut at (3 + 6) // 2 = 4
    assert merged[:, 1].tolist() == list(range(10))                   # each word its own row


def test_merge_three_windows_in_any_order():
    merged = merge_window_emissions([window(7, 12, 3), window(0, 6, 1), window(3, 10, 2)], 12)
    # cuts at (3 + 6) // 2 = 4 and (7 + 10) // 2 = 8
    assert merged[:, 0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert merged[:, 1].tolist() == list(range(12))


def test_merge_single_and_non_overlapping_windows():
    single = merge_window_emissions([window(0, 5, 7)], 5)
    assert single[:, 0].tolist() == [7] * 5 and single[:, 1].tolist() == list(range(5))
    apart = merge_window_emissions([window(0, 4, 1), window(4, 9, 2)], 9)
    assert apart[:, 0].tolist() == [1] * 4 + [2] * 5
    assert apart[:, 1].tolist() == list(range(9))


# ---------------------------------------------------------------------------
# seqeval


def test_seqeval_scores_on_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"], ["B-LOC", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-LOC", "O", "O"], ["B-PER", "O"]]
    # PER: TP 1, FP 1, FN 0; LOC: TP 1, FP 0, FN 1; ORG: TP 0, FP 0, FN 1
    scores = seqeval_scores(gold, predicted)
    overall = scores["overall"]
    assert overall["precision"] == pytest.approx(2 / 3)
    assert overall["recall"] == pytest.approx(2 / 4)
    assert overall["f1"] == pytest.approx(4 / 7)
    assert overall["support"] == 4
    assert list(scores["per_type"]) == ["LOC", "ORG", "PER"]
    assert scores["per_type"]["PER"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert scores["per_type"]["LOC"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_seqeval_strict_does_not_accept_entity_starting_with_i():
    gold, predicted = [["B-PER", "O"]], [["I-PER", "O"]]
    assert f1_score(gold, predicted) == 1.0            # lenient conlleval mode would accept it
    scores = seqeval_scores(gold, predicted)
    assert scores["overall"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["PER"]["support"] == 1
    # after repair the same prediction is correct
    assert seqeval_scores(gold, [repair_bio(predicted[0])])["overall"]["f1"] == 1.0


def test_seqeval_wrong_boundary_is_not_a_match():
    scores = seqeval_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    assert scores["overall"]["precision"] == 0.0 and scores["overall"]["recall"] == 0.0
    assert scores["overall"]["support"] == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # seqeval averages over no entity types
def test_seqeval_without_entities_gives_zeros():
    scores = seqeval_scores([["O", "O"]], [["O", "O"]])
    assert scores == {"overall": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}, "per_type": {}}
    spurious = seqeval_scores([["O", "O"]], [["B-PER", "O"]])
    assert spurious["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


# ---------------------------------------------------------------------------
# The Tagger interface and the text -> entities path

class IdTagger:
    """The smallest Tagger: logits that depend only on the subword id (so windows agree)."""
    labels = BIO
    max_subwords = 16            # forces long sentences through several overlapping windows

    def __init__(self, use_crf: bool):
        self.crf = None
        if use_crf:
            torch.manual_seed(0)
            self.crf = CRF(len(BIO), batch_first=True)
            allowed_start, allowed_transition = bio_constraints(list(BIO))
            with torch.no_grad():
                self.crf.start_transitions.masked_fill_(~allowed_start, ILLEGAL_TRANSITION_SCORE)
                self.crf.transitions.masked_fill_(~allowed_transition, ILLEGAL_TRANSITION_SCORE)

    def token_logits(self, input_ids, attention_mask):
        return 3.0 * torch.nn.functional.one_hot(input_ids % len(BIO), len(BIO)).float()   # (B, T, C)


@pytest.mark.parametrize("use_crf", [False, True], ids=["argmax", "crf"])
def test_decoding_needs_nothing_but_the_tagger_interface(unigram_tokenizer, use_crf):
    tagger = IdTagger(use_crf)
    assert isinstance(tagger, Tagger)
    sentences = [["Jean", "habite", "à", "Paris", "."], [], ["mot", "Rennes"] * 20]
    direct = predict(tagger, unigram_tokenizer, sentences, batch_size=2)
    through = predict(OnlyTagger(tagger), unigram_tokenizer, sentences, batch_size=2)
    assert through == direct and [len(p.tags) for p in direct] == [len(s) for s in sentences]
    assert all(is_legal(p.tags) for p in direct)
    if not use_crf:  # the long sentence repeats itself, and so must its id-determined tags across windows
        assert direct[2].tags[2:38] == direct[2].tags[4:40]


def test_extract_entities_gives_character_spans_of_the_text(unigram_tokenizer):
    tagger = OnlyTagger(IdTagger(use_crf=True))
    texts = ["Le docteur Martin a reçu Mme Lefèvre à l’hôpital de Saint-Étienne.", "", "RAS."]
    found = extract_entities(tagger, unigram_tokenizer, texts)
    words = [[w.text for w in split_words(text)] for text in texts]
    expected = predict(tagger, unigram_tokenizer, words)
    assert len(found) == 3 and found[1] == []
    for text, text_words, entities, prediction in zip(texts, words, found, expected):
        assert [(e["type"], e["start"], e["end"]) for e in entities] == \
            [(s.type, s.start, s.end) for s in bio_spans(prediction.tags)]
        for entity in entities:
            assert text[entity["start_char"]:entity["end_char"]] == entity["text"]
            assert entity["text"].startswith(text_words[entity["start"]])
            assert entity["text"].endswith(text_words[entity["end"] - 1])
    assert sum(map(len, found)) > 0
