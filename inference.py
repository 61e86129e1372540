"""Stage 4: extract entities from French text with any stage's model (or a teacher).

    python inference.py --model artifacts/student_10L_final --input phrases.txt --output entities.jsonl
    python inference.py --model Jean-Baptiste/camembert-ner --input notes.jsonl.gz --output entities.jsonl
    torchrun --nproc_per_node 4 inference.py --model ... --input notes.jsonl.gz --output entities.jsonl
    python inference.py ... --shard 0/2 &  python inference.py ... --shard 1/2   # processes started by hand

Input: .txt (one text per line) or .jsonl ({"text": ...} or {"tokens": [...]} per line), either
one gzip-compressed (.txt.gz, .jsonl.gz). Output: one JSON line per input line, in input order:

    {"id": "n-17", "text": "Jean habite à Paris", "entities": [{"text": "Jean", "type": "PER", "start": 0,
     "end": 1, "start_char": 0, "end_char": 4, "score": 0.98}, ...]}

`start`/`end` are word indices (end exclusive), `start_char`/`end_char` index the text, `score` is
the entity's mean label probability. "id" (or --id-field) is carried from a .jsonl input whose
first line has it; --keep-fields carries others.

The input is read in chunks of --chunk-mb; each process (torchrun's, or --shard i/N) takes every
N-th chunk, tokenises it in a background thread, sorts its windows by length into batches
(--batch-size, --max-tokens) and commits the chunk's output into OUTPUT.parts/. A killed run
continues with --resume; the last process to finish writes OUTPUT (identical to a one-process
run) and OUTPUT's .summary.json (lines, words, speed). The text -> entities step is the one
serve.py uses (`decoding.extract_entities`), cut in two here so that tokenising overlaps the model.
"""
import argparse
import sys
import time
from pathlib import Path

from corpus import (LineFormat, Progress, assemble, check_chunks, check_output, committed_chunks,
                    commit_chunk, first_line_has_field, input_fingerprint, open_corpus, output_line, parse_chunk,
                    parts_folder, prepare_parts, read_ahead, read_chunks, release_shard, shard_of, summary_path)
from data_loader import encode_sentences
from decoding import entities_of, predict_windows
from models import load_any_model
from precision import PRECISIONS, for_inference, weights_fingerprint
from utils import PipelineError, check_writable, init_runtime, peak_rss_mib, run_cli


# On a CPU, batches of 32 windows of up to 512 subwords are cache-bound: two processes on two cores
# gave 1.5x the words/s of one; with at most 2048 tokens per batch, 1.86x, and one process was
# faster too (tools/corpus_throughput.py, int8 at camembert-base shapes).
CPU_MAX_TOKENS = 2048


