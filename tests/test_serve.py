"""serve.py, the RunPod worker: request checks, shared batches, and the SDK's local API over real HTTP
(good, bad, empty, 100,000 characters, 8 concurrent requests), with logs that never hold a text."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import serve
from conftest import REPO
from data_loader import read_examples
from decoding import extract_entities
from models import load_any_model
from utils import PipelineError

NAME = "Wojciechowska"   # a recognisable name: it must reach no log
PRIVATE_TEXT = f"Mme {NAME} a été reçue par le docteur Martin au CCAS de Villeurbanne le 3 mars."


def settings(**values):
    return serve.Settings(model="unused", **values)


@pytest.mark.parametrize("job_input, message", [
    (["a"], "input: expected an object with \"text\" or \"texts\", got a list."),
    ({}, "input: give either \"text\" (a string) or \"texts\" (a list of strings)."),
    ({"text": "a", "texts": ["b"]}, "input: give either \"text\" (a string) or \"texts\" (a list of strings), not both."),
    ({"txt": "a"}, "input.txt: unknown field"),
    ({"text": 3}, "input.text: expected a string, got a number."),
    ({"texts": "a"}, "input.texts: expected a list of strings, got a string."),
    ({"texts": ["a", None]}, "input.texts[1]: expected a string, got null."),
    ({"texts": ["a"] * 4}, "input.texts: 4 texts; at most 3 per request (NER_MAX_TEXTS)."),
    ({"texts": ["a", "b" * 11]}, "input.texts[1]: 11 characters; at most 10 per text (NER_MAX_CHARS)."),
    ({"texts": ["a" * 10, "b" * 10, "c"]}, "input: 21 characters in all; at most 20 per request (NER_MAX_TOTAL_CHARS)."),
])
def test_bad_input_is_named_by_field_never_by_content(job_input, message):
    with pytest.raises(serve.RequestError) as error:
        serve.parse_request(job_input, settings(max_texts=3, max_chars=10, max_total_chars=20))
    assert str(error.value).startswith(message)


def test_good_input_gives_the_texts_in_order():
    assert serve.parse_request({"text": "Jean"}, settings()) == ["Jean"]
    assert serve.parse_request({"texts": ["b", "", "a"]}, settings()) == ["b", "", "a"]
    assert serve.parse_request({"texts": []}, settings()) == []


def test_settings_come_from_the_environment_and_bad_ones_are_named():
    got = serve.Settings.from_env({"NER_MODEL": "m", "NER_PRECISION": "INT8", "NER_MAX_CHARS": "50_000"})
    assert (got.model, got.precision, got.max_chars, got.max_texts) == ("m", "int8", 50_000, 256)
    for environ, message in (({}, "NER_MODEL is not set"), ({"NER_MODEL": "m", "NER_PRECISION": "fp8"}, "NER_PRECISION='fp8'"),
                             ({"NER_MODEL": "m", "NER_MAX_TEXTS": "many"}, "NER_MAX_TEXTS='many': expected a whole number"),
                             ({"NER_MODEL": "m", "NER_CONCURRENCY": "0"}, "NER_CONCURRENCY='0': must be at least 1")):
        with pytest.raises(PipelineError, match=message):
            serve.Settings.from_env(environ)


def test_log_levels_that_print_job_data_are_refused():
    assert serve.check_log_level({}, []) == "WARN"
    assert serve.check_log_level({"RUNPOD_LOG_LEVEL": "info"}, []) == "INFO"
    for environ, argv in (({"RUNPOD_LOG_LEVEL": "DEBUG"}, []), ({}, ["--rp_log_level", "TRACE"]),
                          ({}, ["--rp_log_level=debug"])):
        with pytest.raises(PipelineError, match="prints every job's input and output"):
            serve.check_log_level(environ, argv)


def test_concurrent_jobs_share_calls_in_order_and_a_failure_stays_with_its_job():
    calls, release = [], threading.Event()

    def extract(texts):
        calls.append(list(texts))
        release.wait(5)
        if "boom" in texts:
            raise ValueError("a message that could quote a text")
        return [[{"n": len(t)}] for t in texts]

    batcher = serve.Batcher(extract, max_texts=100, max_chars=10_000)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(["x"]))
        await asyncio.sleep(0.2)                      # the first call is running: the others queue
        jobs = [[f"{i}" * (i + 1), "ab"] for i in range(6)] + [["boom"]]
        later = [asyncio.ensure_future(batcher.submit(texts)) for texts in jobs]
        await asyncio.sleep(0.2)
        release.set()
        results = await asyncio.gather(first, *later, return_exceptions=True)
        return jobs, results

    jobs, results = asyncio.run(scenario())
    assert results[0] == [[{"n": 1}]]
    for texts, result in zip(jobs[:-1], results[1:-1]):
        assert result == [[{"n": len(t)}] for t in texts]
    assert isinstance(results[-1], ValueError)
    assert calls[1] == [t for texts in jobs for t in texts]   # the six queued jobs went in one call...
    assert len(calls) == 2 + len(jobs)                        # ...then, after its failure, each alone


def test_an_internal_error_is_reported_without_its_message(stage1_artifact):
    lines = []
    worker = serve.Worker(serve.Settings(model=str(stage1_artifact), precision="fp32"), log=lines.append)
    assert worker.precision == "fp32" and worker.load_s > 0 and worker.warm_up_s > 0

    def failing(texts):
        raise KeyError(texts[0])
    worker.batcher.extract = failing
    result = asyncio.run(worker.handle({"id": "job-1", "input": {"text": PRIVATE_TEXT}}))
    assert result == {"error": "internal error (KeyError); the worker's log says where it happened."}
    assert len(lines) == 1 and lines[0].startswith("job job-1: failed with KeyError at test_serve.py:")
    assert NAME not in "".join(lines)


# ---------------------------------------------------------------------------
# The local API of the SDK, over HTTP

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body, timeout=120) -> dict:
    request = urllib.request.Request(f"http://localhost:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory, io_teacher):
    """serve.py --rp_serve_api on a free port, with the SDK's default log settings; its output is kept."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "NER_"))}
    environ.update(NER_MODEL=str(io_teacher), NER_PRECISION="fp32", HF_HUB_OFFLINE="1")
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "serve.py", "--rp_serve_api", "--rp_api_port", str(port)],
                                   cwd=REPO, env=environ, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while True:
        try:
            post(port, "/runsync", {"input": {"texts": []}}, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the worker did not start:\n{log.read_text()}")
            time.sleep(0.5)
    yield port, log
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def expected(io_teacher):
    model, tokenizer = load_any_model(str(io_teacher))
    return lambda texts: extract_entities(model, tokenizer, texts)


def same_entities(got: list[list[dict]], want: list[list[dict]]) -> bool:
    """Equal spans and types; scores equal to float noise (requests are batched with others)."""
    strip = lambda found: [{k: v for k, v in e.items() if k != "score"} for e in found]
    return [strip(f) for f in got] == [strip(f) for f in want] and all(
        abs(a["score"] - b["score"]) < 2e-3 for f, g in zip(got, want) for a, b in zip(f, g))


def test_good_requests_empty_lists_and_run_then_status(server, expected, europeana):
    port, _ = server
    texts = [" ".join(e.tokens) for e in read_examples(europeana / "test.jsonl")[:20]] + ["", PRIVATE_TEXT]
    answer = post(port, "/runsync", {"input": {"texts": texts}})
    assert answer["status"] == "COMPLETED"
    got = [r["entities"] for r in answer["output"]["results"]]
    assert same_entities(got, expected(texts)) and got[-2] == [] and sum(map(len, got)) > 5
    one = post(port, "/runsync", {"input": {"text": texts[0]}})
    assert same_entities([one["output"]["results"][0]["entities"]], expected(texts[:1]))
    assert post(port, "/runsync", {"input": {"texts": []}})["output"] == {"results": []}
    job = post(port, "/run", {"input": {"texts": texts[:3]}})
    assert job["status"] == "IN_PROGRESS"
    done = post(port, f"/status/{job['id']}", {})
    assert done["status"] == "COMPLETED" and same_entities([r["entities"] for r in done["output"]["results"]],
                                                           expected(texts[:3]))


def test_bad_requests_fail_with_the_field_and_the_worker_keeps_serving(server):
    port, _ = server
    for body, message in (({"input": {"texts": ["ok", 7]}}, "input.texts[1]: expected a string, got a number."),
                          ({"input": {"texte": PRIVATE_TEXT}}, "input.texte: unknown field"),
                          ({"input": {"text": "x" * 200_001}}, "input.text: 200,001 characters; at most 200,000")):
        answer = post(port, "/runsync", body)
        assert answer["status"] == "FAILED" and answer["error"].startswith(message), answer
        assert NAME not in answer["error"]
    assert post(port, "/runsync", {"input": {"text": "Jean"}})["status"] == "COMPLETED"


def test_a_text_of_100000_characters_goes_through_windows_whole(server, expected, europeana):
    port, _ = server
    sentences = [" ".join(e.tokens) for e in read_examples(europeana / "test.jsonl")]
    text = ""
    while len(text) < 100_000:
        text += sentences[len(text) % len(sentences)] + " "
    text = text[:100_000]
    answer = post(port, "/runsync", {"input": {"text": text}}, timeout=300)
    got = answer["output"]["results"][0]["entities"]
    assert same_entities([got], expected([text])) and got[-1]["end_char"] > 95_000   # never truncated


def test_eight_concurrent_requests_each_get_their_own_answers_in_order(server, expected, europeana):
    port, _ = server
    sentences = [" ".join(e.tokens) for e in read_examples(europeana / "test.jsonl")[:80]]
    requests = [sentences[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda texts: post(port, "/runsync", {"input": {"texts": texts}}), requests))
    for texts, answer in zip(requests, answers):
        assert answer["status"] == "COMPLETED"
        assert same_entities([r["entities"] for r in answer["output"]["results"]], expected(texts))


def test_no_text_and_no_entity_reaches_the_logs(server, expected, europeana):
    port, log = server
    answer = post(port, "/runsync", {"input": {"texts": [PRIVATE_TEXT]}})
    assert answer["status"] == "COMPLETED"
    texts = [" ".join(e.tokens) for e in read_examples(europeana / "test.jsonl")[:20]]
    found = {e["text"] for f in expected(texts + [PRIVATE_TEXT]) for e in f if len(e["text"]) >= 4}
    time.sleep(0.5)
    written = log.read_text()
    assert "Uvicorn running" in written and "ready in" in written       # the log is captured
    assert found and not [e for e in found if e in written]
    assert NAME not in written and "Villeurbanne" not in written and "CCAS" not in written


def test_test_input_prints_the_result_with_int8_by_default_on_a_cpu(io_teacher, expected):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "NER_"))}
    environ.update(NER_MODEL=str(io_teacher), RUNPOD_LOG_LEVEL="INFO", HF_HUB_OFFLINE="1")
    job = json.dumps({"input": {"texts": [PRIVATE_TEXT, ""]}})
    result = subprocess.run([sys.executable, "serve.py", "--test_input", job], cwd=REPO, env=environ,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert len(output["results"]) == 2 and output["results"][1] == {"entities": []}
    assert "on cpu (int8)" in result.stderr and NAME not in result.stderr
    bad = subprocess.run([sys.executable, "serve.py", "--test_input", '{"input": {"text": 1}}'], cwd=REPO,
                         env=environ, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and json.loads(bad.stdout) == {"error": "input.text: expected a string, got a number."}
    refused = subprocess.run([sys.executable, "serve.py", "--test_input", job], cwd=REPO, capture_output=True,
                             env=environ | {"RUNPOD_LOG_LEVEL": "DEBUG"}, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and NAME not in refused.stderr


# ---------------------------------------------------------------------------
# The Dockerfile (Docker itself may be missing here: check what can be checked without it)

def project_imports(script: str) -> set[str]:
    """The repository modules a script needs, followed through their own imports."""
    import ast
    seen, todo = set(), [script]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((REPO / name).read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            todo += [f"{m.split('.')[0]}.py" for m in modules if (REPO / f"{m.split('.')[0]}.py").is_file()]
    return seen


def test_the_dockerfile_copies_what_the_worker_imports_and_starts_serve():
    import re
    lines = [l.strip() for l in (REPO / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(lines), flags=re.M))
    image = args["BASE_IMAGE"]
    torch_version = tuple(int(x) for x in re.match(r"pytorch/pytorch:(\d+)\.(\d+)", image).groups())
    assert torch_version >= (2, 6) and "cuda" in image
    copied = set()
    for line in lines:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                source = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source)
                assert (REPO / source).exists(), source
                copied.add(source)
    assert project_imports("serve.py") <= copied and "requirements.txt" in copied
    assert lines[-1] == 'CMD ["python", "-u", "serve.py"]'
    assert any(l.startswith("RUN pip install -r requirements.txt") for l in lines)
    assert "runpod" in (REPO / "requirements.txt").read_text()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "artifacts/**/*.checkpoint", "artifacts/**/checkpoint"} <= set(ignored)
