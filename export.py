"""Export a model folder of any stage into a standard one that any transformers-based tool loads.

    python export.py --model artifacts/student_10L_final --output artifacts/student_10L_export
    python export.py --model artifacts/student_10L_final --output artifacts/student_10L_export --onnx

A pruned student has fewer heads (and FFN neurons) than its config says, so plain transformers
cannot load it. The export zero-pads them back to the full shapes: a zeroed head or neuron adds
exactly nothing, and the export checks that its logits are the model's before it writes anything.
--output then holds config.json, model.safetensors and the tokenizer (loadable with
`AutoModelForTokenClassification.from_pretrained` and `pipeline("token-classification")`),
crf.json (the CRF's labels, start, end and transition scores, which a plain pipeline ignores),
export_summary.json, and a README.md model card with the test F1 with and without the CRF
(--data, default: the test file the model was trained with). With --onnx, also onnx/model.onnx
and onnx/model.int8.onnx, run by plain onnxruntime (inputs input_ids and attention_mask,
output logits).
"""
import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from data_loader import collate_windows, encode_sentences, read_examples
from decoding import seqeval_scores
from model_card import CARD_NAME, card_for_model, pictures_in
from models import count_parameters, crf_record, full_shape_backbone, load_model
from precision import export_onnx
from training import SUMMARY_FILE, evaluate, make_eval_set
from utils import PipelineError, package_versions, prepare_output_dir, publishing, run_cli, write_json, write_text

MAX_LOGIT_DIFFERENCE = 1e-4  # float32 sums in another order; a wrong padding is off by whole units
WITH_CRF, PLAIN = "test, CRF decoding", "test, plain pipeline (no CRF)"


def plain_pipeline_tags(folder: Path, sentences: list[list[str]]) -> list[list[str]]:
    """BIO tags per word from transformers' own `pipeline(aggregation_strategy="first")` on the
    exported folder: what a user without this repository's code gets (no CRF)."""
    from transformers import pipeline
    ner = pipeline("token-classification", model=str(folder), aggregation_strategy="first",
                   device=0 if torch.cuda.is_available() else -1)
    texts = [" ".join(words) for words in sentences]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Tokenizer does not support real words": what users of pipeline get
        results = ner(texts, batch_size=32)
    tags_of_sentences = []
    for words, found in zip(sentences, results):
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        tags = ["O"] * len(words)
        for entity in found:
            inside = [i for i, start in enumerate(starts) if entity["start"] <= start < entity["end"]]
            kind = entity["entity_group"].split("-")[-1]
            for k, i in enumerate(inside):
                tags[i] = ("B-" if k == 0 else "I-") + kind
        tags_of_sentences.append(tags)
    return tags_of_sentences


def logit_difference(model, backbone, eval_windows, pad_id: int) -> float:
    """Largest |logit| difference between the pipeline model and the exported one on real inputs."""
    batch = collate_windows(eval_windows, pad_id)
    with torch.inference_mode():
        ours = model.token_logits(batch.input_ids, batch.attention_mask)
        theirs = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.attention_mask.bool()
    return float((ours - theirs).abs()[mask].max())


def stage_summary(model_dir: Path) -> dict:
    """The summary of the stage that wrote the model (training_summary.json or pruning_summary.json), or {}."""
    for name in (SUMMARY_FILE, "pruning_summary.json"):
        try:
            summary = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            return summary
    return {}


def default_test_file(summary: dict) -> str | None:
    """The test file the model's stage read, when its summary names one that still exists."""
    test_file = ((summary.get("config") or {}).get("data") or {}).get("test_file")
    return test_file if isinstance(test_file, str) and Path(test_file).is_file() else None


