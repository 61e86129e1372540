"""Teacher loading, student construction, label projection, and the one saved-model format.

Every stage and every test loads a saved model with `load_model`; nothing else reads
`model.safetensors`. A saved folder is a Hugging Face token-classification checkpoint
(config.json, model.safetensors, tokenizer files) whose config.json carries the
pipeline's own record under `ner_pipeline`: labels, CRF on/off, the teacher layers the
student was copied from, and the attention heads and feed-forward neurons removed by pruning
(original indices).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torchcrf import CRF
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer
from transformers.pytorch_utils import prune_linear_layer

from utils import PipelineError, publishing

PIPELINE_KEY = "ner_pipeline"
FORMAT_VERSION = 2  # 2: FFN neurons pruned (records without them are still written as 1)
WEIGHTS_NAME = "model.safetensors"
# Byte-level BPE tokenizers need a prefix space to encode pre-split words.
PREFIX_SPACE_MODEL_TYPES = {"roberta", "longformer"}
ILLEGAL_TRANSITION_SCORE = -1e4  # fits fp16; far below any emission difference


class ModelLoadError(PipelineError):
    """A model folder or hub id that cannot be loaded as asked."""


# ---------------------------------------------------------------------------
# Labels: schemes, entity types and the teacher -> student projection

def entity_type(label: str) -> str:
    """`B-PER` -> `PER`, `I-PER` -> `PER`, `PER` -> `PER`, `O` -> `O`."""
    if label == "O":
        return "O"
    prefix, sep, rest = label.partition("-")
    return rest if sep and prefix in {"B", "I", "E", "S", "L", "U"} and rest else label


def bio_constraints(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed first labels (C,) and allowed transitions (C, C) of strict BIO (IOB2).

    Illegal: start -> I-X, O -> I-X, B-X/I-X -> I-Y with Y != X.
    """
    num = len(labels)
    allowed_start = torch.ones(num, dtype=torch.bool)
    allowed_transition = torch.ones(num, num, dtype=torch.bool)
    for j, to_label in enumerate(labels):
        if not to_label.startswith("I-"):
            continue
        allowed_start[j] = False
        for i, from_label in enumerate(labels):
            if from_label == "O" or entity_type(from_label) != entity_type(to_label):
                allowed_transition[i, j] = False
    return allowed_start, allowed_transition


@dataclass(frozen=True)
class LabelProjection:
    """How the teacher's label space feeds the student's, for KD and for evaluation.

    `types` is the shared space: "O" then the student's entity types. Each teacher and
    student label maps to one type index. When both label sets are identical, KD uses
    the full label distribution (`teacher_order` permutes teacher columns into student
    order) instead of the type-level one.
    """
    teacher_labels: tuple[str, ...]
    student_labels: tuple[str, ...]
    types: tuple[str, ...]
    teacher_type_ids: tuple[int, ...]
    student_type_ids: tuple[int, ...]
    teacher_order: tuple[int, ...] | None
    unknown_to_teacher: tuple[str, ...]      # student types the teacher never predicts
    teacher_type_map: dict[str, str] = field(default_factory=dict)  # teacher type -> shared type

    @property
    def full_label(self) -> bool:
        return self.teacher_order is not None

    def describe(self) -> str:
        """Human-readable summary printed at the start of every stage that uses a teacher."""
        if self.full_label:
            return ("Label projection: teacher and student share the same labels "
                    f"({', '.join(self.student_labels)}); KD uses the full label distribution.")
        lines = ["Label projection (KD in the shared type space "
                 f"{', '.join(self.types)}):"]
        for teacher_type, target in sorted(self.teacher_type_map.items()):
            feeds = [lab for lab in self.teacher_labels if entity_type(lab) == teacher_type]
            note = " (folded into O: not a student type)" if target == "O" and teacher_type != "O" else ""
            lines.append(f"  teacher {'/'.join(feeds)} -> student {target}{note}")
        if self.unknown_to_teacher:
            lines.append("  student types unknown to the teacher, left out of KD: "
                         + ", ".join(self.unknown_to_teacher))
        return "\n".join(lines)


