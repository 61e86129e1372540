"""Tests for data_loader.py: data format checks and the French word tokenizer (CPU, seconds)."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import data_loader
from data_loader import (DataFormatError, Example, Word, read_examples, read_label2id,
                         split_words, verify_data_format)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no {SHARED_DATA}")

LABEL2ID = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
GOOD = '{"tokens": ["Jean", "habite", "à", "Paris"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}'


def write_lines(folder, lines, name="bad.jsonl"):
    """Write lines (str) as a UTF-8 JSONL file with a final newline; returns its path."""
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def problems_of(path, label2id=None):
    """The DataFormatError message raised for path (the test fails if nothing is raised)."""
    with pytest.raises(DataFormatError) as info:
        read_examples(path, label2id)
    return str(info.value)

# -----------------------------------------------------------------------------
# data format: one broken line 3 per case, after two good lines


def line(tokens, tags, **extra):
    return json.dumps({"tokens": tokens, "ner_tags": tags, **extra}, ensure_ascii=False)


BROKEN_LINES = {
    "invalid json": ('{"tokens": ["a"], "ner_tags": ["O"]', ["invalid JSON at column 36"]),
    "not an object": ('["a", "O"]', ["expected a JSON object, got list"]),
    "missing tokens": ('{"ner_tags": ["O"]}', ["missing key 'tokens'"]),
    "missing ner_tags": ('{"tokens": ["a"]}', ["missing key 'ner_tags'"]),
    "tokens not a list": ('{"tokens": "a b", "ner_tags": ["O", "O"]}', ["tokens must be a list", "got str"]),
    "non-string token": ('{"tokens": ["a", 5], "ner_tags": ["O", "O"]}', ["tokens[1] is 5: expected a string"]),
    "non-string tag": ('{"tokens": ["a"], "ner_tags": [null]}', ["ner_tags[0] is None: expected a string"]),
    "length mismatch": (line(["a", "b"], ["O"]), ["2 tokens and 1 ner_tags"]),
    "empty sentence": (line([], []), ["0 tokens and 0 ner_tags"]),
    "empty token": (line(["a", ""], ["O", "O"]), ["tokens[1] is '': empty"]),
    "token with space": (line(["a b", "c"], ["O", "O"]), ["tokens[0] is 'a b': contains whitespace"]),
    "token with nbsp": (line(["x", "a\u00a0b"], ["O", "O"]), ["tokens[1] is 'a\\xa0b': contains whitespace"]),
    "token with tab": (line(["a\t"], ["O"]), ["tokens[0] is 'a\\t'"]),
    "tag without prefix": (line(["a", "b"], ["O", "PER"]), ["ner_tags[1] is 'PER': not 'O', 'B-X' or 'I-X'"]),
    "tag with empty type": (line(["a"], ["B-"]), ["ner_tags[0] is 'B-'"]),
    "lower-case tag": (line(["a"], ["b-PER"]), ["ner_tags[0] is 'b-PER'"]),
    "I after O": (line(["a", "b"], ["O", "I-PER"]), ["ner_tags[1] is 'I-PER' but follows 'O'"]),
    "I of another type": (line(["a", "b"], ["B-PER", "I-LOC"]), ["ner_tags[1] is 'I-LOC' but follows 'B-PER'"]),
    "I first": (line(["a"], ["I-PER"]), ["ner_tags[0] is 'I-PER' but starts the sentence"]),
    "whitespace-only line": ("   \t", ["blank line"]),
}


@pytest.mark.parametrize("case", BROKEN_LINES)
def test_broken_line_is_reported_with_file_line_and_field(tmp_path, case):
    text, expected = BROKEN_LINES[case]
    path = write_lines(tmp_path, [GOOD, GOOD, text, GOOD])
    message = problems_of(path)
    assert "bad.jsonl:3: " in message
    for part in expected:
        assert part in message
    assert message.splitlines()[0] == f"1 problem in {path}:"
    assert "bad.jsonl:1:" not in message and "bad.jsonl:4:" not in message


def test_unknown_tag_names_the_tag_and_the_label_file(tmp_path):
    path = write_lines(tmp_path, [GOOD, GOOD, line(["a", "b"], ["O", "B-ORG"])])
    (tmp_path / "label2id.json").write_text(json.dumps(LABEL2ID))
    message = problems_of(path)
    assert "bad.jsonl:3: ner_tags[1] is 'B-ORG': unknown tag" in message
    assert "label2id.json" in message
    # the same tag passes the BIO syntax check when no label set applies
    (tmp_path / "label2id.json").unlink()
    assert len(read_examples(path)) == 3


def test_blank_lines_are_reported_but_the_final_newline_is_not(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{GOOD}\n\n", encoding="utf-8")
    message = problems_of(path)
    assert "bad.jsonl:2: blank line" in message and "bad.jsonl:4: blank line" in message
    assert "2 problems" in message
    path.write_text(f"{GOOD}\n{GOOD}", encoding="utf-8")  # no final newline at all is fine too
    assert len(read_examples(path)) == 2


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert "no sentences" in problems_of(empty)
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataFormatError) as info:
        read_examples(missing)
    assert not isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value)


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD + "\r\n" + GOOD + "\r\n").encode("utf-8"))
    examples = read_examples(path)
    assert [ex.tokens for ex in examples] == [("Jean", "habite", "à", "Paris")] * 2


def test_invalid_utf8_is_reported_on_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"tokens": ["caf\xe9"], "ner_tags": ["O"]}\n' + GOOD.encode() + b"\n")
    message = problems_of(path)
    assert "bad.jsonl:2: not valid UTF-8" in message and "0xe9" in message
    assert "1 problem in" in message


def test_more_than_20_problems_lists_20_then_a_count(tmp_path):
    path = write_lines(tmp_path, [GOOD] + [line(["a"], ["I-PER"])] * 25)
    with pytest.raises(DataFormatError) as info:
        read_examples(path)
    message = str(info.value)
    assert len(info.value.problems) == 25
    assert message.splitlines()[0] == f"25 problems in {path}:"
    assert sum("bad.jsonl:" in l for l in message.splitlines()[1:]) == 20
    assert "bad.jsonl:21:" in message and "bad.jsonl:22:" not in message
    assert message.splitlines()[-1].strip() == "... and 5 more problems"


def reference_tags_ok(tags, labels):
    """The BIO rules written plainly, to check the regex fast path of the tag check against."""
    prev = "O"
    for tag in tags:
        if not (tag == "O" or (tag[:2] in ("B-", "I-") and tag[2:] and not any(c.isspace() for c in tag))):
            return False
        if labels is not None and tag not in labels:
            return False
        if tag[:2] == "I-" and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


@pytest.mark.parametrize("labels", [None, frozenset(LABEL2ID), frozenset({"O"})])
def test_tag_check_fast_path_agrees_with_the_plain_rules(labels):
    alphabet = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG",  # valid first: half the draws use only these
                "I-", "B-PER I-PER", "", "O ", "PER", "I-PE"]
    rng = random.Random(1)
    for _ in range(5000):
        tags = rng.choices(alphabet[:5] if rng.random() < 0.5 else alphabet, k=rng.randint(1, 6))
        assert (data_loader._tag_problems(tags, labels, "label2id") == []) == reference_tags_ok(tags, labels), tags


def test_examples_keep_lines_and_ignore_extra_keys(tmp_path):
    path = write_lines(tmp_path, [GOOD, line(["Marie", "Curie"], ["B-PER", "I-PER"], id=7, source="x")])
    assert read_examples(path, LABEL2ID) == [
        Example(("Jean", "habite", "à", "Paris"), ("B-PER", "O", "O", "B-LOC"), 1),
        Example(("Marie", "Curie"), ("B-PER", "I-PER"), 2),
    ]

# -----------------------------------------------------------------------------
# label2id


def test_label2id_beside_the_file_is_used_and_an_explicit_one_wins(tmp_path):
    path = write_lines(tmp_path, [GOOD, line(["ONU"], ["B-ORG"])], name="data.jsonl")
    (tmp_path / "label2id.json").write_text(json.dumps(LABEL2ID))
    assert "data.jsonl:2: ner_tags[0] is 'B-ORG': unknown tag" in problems_of(path)
    with_org = {**LABEL2ID, "B-ORG": 5, "I-ORG": 6}
    assert len(read_examples(path, with_org)) == 2
    (tmp_path / "other.json").write_text(json.dumps(with_org))
    assert len(read_examples(path, tmp_path / "other.json")) == 2
    assert "not in label2id" in problems_of(path, LABEL2ID)


@pytest.mark.parametrize("label2id, expected", [
    ({"O": 0, "B-PER": 1, "I-PER": 3}, "ids must be exactly 0..2"),
    ({"O": 0, "B-PER": 1, "I-PER": 1}, "duplicated: [1]"),
    ({"B-PER": 0, "I-PER": 1}, "label 'O' is missing"),
    ({"O": 0, "PER": 1}, "label 'PER' is not 'O', 'B-X' or 'I-X'"),
    ({"O": 0, "B-PER": 1}, "label I-PER is missing"),
    ({"O": 0, "B-PER": "1", "I-PER": 2}, "id of 'B-PER' is '1', expected an integer"),
    (["O", "B-PER"], "expected a JSON object"),
])
def test_bad_label2id_is_reported(tmp_path, label2id, expected):
    path = tmp_path / "label2id.json"
    path.write_text(json.dumps(label2id))
    with pytest.raises(DataFormatError) as info:
        read_label2id(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_label2id_invalid_json_gives_the_line(tmp_path):
    path = tmp_path / "label2id.json"
    path.write_text('{\n "O": 0,\n "B-PER": 1\n "I-PER": 2\n}')
    with pytest.raises(DataFormatError) as info:
        read_label2id(path)
    assert "label2id.json:4: invalid JSON" in str(info.value)
    assert read_label2id(write_lines(tmp_path, [json.dumps(LABEL2ID)], "ok.json")) == LABEL2ID

# -----------------------------------------------------------------------------
# summary, command line, real data, speed


def test_summary_counts_are_exact(tmp_path, capsys):
    path = write_lines(tmp_path, [
        GOOD,
        line(["Marie", "Curie", "est", "née", "à", "Varsovie", "."], ["B-PER", "I-PER", "O", "O", "O", "B-LOC", "O"]),
        line(["Bonjour"], ["O"]),
    ], name="small.jsonl")
    (tmp_path / "label2id.json").write_text(json.dumps(LABEL2ID))
    summary = verify_data_format(path)
    assert summary == {
        "file": str(path), "sentences": 3, "tokens": 12, "entities": 4,
        "entities_per_type": {"LOC": 2, "PER": 2}, "longest_sentence_words": 7,
        "label2id_file": str(tmp_path / "label2id.json"),
    }
    assert list(summary["entities_per_type"]) == ["LOC", "PER"]
    out = capsys.readouterr().out
    assert "3 sentences" in out and "12 tokens" in out and "LOC 2, PER 2" in out
    assert verify_data_format(path, LABEL2ID)["label2id_file"] is None


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "data_loader.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_cli_exit_status_and_report(tmp_path):
    good = write_lines(tmp_path, [GOOD], name="good.jsonl")
    bad = write_lines(tmp_path, [GOOD, line(["a"], ["I-PER"])])
    ok = run_cli(good)
    assert ok.returncode == 0 and "good.jsonl: OK" in ok.stdout
    failed = run_cli(good, bad, tmp_path / "missing.jsonl")
    assert failed.returncode == 1
    assert "bad.jsonl:2: ner_tags[0] is 'I-PER'" in failed.stdout + failed.stderr
    assert "missing.jsonl" in failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    (tmp_path / "label2id.json").write_text("{")
    broken_labels = run_cli(good, "--label2id", tmp_path / "label2id.json")
    assert broken_labels.returncode == 1 and "Traceback" not in broken_labels.stderr


@needs_shared_data
def test_real_data_passes():
    summary = verify_data_format(SHARED_DATA / "europeana_fr" / "val.jsonl")
    assert summary["sentences"] == 978
    assert summary["label2id_file"] == str(SHARED_DATA / "europeana_fr" / "label2id.json")


# -----------------------------------------------------------------------------
# French word tokenizer


def words(text):
    return [w.text for w in split_words(text)]


# expected words written space-separated (no word contains whitespace)
@pytest.mark.parametrize("text, expected", [
    # elisions, both apostrophes, any case; the apostrophe stays with the elided word
    ("l'homme d'affaires", "l' homme d' affaires"),
    ("L’école qu’il aime", "L’ école qu’ il aime"),
    ("QU'IL J'ai N'est S'il C'est M'a T'as", "QU' IL J' ai N' est S' il C' est M' a T' as"),
    ("jusqu'à lorsqu'on puisqu'elle quoiqu'il presqu'île",
     "jusqu' à lorsqu' on puisqu' elle quoiqu' il presqu' île"),
    ("l' homme", "l' homme"),  # as the data is joined with spaces
    ("jusqu'aujourd'hui", "jusqu' aujourd'hui"),
    # apostrophes that are not elisions
    ("aujourd'hui Aujourd’hui prud'hommes O'Neill", "aujourd'hui Aujourd’hui prud'hommes O'Neill"),
    ("il dit 'bonjour' ici", "il dit ' bonjour ' ici"),
    # hyphens
    ("lui-même a-t-il peut-être", "lui-même a-t-il peut-être"),
    ("Saint-Étienne Jean-Pierre Île-de-France", "Saint-Étienne Jean-Pierre Île-de-France"),
    ("oui - non -- enfin", "oui - non -- enfin"),
    ("l'Île-de-France", "l' Île-de-France"),
    # accents, precomposed and combining
    ("Événement à Genève", "Événement à Genève"),
    ("e\u0301te\u0301 cafe\u0301.", "e\u0301te\u0301 cafe\u0301 ."),
    # numbers
    ("3,5 12h30 1.000 10:30 75001", "3,5 12h30 1.000 10:30 75001"),
    ("le 1er, le 2ème et le 3e", "le 1er , le 2ème et le 3e"),
    ("en 2020.", "en 2020 ."),
    ("3,5, puis 4.", "3,5 , puis 4 ."),
    ("de -2200 à 1939-1945", "de -2200 à 1939-1945"),
    # punctuation and symbols
    ("Quoi ?! Bon... Hmm…", "Quoi ? ! Bon ... Hmm …"),
    ("« Paris » (75) [note]", "« Paris » ( 75 ) [ note ]"),
    ('"Le Monde" 50% 3€ a+b=c* km/h', '" Le Monde " 50 % 3 € a + b = c * km / h'),
    ("M. Dupont et Mme. Durand, Dr. House", "M . Dupont et Mme . Durand , Dr . House"),
    # emojis, one token each, sequences kept together
    ("Bravo👏🏽!", "Bravo 👏🏽 !"),
    ("famille 👨‍👩‍👧 🇫🇷 ❤️😀", "famille 👨‍👩‍👧 🇫🇷 ❤️ 😀"),
    # whitespace of any kind separates words
    ("a\tb\u00a0c\u202fd\n\ne   f\r\n", "a b c d e f"),
    ("« Paris »", "« Paris »"),
    ("", ""),
    (" \u00a0\t", ""),
])
def test_split_words(text, expected):
    assert words(text) == expected.split()


def random_texts(n, seed=0):
    """Random strings over an alphabet full of the tokenizer's edge cases."""
    alphabet = list("abcdeéèàçlqujsdLQ0123456789'’-.,:;!?()«»\"/%€+=*…_") + [
        " ", " ", "\t", "\n", "\u00a0", "\u202f", "\u0301", "😀", "🏽", "\u200d", "\ufe0f", "🇫", "🇷", "❤"]
    rng = random.Random(seed)
    return ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(n)]


