"""Build a small offline CamemBERT NER teacher from JSONL data alone (no network).

    python tools/make_demo_teacher.py --data data/train.jsonl --output artifacts/demo_teacher

It has the real teacher's label shape (IO labels with MISC: O, I-LOC, I-PER, I-MISC, I-ORG),
a unigram sentencepiece tokenizer trained on the data, and a few transformer layers
fine-tuned on the data's tags (BIO converted to IO). The folder it writes is a
Hugging Face checkpoint, loaded like the hub teacher: `teacher.model_name: <folder>`.
Tests build their tiny teachers with the same functions.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loader import collate_windows, encode_sentences, read_examples  # noqa: E402
from decoding import word_level_emissions  # noqa: E402
from losses import cross_entropy  # noqa: E402
from models import entity_type  # noqa: E402
from utils import PipelineError, publishing, run_cli, set_seed  # noqa: E402

# The real teacher's labels (Jean-Baptiste/camembert-ner), in its id order.
TEACHER_LABELS = ("O", "I-LOC", "I-PER", "I-MISC", "I-ORG")


def to_io(tags: list[str], labels: tuple[str, ...] = TEACHER_LABELS) -> list[str]:
    """BIO tags to the teacher's IO labels; types the teacher lacks become O."""
    return [f"I-{entity_type(t)}" if f"I-{entity_type(t)}" in labels else "O" for t in tags]


def train_tokenizer(sentences: list[list[str]], out_dir: Path, vocab_size: int = 4000):
    """Train a unigram sentencepiece model (the CamemBERT tokenizer's kind) on the words."""
    import sentencepiece as spm
    from transformers import CamembertTokenizer
    with tempfile.TemporaryDirectory() as scratch:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(" ".join(words) for words in sentences),
            model_prefix=str(Path(scratch) / "sentencepiece.bpe"), vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
        # transformers 5 loads a CamemBERT tokenizer from a file of this name (and refuses a BPE model)
        tokenizer = CamembertTokenizer.from_pretrained(scratch)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_teacher(tokenizer, labels=TEACHER_LABELS, layers: int = 4, hidden: int = 128, heads: int = 4,
                  intermediate: int = 256, max_positions: int = 514):
    """A randomly initialised CamembertForTokenClassification of the given size."""
    from transformers import AutoModelForTokenClassification, CamembertConfig
    config = CamembertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=max_positions,
        # attention dropout makes CPU sdpa about 10x slower; hidden dropout regularises enough here
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    return AutoModelForTokenClassification.from_config(config)


def fit_teacher(model, tokenizer, sentences: list[list[str]], tags: list[list[str]], epochs: int = 3,
                learning_rate: float = 1e-3, batch_size: int = 16, max_length: int = 128, log=print) -> None:
    """Plain fine-tuning on first subwords (cross-entropy), enough for a useful demo teacher.

    A constant learning rate after a short warmup: a model trained from scratch for a few
    hundred steps learns more from that than from a decay to zero (measured on europeana_fr).
    """
    label2id = model.config.label2id
    windows = encode_sentences(tokenizer, sentences, max_length, tags=tags, label2id=label2id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    generator = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(windows), generator=generator).tolist()
        total = 0.0
        for begin in range(0, len(order), batch_size):
            batch = collate_windows([windows[i] for i in order[begin:begin + batch_size]], tokenizer.pad_token_id)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            emissions = word_level_emissions(logits, batch.word_starts)
            loss = cross_entropy(emissions, batch.word_labels, batch.word_mask)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += loss.item()
        log(f"teacher epoch {epoch + 1}/{epochs}: loss {total / max(1, len(order) // batch_size):.4f}")
    model.eval()


def make_teacher(sentences: list[list[str]], tags: list[list[str]], out_dir: Path, layers: int = 4,
                 hidden: int = 128, heads: int = 4, intermediate: int = 256, vocab_size: int = 4000,
                 epochs: int = 3, seed: int = 0, log=print, labels: tuple[str, ...] | None = None,
                 tokenizer_sentences: list[list[str]] | None = None, learning_rate: float = 1e-3) -> Path:
    """Tokenizer + model + fine-tuning, saved as a hub-style folder (atomically).

    `labels` defaults to the real teacher's IO labels (the BIO tags are converted); BIO
    labels train on the tags as they are. The tokenizer learns from `tokenizer_sentences`
    (default: the training sentences); a broader text makes it a general-purpose vocabulary
    of which one domain uses a part, like the real teacher's.
    """
    labels = tuple(labels or TEACHER_LABELS)
    is_io = not any(label.startswith("B-") for label in labels)
    set_seed(seed)
    out_dir = Path(out_dir)
    with publishing(out_dir) as staging:
        tokenizer = train_tokenizer(tokenizer_sentences or sentences, staging, vocab_size)
        model = build_teacher(tokenizer, labels, layers=layers, hidden=hidden, heads=heads, intermediate=intermediate)
        fit_teacher(model, tokenizer, sentences, [to_io(t, labels) if is_io else t for t in tags], epochs=epochs,
                    learning_rate=learning_rate, log=log)
        model.save_pretrained(staging)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/train.jsonl", help="BIO JSONL to train on")
    parser.add_argument("--output", default="artifacts/demo_teacher", help="folder to write")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--tokenizer-data", nargs="+", metavar="JSONL",
                        help="JSONL files whose sentences train the tokenizer (default: --data)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="constant after a short warm-up (default 1e-3; lower it for wider models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if --output exists")
    args = parser.parse_args(argv)
    if Path(args.output).exists() and not args.overwrite:
        raise PipelineError(f"{args.output} already exists; use --overwrite to rebuild it.")
    examples = read_examples(args.data)
    tokenizer_sentences = [list(e.tokens) for path in args.tokenizer_data or [] for e in read_examples(path)]
    started = time.time()
    out = make_teacher([list(e.tokens) for e in examples], [list(e.tags) for e in examples], Path(args.output),
                       layers=args.layers, hidden=args.hidden, heads=args.heads, intermediate=args.intermediate,
                       vocab_size=args.vocab_size, epochs=args.epochs, seed=args.seed,
                       tokenizer_sentences=tokenizer_sentences or None, learning_rate=args.learning_rate)
    print(f"Demo teacher written to {out} in {time.time() - started:.0f}s (labels {', '.join(TEACHER_LABELS)}).")
    return 0


if __name__ == "__main__":
    run_cli(main)