def project_labels(teacher_labels: list[str], student_labels: list[str],
                   label_map: dict[str, str] | None = None) -> LabelProjection:
    """Derive the teacher -> student projection from label names (README, "Data format").

    `label_map` overrides the name match for teacher types, e.g. {"MISC": "ORG"} or
    {"MISC": "O"}; teacher types without a student counterpart fold into O.
    """
    label_map = dict(label_map or {})
    student_types = ["O"] + sorted({entity_type(l) for l in student_labels} - {"O"},
                                   key=[entity_type(l) for l in student_labels].index)
    teacher_types = {entity_type(l) for l in teacher_labels}
    for source, target in label_map.items():
        if source not in teacher_types:
            raise PipelineError(
                f"distillation.label_map: {source!r} is not a teacher entity type; "
                f"the teacher's types are {sorted(teacher_types)}.")
        if target not in student_types:
            raise PipelineError(
                f"distillation.label_map: {source!r} maps to {target!r}, which is not a "
                f"student type; use one of {student_types}.")
    type_map = {t: label_map.get(t, t if t in student_types else "O") for t in teacher_types}
    teacher_order = None
    if sorted(teacher_labels) == sorted(student_labels) and not label_map:
        teacher_order = tuple(teacher_labels.index(l) for l in student_labels)
    fed = set(type_map.values())
    return LabelProjection(
        teacher_labels=tuple(teacher_labels),
        student_labels=tuple(student_labels),
        types=tuple(student_types),
        teacher_type_ids=tuple(student_types.index(type_map[entity_type(l)]) for l in teacher_labels),
        student_type_ids=tuple(student_types.index(entity_type(l)) for l in student_labels),
        teacher_order=teacher_order,
        unknown_to_teacher=tuple(t for t in student_types if t not in fed),
        teacher_type_map=type_map,
    )


# ---------------------------------------------------------------------------
# The model: a Hugging Face token classifier plus an optional CRF

@dataclass(frozen=True)
class PipelineInfo:
    """What config.json records beyond the Hugging Face config."""
    labels: tuple[str, ...]
    use_crf: bool
    teacher: str
    teacher_layers: tuple[int, ...]
    pruned_heads: dict[int, tuple[int, ...]] = field(default_factory=dict)  # original indices
    stage: str = "student"
    pruned_neurons: dict[int, tuple[int, ...]] = field(default_factory=dict)  # FFN neurons, original indices
    window: int | None = None  # subwords per input the model was trained and validated with

    def to_json(self) -> dict:
        record = asdict(self)
        record["pruned_heads"] = {str(k): list(v) for k, v in sorted(self.pruned_heads.items())}
        record["pruned_neurons"] = {str(k): list(v) for k, v in sorted(self.pruned_neurons.items())}
        if not record["pruned_neurons"]:
            del record["pruned_neurons"]  # models without FFN pruning keep the record they always had
        if record["window"] is None:
            del record["window"]
        record["labels"], record["teacher_layers"] = list(self.labels), list(self.teacher_layers)
        # a record older code can read is written as version 1, so that it stays readable there;
        # older code refuses version 2 as "written by a newer version" instead of misreading it
        record["format_version"] = FORMAT_VERSION if self.pruned_neurons else 1
        return record

    @classmethod
    def from_json(cls, record: dict) -> "PipelineInfo":
        return cls(labels=tuple(record["labels"]), use_crf=bool(record["use_crf"]),
                   teacher=str(record["teacher"]),
                   teacher_layers=tuple(int(i) for i in record["teacher_layers"]),
                   pruned_heads={int(k): tuple(int(h) for h in v)
                                 for k, v in record.get("pruned_heads", {}).items() if v},
                   pruned_neurons={int(k): tuple(int(n) for n in v)
                                   for k, v in record.get("pruned_neurons", {}).items() if v},
                   stage=str(record.get("stage", "student")),
                   window=int(record["window"]) if record.get("window") else None)


