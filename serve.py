"""RunPod serverless worker: the entities of French texts, with any model folder of this pipeline.

    NER_MODEL=artifacts/student_10L_final python serve.py --test_input '{"input": {"text": "..."}}'
    NER_MODEL=artifacts/student_10L_final python serve.py --rp_serve_api --rp_api_port 8000
    python -u serve.py                      # on RunPod (the Dockerfile's CMD)

Request: {"input": {"texts": ["...", ...]}} or {"input": {"text": "..."}}. Response:
{"results": [{"entities": [...]}, ...]}, one per text, in order, each entity as inference.py
writes it (text, type, word span, character span, score). Bad input gets {"error": "..."} naming
the field (RunPod marks the job FAILED) and the worker keeps serving.

Environment: NER_MODEL (required: a model folder, or a teacher), NER_PRECISION (auto: bf16 on a
GPU, int8 on a CPU; or fp32, bf16, int8), NER_DEVICE (auto, cpu, cuda), NER_MAX_TEXTS (texts per
request, 256), NER_MAX_CHARS (characters per text, 200000), NER_MAX_TOTAL_CHARS (per request,
1000000), NER_BATCH_SIZE (windows per forward pass, 32), NER_CONCURRENCY (jobs a worker takes at
once, 8). Long texts go through overlapping windows and are never truncated.

The texts are personal health data: nothing here logs a text or an entity, and the SDK's log
level is WARN unless RUNPOD_LOG_LEVEL says otherwise (DEBUG and TRACE, which print job inputs
and outputs, are refused). Jobs that arrive while the model is busy are merged into its next
forward passes, so concurrent requests share batches.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

STARTED = time.perf_counter()
SAFE_LOG_LEVELS = ("NOTSET", "ERROR", "WARN", "INFO")  # the SDK prints job inputs and outputs at DEBUG and TRACE
DEFAULT_LOG_LEVEL = "WARN"
WARM_UP_TEXT = "Le docteur Martin reçoit Mme Durand à Rennes le 12 mars."  # invented, not case data


class RequestError(ValueError):
    """Bad input, with a message that names the field (never its content)."""


@dataclass(frozen=True)
class Settings:
    model: str
    precision: str = "auto"
    device: str = "auto"
    max_texts: int = 256
    max_chars: int = 200_000
    max_total_chars: int = 1_000_000
    batch_size: int = 32
    concurrency: int = 8

    @classmethod
    def from_env(cls, environ) -> "Settings":
        """The worker's settings from NER_* variables; a wrong one is a PipelineError naming it."""
        from utils import PipelineError
        model = environ.get("NER_MODEL", "").strip()
        if not model:
            raise PipelineError("NER_MODEL is not set: set it to a model folder (e.g. "
                                "artifacts/student_10L_final, or /runpod-volume/student_10L_final on RunPod).")
        values = {"model": model}
        for name, field in (("NER_PRECISION", "precision"), ("NER_DEVICE", "device")):
            value = environ.get(name, getattr(cls, field)).strip().lower()
            allowed = ("auto", "fp32", "bf16", "int8") if field == "precision" else ("auto", "cpu", "cuda")
            if value not in allowed:
                raise PipelineError(f"{name}={value!r}: choose one of {', '.join(allowed)}.")
            values[field] = value
        for name, field in (("NER_MAX_TEXTS", "max_texts"), ("NER_MAX_CHARS", "max_chars"),
                            ("NER_MAX_TOTAL_CHARS", "max_total_chars"), ("NER_BATCH_SIZE", "batch_size"),
                            ("NER_CONCURRENCY", "concurrency")):
            raw = environ.get(name)
            if raw is None:
                continue
            try:
                values[field] = int(raw.replace("_", ""))
            except ValueError:
                raise PipelineError(f"{name}={raw!r}: expected a whole number.") from None
            if values[field] < 1:
                raise PipelineError(f"{name}={raw!r}: must be at least 1.")
        return cls(**values)