def test_split_words_offsets_are_exact():
    texts = random_texts(2000) + ["L’homme qu'il a vu à Saint-Étienne, le 3,5 (12h30) !?… 👨‍👩‍👧"]
    for text in texts:
        ws = split_words(text)
        assert all(isinstance(w, Word) and text[w.start:w.end] == w.text for w in ws), text
        assert all(w.text and not any(c.isspace() for c in w.text) for w in ws), text
        assert all(a.end <= b.start for a, b in zip(ws, ws[1:])), text
        # nothing but whitespace is dropped
        assert "".join(w.text for w in ws) == "".join(text.split()), text


@needs_shared_data
def test_split_words_reproduces_the_training_tokenization():
    lines = (SHARED_DATA / "wikiner_fr" / "val.jsonl").read_text(encoding="utf-8").splitlines()[:500]
    sentences = [json.loads(l)["tokens"] for l in lines]
    same = sum(words(" ".join(tokens)) == tokens for tokens in sentences)
    rate = same / len(sentences)
    print(f"split_words reproduces {rate:.1%} of {len(sentences)} wikiner_fr val sentences")
    assert rate >= 0.97, f"only {rate:.1%} of sentences tokenized as in the data"


# -----------------------------------------------------------------------------
# Encoding: subwords, windows, batches