class ModelOutput(NamedTuple):
    logits: torch.Tensor                       # (B, T, C)
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings + one per layer, each (B, T, H)


class NERModel(nn.Module):
    """A BERT-family token classifier with an optional CRF over word-level emissions.

    Teachers are wrapped in the same class (no CRF) so that decoding, evaluation and
    inference treat every model alike.
    """

    def __init__(self, backbone: nn.Module, info: PipelineInfo):
        super().__init__()
        self.backbone = backbone
        self.info = info
        self.crf = None
        if info.use_crf:
            self.crf = CRF(len(info.labels), batch_first=True)
            allowed_start, allowed_transition = bio_constraints(list(info.labels))
            with torch.no_grad():
                self.crf.start_transitions.masked_fill_(~allowed_start, ILLEGAL_TRANSITION_SCORE)
                self.crf.transitions.masked_fill_(~allowed_transition, ILLEGAL_TRANSITION_SCORE)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def config(self):
        """The Hugging Face config of the token classifier."""
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool = False) -> ModelOutput:
        out = self.backbone(input_ids=input_ids, attention_mask=_key_mask(attention_mask, self.config),
                            output_hidden_states=output_hidden_states)
        return ModelOutput(out.logits, out.hidden_states if output_hidden_states else None)

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C) scores of each subword: what decoding asks of a model (`decoding.Tagger`)."""
        return self(input_ids, attention_mask).logits

    @property
    def max_subwords(self) -> int:
        """Longest input decoding gives the model (special tokens included): the window it was trained
        and validated with, so that predictions score what validation measured; else `position_limit`."""
        return min(self.position_limit, self.info.window or self.position_limit)

    @property
    def position_limit(self) -> int:
        """Longest input (special tokens included) the position embeddings allow."""
        config = self.config
        positions = config.max_position_embeddings
        if config.model_type in {"roberta", "camembert", "xlm-roberta", "longformer"}:
            positions -= config.pad_token_id + 1  # RoBERTa positions start after the padding index
        return positions


def _key_mask(attention_mask: torch.Tensor, config) -> torch.Tensor:
    """The padding mask as the 4D mask (B, 1, 1, T) that attention takes as it is.

    Given a 2D mask, transformers asks `mask.all()` to skip masking, which makes the host
    wait for the GPU at every forward pass; a prepared 4D mask skips that question.
    """
    keys = attention_mask[:, None, None, :].bool()
    if config._attn_implementation == "sdpa":
        return keys
    return torch.zeros(keys.shape, device=keys.device).masked_fill(~keys, torch.finfo(torch.float32).min)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-family model (`base_model.encoder.layer`)."""
    backbone = model.backbone if isinstance(model, NERModel) else model
    layers = getattr(getattr(backbone.base_model, "encoder", None), "layer", None)
    if layers is None or not hasattr(layers[0].attention, "self"):
        raise ModelLoadError(
            f"{type(backbone).__name__} does not have the BERT layout "
            "(base_model.encoder.layer[i].attention.self.query); only BERT, RoBERTa, "
            "CamemBERT and XLM-R token classifiers are supported.")
    return layers


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def heads_per_layer(model: NERModel) -> list[int]:
    """Number of attention heads left in each layer."""
    return [layer.attention.self.num_attention_heads for layer in encoder_layers(model)]


def neurons_per_layer(model: NERModel) -> list[int]:
    """Number of feed-forward (intermediate) neurons left in each layer."""
    return [layer.intermediate.dense.out_features for layer in encoder_layers(model)]


# ---------------------------------------------------------------------------
# Teacher

# files that hold a tokenizer's vocabulary: without one, transformers builds a tokenizer of the
# special tokens only, which maps every word to <unk> and gives silently wrong entities
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "vocab.txt", "vocab.json")