def check_log_level(environ, argv: list[str]) -> str:
    """The SDK's log level, WARN unless set; DEBUG and TRACE are refused (they print job data)."""
    from utils import PipelineError
    level = environ.get("RUNPOD_LOG_LEVEL") or environ.get("RUNPOD_DEBUG_LEVEL") or DEFAULT_LOG_LEVEL
    for i, arg in enumerate(argv):
        if arg == "--rp_log_level" and i + 1 < len(argv):
            level = argv[i + 1]
        elif arg.startswith("--rp_log_level="):
            level = arg.split("=", 1)[1]
    level = str(level).upper()
    if level not in SAFE_LOG_LEVELS:
        raise PipelineError(f"log level {level}: the runpod SDK prints every job's input and output at DEBUG "
                            f"and TRACE, and the texts are personal health data. Use one of "
                            f"{', '.join(SAFE_LOG_LEVELS)} (RUNPOD_LOG_LEVEL or --rp_log_level).")
    return level


def _kind(value) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def parse_request(job_input, settings: Settings) -> list[str]:
    """The texts of a job's input, checked against the limits; RequestError names the field."""
    if not isinstance(job_input, dict):
        raise RequestError(f"input: expected an object with \"text\" or \"texts\", got {_kind(job_input)}.")
    unknown = sorted(set(job_input) - {"text", "texts"})
    if unknown:
        raise RequestError(f"input.{unknown[0]}: unknown field; the input takes \"text\" (a string) or "
                           "\"texts\" (a list of strings).")
    if ("text" in job_input) == ("texts" in job_input):
        raise RequestError("input: give either \"text\" (a string) or \"texts\" (a list of strings)"
                           + (", not both." if "text" in job_input else "."))
    if "text" in job_input:
        texts, names = [job_input["text"]], ["input.text"]
    else:
        texts = job_input["texts"]
        if not isinstance(texts, list):
            raise RequestError(f"input.texts: expected a list of strings, got {_kind(texts)}.")
        if len(texts) > settings.max_texts:
            raise RequestError(f"input.texts: {len(texts):,} texts; at most {settings.max_texts:,} per request "
                               "(NER_MAX_TEXTS). Split the request.")
        names = [f"input.texts[{i}]" for i in range(len(texts))]
    for name, text in zip(names, texts):
        if not isinstance(text, str):
            raise RequestError(f"{name}: expected a string, got {_kind(text)}.")
        if len(text) > settings.max_chars:
            raise RequestError(f"{name}: {len(text):,} characters; at most {settings.max_chars:,} per text "
                               "(NER_MAX_CHARS).")
    total = sum(len(t) for t in texts)
    if total > settings.max_total_chars:
        raise RequestError(f"input: {total:,} characters in all; at most {settings.max_total_chars:,} per request "
                           "(NER_MAX_TOTAL_CHARS). Split the request.")
    return texts