from data_loader import (EncodedWindow, LengthGroupedBatchSampler, batches_by_length, collate_windows,  # noqa: E402
                         encode_sentences, plan_windows, subword_pieces)

LABELS = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}


def test_first_subword_labelling_and_special_tokens(unigram_tokenizer):
    tok = unigram_tokenizer
    words = ["Jean-Baptiste", "habite", "Saint-Malo", "."]
    [window] = encode_sentences(tok, [words], 64, tags=[["B-PER", "O", "B-LOC", "O"]], label2id=LABELS)
    pieces = subword_pieces(tok, [words])[0]
    assert window.input_ids[0] == tok.cls_token_id and window.input_ids[-1] == tok.sep_token_id
    assert len(window.input_ids) == 2 + sum(len(p) for p in pieces) and len(pieces[0]) > 1
    expected_starts, position = [], 1
    for word_pieces in pieces:
        expected_starts.append(position)
        position += len(word_pieces)
    assert list(window.word_starts) == expected_starts      # continuation subwords carry no label
    assert [window.input_ids[s] for s in window.word_starts] == [p[0] for p in pieces]
    assert window.word_labels == (1, 0, 3, 0)


def test_word_without_subwords_gets_unk_and_is_not_dropped(unigram_tokenizer):
    tok = unigram_tokenizer
    words = ["Paris", "\u200b", "Lyon"]  # a zero-width space encodes to no subword at all
    assert tok(["\u200b"], is_split_into_words=True, add_special_tokens=False)["input_ids"] in ([], [tok.unk_token_id])
    pieces = subword_pieces(tok, [words])[0]
    assert len(pieces) == 3 and pieces[1] == [tok.unk_token_id]
    [window] = encode_sentences(tok, [words], 64, tags=[["B-LOC", "O", "B-LOC"]], label2id=LABELS)
    assert len(window.word_starts) == 3 and window.word_labels == (3, 0, 3)