def _load_tokenizer(where, model_type: str, embedding_rows: int):
    """The fast tokenizer of a checkpoint, set up to encode pre-split words; refused when its
    files are missing or its size does not fit the model's embedding matrix."""
    folder = Path(where).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); the folder is incomplete. "
                             "Copy them from the folder it came from, or rerun the stage that wrote it.")
    options = {"add_prefix_space": True} if model_type in PREFIX_SPACE_MODEL_TYPES else {}
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, **options)
    # hub models may pad the embedding matrix to a multiple of 8 or 64; more is another model's tokenizer
    if not 0 <= embedding_rows - len(tokenizer) <= 64:
        raise ModelLoadError(f"{where}: the tokenizer has {len(tokenizer):,} pieces but the model's embedding matrix "
                             f"has {embedding_rows:,} rows: they belong to different models. Copy the tokenizer files "
                             "of this model into the folder.")
    return tokenizer


def _refuse_pickled_weights(folder: Path) -> None:
    """A folder whose weights are only a pickle (pytorch_model.bin) is refused: a pickle can run code."""
    if (folder / "pytorch_model.bin").is_file() and not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"{folder}: its weights are pytorch_model.bin (a pickle, which can run code when loaded); this pipeline "
            "loads safetensors only. Convert it once, where you trust the file: python -c \"from transformers import "
            f"AutoModelForTokenClassification as M; M.from_pretrained('{folder}').save_pretrained('{folder}')\" "
            "(this writes model.safetensors).")


def _refuse_unreadable_files(folder: Path) -> None:
    """Each file of a model folder must open for reading: else one line naming it (not a loader's guess)."""
    path = folder
    try:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            with path.open("rb"):
                pass
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot be read ({error.strerror}). Check its permissions, or copy "
                             "the folder again.") from None


def _is_local_reference(name_or_path: str) -> bool:
    """A path rather than a hub id: it exists, looks like a path, or its parent folder exists."""
    path = Path(name_or_path).expanduser()
    return (path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
            or (path.parent != Path(".") and path.parent.is_dir()))


