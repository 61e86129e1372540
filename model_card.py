"""The model card (README.md) written into every model folder, so it is ready for the Hugging Face Hub.

Front matter as the Hub reads it (language, pipeline_tag, base_model, tags, model-index with the
scores), then what a user of the model needs: labels, size, what pruning removed, the training
data, the scores per type, how to load it, and a warning that the training data may hold personal
data. `card_for_model` is pure: the scripts write what it returns.
"""
from __future__ import annotations

import json
from pathlib import Path

from models import NERModel, count_parameters, heads_per_layer, neurons_per_layer
from utils import markdown_table

CARD_NAME = "README.md"
TAGS = ["token-classification", "ner", "french", "knowledge-distillation", "pruning", "camembert"]
STAGE_TITLES = {"kd": "distilled student (stage 1)", "student": "distilled student (stage 1)",
                "pruned": "pruned student (stage 2)", "finetune": "fine-tuned student (stage 3)",
                "finetuned": "fine-tuned student (stage 3)"}


def _is_hub_id(name: str) -> bool:
    """'owner/name' as the Hub spells it (a local teacher folder is not a base_model)."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
            and not Path(name).exists())


def _yaml_scalar(value) -> str:
    """A YAML scalar that reads back as the same value (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def front_matter(name: str, teacher: str, split: str | None, dataset: str | None, scores: dict | None,
                 extra_tags: tuple[str, ...] = (), scores_name: str | None = None) -> str:
    """The YAML header the Hub reads; model-index holds the overall scores on `split` of `dataset`."""
    lines = ["---", "language: fr", "pipeline_tag: token-classification", "library_name: transformers"]
    if _is_hub_id(teacher):
        lines.append(f"base_model: {_yaml_scalar(teacher)}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in TAGS + list(extra_tags)]
    if scores is not None:
        overall = scores["overall"]
        lines += ["model-index:", f"- name: {_yaml_scalar(name)}", "  results:", "  - task:",
                  "      type: token-classification", "      name: Named entity recognition", "    dataset:",
                  f"      name: {_yaml_scalar(dataset)}", f"      type: {_yaml_scalar(dataset)}",
                  f"      split: {split}", "    metrics:"]
        for metric in ("f1", "precision", "recall"):
            lines += [f"    - type: {metric}", f"      value: {round(overall[metric], 4)}",
                      f"      name: {_yaml_scalar(f'{scores_name or split} {metric} (seqeval, strict IOB2)')}"]
    lines.append("---")
    return "\n".join(lines)


def scores_table(scores_by_split: dict[str, dict]) -> str:
    """Precision, recall, F1 and support per entity type and overall, one block per split."""
    rows = []
    for split, scores in scores_by_split.items():
        for kind, row in list(scores["per_type"].items()) + [("overall (micro)", scores["overall"])]:
            rows.append([split, kind, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                         str(row["support"])])
    return markdown_table(["split", "type", "precision", "recall", "F1", "entities"], rows)


def size_section(model: NERModel) -> str:
    config, info = model.config, model.info
    heads, neurons = heads_per_layer(model), neurons_per_layer(model)
    lines = [f"- Parameters: {count_parameters(model):,} ({config.model_type}, hidden size {config.hidden_size}, "
             f"vocabulary {config.vocab_size:,} pieces).",
             f"- Layers: {len(heads)}, copied from teacher layers {list(info.teacher_layers)}.",
             f"- Attention heads kept per layer: {heads} ({sum(heads)} of "
             f"{config.num_attention_heads * len(heads)})."]
    if info.pruned_heads:
        lines.append("- Heads removed by pruning (layer: original head indices): "
                     + "; ".join(f"{l}: {list(h)}" for l, h in sorted(info.pruned_heads.items())) + ".")
    if info.pruned_neurons:
        lines.append(f"- Feed-forward neurons kept per layer: {neurons} ({sum(neurons):,} of "
                     f"{config.intermediate_size * len(neurons):,}).")
    lines.append(f"- Decoding: {'a CRF over word-level emissions (BIO constraints enforced)' if model.crf is not None else 'argmax per word'}.")
    return "\n".join(lines)


def data_section(data: dict[str, dict]) -> str:
    """data: split -> {"file": path, "sentences": n} as the stage read it."""
    names = lambda files: ", ".join(f"`{Path(f).name}`" for f in files.split(", "))
    return "\n".join(f"- {split}: {names(entry['file'])}, {entry['sentences']:,} "
                     f"{'notes (no labels; the teacher labels them)' if split == 'unlabeled' else 'sentences'}"
                     for split, entry in data.items())


PERSONAL_DATA = ("> **Personal data.** The sentences this model was trained on may contain personal data "
                 "(medico-social case notes are personal health data). A model can memorise rare names or "
                 "phrases from its training data. Check with your data protection officer before you publish "
                 "it or share it outside the organisation that holds the data.")


def usage_section(folder_name: str, has_crf: bool, exported: bool) -> str:
    if exported:
        return (f"```python\nfrom transformers import pipeline\n\nner = pipeline(\"token-classification\", "
                f"model=\"{folder_name}\", aggregation_strategy=\"first\")\nner(\"Jean Dupont habite à Rennes.\")\n```\n\n"
                + ("**This `pipeline` decodes without the CRF**; see \"The CRF\" above for what that costs and "
                   "how to decode with `crf.json`." if has_crf else ""))
    return ("With this repository's code (it rebuilds the pruned shapes and keeps the CRF):\n\n"
            f"```bash\npython inference.py --model {folder_name} --input notes.txt --output entities.jsonl\n```\n\n"
            f"```python\nfrom models import load_model\nmodel, tokenizer = load_model(\"{folder_name}\")\n```\n\n"
            "For any transformers-based tool (`AutoModelForTokenClassification`, `pipeline`), export it first; "
            "pruned heads and neurons are zero-padded back to the standard shape, with identical logits:\n\n"
            f"```bash\npython export.py --model {folder_name} --output {folder_name}_export\n```")


# the pictures a model folder may hold (plots.py), in the order a card shows them
PICTURES = (("training_curves.png", "Training curves: loss terms, learning rate and validation F1"),
            ("heads_pruned.png", "Attention-head importance and the heads pruning removed"))


def pictures_in(folder: str | Path) -> list[tuple[str, str]]:
    """(file name, caption) of the pictures present in a model folder."""
    return [(name, caption) for name, caption in PICTURES if (Path(folder) / name).is_file()]


def card_for_model(model: NERModel, name: str, stage: str, data: dict[str, dict],
                   scores_by_split: dict[str, dict], headline_split: str | None, notes: list[str] = (),
                   exported: bool = False, pictures: list[tuple[str, str]] = ()) -> str:
    """The whole README.md of a model folder; `pictures` (file, caption) are embedded by relative link."""
    info = model.info
    headline = scores_by_split.get(headline_split) if headline_split else None
    split = headline_split.split(",")[0].split(" (")[0] if headline_split else None  # "test, CRF decoding" -> test
    entry = data.get("evaluation") or data.get(split) if headline else None
    dataset = Path(entry["file"]).name if entry else split
    parts = [front_matter(name, info.teacher, split, dataset, headline,
                          extra_tags=("crf",) if model.crf is not None else (), scores_name=headline_split),
             f"# {name}",
             f"A French named-entity recognizer: {STAGE_TITLES.get(stage, stage)} of a knowledge-distillation "
             f"pipeline, from the teacher `{info.teacher}`.",
             PERSONAL_DATA,
             "## Labels", ", ".join(f"`{label}`" for label in info.labels) + " (BIO).",
             "## Size", size_section(model)]
    if data:
        parts += ["## Data", data_section(data)]
    if scores_by_split:
        parts += ["## Scores", "seqeval, strict IOB2 (an entity counts when its type and both ends are right).",
                  scores_table(scores_by_split)]
    parts += list(notes)
    if pictures:
        parts += ["## Pictures"] + [f"![{caption}]({file})" for file, caption in pictures]
    parts += ["## How to use", usage_section(name, model.crf is not None, exported)]
    return "\n\n".join(parts) + "\n"


def stage_data(config_data: dict, counts: dict[str, int]) -> dict[str, dict]:
    """The data record of a stage summary: file and sentence count of each split read."""
    files = {"train": config_data.get("train_file"), "validation": config_data.get("val_file"),
             "test": config_data.get("test_file")}
    return {split: {"file": str(files[split]), "sentences": n} for split, n in counts.items() if files.get(split)}