def test_plan_windows_never_drops_a_word_and_prefers_cuts_outside_entities():
    lengths = [3] * 20
    windows = plan_windows(lengths, budget=10)
    assert windows == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15), (15, 18), (18, 20)]
    breakable = [True] * 21
    breakable[3] = False  # word 3 continues an entity: do not cut before it
    assert plan_windows(lengths, 10, breakable=breakable)[0] == (0, 2)
    overlapping = plan_windows(lengths, 12, overlap=6)
    assert overlapping[0] == (0, 4) and overlapping[1][0] == 2
    assert all(b[0] < a[1] for a, b in zip(overlapping, overlapping[1:]))           # they overlap
    assert overlapping[-1][1] == 20 and all(sum(lengths[s:e]) <= 12 for s, e in overlapping)
    assert plan_windows([25, 1], budget=10) == [(0, 1), (1, 2)]  # a word longer than a window


def test_long_sentence_is_split_into_windows_at_word_boundaries(unigram_tokenizer):
    tok = unigram_tokenizer
    words = ["Monsieur", "Jean", "Dupont", "habite", "à", "Rennes", "."] * 30
    tags = ["O", "B-PER", "I-PER", "O", "O", "B-LOC", "O"] * 30
    windows = encode_sentences(tok, [words], 32, tags=[tags], label2id=LABELS)
    assert len(windows) > 5 and all(len(w.input_ids) <= 32 for w in windows)
    covered = [i for w in windows for i in range(w.first_word, w.first_word + len(w.word_starts))]
    assert covered == list(range(len(words)))                                  # every word exactly once
    labels = [l for w in windows for l in w.word_labels]
    assert labels == [LABELS[t] for t in tags]                                  # cuts avoided the entities
    assert all(w.word_labels[0] != LABELS["I-PER"] for w in windows)