class Batcher:
    """Runs the model in one background thread. Jobs that arrive while it works wait in a queue and
    are merged into its next call (up to the per-request limits), so concurrent jobs share batches;
    if a merged call fails, each job is retried alone, so one job's failure is its own."""

    def __init__(self, extract, max_texts: int, max_chars: int):
        self.extract, self.max_texts, self.max_chars = extract, max_texts, max_chars
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="ner-batcher", daemon=True).start()

    async def submit(self, texts: list[str]) -> list[list[dict]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((texts, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            pending = [self.jobs.get()]
            texts, chars = len(pending[0][0]), sum(map(len, pending[0][0]))
            while texts < self.max_texts and chars < self.max_chars:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                pending.append(job)
                texts, chars = texts + len(job[0]), chars + sum(map(len, job[0]))
            self._serve(pending)

    def _serve(self, pending) -> None:
        try:
            results = self.extract([text for job in pending for text in job[0]])
        except Exception as error:  # noqa: BLE001 - handed to the job, which reports it without its text
            if len(pending) > 1:
                for job in pending:
                    self._serve([job])
                return
            _, future, loop = pending[0]
            loop.call_soon_threadsafe(_settle, future, None, error)
            return
        start = 0
        for texts, future, loop in pending:
            loop.call_soon_threadsafe(_settle, future, results[start:start + len(texts)], None)
            start += len(texts)


def _settle(future: asyncio.Future, result, error) -> None:
    if not future.done():
        future.set_exception(error) if error is not None else future.set_result(result)


def where_it_failed(error: BaseException) -> str:
    """'ErrorType at file.py:line' of the innermost frame: enough to debug, no message (it may quote text)."""
    frames = traceback.extract_tb(error.__traceback__)
    place = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{place}"


class Worker:
    """The model, loaded once, and the async job handler that RunPod calls."""

    def __init__(self, settings: Settings, log=None):
        import torch
        from decoding import extract_entities
        from models import load_any_model
        from precision import for_inference
        from utils import init_runtime
        self.settings, self.log = settings, log or (lambda message: print(message, file=sys.stderr, flush=True))
        runtime = init_runtime(settings.device)
        self.device = runtime.device
        self.precision = settings.precision
        if self.precision == "auto":
            self.precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp32") if self.device.type == "cuda" \
                else "int8"
        started = time.perf_counter()
        model, tokenizer = load_any_model(settings.model, self.device)
        model, autocast = for_inference(model, settings.model, self.precision, self.device, log=self.log)
        self.load_s = time.perf_counter() - started
        self._oom = torch.cuda.OutOfMemoryError
        self.extract = lambda texts: extract_entities(model, tokenizer, texts, batch_size=settings.batch_size,
                                                      device=self.device, autocast=autocast)
        started = time.perf_counter()
        self.extract([WARM_UP_TEXT, WARM_UP_TEXT * 40])  # first kernels, allocations, one multi-window text
        self.warm_up_s = time.perf_counter() - started
        self.batcher = Batcher(self.extract, settings.max_texts, settings.max_total_chars)

    async def handle(self, job: dict) -> dict:
        """A RunPod job -> {"results": [...]} or {"error": "..."}; never raises, never logs content."""
        try:
            texts = parse_request(job.get("input") if isinstance(job, dict) else None, self.settings)
        except RequestError as error:
            return {"error": str(error)}
        try:
            entities = await self.batcher.submit(texts)
        except self._oom:
            self.log(f"job {job.get('id')}: CUDA out of memory ({len(texts)} texts)")
            return {"error": f"the GPU ran out of memory on this request ({len(texts)} texts, "
                             f"{sum(map(len, texts)):,} characters); send fewer or shorter texts, or lower "
                             "NER_BATCH_SIZE or NER_MAX_TOTAL_CHARS."}
        except Exception as error:  # noqa: BLE001 - the worker keeps serving
            self.log(f"job {job.get('id')}: failed with {where_it_failed(error)}")
            return {"error": f"internal error ({type(error).__name__}); the worker's log says where it happened."}
        return {"results": [{"entities": found} for found in entities]}

    def concurrency(self, current: int) -> int:
        """How many jobs RunPod hands this worker at once (they share batches)."""
        return self.settings.concurrency


def test_input_argument(argv: list[str]) -> str | None:
    """The JSON given with --test_input, handled here so that the result is printed and no SDK log sees it."""
    if "--test_input" not in argv:
        return None
    index = argv.index("--test_input")
    if index + 1 >= len(argv):
        from utils import PipelineError
        raise PipelineError("--test_input needs a JSON job, e.g. --test_input '{\"input\": {\"text\": \"...\"}}'.")
    return argv[index + 1]


def main(argv=None) -> int:
    from utils import PipelineError
    argv = list(sys.argv[1:] if argv is None else argv)
    level = check_log_level(os.environ, argv)
    os.environ["RUNPOD_LOG_LEVEL"] = level  # read by the SDK when it is imported
    settings = Settings.from_env(os.environ)
    test_input = test_input_argument(argv)
    if test_input is None:
        try:
            import runpod
        except ImportError:
            raise PipelineError("serve.py needs the runpod SDK: pip install runpod (it is in "
                                "requirements.txt), or run a single job with --test_input.") from None
    worker = Worker(settings)
    worker.log(f"serve.py: {settings.model} on {worker.device} ({worker.precision}); ready in "
               f"{time.perf_counter() - STARTED:.1f} s (model {worker.load_s:.1f} s, warm-up {worker.warm_up_s:.1f} s); "
               f"limits: {settings.max_texts} texts, {settings.max_chars:,} characters per text, "
               f"{settings.max_total_chars:,} per request; concurrency {settings.concurrency}.")
    if test_input is not None:
        try:
            job = json.loads(test_input)
        except json.JSONDecodeError as error:
            raise PipelineError(f"--test_input: invalid JSON at column {error.colno}: {error.msg}.") from None
        result = asyncio.run(worker.handle(job))
        print(json.dumps(result, ensure_ascii=False))
        return 1 if "error" in result else 0
    sys.argv = [sys.argv[0]] + argv  # the SDK parses its own flags (--rp_serve_api, --rp_api_port, ...)
    runpod.serverless.start({"handler": worker.handle, "concurrency_modifier": worker.concurrency})
    return 0


if __name__ == "__main__":
    from utils import run_cli
    run_cli(main)
