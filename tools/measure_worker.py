"""Cold start and requests/s of serve.py's local API (the RunPod SDK's /runsync), on this machine.

    python tools/measure_worker.py --model artifacts/demo/student_final --data data/test.jsonl
    python tools/measure_worker.py --model artifacts/student_10L_final --data data/test.jsonl --precision bf16

Starts `serve.py --rp_serve_api` on a free port, times it until the first answer, then sends every
sentence of --data three ways: one client with one sentence per request, 8 concurrent clients
with one sentence each, and 8 clients with 8 sentences per request. Prints requests/s, sentences/s
and words/s for each, and the worker's own start-up line. Every answer is checked to be COMPLETED.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="NER_MODEL for the worker")
    parser.add_argument("--data", required=True, help="JSONL with a \"tokens\" list per line (the sentences to send)")
    parser.add_argument("--precision", default="auto", help="NER_PRECISION (default auto)")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NER_", "RUNPOD_"))}
    environ.update(NER_MODEL=args.model, NER_PRECISION=args.precision)

    def post(body):
        request = urllib.request.Request(f"http://localhost:{port}/runsync", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())

    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "serve.py", "--rp_serve_api", "--rp_api_port", str(port)], cwd=REPO,
                              env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while True:
            try:
                post({"input": {"texts": []}})
                break
            except OSError:
                if worker.poll() is not None:
                    print(worker.communicate()[0], file=sys.stderr)
                    return 1
                time.sleep(0.1)
        cold = time.perf_counter() - started
        with open(args.data, encoding="utf-8") as lines:
            sentences = [" ".join(json.loads(line)["tokens"]) for line in lines if line.strip()]
        words = sum(len(s.split()) for s in sentences)
        for clients, per_request in ((1, 1), (8, 1), (8, 8)):
            bodies = [{"input": {"texts": sentences[i:i + per_request]}} for i in range(0, len(sentences), per_request)]
            begin = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(post, bodies))
            elapsed = time.perf_counter() - begin
            if any(a.get("status") != "COMPLETED" for a in answers):
                print("a request failed", file=sys.stderr)
                return 1
            print(f"{clients} client(s), {per_request} sentence(s) per request: {len(bodies) / elapsed:.1f} requests/s, "
                  f"{len(sentences) / elapsed:.1f} sentences/s, {words / elapsed:.0f} words/s")
    finally:
        worker.terminate()
        output = worker.communicate(timeout=60)[0]
    ready = [line for line in output.splitlines() if "ready in" in line]
    print(f"cold start to the first answer: {cold:.1f} s; " + (ready[0] if ready else "(no start-up line)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