def test_an_entity_cut_by_a_window_restarts_with_b(unigram_tokenizer):
    tok = unigram_tokenizer
    words = ["Jean"] + ["Dupont"] * 40
    windows = encode_sentences(tok, [words], 16, tags=[["B-PER"] + ["I-PER"] * 40], label2id=LABELS)
    assert len(windows) > 1 and all(w.word_labels[0] == LABELS["B-PER"] for w in windows)
    assert all(set(w.word_labels[1:]) == {LABELS["I-PER"]} for w in windows if len(w.word_labels) > 1)


def test_collate_pads_to_the_longest_window(unigram_tokenizer):
    tok = unigram_tokenizer
    windows = encode_sentences(tok, [["Jean"], ["Jean", "habite", "à", "Paris", "depuis", "longtemps"]], 64,
                               tags=[["B-PER"], ["B-PER", "O", "O", "B-LOC", "O", "O"]], label2id=LABELS)
    batch = collate_windows(windows, tok.pad_token_id)
    longest = max(len(w.input_ids) for w in windows)
    assert batch.input_ids.shape == (2, longest) and batch.word_starts.shape == (2, 6)
    assert batch.attention_mask[0].sum() == len(windows[0].input_ids)
    assert (batch.input_ids[0, len(windows[0].input_ids):] == tok.pad_token_id).all()
    assert batch.word_mask.tolist() == [[True] + [False] * 5, [True] * 6]
    assert batch.word_labels[1].tolist() == [1, 0, 0, 3, 0, 0]


