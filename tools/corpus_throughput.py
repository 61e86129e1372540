"""Corpus throughput of inference.py on this machine's CPU, int8 student at camembert-base shapes.

    python tools/corpus_throughput.py --data ../shared/data/wikiner_fr/test.jsonl

Measures, in one run (the machine's speed drifts, so only ratios within a run are compared):
  1. length sorting: words/s of one process (1 thread) predicting the notes in batches of windows
     sorted by length, against the same batches in input order;
  2. processes: words/s of `inference.py --precision int8` as 1 process with 1 thread, against
     `torchrun --nproc_per_node 2` (1 thread each), on the notes written twice, from the runs'
     summaries; the two outputs must be byte-identical;
  3. memory: peak RSS of one process on the notes, and on the notes repeated 10 times (with a
     4-layer model of camembert-tiny shapes, fp32, so that this part takes seconds).

The notes are the sentences of --data joined in order into notes of mixed length: with seed 0,
each note takes 1-3 sentences (half of them), 4-8 (a quarter) or 9-24 (a quarter), so that short
notes sit beside notes of several windows, as in case files. The model is a student of --layers
layers with 25% of its heads removed, randomly initialised at camembert-base shapes (speed does not
depend on the weights), with a 4,000-piece unigram tokenizer trained on the sentences.
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_notes(sentences: list[list[str]], seed: int = 0) -> list[str]:
    rng, notes, at = random.Random(seed), [], 0
    while at < len(sentences):
        kind = rng.random()
        count = rng.randint(1, 3) if kind < 0.5 else rng.randint(4, 8) if kind < 0.75 else rng.randint(9, 24)
        notes.append(" ".join(" ".join(words) for words in sentences[at:at + count]))
        at += count
    return notes


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/vnni/amx"


def run_inference(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="JSONL of sentences ({\"tokens\": [...]} per line)")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=2048, help="token budget of a batch (default 2048, "
                                                                         "inference.py's on a CPU)")
    parser.add_argument("--chunk-mb", type=float, default=0.05,
                        help="chunk size of the process runs (default 0.05: 6 chunks of the notes written twice)")
    parser.add_argument("--parts", nargs="+", default=["sorting", "processes", "memory"],
                        choices=["sorting", "processes", "memory"], help="what to measure (default: all three)")
    parser.add_argument("--output", help="write the figures as JSON")
    args = parser.parse_args()

    import torch
    from benchmark import build_like
    from data_loader import encode_sentences, split_words
    from decoding import predict_windows
    from models import load_model, save_model
    from precision import for_inference
    from tools.make_demo_teacher import train_tokenizer
    from transformers import AutoTokenizer

    sentences = [json.loads(line)["tokens"] for line in open(args.data, encoding="utf-8") if line.strip()]
    notes = make_notes(sentences)
    words = sum(len(split_words(note)) for note in notes)
    lengths = sorted(len(split_words(note)) for note in notes)
    print(f"CPU: {platform.machine()}, {os.cpu_count()} cores, flags: {cpu_flags()}; torch {torch.__version__}")
    print(f"{len(notes)} notes from {len(sentences)} sentences, {words:,} words; words per note: median "
          f"{lengths[len(lengths) // 2]}, max {lengths[-1]}")
    scratch = Path(tempfile.mkdtemp(prefix="corpus_throughput-"))
    notes_file = scratch / "notes.txt"
    notes_file.write_text("\n".join(notes) + "\n", encoding="utf-8")
    train_tokenizer(sentences, scratch / "tokenizer")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if {"sorting", "processes"} & set(args.parts):
        model_dir = save_model(build_like("camembert-base", args.layers, 0.25), AutoTokenizer.from_pretrained(
            scratch / "tokenizer"), scratch / "student", stage="student")
        common = [sys.executable, "inference.py", "--model", str(model_dir), "--precision", "int8", "--batch-size",
                  str(args.batch_size), "--max-tokens", str(args.max_tokens)]
        run_inference(common + ["--input", str(notes_file), "--output", str(scratch / "warm.jsonl")], env)  # ONNX

    figures = {"cpu": cpu_flags(), "cores": os.cpu_count(), "notes": len(notes), "words": words}
    if "sorting" in args.parts:
        torch.set_num_threads(1)
        model, tokenizer = load_model(model_dir)
        tagger, _ = for_inference(model, str(model_dir), "int8", torch.device("cpu"))
        split = [[w.text for w in split_words(note)] for note in notes]
        windows = encode_sentences(tokenizer, split, model.max_subwords, overlap=model.max_subwords // 4)
        seconds = {True: [], False: []}
        for _ in range(2):
            for sort in (False, True):
                started = time.perf_counter()
                predict_windows(tagger, windows, [len(s) for s in split], tokenizer.pad_token_id, args.batch_size,
                                max_tokens=args.max_tokens, sort_by_length=sort)
                seconds[sort].append(time.perf_counter() - started)
        sorted_wps, unsorted_wps = words / min(seconds[True]), words / min(seconds[False])
        print(f"sorting: {unsorted_wps:,.0f} words/s unsorted, {sorted_wps:,.0f} sorted: x{sorted_wps / unsorted_wps:.2f} "
              f"({len(windows)} windows, batches of at most {args.batch_size} windows and {args.max_tokens} tokens)")
        figures["sorting"] = {"unsorted_words_per_s": unsorted_wps, "sorted_words_per_s": sorted_wps}

    identical = True
    if "processes" in args.parts:
        chunks = ["--chunk-mb", str(args.chunk_mb)]
        twice = scratch / "twice.txt"  # enough chunks for two processes
        twice.write_text(notes_file.read_text(encoding="utf-8") * 2, encoding="utf-8")
        one, two = scratch / "one.jsonl", scratch / "two.jsonl"
        run_inference(common + ["--input", str(twice), "--output", str(one)] + chunks, env)
        run_inference([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                      + common[1:] + ["--input", str(twice), "--output", str(two)] + chunks, env)
        one_wps, two_wps = (json.loads(path.with_suffix(".summary.json").read_text())["this_run"]["words_per_s"]
                            for path in (one, two))
        identical = one.read_bytes() == two.read_bytes()
        print(f"processes: 1 process {one_wps:,.0f} words/s, 2 processes {two_wps:,.0f} words/s: x{two_wps / one_wps:.2f}; "
              f"outputs identical: {identical}")
        hours = 1.5e9 / two_wps / 3600
        print(f"10 million notes (1.5 billion words) at the 2-process rate: {hours:,.0f} hours on this machine")
        figures["processes"] = {"one_words_per_s": one_wps, "two_words_per_s": two_wps, "identical": identical,
                                "hours_per_10M_notes": hours}

    if "memory" in args.parts:
        tiny = save_model(build_like("camembert-tiny", 4, 0.25), AutoTokenizer.from_pretrained(scratch / "tokenizer"),
                          scratch / "tiny", stage="student")
        small = [sys.executable, "inference.py", "--model", str(tiny), "--batch-size", str(args.batch_size)]
        ten = scratch / "ten.txt"
        ten.write_text(notes_file.read_text(encoding="utf-8") * 10, encoding="utf-8")
        peaks = {}
        for name, source in (("x1", notes_file), ("x10", ten)):
            out = scratch / f"memory_{name}.jsonl"
            run_inference(small + ["--input", str(source), "--output", str(out), "--chunk-mb", str(args.chunk_mb)], env)
            peaks[name] = json.loads(out.with_suffix(".summary.json").read_text())["peak_rss_mib"]
        print(f"memory: peak RSS {peaks['x1']:,.0f} MiB on the notes, {peaks['x10']:,.0f} MiB on ten times the notes")
        figures["peak_rss_mib"] = peaks

    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
