"""The fault matrix: bad inputs and faults, each run as a user runs it (a script in its own process).

Every row gives the command, the exit code, a phrase the message must hold, and what must (or must
not) be on disk afterwards. Every row also checks that no traceback is shown and that no input
file changed (sha256 before and after). Rows are grouped by area; the kill -9, SIGTERM and
publishing faults that need a hook inside a run are in test_train_kd.py, test_utils.py and
test_inference.py.
"""
import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import REPO, write_config


@dataclass
class Row:
    area: str
    name: str
    args: list[str]            # script and arguments; {placeholders} name files of the world or {out}
    code: int
    phrase: str                # in stderr (or stdout for a 0 exit)
    exists: list[str] = field(default_factory=list)      # under the row's folder, after the run
    absent: list[str] = field(default_factory=list)
    setup: Callable | None = None                        # (world, out) -> cleanup or None
    unprivileged: bool = False  # run without root's right to read any file (chmod 000 applies to it too)


def _files(world: dict) -> dict:
    return {str(p): _fingerprint(p) for p in Path(world["inputs"]).rglob("*") if p.is_file() and not p.is_symlink()}


def _fingerprint(path: Path) -> str:
    if not os.access(path, os.R_OK):  # the unreadable inputs, when the tests do not run as root
        info = path.stat()
        return f"{info.st_size} {info.st_mtime_ns} {info.st_mode:o}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Root reads every file whatever its mode: the unreadable-input rows drop that right (the two
# capabilities behind it) for the command, with util-linux's setpriv.
_DROP_READ_ANYTHING = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                       "--bounding-set=-dac_override,-dac_read_search"]


def _unprivileged_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a chmod 000 file stays readable")
    return _DROP_READ_ANYTHING