def standard_tokenizer_files(folder: Path, max_subwords: int) -> None:
    """Tokenizer settings every transformers version reads: no empty `extra_special_tokens` list
    (transformers 4 fails on it) and the model's real input limit instead of 'unlimited'."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("extra_special_tokens") in ([], {}):
        del config["extra_special_tokens"]
    config["model_max_length"] = max_subwords
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder written by any stage")
    parser.add_argument("--output", required=True, help="the standard folder to write")
    parser.add_argument("--data", help="JSONL to score with and without the CRF for the model card "
                                       "(default: the model's own test file, when it exists)")
    parser.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx and onnx/model.int8.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()
    source, output = Path(args.model), Path(args.output)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise PipelineError(f"--output {output} is the --model folder; choose another folder.")
    prepare_output_dir(output, overwrite=args.overwrite, create=False)
    if args.data and not Path(args.data).is_file():
        raise PipelineError(f"--data {args.data}: no such file.")
    summary = stage_summary(source)
    data_file = args.data or default_test_file(summary)

    model, tokenizer = load_model(source)
    labels = list(model.labels)
    eval_set = None
    if data_file:
        examples = read_examples(data_file, {label: i for i, label in enumerate(labels)})
        eval_set = make_eval_set(tokenizer, examples, min(512, model.max_subwords))
    full = full_shape_backbone(model)
    full.config.id2label, full.config.label2id = dict(enumerate(labels)), {l: i for i, l in enumerate(labels)}
    probe = eval_set.windows[:32] if eval_set and eval_set.windows else _probe_windows(tokenizer)
    difference = logit_difference(model, full, probe, tokenizer.pad_token_id)
    if difference > MAX_LOGIT_DIFFERENCE:
        raise PipelineError(f"{source}: the zero-padded export changes the logits by up to {difference:.2e}; "
                            "nothing was written. Please report this with the model's config.json.")
    scores = {}
    if eval_set is not None:
        scores[WITH_CRF if model.crf is not None else PLAIN] = evaluate(
            model, eval_set, tokenizer.pad_token_id, 32, "cpu")

    with publishing(output) as staging:
        staging.mkdir(parents=True)
        full.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        standard_tokenizer_files(staging, model.position_limit)
        if model.crf is not None:
            write_json(staging / "crf.json", crf_record(model))
            if eval_set is not None:
                scores[PLAIN] = seqeval_scores(eval_set.tags, plain_pipeline_tags(staging, eval_set.sentences))
        if args.onnx:
            export_onnx(model, staging / "onnx")
        data = dict(summary.get("data") or {})
        if eval_set is not None:
            data["evaluation"] = {"file": data_file, "sentences": len(eval_set.sentences)}
        write_json(staging / "export_summary.json", {
            "model": str(source), "max_logit_difference": difference,
            "parameters": {"model": count_parameters(model), "exported": count_parameters(full)},
            "pruned_heads": model.info.to_json()["pruned_heads"],
            "pruned_neurons": model.info.to_json().get("pruned_neurons", {}), "crf": model.crf is not None,
            "data": data_file, "scores": scores, "onnx": args.onnx, "package_versions": package_versions(),
            "command": ["export.py"] + list(argv if argv is not None else sys.argv[1:])})
        note = _crf_note(scores) if model.crf is not None else None
        for picture, _ in pictures_in(source):  # the Hub shows them in the card
            shutil.copy2(Path(source) / picture, staging / picture)
        write_text(staging / CARD_NAME, card_for_model(model, output.name, model.info.stage, data, scores,
                                                        headline_split=next(iter(scores), None),
                                                        notes=[note] if note else [], exported=True,
                                                        pictures=pictures_in(staging)))
    line = "; ".join(f"F1 {split} {s['overall']['f1']:.4f}" for split, s in scores.items())
    print(f"Exported {source} -> {output} (full shapes, largest logit difference {difference:.1e}"
          + (f"; on {data_file}: {line}" if line else "") + ").")
    return 0


def _probe_windows(tokenizer):
    """Two padded sentences to compare logits on when no data file is at hand."""
    words = ["Le", "docteur", "Martin", "reçoit", "à", "Rennes", "le", "12", "mars", "."]
    return encode_sentences(tokenizer, [words, words[:4]], 64)


def _crf_note(scores: dict) -> str:
    with_crf, plain = scores.get(WITH_CRF), scores.get(PLAIN)
    figures = (f" On the test set: F1 {with_crf['overall']['f1']:.4f} with the CRF, {plain['overall']['f1']:.4f} "
               "with a plain pipeline." if with_crf and plain else "")
    return ("## The CRF\n\n**A plain `pipeline(\"token-classification\")` decodes without the CRF**: it takes the "
            "argmax of each subword and ignores `crf.json`." + figures + " To decode with the CRF, use the "
            "30-line reference decoder of the repository's README (Viterbi over the first subword of each word "
            "with the scores of `crf.json`), or this repository's `inference.py`.")


if __name__ == "__main__":
    run_cli(main)
