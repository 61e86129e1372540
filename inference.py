"""Stage 4: extract entities from French text with any stage's model (or a teacher).

    python inference.py --model artifacts/student_10L_final --input phrases.txt --output entities.jsonl
    python inference.py --model Jean-Baptiste/camembert-ner --input notes.jsonl --output entities.jsonl

Input: a .txt file (one text per line) or a .jsonl file ({"text": ...} or {"tokens": [...]} per
line). Output: one JSON line per input line, in input order:

    {"text": "Jean habite à Paris", "entities": [{"text": "Jean", "type": "PER", "start": 0, "end": 1,
     "start_char": 0, "end_char": 4, "score": 0.98}, ...]}

`start`/`end` are word indices (end exclusive), `start_char`/`end_char` index the text, `score`
is the entity's mean label probability. The input is streamed in chunks, so memory stays
bounded on any size; the output file appears only when every line has been processed. The
text -> entities step is `decoding.extract_entities`, which serve.py (the RunPod worker) calls too.
"""
import argparse
import json
from pathlib import Path
from typing import Iterator, NamedTuple

from tqdm import tqdm

from data_loader import Word, split_words
from decoding import extract_entities
from models import load_any_model
from precision import PRECISIONS, for_inference
from utils import PipelineError, init_runtime, publishing, run_cli

CHUNK_LINES = 4096


class InputLine(NamedTuple):
    text: str
    words: list[Word]


def _words_of_tokens(tokens: list[str]) -> tuple[str, list[Word]]:
    """Pre-split tokens joined by single spaces, with their offsets in that text."""
    words, position = [], 0
    for token in tokens:
        words.append(Word(token, position, position + len(token)))
        position += len(token) + 1
    return " ".join(tokens), words


def _parse(raw: bytes, line_number: int, path: Path, is_jsonl: bool) -> InputLine:
    where = f"{path}:{line_number}"
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise PipelineError(f"{where}: not valid UTF-8 (byte {error.start + 1}); save the file as UTF-8.") from None
    if not line.strip():
        return InputLine("", [])
    if not is_jsonl:
        return InputLine(line, split_words(line))
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise PipelineError(f"{where}: invalid JSON at column {error.colno}: {error.msg}.") from None
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return InputLine(record["text"], split_words(record["text"]))
    tokens = record.get("tokens") if isinstance(record, dict) else None
    if isinstance(tokens, list) and all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in tokens):
        return InputLine(*_words_of_tokens(tokens))
    raise PipelineError(f"{where}: expected {{\"text\": \"...\"}} or {{\"tokens\": [\"...\", ...]}} with non-empty "
                        "tokens without spaces.")


def read_chunks(path: Path, chunk_lines: int) -> Iterator[list[InputLine]]:
    """Stream the input file as lists of parsed lines (a final newline does not add a line)."""
    is_jsonl = path.suffix.lower() == ".jsonl"
    chunk: list[InputLine] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            chunk.append(_parse(raw, number, path, is_jsonl))
            if len(chunk) == chunk_lines:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        data = f.read(1 << 20)
        count, last = 0, b"\n"
        while data:
            count += data.count(b"\n")
            last = data[-1:]
            data = f.read(1 << 20)
    return count + (last != b"\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an artifact folder of any stage, or a teacher (hub id or folder)")
    parser.add_argument("--input", required=True, help=".txt (one text per line) or .jsonl")
    parser.add_argument("--output", required=True, help="JSON lines to write")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    parser.add_argument("--max-length", type=int,
                        help="subwords per window, at most the model's; longer texts use overlapping windows "
                             "(default: the window the model was trained and validated with, else 512)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32; bf16 (autocast, GPU or a CPU with bf16); int8 (ONNX Runtime on the CPU)")
    args = parser.parse_args(argv)
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise PipelineError(f"--input {source}: no such file.")
    if source.suffix.lower() not in {".txt", ".jsonl"}:
        raise PipelineError(f"--input {source}: expected a .txt or .jsonl file.")
    if args.batch_size < 1 or (args.max_length is not None and args.max_length < 8):
        raise PipelineError("--batch-size must be >= 1 and --max-length >= 8.")
    runtime = init_runtime(args.device)
    model, tokenizer = load_any_model(args.model, runtime.device)
    model, autocast = for_inference(model, args.model, args.precision, runtime.device)

    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with publishing(target) as partial, partial.open("w", encoding="utf-8") as out, \
            tqdm(total=count_lines(source), unit="line") as progress:
        for chunk in read_chunks(source, CHUNK_LINES):
            texts = [line.text for line in chunk]
            entities = extract_entities(model, tokenizer, texts, [line.words for line in chunk],
                                        batch_size=args.batch_size, max_length=args.max_length,
                                        device=runtime.device, autocast=autocast)
            for text, found in zip(texts, entities):
                out.write(json.dumps({"text": text, "entities": found}, ensure_ascii=False) + "\n")
            written += len(chunk)
            progress.update(len(chunk))
    print(f"{written} lines -> {target}")
    return 0


if __name__ == "__main__":
    run_cli(main)
