"""Shared fixtures: slices of real French NER data and tiny CamemBERT teachers built on the fly.

Nothing is downloaded. Teachers are trained for a few seconds on a slice of europeana_fr
(../shared/data), with the real teacher's label shape (IO with MISC) or with the
student's own BIO labels.
"""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

SHARED_DATA = REPO.parent / "shared" / "data"
EUROPEANA = SHARED_DATA / "europeana_fr"
BIO_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
TINY_TEACHER = dict(layers=4, hidden=64, heads=4, intermediate=128, vocab_size=1500)


def _slice(source: Path, target: Path, count: int) -> Path:
    with source.open(encoding="utf-8") as lines:
        target.write_text("".join(line for _, line in zip(range(count), lines)), encoding="utf-8")
    return target


@pytest.fixture(scope="session")
def europeana(tmp_path_factory) -> Path:
    """A folder with train (600), val (150), test (150) slices of europeana_fr and its label2id."""
    if not EUROPEANA.is_dir():
        pytest.fail(f"{EUROPEANA} is missing: the tests read real data from ../shared/data")
    folder = tmp_path_factory.mktemp("europeana")
    _slice(EUROPEANA / "train.jsonl", folder / "train.jsonl", 600)
    _slice(EUROPEANA / "val.jsonl", folder / "val.jsonl", 150)
    _slice(EUROPEANA / "test.jsonl", folder / "test.jsonl", 150)
    (folder / "label2id.json").write_text((EUROPEANA / "label2id.json").read_text())
    return folder


# Everything that decides what a fixture teacher is: the code that builds and trains it, the
# packages that compute it. A change to any of them builds it anew.
TEACHER_SOURCES = ("tools/make_demo_teacher.py", "data_loader.py", "losses.py", "decoding.py", "models.py",
                   "utils.py", "tests/conftest.py")


def _make_teacher(request, name: str, sentences: int, epochs: int, labels=None) -> Path:
    """Train a tiny teacher on the first `sentences` of europeana_fr's train set, once: the result
    is kept in pytest's cache folder (.pytest_cache, not committed) under a key made of all that
    decides it, so a second run of the suite on the same code reuses it. A clean checkout (CI)
    builds it, in seconds."""
    import hashlib
    import importlib.metadata
    from data_loader import read_examples
    from make_demo_teacher import make_teacher
    with (EUROPEANA / "train.jsonl").open("rb") as data:
        lines = b"".join(line for _, line in zip(range(sentences), data))
    key = hashlib.sha256(lines)
    for source in TEACHER_SOURCES:
        key.update((REPO / source).read_bytes())
    key.update(repr((sentences, epochs, labels, sorted(TINY_TEACHER.items()))).encode())
    key.update(repr([importlib.metadata.version(p) for p in ("torch", "transformers", "tokenizers",
                                                              "sentencepiece")]).encode())
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("ner_teachers") if cache else request.getfixturevalue("tmp_path_factory").mktemp("teachers")
    folder = root / f"{name}-{key.hexdigest()[:20]}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    examples = read_examples(EUROPEANA / "train.jsonl")[:sentences]
    return make_teacher([list(e.tokens) for e in examples], [list(e.tags) for e in examples], folder,
                        epochs=epochs, seed=0, log=lambda *a: None, labels=labels, **TINY_TEACHER)


@pytest.fixture(scope="session")
def io_teacher(request, europeana) -> Path:
    """A teacher shaped like Jean-Baptiste/camembert-ner (IO labels O, I-LOC, I-PER, I-MISC, I-ORG),
    trained enough to reach a val F1 of about 0.3 on europeana_fr."""
    return _make_teacher(request, "io_teacher", 2000, 2)


@pytest.fixture(scope="session")
def bio_teacher(request, europeana) -> Path:
    """A teacher with exactly the student's BIO labels (full-label KD); barely trained."""
    return _make_teacher(request, "bio_teacher", 300, 1, labels=BIO_LABELS)


def stop_after(steps: int):
    """A `training.StopFlag` that behaves like a SIGTERM arriving after the `steps`-th optimizer step."""
    import training

    class StopAtCheck(training.StopFlag):
        def __init__(self):
            super().__init__()
            self.checks = 0

        @property
        def requested(self):
            self.checks += 1
            if self.checks == steps:
                self.signal_name = "SIGTERM"
            return self.signal_name is not None
    return StopAtCheck


def write_config(path: Path, data_dir: Path, teacher: Path, **sections) -> Path:
    """A YAML config for the tiny setting; `sections` override keys, e.g. training={"max_epochs": 1}."""
    import yaml
    config = {
        "teacher": {"model_name": str(teacher)},
        "student": {"num_layers": 3, "use_crf": True},
        "data": {"train_file": str(data_dir / "train.jsonl"), "val_file": str(data_dir / "val.jsonl"),
                 "test_file": str(data_dir / "test.jsonl"), "label2id_file": str(data_dir / "label2id.json"),
                 "max_seq_length": 64},
        "training": {"batch_size": 16, "eval_batch_size": 64, "learning_rate": 1e-3, "max_epochs": 1,
                     "warmup_ratio": 0.0, "log_every_steps": 5, "checkpoint_every_steps": 0,
                     "crf_learning_rate": 5e-2, "seed": 7},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tiny_config(tmp_path, europeana, io_teacher) -> Path:
    return write_config(tmp_path / "config.yaml", europeana, io_teacher)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def unigram_tokenizer(tmp_path_factory, europeana):
    """A CamemBERT tokenizer (unigram sentencepiece) trained on the europeana slice, without a model."""
    from data_loader import read_examples
    from make_demo_teacher import train_tokenizer
    sentences = [list(e.tokens) for e in read_examples(europeana / "train.jsonl")]
    return train_tokenizer(sentences, tmp_path_factory.mktemp("tokenizer"), vocab_size=800)


@pytest.fixture(scope="session")
def stage1_artifact(tmp_path_factory, io_teacher) -> Path:
    """An untrained 3-layer CRF student saved as a stage-1 artifact (no training: fast)."""
    import torch
    from models import build_student, load_teacher, project_labels, save_model
    torch.manual_seed(0)
    teacher, tokenizer = load_teacher(str(io_teacher))
    student = build_student(teacher, [0, 2, 3], list(BIO_LABELS), project_labels(list(teacher.labels), list(BIO_LABELS)),
                            use_crf=True)
    return save_model(student, tokenizer, tmp_path_factory.mktemp("stage1") / "student", stage="kd")


class OnlyTagger:
    """A model seen through the `decoding.Tagger` interface alone: any other attribute raises, so a
    test proves that decoding (and every model kind it serves) needs nothing more."""
    INTERFACE = frozenset({"labels", "crf", "max_subwords", "token_logits"})

    def __init__(self, model):
        object.__setattr__(self, "_model", model)

    def __getattr__(self, name):
        if name not in OnlyTagger.INTERFACE:
            raise AttributeError(f"decoding used {name!r}, which is not part of the Tagger interface")
        return getattr(object.__getattribute__(self, "_model"), name)