def load_teacher(name_or_path: str) -> tuple[NERModel, object]:
    """Load any BERT-family token-classification checkpoint (hub id or local folder).

    Returns the model wrapped as an `NERModel` (no CRF, frozen, eval mode) and its tokenizer.
    Remote code is never trusted.
    """
    local = _is_local_reference(name_or_path)
    where = Path(name_or_path).expanduser() if local else name_or_path
    if local and not Path(where).is_dir():
        raise ModelLoadError(
            f"teacher {name_or_path!r}: no such folder. Set teacher.model_name to a folder "
            "holding config.json, model.safetensors and tokenizer files, or to a hub id "
            "such as Jean-Baptiste/camembert-ner.")
    if local:
        _refuse_unreadable_files(Path(where))
        _refuse_pickled_weights(Path(where))
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=False)
        backbone, loading = AutoModelForTokenClassification.from_pretrained(
            where, trust_remote_code=False, output_loading_info=True)
        tokenizer = _load_tokenizer(where, config.model_type, backbone.get_input_embeddings().num_embeddings)
    except SafetensorError as error:
        raise ModelLoadError(f"teacher {name_or_path!r}: its safetensors weights are truncated or corrupt ({error}); "
                             "download or copy them again.") from None
    except (OSError, ValueError, KeyError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0", "false", "False"}
        if local:
            fix = ("The folder must hold config.json, the weights and tokenizer files "
                   "as written by save_pretrained.")
        else:
            fix = ("Tried the Hugging Face hub" + (" (HF_HUB_OFFLINE is set, so only the local cache)" if offline else "")
                   + ". Check the pod has internet and the id is spelled right; or download it once "
                   f"(hf download {name_or_path}) and run with HF_HUB_OFFLINE=1; "
                   "or set teacher.model_name to a local folder.")
        raise ModelLoadError(f"cannot load teacher {name_or_path!r}: {error.__class__.__name__}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r}. {fix}") from error
    missing = [k for k in loading.get("missing_keys", []) if "classifier" in k]
    if missing:
        raise ModelLoadError(
            f"teacher {name_or_path!r} has no token-classification head (missing {missing}); "
            "the teacher must be a fine-tuned NER checkpoint, not a base language model.")
    backbone.requires_grad_(False)
    labels = [backbone.config.id2label[i] for i in range(backbone.config.num_labels)]
    info = PipelineInfo(labels=tuple(labels), use_crf=False, teacher=str(name_or_path),
                        teacher_layers=tuple(range(backbone.config.num_hidden_layers)), stage="teacher")
    teacher = NERModel(backbone, info).eval()
    encoder_layers(teacher)  # fail early on a non-BERT layout
    return teacher, tokenizer


# ---------------------------------------------------------------------------
# Student

def select_teacher_layers(num_teacher_layers: int, num_layers: int,
                          explicit: list[int] | None = None) -> list[int]:
    """Teacher layers the student copies: explicit ids, or spread evenly keeping first and last."""
    if num_layers > num_teacher_layers:
        raise PipelineError(f"student.num_layers is {num_layers} but the teacher has only "
                            f"{num_teacher_layers} layers.")
    if explicit is not None:
        if len(explicit) != num_layers or any(not 0 <= i < num_teacher_layers for i in explicit) \
                or list(explicit) != sorted(set(explicit)):
            raise PipelineError(
                f"student.layers {list(explicit)}: give {num_layers} increasing, distinct teacher "
                f"layer ids between 0 and {num_teacher_layers - 1} (or null to spread them evenly).")
        return list(explicit)
    if num_layers == 1:
        return [num_teacher_layers - 1]
    step = (num_teacher_layers - 1) / (num_layers - 1)
    return [round(i * step) for i in range(num_layers)]


def build_student(teacher: NERModel, layer_ids: list[int], student_labels: list[str],
                  projection: LabelProjection, use_crf: bool) -> NERModel:
    """A student copying the teacher's embeddings and `layer_ids`, with a classifier over
    `student_labels` whose B-X and I-X rows start from the teacher's rows for type X."""
    config = copy.deepcopy(teacher.backbone.config)
    config.num_hidden_layers = len(layer_ids)
    config.id2label = dict(enumerate(student_labels))
    config.label2id = {label: i for i, label in enumerate(student_labels)}
    backbone = AutoModelForTokenClassification.from_config(config)
    base_s, base_t = backbone.base_model, teacher.backbone.base_model
    base_s.embeddings.load_state_dict(base_t.embeddings.state_dict())
    for layer_s, layer_id in zip(base_s.encoder.layer, layer_ids):
        layer_s.load_state_dict(base_t.encoder.layer[layer_id].state_dict())
    _init_classifier_from_teacher(backbone.classifier, teacher.backbone.classifier, projection)
    info = PipelineInfo(labels=tuple(student_labels), use_crf=use_crf, teacher=teacher.info.teacher,
                        teacher_layers=tuple(layer_ids), stage="kd")
    return NERModel(backbone, info).to(next(teacher.parameters()).device)


def _init_classifier_from_teacher(classifier_s: nn.Linear, classifier_t: nn.Linear,
                                  projection: LabelProjection) -> None:
    """B-X from the teacher's B-X (else I-X), I-X from its I-X (else B-X), O from O."""
    by_name = {label: i for i, label in enumerate(projection.teacher_labels)}
    with torch.no_grad():
        for row, label in enumerate(projection.student_labels):
            kind, kind_type = label[:1], entity_type(label)
            sources = [l for l in projection.teacher_labels
                       if projection.teacher_type_map.get(entity_type(l)) == kind_type
                       and (kind_type != "O" or l == "O")]
            if not sources:
                continue  # a type the teacher does not know keeps its random initialisation
            preferred = [l for l in sources if l[:1] == kind] or sources
            source = by_name[preferred[0]]
            classifier_s.weight[row] = classifier_t.weight[source]
            classifier_s.bias[row] = classifier_t.bias[source]


# ---------------------------------------------------------------------------
# Physical head pruning (transformers 5 has no prune_heads)

def remaining_heads(model: NERModel) -> list[list[int]]:
    """Original indices of the heads each layer still has."""
    num_heads = model.config.num_attention_heads
    return [[h for h in range(num_heads) if h not in model.info.pruned_heads.get(l, ())]
            for l in range(len(encoder_layers(model)))]


def remove_attention_heads(model: NERModel, heads: dict[int, list[int]]) -> None:
    """Remove attention heads in place, given per layer by their ORIGINAL index.

    Slices the query/key/value rows and the output-projection columns of each head and
    records the removal in `model.info.pruned_heads`, so a pruned model can be pruned again.
    """
    layers = encoder_layers(model)
    alive = remaining_heads(model)
    pruned = {l: set(h) for l, h in model.info.pruned_heads.items()}
    for layer_id, original_heads in sorted(heads.items()):
        if not original_heads:
            continue
        remaining = alive[layer_id]
        unknown = set(original_heads) - set(remaining)
        if unknown:
            raise PipelineError(f"layer {layer_id}: heads {sorted(unknown)} are already pruned "
                                f"or out of range (remaining: {remaining}).")
        if len(set(original_heads)) >= len(remaining):
            raise PipelineError(f"layer {layer_id}: cannot remove all its {len(remaining)} heads.")
        attention = layers[layer_id].attention
        head_size = attention.self.attention_head_size
        keep_positions = [i for i, h in enumerate(remaining) if h not in set(original_heads)]
        index = torch.cat([torch.arange(i * head_size, (i + 1) * head_size) for i in keep_positions])
        for name in ("query", "key", "value"):
            setattr(attention.self, name, prune_linear_layer(getattr(attention.self, name), index, dim=0))
        attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
        attention.self.num_attention_heads = len(keep_positions)
        attention.self.all_head_size = head_size * len(keep_positions)
        pruned.setdefault(layer_id, set()).update(original_heads)
    model.info = replace(model.info, pruned_heads={l: tuple(sorted(h)) for l, h in sorted(pruned.items()) if h})


def remaining_neurons(model: NERModel) -> list[list[int]]:
    """Original indices of the feed-forward neurons each layer still has."""
    size, pruned = model.config.intermediate_size, model.info.pruned_neurons
    return [sorted(set(range(size)) - set(pruned.get(l, ()))) for l in range(len(encoder_layers(model)))]


def remove_ffn_neurons(model: NERModel, neurons: dict[int, list[int]]) -> None:
    """Remove feed-forward neurons in place, given per layer by their ORIGINAL index.

    Slices the rows of `intermediate.dense` and the columns of `output.dense`, so each layer may
    end with its own size, and records the removal in `model.info.pruned_neurons`.
    """
    layers = encoder_layers(model)
    alive = remaining_neurons(model)
    pruned = {l: set(n) for l, n in model.info.pruned_neurons.items()}
    for layer_id, original_neurons in sorted(neurons.items()):
        if not original_neurons:
            continue
        remaining, removing = alive[layer_id], set(original_neurons)
        if len(removing) != len(original_neurons):
            raise PipelineError(f"layer {layer_id}: an FFN neuron is listed twice.")
        unknown = removing - set(remaining)
        if unknown:
            raise PipelineError(f"layer {layer_id}: {len(unknown)} of the FFN neurons to remove are already "
                                "pruned or out of range.")
        if len(removing) >= len(remaining):
            raise PipelineError(f"layer {layer_id}: cannot remove all its {len(remaining)} FFN neurons.")
        index = torch.tensor([i for i, n in enumerate(remaining) if n not in removing])
        layer = layers[layer_id]
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
        pruned.setdefault(layer_id, set()).update(removing)
    model.info = replace(model.info, pruned_neurons={l: tuple(sorted(n)) for l, n in sorted(pruned.items()) if n})


# ---------------------------------------------------------------------------
# Export: the standard shape any transformers-based tool loads

def full_shape_backbone(model: NERModel) -> nn.Module:
    """A Hugging Face token classifier of the config's full shapes holding `model`'s weights.

    Pruned heads get zero rows in query, key and value and zero columns in the attention output;
    pruned FFN neurons get zero rows in `intermediate.dense` and zero columns in `output.dense`.
    A zeroed head or neuron adds exactly nothing, so the logits are those of `model`.
    """
    full = AutoModelForTokenClassification.from_config(copy.deepcopy(model.config)).eval()
    state = {k: v.detach().cpu().float() for k, v in model.backbone.state_dict().items()}
    names = {id(module): name for name, module in model.backbone.named_modules()}
    layers = encoder_layers(model)
    shapes = {k: v.shape for k, v in full.state_dict().items()}
    for l, (heads, neurons) in enumerate(zip(remaining_heads(model), remaining_neurons(model))):
        prefix = names[id(layers[l])]
        head_size = layers[l].attention.self.attention_head_size
        head_rows = torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in heads])
        neuron_rows = torch.tensor(neurons)
        spread = [(f"attention.self.{n}.{p}", head_rows, 0) for n in ("query", "key", "value") for p in ("weight", "bias")]
        spread += [("attention.output.dense.weight", head_rows, 1), ("intermediate.dense.weight", neuron_rows, 0),
                   ("intermediate.dense.bias", neuron_rows, 0), ("output.dense.weight", neuron_rows, 1)]
        for name, rows, dim in spread:
            key = f"{prefix}.{name}"
            padded = torch.zeros(shapes[key])
            padded.index_copy_(dim, rows, state[key])
            state[key] = padded
    full.load_state_dict(state, strict=True)
    return full


