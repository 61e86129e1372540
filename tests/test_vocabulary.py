"""vocabulary.py: trimmed tokenizers segment like the teacher's, trimmed embeddings give the same
logits, Unigram (CamemBERT, XLM-R) and WordPiece (BERT) supported, bad input named."""
import copy
import json
import tempfile

import pytest
import torch
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from conftest import SHARED_DATA
from data_loader import collate_windows, encode_sentences, read_examples
from tools.make_demo_teacher import build_teacher
from utils import PipelineError
from vocabulary import (kept_ids, pieces_used, read_vocabulary_texts, teacher_to_student_ids, tokenizer_kind,
                        trim_embeddings, trim_tokenizer)


def sentences(corpus: str, split: str, count: int) -> list[list[str]]:
    return [list(e.tokens) for e in read_examples(SHARED_DATA / corpus / f"{split}.jsonl")[:count]]


def pieces(tokenizer, sentence: list[str]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(sentence, is_split_into_words=True)["input_ids"])


def differing(student, teacher, corpus: list[list[str]]) -> list[int]:
    """Indices of the sentences the two tokenizers cut differently (indices only: a failure
    prints no text, as everywhere in this project)."""
    return [i for i, sentence in enumerate(corpus) if pieces(student, sentence) != pieces(teacher, sentence)]


@pytest.fixture(scope="module")
def trimmed(unigram_tokenizer, tmp_path_factory):
    """The test teacher's tokenizer trimmed on real French (europeana and wikineural slices), saved and reloaded."""
    kept_on = [sentences("europeana_fr", "val", 200), sentences("wikineural_fr", "val", 200)]
    kept = kept_ids(unigram_tokenizer, kept_on)
    folder = tmp_path_factory.mktemp("trimmed")
    trim_tokenizer(unigram_tokenizer, kept).save_pretrained(folder)
    return kept, AutoTokenizer.from_pretrained(folder), folder, kept_on


def test_trimmed_unigram_segments_every_text_like_the_teacher(unigram_tokenizer, trimmed):
    kept, student, folder, kept_on = trimmed
    assert tokenizer_kind(unigram_tokenizer) == "Unigram"
    assert len(student) == len(kept) < len(unigram_tokenizer)
    assert differing(student, unigram_tokenizer, [s for source in kept_on for s in source]) == []