def prepared_chunks(corpus, lines, tokenizer, max_length, chunks):
    """Each chunk parsed, split into words and encoded into windows (run in the background thread)."""
    for chunk in chunks:
        parsed = parse_chunk(corpus, lines, chunk)
        windows = encode_sentences(tokenizer, [[w.text for w in line.words] for line in parsed], max_length,
                                   overlap=max_length // 4)
        yield chunk.index, parsed, windows


def line_format(corpus, id_field: str | None, keep_fields: str | None) -> LineFormat:
    keep = tuple(name for name in (keep_fields or "").split(",") if name)
    if not corpus.is_jsonl:
        if id_field or keep:
            raise PipelineError("--id-field and --keep-fields are for .jsonl input; a .txt line has no fields.")
        return LineFormat(False)
    clash = {"text", "entities", id_field or "id"} & set(keep)
    if clash:
        raise PipelineError(f"--keep-fields: {', '.join(sorted(clash))} is already in every output line.")
    carried = id_field or ("id" if first_line_has_field(corpus, "id") else None)
    return LineFormat(True, carried, keep)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an artifact folder of any stage, or a teacher (hub id or folder)")
    parser.add_argument("--input", required=True, help=".txt (one text per line) or .jsonl, or either .gz")
    parser.add_argument("--output", required=True, help="JSON lines to write")
    parser.add_argument("--batch-size", type=int, default=32, help="most windows per forward pass (default 32)")
    parser.add_argument("--max-tokens", type=int,
                        help="most tokens per forward pass, padding included (default: 2048 on a CPU, where small "
                             "batches stay in cache; on a GPU --batch-size alone decides unless set, e.g. 32768)")
    parser.add_argument("--max-length", type=int,
                        help="subwords per window, at most the model's; longer texts use overlapping windows "
                             "(default: the window the model was trained and validated with, else 512)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32; bf16 (autocast, GPU or a CPU with bf16); int8 (ONNX Runtime on the CPU)")
    parser.add_argument("--shard", help="i/N: process only the i-th of N shares (for processes started by hand; "
                                        "torchrun sets it by itself)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output or unfinished run")
    parser.add_argument("--id-field", help="field of a .jsonl input carried to the output; every line must have "
                                           "it (default: \"id\", when the first line has it)")
    parser.add_argument("--keep-fields", help="more .jsonl fields to carry, comma-separated (null where missing)")
    parser.add_argument("--chunk-mb", type=float, default=1.0,
                        help="MiB of input per chunk: the unit of sharing, sorting and resuming (default 1)")
    parser.add_argument("--progress", type=float, nargs="?", const=30.0, metavar="SECONDS",
                        help="print lines/s, words/s and the time left every SECONDS (default 30)")
    args = parser.parse_args(argv)
    source, target = Path(args.input), Path(args.output)
    if args.batch_size < 1 or (args.max_length is not None and args.max_length < 8) or args.chunk_mb <= 0 \
            or (args.max_tokens is not None and args.max_tokens < 1) or (args.progress is not None and args.progress <= 0):
        raise PipelineError("--batch-size, --max-tokens, --chunk-mb and --progress must be > 0, and --max-length >= 8.")
    if args.resume and args.overwrite:
        raise PipelineError("--overwrite and --resume exclude each other: --resume continues the run of "
                            f"{target}, --overwrite starts it again.")
    shard = shard_of(args.shard)

    # everything that can be wrong with the files and flags is found before the model is loaded
    corpus = open_corpus(source, max(int(args.chunk_mb * (1 << 20)), 1))
    check_writable(target, (source,))
    check_output(target, shard, args.resume, args.overwrite)
    lines = line_format(corpus, args.id_field, args.keep_fields)
    own = {k for k in range(corpus.chunks) if shard.owns(k)}
    done_before = committed_chunks(parts_folder(target)) if args.resume else set()
    check_chunks(corpus, lines, (own - done_before).__contains__)

    runtime = init_runtime(args.device, join_group=False)  # the shards share nothing but files
    model, tokenizer = load_any_model(args.model, runtime.device)
    weights = weights_fingerprint(model)
    tagger, autocast = for_inference(model, args.model, args.precision, runtime.device)
    del model  # with int8, the tagger holds only the CRF of it
    max_length = min(args.max_length or tagger.max_subwords, tagger.max_subwords)
    if args.max_tokens is None and runtime.device.type == "cpu":
        args.max_tokens = max(CPU_MAX_TOKENS, max_length)
    if args.max_tokens is not None and args.max_tokens < max_length:
        raise PipelineError(f"--max-tokens {args.max_tokens}: must hold one whole window ({max_length} tokens).")
    manifest = {"input": input_fingerprint(source), "model": {"weights_sha256": weights},
                "settings": {"precision": args.precision, "device": runtime.device.type, "max_length": max_length,
                             "batch_size": args.batch_size, "max_tokens": args.max_tokens,
                             "id_field": lines.id_field, "keep_fields": list(lines.keep_fields),
                             "chunk_bytes": corpus.chunk_bytes},
                "model_name": args.model}
    done = prepare_parts(target, manifest, shard, args.resume, args.overwrite)
    if done is None:
        print(f"{target} is complete; nothing to do.")
        return 0

    parts = parts_folder(target)
    to_do = own - done
    progress = Progress(shard, len(to_do), args.progress or float("inf"))
    chunks = read_chunks(corpus, to_do.__contains__)
    last = time.monotonic()
    for index, parsed, windows in read_ahead(prepared_chunks(corpus, lines, tokenizer, max_length, chunks)):
        predictions = predict_windows(tagger, windows, [len(line.words) for line in parsed], tokenizer.pad_token_id,
                                      args.batch_size, runtime.device, autocast, args.max_tokens)
        rows, found = [], 0
        for line, prediction in zip(parsed, predictions):
            entities = entities_of(line.words, line.text, prediction)
            found += len(entities)
            rows.append(output_line(line, entities))
        words = sum(len(line.words) for line in parsed)
        now = time.monotonic()
        commit_chunk(parts, index, "".join(rows).encode("utf-8"),
                     {"lines": len(parsed), "blank_lines": sum(not line.words for line in parsed), "words": words,
                      "entities": found, "seconds": round(now - last, 3), "finished": time.time(), "shard": str(shard),
                      "peak_rss_mib": peak_rss_mib()})
        last = now
        if args.progress and (report := progress.update(len(parsed), words)):
            print(report, file=sys.stderr, flush=True)
    release_shard(parts, shard)

    summary = assemble(target, corpus.chunks, shard.count)
    if summary is None:
        print(f"shard {shard}: {len(to_do)} chunk(s) written into {parts}; the last shard to finish writes {target}.")
        return 0
    speed = summary["this_run"]
    print(f"{summary['lines']:,} lines, {summary['words']:,} words -> {target} ({speed['lines_per_s']:,.1f} lines/s, "
          f"{speed['words_per_s']:,.0f} words/s; summary in {summary_path(target)})")
    return 0


if __name__ == "__main__":
    run_cli(main)
