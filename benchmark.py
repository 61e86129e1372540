"""Speed of the teacher and the students, each model measured in a process of its own.

    python benchmark.py --like camembert-base --layers 10 --prune-rate 0.25 --precision fp32 bf16 int8
    python benchmark.py --model Jean-Baptiste/camembert-ner --model artifacts/student_10L_final --precision fp32 int8
    python benchmark.py --like camembert-base --layers 10 --prune-rate 0.25 --train
    python benchmark.py --like camembert-base --ffn-rate 0.3 --vocab-size 16000   # + the compact student

The first row is the baseline (the teacher, fp32); every row gives its ratio to it. Throughput
is words/s over the sentences of --data in batches of --batch-size (the median of the timed
passes, after a warm-up, with the slowest and fastest beside it); latency is one sentence at a
time (p50 and p95 over the sentences, each the fastest of 3 calls). Every process runs
--threads threads (default: all cores). A warning says when the machine looked busy: the load
average at start above the cores left free, or a row whose passes differ by more than 10%. `--like` builds
randomly initialised models with a real teacher's shapes, so nothing is downloaded: speed does
not depend on the weights. Timings of several models in one process were unstable, hence one
process per row. --train times a distillation step against a plain fine-tuning step of the
same student on the same batch. The machine's speed drifts: each row runs in --rounds
processes, rows alternating, and the medians are taken over all of them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from data_loader import collate_windows, encode_sentences, read_examples, subword_pieces
from decoding import predict
from config import LossWeights
from losses import KDMapping
from models import (NERModel, PipelineInfo, build_student, count_parameters, heads_per_layer, load_any_model,
                    project_labels, remove_attention_heads, remove_ffn_neurons, select_teacher_layers)
from precision import PRECISIONS, autocast_for, for_inference
from pruning import heads_to_prune, plan_prune_count
from tools.make_demo_teacher import train_tokenizer
from training import step_loss
from utils import PipelineError, init_runtime, markdown_table, run_cli, write_json
from vocabulary import trim_embeddings

# Shapes of public teachers, for models built without downloading anything.
SHAPES = {
    "camembert-base": dict(model_type="camembert", vocab_size=32005, hidden_size=768, num_hidden_layers=12,
                           num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                           pad_token_id=1, bos_token_id=5, eos_token_id=6, type_vocab_size=1, layer_norm_eps=1e-5),
    # a toy size, to check the benchmark itself in seconds
    "camembert-tiny": dict(model_type="camembert", vocab_size=8000, hidden_size=64, num_hidden_layers=4,
                           num_attention_heads=4, intermediate_size=128, max_position_embeddings=514,
                           pad_token_id=1, bos_token_id=5, eos_token_id=6, type_vocab_size=1, layer_norm_eps=1e-5),
}
TEACHER_LABELS = ("O", "I-LOC", "I-PER", "I-MISC", "I-ORG")
STUDENT_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")


def build_like(like: str, layers: int | None, prune_rate: float, seed: int = 0, ffn_rate: float = 0.0,
               vocab_size: int | None = None) -> NERModel:
    """A random model with `like`'s shapes: the teacher, or a student of `layers` layers with
    `prune_rate` of its heads and `ffn_rate` of each layer's FFN neurons removed (chosen at
    random: speed does not depend on which) and its vocabulary cut to `vocab_size` pieces."""
    from transformers import AutoConfig, AutoModelForTokenClassification
    shapes = dict(SHAPES[like])
    config = AutoConfig.for_model(shapes.pop("model_type"), **shapes, id2label=dict(enumerate(TEACHER_LABELS)),
                                  label2id={label: i for i, label in enumerate(TEACHER_LABELS)})
    torch.manual_seed(seed)
    teacher = NERModel(AutoModelForTokenClassification.from_config(config),
                       PipelineInfo(TEACHER_LABELS, False, f"like:{like}", tuple(range(config.num_hidden_layers)),
                                    stage="teacher")).eval()
    if layers is None or (layers == config.num_hidden_layers and prune_rate == 0):
        return teacher
    projection = project_labels(list(TEACHER_LABELS), list(STUDENT_LABELS))
    student = build_student(teacher, select_teacher_layers(config.num_hidden_layers, layers), list(STUDENT_LABELS),
                            projection, use_crf=True)
    count = plan_prune_count(heads_per_layer(student), prune_rate, 1)
    remove_attention_heads(student, heads_to_prune(torch.rand(layers, config.num_attention_heads), count, 1))
    if ffn_rate:
        removed = round(ffn_rate * config.intermediate_size)
        remove_ffn_neurons(student, {l: sorted(torch.randperm(config.intermediate_size)[:removed].tolist())
                                     for l in range(layers)})
    if vocab_size:
        trim_embeddings(student, list(range(vocab_size)))  # the benchmark's tokenizer uses the lowest ids
    return student.eval()


# ---------------------------------------------------------------------------
# One row, in its own process

def measure_inference(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    runtime = init_runtime(spec["device"])
    sentences = json.loads(Path(spec["sentences"]).read_text())
    if spec["like"]:
        from transformers import AutoTokenizer
        model = build_like(spec["like"], spec["layers"], spec["prune_rate"], ffn_rate=spec["ffn_rate"],
                           vocab_size=spec["vocab_size"])
        tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
        model_ref = Path(spec["scratch"]) / "export_{layers}_{prune_rate}_{ffn_rate}_{vocab_size}".format(**spec)
        model_ref.mkdir(exist_ok=True)                                            # int8 files go here
        model_ref.mkdir(exist_ok=True)
    else:
        model, tokenizer = load_any_model(spec["model"], "cpu")
        model_ref = spec["model"]
    size = {"parameters": count_parameters(model), "heads": sum(heads_per_layer(model))}
    model, autocast = for_inference(model.to(runtime.device), str(model_ref), spec["precision"], runtime.device,
                                    log=lambda *a: None)
    run = lambda batch, size: predict(model, tokenizer, batch, batch_size=size, device=runtime.device,
                                      autocast=autocast)
    run(sentences[:spec["batch_size"]], spec["batch_size"])                       # warm-up
    passes = []
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        run(sentences, spec["batch_size"])
        passes.append(time.perf_counter() - started)
    singles = sentences[::max(1, len(sentences) // spec["latency_sentences"])][:spec["latency_sentences"]]
    for sentence in singles[:3]:
        run([sentence], 1)                                                          # warm-up
    latencies = []
    for sentence in singles:  # the fastest of 3 calls: a call that another job interrupted is not kept
        calls = []
        for _ in range(3):
            started = time.perf_counter()
            run([sentence], 1)
            calls.append(time.perf_counter() - started)
        latencies.append(min(calls))
    return {"words": sum(map(len, sentences)), "pass_seconds": passes, "latencies_ms": [1000 * t for t in latencies],
            **size, "device": str(runtime.device)}


def summarise(results: list[dict]) -> dict:
    """Merge one row's rounds: words/s of the median, slowest and fastest passes; p50/p95 over the
    sentences timed one at a time (each the fastest of its 3 calls)."""
    passes = [t for r in results for t in r["pass_seconds"]]
    latencies = sorted(t for r in results for t in r["latencies_ms"])
    words = results[0]["words"]
    return {"words_per_s": words / statistics.median(passes),
            "words_per_s_min": words / max(passes), "words_per_s_max": words / min(passes),
            "p50_ms": statistics.median(latencies),
            "p95_ms": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "passes": len(passes), "parameters": results[0]["parameters"], "heads": results[0]["heads"],
            "device": results[0]["device"]}


def measure_training(spec: dict) -> dict:
    """Median time of an optimizer step: plain fine-tuning, or distillation from the teacher."""
    from transformers import AutoTokenizer
    torch.set_num_threads(spec["threads"])
    runtime = init_runtime(spec["device"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    examples = json.loads(Path(spec["sentences"]).read_text())[:spec["batch_size"]]
    label2id = {label: i for i, label in enumerate(STUDENT_LABELS)}
    windows = encode_sentences(tokenizer, examples, 128, tags=[["O"] * len(s) for s in examples], label2id=label2id)
    batch = collate_windows(windows[:spec["batch_size"]], tokenizer.pad_token_id).to(runtime.device)
    student = build_like(spec["like"], spec["layers"], spec["prune_rate"], ffn_rate=spec["ffn_rate"],
                         vocab_size=spec["vocab_size"]).to(runtime.device).train()
    teacher, weights, mapping = None, LossWeights(ce=1.0, kd=0.0, hidden=0.0, crf=1.0), None
    if spec["mode"] == "kd":
        teacher = build_like(spec["like"], None, 0.0).to(runtime.device).eval().requires_grad_(False)
        weights = LossWeights(ce=0.5, kd=0.5, hidden=0.1, crf=1.0)
        mapping = KDMapping.from_projection(project_labels(list(TEACHER_LABELS), list(STUDENT_LABELS)), runtime.device)
    autocast = autocast_for(spec["precision"], runtime.device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    times = []
    for step in range(spec["steps"] + 2):
        started = time.perf_counter()
        loss, _ = step_loss(student, student, teacher, batch, weights, 2.5, mapping, autocast)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:                                                              # two warm-up steps
            times.append(time.perf_counter() - started)
    return {"step_ms": [1000 * t for t in times], "batch": list(batch.input_ids.shape), "device": str(runtime.device)}


# ---------------------------------------------------------------------------
# The table

def run_worker(spec: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": error.removeprefix("error: ")}
    return json.loads(lines[-1])


def inference_rows(args) -> list[dict]:
    rows = []
    if args.like:
        teacher = {"label": f"teacher ({args.like}, random)", "layers": None, "prune_rate": 0.0, "ffn_rate": 0.0,
                   "vocab_size": None}
        rows.append(dict(teacher, precision="fp32"))
        rows += [dict(teacher, precision=p) for p in args.teacher_precision if p != "fp32"]
        plain = {"label": f"student ({args.layers} layers, {args.prune_rate:.0%} heads pruned)", "layers": args.layers,
                 "prune_rate": args.prune_rate, "ffn_rate": 0.0, "vocab_size": None}
        students = [plain]
        if args.ffn_rate or args.vocab_size:
            compact = [f"{args.ffn_rate:.0%} FFN neurons"] * bool(args.ffn_rate) + \
                [f"vocabulary {args.vocab_size}"] * bool(args.vocab_size)
            students.append(dict(plain, label=f"compact student ({args.layers} layers, {args.prune_rate:.0%} heads, "
                                              + ", ".join(compact) + ")",
                                 ffn_rate=args.ffn_rate, vocab_size=args.vocab_size))
        rows += [dict(student, precision=p) for student in students for p in args.precision]
    else:
        rows.append({"label": args.model[0], "model": args.model[0], "precision": "fp32"})
        rows += [{"label": args.model[0], "model": args.model[0], "precision": p}
                 for p in args.teacher_precision if p != "fp32"]
        rows += [{"label": name, "model": name, "precision": p} for name in args.model[1:] for p in args.precision]
    return rows


def busy_warnings(rows: list[dict], load_at_start: float, cores: int, threads: int) -> list[str]:
    """Signs that the machine was busy: the load at start above the cores left free, and rows whose
    fastest and slowest passes differ by more than 10% of the median."""
    found = []
    if load_at_start > cores - threads + 0.5:
        found.append(f"the load average was {load_at_start:.1f} at start, with {cores} cores of which the benchmark "
                     f"uses {threads}: other jobs were running, so speeds and ratios may be off.")
    for row in rows:
        if "error" not in row:
            spread = (row["words_per_s_max"] - row["words_per_s_min"]) / row["words_per_s"]
            if spread > 0.10:
                found.append(f"{row['label']} ({row['precision']}): words/s varied by {spread:.0%} between passes "
                             f"({row['words_per_s_min']:.0f} to {row['words_per_s_max']:.0f}); the machine was busy. "
                             "Rerun on an idle machine, or with more --rounds.")
    return found


def format_table(rows: list[dict]) -> str:
    base = rows[0]
    header = ["model", "precision", "params", "words/s", "min-max", "x first", "p50 ms", "x first", "p95 ms"]
    lines = []
    for row in rows:
        if "error" in row:
            lines.append([row["label"], row["precision"], "-", "failed (below)", "", "", "", "", ""])
            continue
        ratio = lambda key: f"{row[key] / base[key]:.2f}" if "error" not in base else "-"
        lines.append([row["label"], row["precision"], f"{row['parameters'] / 1e6:.1f}M", f"{row['words_per_s']:.0f}",
                      f"{row['words_per_s_min']:.0f}-{row['words_per_s_max']:.0f}", ratio("words_per_s"),
                      f"{row['p50_ms']:.1f}", ratio("p50_ms"), f"{row['p95_ms']:.1f}"])
    return markdown_table(header, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--model", action="append", help="artifact folder or hub id; the first is the baseline")
    models.add_argument("--like", choices=sorted(SHAPES), help="random models with these shapes (no download)")
    parser.add_argument("--layers", type=int, default=10, help="student layers with --like (default 10)")
    parser.add_argument("--prune-rate", type=float, default=0.25, help="student heads removed with --like")
    parser.add_argument("--ffn-rate", type=float, default=0.0,
                        help="with --like: also measure a compact student, with this share of each layer's FFN "
                             "neurons removed (e.g. 0.3)")
    parser.add_argument("--vocab-size", type=int,
                        help="with --like: the compact student's vocabulary (e.g. 16000; the teacher keeps its own)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "int8"], choices=PRECISIONS,
                        help="precisions of the student rows (default fp32 int8)")
    parser.add_argument("--teacher-precision", nargs="+", default=["fp32"], choices=PRECISIONS,
                        help="extra precisions of the baseline model (its fp32 row always comes first)")
    parser.add_argument("--data", default="data/test.jsonl", help="JSONL whose sentences are timed")
    parser.add_argument("--sentences", type=int, default=128, help="sentences timed per pass (default 128)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per process (default 2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="processes per row, rows alternating; the median pass over all counts (default 2)")
    parser.add_argument("--latency-sentences", type=int, default=40)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--train", action="store_true", help="time a KD step against a plain fine-tuning step")
    parser.add_argument("--train-precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--steps", type=int, default=5, help="timed training steps with --train")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of every measured process (default: all cores)")
    parser.add_argument("--output", help="write the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = measure_training(spec) if spec.get("mode") else measure_inference(spec)
        print(json.dumps(result))
        return 0
    if not args.like and not args.model:
        raise PipelineError("give --like camembert-base (random models) or one or more --model.")
    if args.train and not args.like:
        raise PipelineError("--train builds its models: use it with --like.")
    if (args.ffn_rate or args.vocab_size) and not args.like:
        raise PipelineError("--ffn-rate and --vocab-size shape the compact student that --like builds; a saved "
                            "compact student is measured with --model.")
    if args.threads < 1:
        raise PipelineError(f"--threads {args.threads}: give at least 1.")
    if not 0 <= args.ffn_rate < 1:
        raise PipelineError(f"--ffn-rate {args.ffn_rate}: give the share of FFN neurons to remove, in [0, 1).")
    if args.like and args.vocab_size and not 0 < args.vocab_size <= SHAPES[args.like]["vocab_size"]:
        raise PipelineError(f"--vocab-size {args.vocab_size}: between 1 and {args.like}'s "
                            f"{SHAPES[args.like]['vocab_size']} pieces.")

    corpus = [list(e.tokens) for e in read_examples(args.data)]
    sentences = corpus[:args.sentences]
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "sentences.json").write_text(json.dumps(sentences, ensure_ascii=False))
        common = {"sentences": str(Path(scratch) / "sentences.json"), "device": args.device, "scratch": scratch,
                  "batch_size": args.batch_size, "repeats": args.repeats, "like": args.like,
                  "latency_sentences": args.latency_sentences, "tokenizer": None, "threads": args.threads}
        if args.like:
            # a unigram tokenizer trained on the whole file stands in for the teacher's
            tokenizer = train_tokenizer(corpus, Path(scratch) / "tokenizer", vocab_size=8000)
            common["tokenizer"] = str(Path(scratch) / "tokenizer")
            if args.vocab_size and args.vocab_size < len(tokenizer):
                raise PipelineError(f"--vocab-size {args.vocab_size} is smaller than the {len(tokenizer)} pieces of "
                                    "the tokenizer the benchmark trains on --data.")
            pieces = subword_pieces(tokenizer, sentences)
            print(f"random models with {args.like} shapes; their tokenizer gives "
                  f"{sum(len(p) for s in pieces for p in s) / sum(map(len, sentences)):.2f} subwords per word.")
        print(f"{len(sentences)} sentences ({sum(map(len, sentences))} words) from {args.data}, "
              f"device {args.device}, one process per row.")
        load_at_start = os.getloadavg()[0]
        report = {"data": args.data, "sentences": len(sentences), "device": args.device, "threads": args.threads,
                  "load_average_at_start": load_at_start, "rows": []}
        if args.train:
            runs = {"plain": [], "kd": []}
            for round_number in range(1, args.rounds + 1):
                for mode in runs:
                    spec = dict(common, mode=mode, layers=args.layers, prune_rate=args.prune_rate,
                                ffn_rate=args.ffn_rate, vocab_size=args.vocab_size,
                                precision=args.train_precision, steps=args.steps)
                    runs[mode].append(run_worker(spec))
                    print(f"round {round_number}/{args.rounds}, {mode} step: {runs[mode][-1]}", flush=True)
            failed = [r for rs in runs.values() for r in rs if "error" in r]
            if failed:
                raise PipelineError(f"a training-step worker failed: {failed[0]['error']}")
            report["train"] = {mode: {"step_ms": statistics.median(t for r in rs for t in r["step_ms"]),
                                      "batch": rs[0]["batch"], "device": rs[0]["device"]}
                               for mode, rs in runs.items()}
            plain, kd = report["train"]["plain"], report["train"]["kd"]
            report["train"]["kd_over_plain"] = kd["step_ms"] / plain["step_ms"]
            print(f"KD step {kd['step_ms']:.0f} ms vs plain fine-tuning step {plain['step_ms']:.0f} ms "
                  f"(median of {args.rounds * args.steps} steps each, batch {plain['batch']}): "
                  f"ratio {report['train']['kd_over_plain']:.2f}")
        else:
            # rows alternate within each round, so that a slow spell of the machine hits them all
            rows, results = inference_rows(args), {}
            for round_number in range(1, args.rounds + 1):
                for index, row in enumerate(rows):
                    print(f"round {round_number}/{args.rounds}: {row['label']} ({row['precision']}) ...", flush=True)
                    results.setdefault(index, []).append(run_worker(dict(common, **row)))
            for index, row in enumerate(rows):
                failed = [r for r in results[index] if "error" in r]
                row.update(failed[0] if failed else summarise(results[index]))
                report["rows"].append(row)
            print(format_table(report["rows"]))
            report["warnings"] = busy_warnings(report["rows"], load_at_start, os.cpu_count() or 1, args.threads)
            for warning in report["warnings"]:
                print(f"warning: {warning}")
    if args.output:
        write_json(args.output, report)
    failures = [row for row in report["rows"] if "error" in row]
    for row in failures:
        print(f"error: {row['label']} ({row['precision']}): {row['error']}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    run_cli(main)