@pytest.fixture(scope="module")
def world(tmp_path_factory, europeana, io_teacher, stage1_artifact):
    root = tmp_path_factory.mktemp("faults")
    inputs = root / "inputs"
    data = inputs / "data"
    shutil.copytree(europeana, data)
    notes = inputs / "notes.txt"
    notes.write_text("Le docteur Martin a reçu Mme Lefèvre à Lyon.\n\nM. Durand habite Rennes.\n", encoding="utf-8")
    (inputs / "ids.jsonl").write_text('{"id": 1, "text": "Jean à Paris"}\n{"text": "Marie à Lyon"}\n')
    (inputs / "bad_utf8.txt").write_bytes(b"Bonjour\ncaf\xe9 au lait\n")
    (inputs / "bad_json.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (inputs / "notes.csv").write_text("a,b\n")
    whole = gzip.compress(os.urandom(100_000).hex().encode() + b"\n")
    (inputs / "cut.txt.gz").write_bytes(whole[:len(whole) // 2])
    (inputs / "odd.txt").write_bytes("NUL\x00 ici, 🙂 émoji, שלום, e\u0301cole\r\nM. Martin à Lyon\r\n".encode())
    (inputs / "folder.txt").mkdir()
    (inputs / "many.txt").write_text(notes.read_text(encoding="utf-8").replace("\n\n", "\n") * 2000, encoding="utf-8")
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (data / "broken_train.jsonl").write_text("\n".join(lines[:5] + ['{"tokens": ["a"], "ner_tags": ["X-FOO"]}']
                                                       + lines[5:20]) + "\n", encoding="utf-8")
    (data / "bad_json.jsonl").write_text(lines[0] + "\n{\"tokens\": [\n")
    (data / "blank_line.jsonl").write_text(lines[0] + "\n\n" + lines[1] + "\n")
    (data / "empty.jsonl").write_text("")
    models = inputs / "models"
    student = shutil.copytree(stage1_artifact, models / "student")
    no_tokenizer = shutil.copytree(student, models / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    truncated = shutil.copytree(student, models / "truncated")
    (truncated / "model.safetensors").write_bytes((student / "model.safetensors").read_bytes()[:5000])
    (models / "empty").mkdir()
    unfinished = shutil.copytree(student, models / "unfinished")
    (unfinished / "training_log.jsonl").write_text('{"epoch": 1, "step": 5}\n')
    pickled = shutil.copytree(io_teacher, models / "pickled_teacher")
    from safetensors.torch import load_file
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    teacher = shutil.copytree(io_teacher, models / "teacher")
    unreadable = shutil.copytree(student, models / "unreadable_weights")
    shutil.copy(notes, inputs / "unreadable.txt")
    shutil.copy(data / "train.jsonl", data / "unreadable.jsonl")
    configs = inputs / "configs"
    configs.mkdir()
    write_config(configs / "tiny.yaml", data, teacher)
    write_config(configs / "broken_train.yaml", data, teacher, data={"train_file": str(data / "broken_train.jsonl")})
    write_config(configs / "pickled.yaml", data, pickled)
    write_config(configs / "no_teacher.yaml", data, root / "nowhere")
    (configs / "typo.yaml").write_text((configs / "tiny.yaml").read_text().replace("max_epochs", "max_epoch"))
    (configs / "bad_yaml.yaml").write_text("training: {batch_size: 16\n")
    write_config(configs / "bad_value.yaml", data, teacher, training={"batch_size": 0})
    write_config(configs / "too_many_layers.yaml", data, teacher, student={"num_layers": 9})
    write_config(configs / "checkpoints.yaml", data, teacher, training={"checkpoint_every_steps": 5})
    shutil.copy(configs / "tiny.yaml", configs / "unreadable.yaml")
    for path in (unreadable / "model.safetensors", inputs / "unreadable.txt", data / "unreadable.jsonl",
                 configs / "unreadable.yaml"):
        path.chmod(0)
    files = {"ids": "ids.jsonl", "bad_utf8": "bad_utf8.txt", "bad_json": "bad_json.jsonl", "csv": "notes.csv",
             "cut_gz": "cut.txt.gz", "odd": "odd.txt", "folder": "folder.txt", "many": "many.txt",
             "unreadable": "unreadable.txt"}
    return {"root": root, "inputs": inputs, "data": data, "notes": notes, **{k: inputs / v for k, v in files.items()},
            **{p.name: p for p in models.iterdir()}, **{"config_" + p.stem: p for p in configs.iterdir()}}


def _live_lock(name: str):
    def setup(world, out):
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (out / f"{name}.lock").write_text(f"{holder.pid} {socket.gethostname()}")
        return lambda: (holder.kill(), holder.wait())
    return setup


def _existing(name: str, text: str = "previous\n"):
    def setup(world, out):
        (out / name).write_text(text)
    return setup


def _checkpoint_with_code(world, out):
    """A run folder whose checkpoint is a pickle that would create a file when loaded."""
    run, state = out / "run", out / "run.checkpoint"
    shutil.copytree(world["student"], run)
    shutil.copytree(world["student"], state)  # the checkpoint's model files, and its training state:

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {out / 'code_ran'}",))
    torch.save({"state": Payload()}, state / "trainer_state.pt")


def _small_disk(size: str):
    """A tmpfs of `size` mounted at {out}/small, a real full disk; the row is skipped where mounting
    is not allowed (the simulated disk-full rows still run)."""
    def setup(world, out):
        disk = out / "small"
        disk.mkdir()
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True,
                           capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            pytest.skip("this platform does not allow mounting a tmpfs")
        return lambda: subprocess.run(["umount", str(disk)], check=True)
    return setup


def _after(args: list[str], code: int):
    """Setup: run `args` first (a run that a fault stops), expecting exit `code`."""
    def setup(world, out):
        names = {k: str(v) for k, v in world.items()}
        done = subprocess.run([sys.executable, *[a.format(out=out, **names) for a in args]], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == code, done.stderr[-3000:]
    return setup


def _injected(patch: str) -> list[str]:
    """`python -c` that applies `patch` (a fault at a dangerous point) and then runs the script
    named next, with the arguments after it, as `python SCRIPT ...` would."""
    return ["-c", f"import runpy, sys; sys.argv = sys.argv[1:]; {patch}; runpy.run_path(sys.argv[0], "
                  "run_name='__main__')"]


# a fault as an expression that raises: lambdas cannot hold a raise statement
_FULL_DISK = "(_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left on device', 'the file'))"
# what safetensors raises on a full disk (seen on a real tmpfs): its own error, the errno only in the text
_FULL_DISK_SAFETENSORS = ("(_ for _ in ()).throw(safetensors.SafetensorError('Error while serializing: I/O error: "
                          "No space left on device (os error 28)'))")
INFER = ["inference.py", "--model", "{student}"]
TRAIN = ["train_kd.py", "--output", "{out}/run"]
# kill -9 between the two renames of a checkpoint swap: the old checkpoint is aside, the new one staged
KILLED_IN_CHECKPOINT_SWAP = _injected(
    "import os, pathlib, signal; rename = pathlib.Path.rename; pathlib.Path.rename = lambda self, target: "
    "os.kill(os.getpid(), signal.SIGKILL) if '.staging-' in self.name and str(target).endswith('.checkpoint') "
    "else rename(self, target)") + TRAIN + ["--config", "{config_checkpoints}"]
ROWS = [
    # data files: verify_data_format (data_loader.py) and the stages
    Row("data", "missing file", ["data_loader.py", "{out}/none.jsonl"], 1, "cannot read data file: No such file"),
    Row("data", "a folder", ["data_loader.py", "{folder}"], 1, "cannot read data file: Is a directory"),
    Row("data", "unknown tag", ["data_loader.py", "{data}/broken_train.jsonl"], 1, "broken_train.jsonl:6"),
    Row("data", "invalid JSON", ["data_loader.py", "{data}/bad_json.jsonl"], 1, "bad_json.jsonl:2"),
    Row("data", "blank line", ["data_loader.py", "{data}/blank_line.jsonl"], 1, "blank_line.jsonl:2"),
    Row("data", "empty file", ["data_loader.py", "{data}/empty.jsonl"], 1, "empty.jsonl"),
    Row("data", "an unreadable file", ["data_loader.py", "{data}/unreadable.jsonl"], 1,
        "cannot read data file: Permission denied", unprivileged=True),
    Row("data", "good files pass", ["data_loader.py", "{data}/train.jsonl", "{data}/val.jsonl"], 0, "sentences"),
    Row("data", "stage 1 on a broken train file", TRAIN + ["--config", "{config_broken_train}"], 2,
        "broken_train.jsonl:6", absent=["run", "run.checkpoint"]),
    # config
    Row("config", "unknown key, with a suggestion", TRAIN + ["--config", "{config_typo}"], 2, "max_epochs",
        absent=["run"]),
    Row("config", "YAML syntax", TRAIN + ["--config", "{config_bad_yaml}"], 2, "bad_yaml.yaml", absent=["run"]),
    Row("config", "a value out of range", TRAIN + ["--config", "{config_bad_value}"], 2, "batch_size",
        absent=["run"]),
    Row("config", "more student layers than the teacher has", TRAIN + ["--config", "{config_too_many_layers}"], 2,
        "layers", absent=["run"]),
    Row("config", "an unreadable config file", TRAIN + ["--config", "{config_unreadable}"], 2,
        "cannot read config file: Permission denied", absent=["run"], unprivileged=True),
    Row("config", "missing config file", TRAIN + ["--config", "{out}/none.yaml"], 2, "none.yaml", absent=["run"]),
    Row("config", "a bad --set", TRAIN + ["--config", "{config_tiny}", "--set", "training.nope=1"], 2, "training.nope",
        absent=["run"]),
    Row("config", "--resume with --overwrite", TRAIN + ["--config", "{config_tiny}", "--resume", "--overwrite"], 2,
        "exclude each other", absent=["run"]),
    Row("config", "--resume of nothing", TRAIN + ["--config", "{config_tiny}", "--resume"], 2,
        "there is no run to resume", absent=["run"]),
    # model folders and teachers
    Row("models", "no tokenizer files", INFER[:2] + ["{no_tokenizer}", "--input", "{notes}", "--output", "{out}/o.jsonl"],
        2, "no tokenizer files", absent=["o.jsonl", "o.jsonl.parts"]),
    Row("models", "truncated weights", INFER[:2] + ["{truncated}", "--input", "{notes}", "--output", "{out}/o.jsonl"],
        2, "model.safetensors is truncated or corrupt", absent=["o.jsonl", "o.jsonl.parts"]),
    Row("models", "unreadable weights",
        INFER[:2] + ["{unreadable_weights}", "--input", "{notes}", "--output", "{out}/o.jsonl"], 2,
        "model.safetensors: cannot be read (Permission denied)", absent=["o.jsonl", "o.jsonl.parts"],
        unprivileged=True),
    Row("models", "an empty folder", INFER[:2] + ["{empty}", "--input", "{notes}", "--output", "{out}/o.jsonl"], 2,
        "neither a pipeline artifact nor a Hugging Face model folder", absent=["o.jsonl"]),
    Row("models", "a teacher where a stage artifact is needed",
        ["prune_heads.py", "--config", "{config_tiny}", "--model", "{teacher}", "--output", "{out}/pruned"], 2,
        "not a pipeline artifact", absent=["pruned"]),
    Row("models", "a teacher that is only a pickle", TRAIN + ["--config", "{config_pickled}"], 2,
        "loads safetensors only", absent=["run"]),
    Row("models", "a teacher folder that does not exist", TRAIN + ["--config", "{config_no_teacher}"], 2,
        "no such folder", absent=["run"]),
    Row("models", "an unfinished run given to pruning",
        ["prune_heads.py", "--config", "{config_tiny}", "--model", "{unfinished}", "--output", "{out}/pruned"], 2,
        "--allow-unfinished", absent=["pruned"]),
    Row("models", "evaluate.py on a missing model",
        ["evaluate.py", "--model", "{out}/none", "--data", "{data}/test.jsonl", "--output", "{out}/r.json"], 2,
        "none", absent=["r.json"]),
    # inference inputs
    Row("inference", "--output is the input", INFER + ["--input", "{notes}", "--output", "{notes}"], 2,
        "would destroy the input"),
    Row("inference", "--output in a folder that cannot be made",
        INFER + ["--input", "{notes}", "--output", "{notes}/o.jsonl"], 2, "cannot write in"),
    Row("inference", "--output is a folder", INFER + ["--input", "{notes}", "--output", "{out}"], 2, "is a folder"),
    Row("inference", "an existing output", INFER + ["--input", "{notes}", "--output", "{out}/o.jsonl"], 2,
        "Use --resume to keep it", exists=["o.jsonl"], setup=_existing("o.jsonl")),
    Row("inference", "shard 3/2", INFER + ["--input", "{notes}", "--output", "{out}/o.jsonl", "--shard", "3/2"], 2,
        "--shard 3/2: expected i/N", absent=["o.jsonl"]),
    Row("inference", "shard a/b", INFER + ["--input", "{notes}", "--output", "{out}/o.jsonl", "--shard", "a/b"], 2,
        "--shard a/b: expected i/N", absent=["o.jsonl"]),
    Row("inference", "truncated gzip", INFER + ["--input", "{cut_gz}", "--output", "{out}/o.jsonl"], 2,
        "truncated or damaged gzip data", absent=["o.jsonl", "o.jsonl.parts"]),
    Row("inference", "an id missing on a line", INFER + ["--input", "{ids}", "--output", "{out}/o.jsonl"], 2,
        "ids.jsonl:2: no \"id\" field", absent=["o.jsonl", "o.jsonl.parts"]),
    Row("inference", "not UTF-8", INFER + ["--input", "{bad_utf8}", "--output", "{out}/o.jsonl"], 2,
        "bad_utf8.txt:2: not valid UTF-8", absent=["o.jsonl", "o.jsonl.parts"]),
    Row("inference", "invalid JSON", INFER + ["--input", "{bad_json}", "--output", "{out}/o.jsonl"], 2,
        "bad_json.jsonl:2: invalid JSON", absent=["o.jsonl", "o.jsonl.parts"]),
    Row("inference", "a .csv", INFER + ["--input", "{csv}", "--output", "{out}/o.jsonl"], 2,
        "expected a .txt or .jsonl file", absent=["o.jsonl"]),
    Row("inference", "a folder as input", INFER + ["--input", "{folder}", "--output", "{out}/o.jsonl"], 2,
        "is a folder; give a file", absent=["o.jsonl"]),
    Row("inference", "an unreadable input", INFER + ["--input", "{unreadable}", "--output", "{out}/o.jsonl"], 2,
        "cannot be read (Permission denied)", absent=["o.jsonl", "o.jsonl.parts"], unprivileged=True),
    Row("inference", "a missing input", INFER + ["--input", "{out}/none.txt", "--output", "{out}/o.jsonl"], 2,
        "no such file", absent=["o.jsonl"]),
    Row("inference", "--resume of nothing", INFER + ["--input", "{notes}", "--output", "{out}/o.jsonl", "--resume"],
        2, "no unfinished run", absent=["o.jsonl"]),
    Row("inference", "NUL, emoji, right-to-left, combining marks and CRLF",
        INFER + ["--input", "{odd}", "--output", "{out}/o.jsonl"], 0, "2 lines", exists=["o.jsonl"]),
    # faults
    Row("faults", "an output held by a running process",
        ["prune_heads.py", "--config", "{config_tiny}", "--model", "{student}", "--output", "{out}/pruned"], 2,
        "is in use by process", absent=["pruned"], setup=_live_lock("pruned")),
    Row("faults", "a stale lock of a dead process is taken over",
        INFER + ["--input", "{notes}", "--output", "{out}/o.jsonl"], 0, "3 lines", exists=["o.jsonl"],
        absent=["o.jsonl.lock"], setup=_existing("o.jsonl.lock", "999999 " + socket.gethostname())),
    Row("faults", "benchmark.py with a model that cannot be loaded",
        ["benchmark.py", "--model", "{student}", "--model", "{no_tokenizer}", "--precision", "fp32", "--rounds", "1",
         "--repeats", "1", "--sentences", "4", "--latency-sentences", "2", "--data", "{data}/test.jsonl"], 1,
        "no tokenizer files"),
    Row("faults", "disk full while inference.py commits a chunk",
        _injected(f"import corpus, errno; corpus._write_file = lambda *a: {_FULL_DISK}")
        + INFER + ["--input", "{notes}", "--output", "{out}/o.jsonl"], 2, "no space left on the device",
        absent=["o.jsonl"]),
    Row("faults", "disk full while prune_heads.py saves the model",
        _injected(f"import models, safetensors; models.save_file = lambda *a, **k: {_FULL_DISK_SAFETENSORS}")
        + ["prune_heads.py", "--config", "{config_tiny}", "--model", "{student}", "--output", "{out}/pruned"], 2,
        "no space left on the device", absent=["pruned", "pruned.lock"]),
    Row("faults", "kill -9 right after inference.py commits its first chunk",
        _injected("import corpus, os, signal; commit = corpus.commit_chunk; corpus.commit_chunk = lambda *a: "
                  "(commit(*a), os.kill(os.getpid(), signal.SIGKILL))")
        + INFER + ["--input", "{notes}", "--output", "{out}/o.jsonl"], -9, "",
        exists=["o.jsonl.parts/chunk-00000000.json", "o.jsonl.parts/manifest.json"], absent=["o.jsonl"]),
    Row("faults", "kill -9 while prune_heads.py publishes the model",
        _injected("import utils, os, signal; utils._share_like_any_file = lambda path: os.kill(os.getpid(), "
                  "signal.SIGKILL)")
        + ["prune_heads.py", "--config", "{config_tiny}", "--model", "{student}", "--output", "{out}/pruned"], -9,
        "", absent=["pruned"]),
    Row("faults", "a full disk (a 512 KiB tmpfs) under prune_heads.py",
        ["prune_heads.py", "--config", "{config_tiny}", "--model", "{student}", "--output", "{out}/small/pruned"], 2,
        "no space left on the device", absent=["small/pruned", "small/pruned.lock"], setup=_small_disk("512k")),
    Row("faults", "a full disk (a 64 KiB tmpfs) under inference.py",
        INFER + ["--input", "{many}", "--output", "{out}/small/o.jsonl"], 2, "no space left on the device",
        absent=["small/o.jsonl", "small/o.jsonl.lock"], setup=_small_disk("64k")),
    Row("faults", "a full disk (a 512 KiB tmpfs) under train_kd.py",
        ["train_kd.py", "--config", "{config_tiny}", "--output", "{out}/small/run"], 2,
        "no space left on the device", absent=["small/run/model.safetensors", "small/run.lock"],
        setup=_small_disk("512k")),
    Row("faults", "kill -9 while train_kd.py swaps in a new checkpoint", KILLED_IN_CHECKPOINT_SWAP, -9, "",
        exists=["run/training_log.jsonl"], absent=["run/training_summary.json", "run.checkpoint"]),
    Row("faults", "--resume after a kill -9 in the middle of a checkpoint swap",
        TRAIN + ["--config", "{config_checkpoints}", "--resume"], 0, "Resuming from epoch 1, step 5 ",
        exists=["run/training_summary.json", "run.checkpoint/trainer_state.pt"], absent=["run.lock"],
        setup=_after(KILLED_IN_CHECKPOINT_SWAP, -9)),
    Row("faults", "evaluate.py --output where it cannot be written",
        ["evaluate.py", "--model", "{student}", "--data", "{data}/test.jsonl", "--output", "{notes}/r.json"], 2,
        "cannot write in"),
    # security
    Row("security", "a checkpoint that would run code", TRAIN + ["--config", "{config_tiny}", "--resume"], 2,
        "cannot be read as a training checkpoint", absent=["code_ran"], setup=_checkpoint_with_code),
    Row("security", "serve.py refuses a log level that prints requests",
        ["serve.py", "--test_input", '{{"input": {{"text": "x"}}}}', "--rp_log_level", "DEBUG"], 2, "DEBUG"),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.area}: {r.name}" for r in ROWS])
def test_fault(row, world, tmp_path):
    out = tmp_path
    cleanup = row.setup(world, out) if row.setup else None
    names = {k: str(v) for k, v in world.items()}
    args = [a.format(out=out, **names) for a in row.args]
    before = _files(world)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NER_MODEL": str(world["student"])}
    prefix = _unprivileged_prefix() if row.unprivileged else []
    try:  # the checks run before the cleanup: a row's tmpfs holds what it checks
        done = subprocess.run([*prefix, sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=600, env=env)
        shown = done.stderr + done.stdout
        assert done.returncode == row.code, shown[-3000:]
        assert row.phrase in (done.stderr if row.code else shown), shown[-3000:]
        assert "Traceback" not in shown
        assert _files(world) == before, "an input file changed"
        for name in row.exists:
            assert (out / name).exists(), name
        for name in row.absent:
            assert not (out / name).exists(), name
    finally:
        if cleanup:
            cleanup()


def test_the_matrix_covers_every_area():
    areas = {}
    for row in ROWS:
        areas[row.area] = areas.get(row.area, 0) + 1
    assert len(ROWS) >= 58 and set(areas) == {"data", "config", "models", "inference", "faults", "security"}


def test_no_unsafe_loading_anywhere_in_the_code():
    code = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]
    text = {p: p.read_text(encoding="utf-8") for p in code}
    # the patterns are built from two halves so that this file does not itself hold the calls it forbids
    forbidden = [a + b for a, b in (("weights_only=", "False"), ("trust_remote_code=", "True"), ("shell=", "True"),
                                    ("yaml.", "load("), ("pickle.", "load"))]
    for pattern in forbidden:
        offenders = [str(p.relative_to(REPO)) for p, t in text.items() if pattern in t]
        if pattern.startswith("yaml."):  # only with the project's safe loader (config._Loader, a SafeLoader)
            offenders = [p for p in offenders if "Loader=_Loader" not in text[REPO / p]]
        assert offenders == [], f"{pattern} in {offenders}"