def test_saved_tokenizer_json_holds_exactly_the_kept_pieces(unigram_tokenizer, trimmed):
    kept, student, folder, _ = trimmed
    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    teacher_model = json.loads(unigram_tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    # the model's vocabulary: the kept pieces it had, in the teacher's order, with their scores
    assert saved["model"]["vocab"] == [teacher_model[i] for i in kept if i < len(teacher_model)]
    # the added tokens beyond it (the test teacher's <s> and </s>) come next, renumbered
    beyond = [i for i in kept if i >= len(teacher_model)]
    assert len(saved["model"]["vocab"]) + len(beyond) == len(kept) == len(student)
    added = {token["content"]: token["id"] for token in saved["added_tokens"]}
    teacher_added = unigram_tokenizer.added_tokens_decoder
    assert added == {unigram_tokenizer.convert_ids_to_tokens(i): kept.index(i) for i in teacher_added}
    assert saved["model"]["unk_id"] == student.unk_token_id == kept.index(unigram_tokenizer.unk_token_id)
    processor_ids = {key: value["ids"] for key, value in saved["post_processor"]["special_tokens"].items()}
    assert processor_ids == {"<s>": [student.bos_token_id], "</s>": [student.eos_token_id]}


def test_special_tokens_keep_their_role_and_the_padding_id(unigram_tokenizer, trimmed):
    kept, student, _, _ = trimmed
    assert student.pad_token_id == unigram_tokenizer.pad_token_id     # positions are numbered from it
    for name in ("pad_token", "unk_token", "bos_token", "eos_token", "mask_token", "cls_token", "sep_token"):
        assert getattr(student, name) == getattr(unigram_tokenizer, name)
        assert kept[getattr(student, f"{name}_id")] == getattr(unigram_tokenizer, f"{name}_id")
    ids = student(["Jean"], is_split_into_words=True)["input_ids"]
    assert ids[0] == student.bos_token_id and ids[-1] == student.eos_token_id


def test_new_text_still_tokenizes(unigram_tokenizer, trimmed):
    _, student, _, _ = trimmed
    unseen = sentences("wikiner_fr", "test", 200)
    words_with_pieces = lambda sentence: set(student(sentence, is_split_into_words=True).word_ids()) - {None}
    without_piece = [i for i, sentence in enumerate(unseen) if words_with_pieces(sentence) != set(range(len(sentence)))]
    assert without_piece == []                                          # every word got a piece
    unknown = lambda tok: sum(i == tok.unk_token_id for s in unseen for i in tok(s, is_split_into_words=True)["input_ids"])
    assert unknown(student) == unknown(unigram_tokenizer)              # single characters cover the rest


def test_trimmed_embeddings_give_the_teacher_logits(unigram_tokenizer, trimmed):
    kept, student, _, kept_on = trimmed
    torch.manual_seed(0)
    model = build_teacher(unigram_tokenizer, layers=2, hidden=32, heads=2, intermediate=64).eval()
    small = copy.deepcopy(model)
    trim_embeddings(small, kept)
    assert small.config.vocab_size == len(kept)
    assert (small.config.pad_token_id, small.config.bos_token_id, small.config.eos_token_id) == \
        (student.pad_token_id, student.bos_token_id, student.eos_token_id)
    assert small.base_model.embeddings.padding_idx == small.base_model.embeddings.word_embeddings.padding_idx == \
        student.pad_token_id
    assert small.base_model.embeddings.word_embeddings.weight.shape == (len(kept), 32)
    batch = collate_windows(encode_sentences(unigram_tokenizer, kept_on[0][:24], 48), unigram_tokenizer.pad_token_id)
    lookup = teacher_to_student_ids(unigram_tokenizer, student)
    own = collate_windows(encode_sentences(student, kept_on[0][:24], 48), student.pad_token_id)
    assert torch.equal(lookup[batch.input_ids], own.input_ids)       # the lookup is what the student's tokenizer gives
    assert (batch.attention_mask == 0).any()                           # padding in the batch
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = small(input_ids=own.input_ids, attention_mask=own.attention_mask).logits
    assert torch.equal(got, expected)


def test_lookup_sends_unkept_pieces_to_unknown_and_refuses_a_foreign_student(unigram_tokenizer, trimmed):
    kept, student, _, _ = trimmed
    lookup = teacher_to_student_ids(unigram_tokenizer, student)
    assert lookup.shape == (len(unigram_tokenizer),)
    assert lookup[torch.tensor(kept)].tolist() == list(range(len(kept)))
    dropped = sorted(set(range(len(unigram_tokenizer))) - set(kept))
    assert dropped and set(lookup[torch.tensor(dropped)].tolist()) == {student.unk_token_id}
    with pytest.raises(PipelineError, match="teacher.model_name"):
        teacher_to_student_ids(student, _wordpiece_tokenizer())


def test_pieces_used_streams_words_and_gives_the_pieces_of_whole_sentences(unigram_tokenizer):
    corpus = sentences("wikineural_fr", "test", 300)
    encoded = unigram_tokenizer(corpus, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    whole = {i for ids in encoded for i in ids}
    assert pieces_used(unigram_tokenizer, (s for s in corpus)) == whole    # a one-shot generator is enough


def _unigram(vocab, byte_fallback=False):
    """A hand-made Unigram tokenizer (CamemBERT's pre-tokenization), loaded from a folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    backend = Tokenizer(models.Unigram(vocab, unk_id=1, byte_fallback=byte_fallback))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Metaspace(prepend_scheme="always")])
    built = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                    eos_token="</s>")
    with tempfile.TemporaryDirectory() as folder:
        built.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)


def _trimmed_pieces(teacher, kept, words):
    with tempfile.TemporaryDirectory() as folder:
        trim_tokenizer(teacher, kept).save_pretrained(folder)
        return pieces(AutoTokenizer.from_pretrained(folder), words)


SPECIALS = [("<pad>", 0.0), ("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]


def test_unigram_keeps_its_lowest_score_on_which_the_unknown_score_rests():
    # "ç" is only in "▁çx": at its place Unigram may also put <unk>, scored 10 below the lowest
    # piece. With "zzzz" (-100, as CamemBERT's <unk>NOTUSED) that costs -110 and "▁çx y z" (-45)
    # wins; without it <unk> would cost -30 and "▁ <unk> xyz" (-32) would win.
    teacher = _unigram(SPECIALS + [("zzzz", -100.0), ("\u2581", -1.0), ("\u2581\u00e7x", -5.0), ("x", -20.0),
                                   ("y", -20.0), ("z", -20.0), ("xyz", -1.0)])
    words = ["\u00e7xyz", "xyz"]
    assert pieces(teacher, words) == ["\u2581\u00e7x", "y", "z", "\u2581", "xyz"]
    kept = kept_ids(teacher, [[words]])
    assert teacher.convert_tokens_to_ids("zzzz") in kept
    assert _trimmed_pieces(teacher, kept, words) == pieces(teacher, words)
    without = [i for i in kept if i != teacher.convert_tokens_to_ids("zzzz")]
    assert _trimmed_pieces(teacher, without, words) != pieces(teacher, words)   # the case is real


def test_unigram_byte_fallback_keeps_every_byte_piece():
    bytes_ = [(f"<0x{b:02X}>", -30.0) for b in range(256)]
    teacher = _unigram(SPECIALS + [("\u2581", -1.0), ("\u2581Paris", -2.0)] + bytes_, byte_fallback=True)
    kept = kept_ids(teacher, [[["Paris"]]])
    assert len(kept) == len(teacher)                                              # every piece here is kept
    assert _trimmed_pieces(teacher, kept, ["Paris", "\u03a9"]) == pieces(teacher, ["Paris", "\u03a9"])
    assert "<0xCE>" in pieces(teacher, ["\u03a9"])                               # Ω is two byte pieces


def _train_tokenizer(model, trainer, texts, **fast_options):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    backend = Tokenizer(model)
    backend.normalizer = normalizers.BertNormalizer(lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(texts, trainer)
    return backend


def _wordpiece_tokenizer():
    from tokenizers import models, processors, trainers
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    texts = [" ".join(s) for s in sentences("europeana_fr", "train", 400)]
    backend = _train_tokenizer(models.WordPiece(unk_token="[UNK]"),
                               trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials), texts)
    backend.post_processor = processors.BertProcessing(("[SEP]", backend.token_to_id("[SEP]")),
                                                       ("[CLS]", backend.token_to_id("[CLS]")))
    built = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                              sep_token="[SEP]", mask_token="[MASK]", do_lower_case=False)
    with tempfile.TemporaryDirectory() as folder:  # loaded from a folder, as a teacher is
        built.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)


def test_wordpiece_trims_with_the_same_greedy_segmentation(tmp_path):
    teacher = _wordpiece_tokenizer()
    assert tokenizer_kind(teacher) == "WordPiece"
    kept_on = sentences("europeana_fr", "val", 150) + sentences("hipe2020_fr", "val", 150)
    kept_on.append(["Anticonstitution\u03a9nellement", "Paris\u2603"])     # words that end as [UNK]
    kept = kept_ids(teacher, [kept_on])
    trim_tokenizer(teacher, kept).save_pretrained(tmp_path)
    student = AutoTokenizer.from_pretrained(tmp_path)
    assert len(student) == len(kept) < len(teacher)
    assert pieces(teacher, kept_on[-1]).count("[UNK]") >= 1
    assert differing(student, teacher, kept_on) == []
    ids = student(["Paris"], is_split_into_words=True)["input_ids"]
    assert (ids[0], ids[-1]) == (student.cls_token_id, student.sep_token_id) and student.pad_token_id == 0


def test_wordpiece_keeps_the_pieces_tried_in_a_word_that_ends_unknown():
    # Greedy longest-match: "abc" takes "ab", finds no "##c", and the whole word is [UNK]. Its
    # output has no "ab"; a vocabulary without it would match "a" + "##bc" (kept for "xbc").
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "x", "ab", "##b", "##bc"]
    backend = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    built = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                              sep_token="[SEP]", mask_token="[MASK]", do_lower_case=False)
    with tempfile.TemporaryDirectory() as folder:
        built.save_pretrained(folder)
        teacher = AutoTokenizer.from_pretrained(folder)
    words = ["abc", "xbc"]
    assert pieces(teacher, words) == ["[CLS]", "[UNK]", "x", "##bc", "[SEP]"]
    kept = kept_ids(teacher, [[words]])
    assert vocab.index("ab") in kept
    assert _trimmed_pieces(teacher, kept, words) == pieces(teacher, words)
    without = [i for i in kept if i != vocab.index("ab")]
    assert _trimmed_pieces(teacher, without, words) == ["[CLS]", "a", "##bc", "x", "##bc", "[SEP]"]  # the case is real


def test_other_tokenizer_kinds_are_refused_by_name():
    from tokenizers import models, trainers
    backend = _train_tokenizer(models.BPE(unk_token="<unk>"), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]),
                               [" ".join(s) for s in sentences("europeana_fr", "train", 100)])
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(PipelineError, match="BPE tokenizer; trimming supports Unigram and WordPiece"):
        kept_ids(bpe, [[["Paris"]]])


def test_a_tokenizer_without_tokenizer_json_is_refused_by_name():
    class SlowTokenizer:  # what a pure-Python tokenizer offers: no backend_tokenizer
        pass
    with pytest.raises(PipelineError, match="SlowTokenizer.*not a fast tokenizer.*student.trim_vocabulary"):
        tokenizer_kind(SlowTokenizer())


def test_vocabulary_files_are_read_as_inference_reads_text(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes("\ufeffMme Durand, vue au CMP.\n\n   \nRAS.\r\n".encode("utf-8"))
    assert list(read_vocabulary_texts(notes)) == [["Mme", "Durand", ",", "vue", "au", "CMP", "."], ["RAS", "."]]


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    (b"ok\nvu le 3 mai \xe9t\xe9\n", "notes.txt:2: not UTF-8 text"),
    (b"ok\n\x00\x01\x02\n", "notes.txt:2: a NUL byte"),
])
def test_bad_vocabulary_files_are_named_with_the_line(tmp_path, content, message):
    notes = tmp_path / "notes.txt"
    if content is not None:
        notes.write_bytes(content)
    with pytest.raises(PipelineError, match=message) as error:
        list(read_vocabulary_texts(notes))
    assert "student.vocabulary_files" in str(error.value) and "mai" not in str(error.value)


def test_a_directory_is_not_a_vocabulary_file(tmp_path):
    with pytest.raises(PipelineError, match="is not a file"):
        list(read_vocabulary_texts(tmp_path))