def test_length_grouped_batches_cover_everything_once_and_cut_padding():
    lengths = [random.Random(i).randint(5, 200) for i in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3, group_batches=10)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(16 * max(lengths[i] for i in b) for b in batches)
    shuffled = list(range(1000))
    random.Random(0).shuffle(shuffled)
    naive = sum(16 * max(lengths[i] for i in shuffled[k:k + 16]) for k in range(0, 1000, 16))
    assert padded < 0.7 * naive
    sampler.set_epoch(0)
    assert list(sampler) == batches                      # same seed and epoch: same order
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0, skip_batches=5)
    assert list(sampler) == batches[5:] and len(sampler) == 58


def test_evaluation_batches_by_count_and_by_token_budget():
    lengths = [random.Random(i).randint(3, 120) for i in range(300)]
    windows = [EncodedWindow(tuple(range(n)), (1,), None, i, 0) for i, n in enumerate(lengths)]
    by_count = batches_by_length(windows, batch_size=16)
    assert [len(b) for b in by_count] == [16] * 18 + [12]
    assert [lengths[i] for b in by_count for i in b] == sorted(lengths)
    by_budget = batches_by_length(windows, batch_size=64, max_tokens=1000)
    assert sorted(i for b in by_budget for i in b) == list(range(300))
    assert all(len(b) * max(lengths[i] for i in b) <= 1000 and len(b) <= 64 for b in by_budget)
    # each batch is full: one more window would break the budget or the count
    for batch, following in zip(by_budget, by_budget[1:]):
        assert len(batch) == 64 or (len(batch) + 1) * lengths[following[0]] > 1000
    assert len(by_budget) < len(batches_by_length(windows, batch_size=8))  # short windows share bigger batches
    huge = windows + [EncodedWindow(tuple(range(2000)), (1,), None, 300, 0)]
    assert batches_by_length(huge, batch_size=64, max_tokens=1000)[-1] == [300]  # alone, never dropped
    unsorted = batches_by_length(windows, batch_size=16, sort=False)
    assert [i for b in unsorted for i in b] == list(range(300))


def test_distributed_shards_are_disjoint_with_equal_batch_counts():
    lengths = list(range(101))
    shards = []
    for rank in range(2):
        sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=1, num_replicas=2, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 7
    indices = [set(i for b in shard for i in b) for shard in shards]
    assert indices[0] | indices[1] == set(range(101)) and len(indices[0] & indices[1]) <= 1  # one pad
