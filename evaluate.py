"""Score models on a labelled JSONL file: F1, size and speed, all measured in the same run.

    python evaluate.py --model Jean-Baptiste/camembert-ner --model artifacts/student_10L_final --data data/test.jsonl
    python evaluate.py --model artifacts/student_10L --model artifacts/student_10L_final \\
        --data data/test.jsonl --output report.json --plot report.png

For each model: seqeval strict IOB2 precision, recall and F1, overall and per type, in the
data's label space (a teacher's labels are mapped as in stage 1: by type name, MISC folded
into O unless `distillation.label_map` says otherwise); parameter count; throughput in
words/s over the whole file (batched) and the median (p50) latency of one sentence. The
decoding is inference.py's, so both give the same entities.
"""
import argparse
import statistics
import time
from pathlib import Path

from data_loader import read_examples, read_label2id
from decoding import map_entity_types, predict, seqeval_scores
from models import count_parameters, load_any_model, project_labels
from plots import comparison_data, draw_comparison
from precision import PRECISIONS, for_inference
from config import DEFAULT_CONFIG, add_config_args, load_config
from utils import PipelineError, check_writable, init_runtime, markdown_table, run_cli, write_json


def measure(name: str, sentences: list[list[str]], gold: list[list[str]], labels: list[str], label_map: dict,
            batch_size: int, device, latency_sentences: int, precision: str = "fp32") -> dict:
    """Load one model and measure it: scores, parameters, words/s, p50 latency (ms)."""
    model, tokenizer = load_any_model(name, device)
    stage, parameters = model.info.stage, count_parameters(model)
    model, autocast = for_inference(model, name, precision, device)
    type_map = {}
    if list(model.labels) != labels:
        type_map = project_labels(list(model.labels), labels, label_map).teacher_type_map
    run = lambda batch, size: predict(model, tokenizer, batch, batch_size=size, device=device, autocast=autocast)
    run(sentences[:batch_size], batch_size)                                  # warm-up
    started = time.perf_counter()
    predictions = run(sentences, batch_size)
    seconds = time.perf_counter() - started
    tags = [map_entity_types(p.tags, type_map) if type_map else p.tags for p in predictions]
    step = max(1, len(sentences) // latency_sentences)
    latencies = []
    for sentence in sentences[::step][:latency_sentences]:
        started = time.perf_counter()
        run([sentence], 1)
        latencies.append(time.perf_counter() - started)
    return {"model": name, "stage": stage, "precision": precision, "parameters": parameters,
            **seqeval_scores(gold, tags),
            "words_per_s": round(sum(map(len, sentences)) / seconds, 1),
            "p50_latency_ms": round(1000 * statistics.median(latencies), 2)}


def format_table(rows: list[dict]) -> str:
    types = sorted({t for row in rows for t in row["per_type"]})
    header = ["model", "stage", "precision", "params", "P", "R", "F1"] + [f"F1 {t}" for t in types] + ["words/s", "p50 ms"]
    lines = []
    for row in rows:
        overall = row["overall"]
        lines.append([row["model"], row["stage"], row.get("precision", "fp32"), f"{row['parameters'] / 1e6:.2f}M", f"{overall['precision']:.4f}",
                      f"{overall['recall']:.4f}", f"{overall['f1']:.4f}"]
                     + [f"{row['per_type'][t]['f1']:.4f}" if t in row["per_type"] else "-" for t in types]
                     + [f"{row['words_per_s']:.0f}", f"{row['p50_latency_ms']:.1f}"])
    return markdown_table(header, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="an artifact folder, a teacher folder or a hub id; repeat to compare models")
    parser.add_argument("--data", required=True, help="labelled JSONL (BIO tags)")
    parser.add_argument("--label2id", help="the label set (default: label2id.json beside --data)")
    parser.add_argument("--output", help="write the report as JSON")
    parser.add_argument("--plot", help="draw F1 per entity type, one bar per model, into this PNG")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-sentences", type=int, default=50,
                        help="sentences timed one at a time for the p50 latency (default 50)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS,
                        help="one or more of fp32, bf16, int8: each model is measured at each (default fp32)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    for flag, target in (("--output", args.output), ("--plot", args.plot)):
        if target:
            check_writable(target, (args.data,), flag=flag)
    label2id_file = Path(args.label2id) if args.label2id else Path(args.data).with_name("label2id.json")
    if not label2id_file.is_file():
        raise PipelineError(f"{label2id_file}: no label2id.json; pass --label2id.")
    label2id = read_label2id(label2id_file)
    labels = sorted(label2id, key=label2id.get)
    examples = read_examples(args.data, label2id)
    # the config only supplies distillation.label_map: the default may be absent (run from
    # elsewhere), but a --config the user names must load
    use_config = args.config != DEFAULT_CONFIG or Path(args.config).is_file()
    label_map = load_config(args.config, args.overrides, check_files=False).distillation.label_map if use_config else {}
    runtime = init_runtime(args.device)
    sentences, gold = [list(e.tokens) for e in examples], [list(e.tags) for e in examples]
    rows = []
    for name in args.model:
        for precision in args.precision:
            print(f"Evaluating {name} ({precision}) on {len(sentences)} sentences ({runtime.device}) ...")
            rows.append(measure(name, sentences, gold, labels, label_map, args.batch_size, runtime.device,
                                args.latency_sentences, precision))
    print(format_table(rows))
    print("seqeval strict IOB2 scores; throughput batched, latency one sentence at a time.")
    if args.output:
        write_json(args.output, {"data": str(args.data), "device": str(runtime.device), "models": rows})
        print(f"Report written to {args.output}")
    if args.plot:
        draw_comparison(comparison_data(rows), args.plot,
                        title=f"F1 per entity type on {Path(args.data).name} ({len(sentences)} sentences, {runtime.device})")
        print(f"Picture written to {args.plot}")
    return 0


if __name__ == "__main__":
    run_cli(main)