def crf_record(model: NERModel) -> dict:
    """The CRF as plain JSON: labels, start, end and transition scores (from row to column), with
    illegal BIO moves at ILLEGAL_TRANSITION_SCORE as decoding forbids them."""
    allowed_start, allowed_transition = bio_constraints(list(model.labels))
    crf = model.crf
    start = crf.start_transitions.detach().float().cpu().masked_fill(~allowed_start, ILLEGAL_TRANSITION_SCORE)
    transitions = crf.transitions.detach().float().cpu().masked_fill(~allowed_transition, ILLEGAL_TRANSITION_SCORE)
    return {"labels": list(model.labels), "start": start.tolist(), "end": crf.end_transitions.detach().float().cpu().tolist(),
            "transitions": transitions.tolist(),
            "note": "Viterbi over the logits of each word's first subword: score(path) = start[y0] + sum_t "
                    "logits[t][y_t] + sum_t transitions[y_(t-1)][y_t] + end[y_last]. Rows of 'transitions' are "
                    f"the previous label, columns the next; {ILLEGAL_TRANSITION_SCORE:g} marks a move BIO forbids."}


# ---------------------------------------------------------------------------
# Saving and the one loader

def save_model(model: NERModel, tokenizer, out_dir: str | Path, stage: str | None = None) -> Path:
    """Write config.json, model.safetensors and tokenizer files into `out_dir`.

    Files are written into a staging folder first (`utils.publishing`). A new folder is then
    renamed into place in one step; into an existing folder (a training run's output) each file
    is moved, config.json last, so a crash never leaves a config without its weights.
    """
    out_dir = Path(out_dir)
    info = replace(model.info, stage=stage) if stage else model.info
    config = model.backbone.config.to_dict()
    config[PIPELINE_KEY] = info.to_json()
    state = {k: v.detach().cpu().contiguous() for k, v in _saved_state(model).items()}
    with publishing(out_dir, merge=True) as staging:
        staging.mkdir(parents=True)
        tokenizer.save_pretrained(staging)
        save_file(state, staging / WEIGHTS_NAME, metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def _saved_state(model: NERModel) -> dict[str, torch.Tensor]:
    """Backbone keys as Hugging Face names them (an unpruned student without CRF loads with
    `from_pretrained` too), CRF keys under `crf.`."""
    state = dict(model.backbone.state_dict())
    if model.crf is not None:
        state.update({f"crf.{k}": v for k, v in model.crf.state_dict().items()})
    return state


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """'' when keys and shapes agree, else a short description of the differences."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k} {tuple(found[k].shape)} instead of {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(found)) if found[k].shape != expected[k].shape]
    parts = [f"{title}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
             for title, items in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if items]
    return "; ".join(parts)


def is_pipeline_artifact(path: str | Path) -> bool:
    config_file = Path(path) / "config.json"
    try:
        return PIPELINE_KEY in json.loads(config_file.read_text())
    except (OSError, ValueError):
        return False


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[NERModel, object]:
    """Rebuild a saved pipeline model exactly (pruned shapes included) and load it strictly.

    A missing file, a shape or key mismatch is an error, never a silent re-initialisation.
    Returns (model in eval mode, tokenizer).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: no such model folder.")
    _refuse_unreadable_files(model_dir)
    if not is_pipeline_artifact(model_dir):
        raise ModelLoadError(
            f"{model_dir} is not a pipeline artifact (its config.json has no '{PIPELINE_KEY}' record, "
            "or is missing or unreadable). Pass a folder written by train_kd.py, prune_heads.py or "
            "finetune_postprune.py; if it is unfinished, rerun that stage.")
    if not (model_dir / WEIGHTS_NAME).is_file():
        raise ModelLoadError(f"{model_dir}: {WEIGHTS_NAME} is missing; the artifact is incomplete.")
    config = AutoConfig.from_pretrained(model_dir)
    record = getattr(config, PIPELINE_KEY)
    try:
        info = PipelineInfo.from_json(record)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{model_dir}/config.json: invalid '{PIPELINE_KEY}' record ({error}).") from error
    if record.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ModelLoadError(f"{model_dir} was written by a newer version of this pipeline "
                             f"(format {record['format_version']}); update the code.")
    delattr(config, PIPELINE_KEY)
    backbone = AutoModelForTokenClassification.from_config(config)
    model = NERModel(backbone, replace(info, pruned_heads={}, pruned_neurons={}))
    remove_attention_heads(model, {l: list(h) for l, h in info.pruned_heads.items()})
    remove_ffn_neurons(model, {l: list(n) for l, n in info.pruned_neurons.items()})
    model.info = info
    try:
        state = load_file(model_dir / WEIGHTS_NAME)
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{model_dir}/{WEIGHTS_NAME} is truncated or corrupt ({error}); copy the folder again, "
                             "or rerun the stage that wrote it.") from None
    mismatch = _state_mismatch(_saved_state(model), state)
    if mismatch:
        raise ModelLoadError(f"{model_dir}: the weights do not match config.json ({mismatch}). The "
                             "artifact is corrupt or was edited; rerun the stage that wrote it.")
    crf_state = {k[len("crf."):]: state.pop(k) for k in list(state) if k.startswith("crf.")}
    backbone.load_state_dict(state, strict=True)
    if model.crf is not None:
        model.crf.load_state_dict(crf_state, strict=True)
    tokenizer = _load_tokenizer(model_dir, config.model_type, backbone.get_input_embeddings().num_embeddings)
    return model.to(device).eval(), tokenizer


def load_any_model(name_or_path: str, device: str | torch.device = "cpu") -> tuple[NERModel, object]:
    """A pipeline artifact if the folder is one, else a teacher (hub id or HF folder)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        _refuse_unreadable_files(folder)  # else an unreadable config.json reads as "not an artifact"
    if is_pipeline_artifact(name_or_path):
        return load_model(name_or_path, device)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is neither a pipeline artifact nor a Hugging Face model folder (it has "
                             "no config.json). Pass a folder written by a stage script, a teacher folder, "
                             "or a hub id.")
    teacher, tokenizer = load_teacher(name_or_path)
    return teacher.to(device), tokenizer
