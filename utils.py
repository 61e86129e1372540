"""Small helpers for the stage scripts: the error they report, the CLI wrapper, where a
process runs (device, torchrun), output folders, atomic writes, tables and package versions.

The config system is in config.py, precision and autocast choices in precision.py.
"""

import contextlib
import errno
import functools
import glob
import importlib.metadata
import json
import os
import random
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError


class PipelineError(Exception):
    """A problem the user can fix (bad data, config, model folder, GPU memory...).

    Stage scripts report it as one paragraph and exit non-zero, without a traceback.
    """


# ---------------------------------------------------------------------------
# The CLI wrapper that reports user-fixable errors

def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a stage's main(); user-fixable errors become a clear message and exit code 2."""
    try:
        code = main(argv)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except (OSError, SafetensorError) as error:
        if not _is_disk_full(error):
            raise
        where = getattr(error, "filename", None)
        print(f"error: no space left on the device{f' (writing {where})' if where else ''}. "
              "Nothing half-written was published: free some space, then run the same command again (with "
              "--resume for a training stage or inference.py, to continue where it stopped).", file=sys.stderr)
        code = 2
    sys.exit(code or 0)


def _is_disk_full(error: Exception) -> bool:
    # safetensors reports a failed write as its own error, with the OS error number in the text only
    if isinstance(error, SafetensorError):
        return f"(os error {errno.ENOSPC})" in str(error)
    return error.errno == errno.ENOSPC


# ---------------------------------------------------------------------------
# Run environment: seed, device, precision, distributed

def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, and its place in a torchrun job."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(device: str = "auto", join_group: bool = True) -> Runtime:
    """Pick the device and, under torchrun (RANK in the environment), this process's GPU and (with
    `join_group`) the process group."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device {device} asked for, but no CUDA GPU is visible "
                            "(check nvidia-smi and that torch is a CUDA build).")
    if "RANK" not in os.environ:
        return Runtime(torch.device("cuda" if use_cuda else "cpu") if device == "auto" else torch.device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if join_group:
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"), rank, world_size, local_rank)


def close_runtime(runtime: Runtime) -> None:
    if runtime.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------
# Files: output folders, atomic writes, run records

def prepare_output_dir(path: str | Path, overwrite: bool = False, resume: bool = False,
                       create: bool = True) -> Path:
    """Make sure writing into `path` loses nothing: refuse a non-empty folder unless asked.

    With `create=False` only the checks run (nothing is deleted or made).
    """
    path = Path(path)
    if overwrite and resume:
        raise PipelineError("--overwrite and --resume exclude each other: --resume continues the "
                            f"run in {path}, --overwrite deletes it.")
    if resume:
        if not path.is_dir():
            raise PipelineError(f"--resume: {path} does not exist; there is no run to resume.")
        return path
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{path} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise PipelineError(f"{path} already exists and is not empty. Use --overwrite to replace "
                                "its contents, --resume to continue an interrupted run, or choose "
                                "another --output.")
        if create:
            shutil.rmtree(path)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def describe_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """`key.sub: old -> new` for every value that differs between two nested dicts."""
    changes = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += describe_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def check_writable(target: str | Path, inputs: tuple[str | Path, ...] = (), flag: str = "--output") -> None:
    """Before any slow work: `target`'s folder can be written (it is created), `target` is not a
    folder, and it is none of the `inputs` (links count: compared with samefile)."""
    target = Path(target)
    for source in inputs:
        if target.exists() and Path(source).exists() and os.path.samefile(source, target):
            raise PipelineError(f"{flag} {target} is the input file {source}: writing it would destroy the input. "
                                f"Choose another {flag}.")
    if target.is_dir():
        raise PipelineError(f"{flag} {target}: is a folder; name the file to write.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = target.parent / f".{target.name}.probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise PipelineError(f"{flag} {target}: cannot write in {target.parent} ({error.strerror}).") from None


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Rows of cells as an aligned Markdown table (for terminals and the README alike)."""
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    render = lambda line: "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
    return "\n".join([render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [render(r) for r in rows])


@contextlib.contextmanager
def publishing(target: str | Path, merge: bool = False) -> Iterator[Path]:
    """Write `target` (a file or a folder) through a hidden staging path beside it.

    Yields the staging path; whatever the block writes there (a file, or a folder it creates)
    takes the place of `target` when the block succeeds, and is deleted when it fails, so
    `target` is never seen half-written. A file replaces `target` in one rename. A folder is
    renamed in; an existing one is first renamed aside and deleted only once the new one is in
    place, so a crash leaves one of the two whole (`find_published` gets it back). With `merge`,
    the staged files are moved into an existing folder one by one instead, config.json last (a
    training run's folder keeps its logs and checkpoints beside the model it saves).
    """
    target = Path(target)
    find_published(target)  # tidy what a killed writer of the same target left behind
    staging = _sibling(target, "staging", os.getpid())
    _remove(staging)
    try:
        yield staging
        _share_like_any_file(staging)
        if not staging.is_dir() or not target.exists():
            os.replace(staging, target)
        elif merge:
            for name in sorted((p.name for p in staging.iterdir()), key=lambda n: n == "config.json"):
                os.replace(staging / name, target / name)
        else:
            aside = _sibling(target, "old", os.getpid())
            target.rename(aside)
            staging.rename(target)
            _remove(aside)
    finally:
        _remove(staging)


def find_published(target: str | Path) -> Path | None:
    """`target` if it exists, after tidying what writers killed mid-way left beside it.

    Their staging files are removed; a folder they had renamed aside but not yet replaced is
    renamed back (it was complete), so the last published version is never lost.
    """
    target = Path(target)
    for leftover in sorted(target.parent.glob(glob.escape(f".{target.name}.") + "*-[0-9]*")):
        kind, _, pid = leftover.name[len(target.name) + 2:].rpartition("-")
        if kind not in ("staging", "old") or not pid.isdigit() or is_running(int(pid)):
            continue
        if kind == "old" and not target.exists():
            leftover.rename(target)
        else:
            _remove(leftover)
    return target if target.exists() else None


@contextlib.contextmanager
def output_lock(target: str | Path, wait_s: float = 60.0) -> Iterator[None]:
    """Hold `TARGET.lock` (it names the holder's PID and host) while the block runs.

    Two processes setting up the same output take turns. A lock left by a dead process of this
    host is taken over; one held longer than `wait_s` is an error naming its holder.
    """
    lock = acquire_lock(Path(target), wait_s)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


_claims: set[Path] = set()


def claim_output(target: str | Path) -> None:
    """Hold `TARGET.lock` until `release_claims` (a main() wrapped in `releasing_claims` calls it
    when it ends), so that a second run writing the same output is refused at once, naming the
    first. A lock left by a dead process of this host is taken over."""
    lock = Path(target).with_name(Path(target).name + ".lock")
    if lock in _claims and holder_of(lock) == (os.getpid(), socket.gethostname()):
        return
    try:  # an output in a folder that does not exist yet (artifacts/new/student): made, as the stage would
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot write beside {target}: {error.strerror} ({lock.parent}).") from None
    _claims.add(acquire_lock(Path(target), wait_s=0))


def release_claims() -> None:
    for lock in list(_claims):
        if holder_of(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)
        _claims.discard(lock)


def releasing_claims(main: Callable[[list[str] | None], int | None]):
    """A stage's main() that lets go of the outputs it claimed when it returns or fails."""
    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None):
        try:
            return main(argv)
        finally:
            release_claims()
    return wrapper


def acquire_lock(target: Path, wait_s: float) -> Path:
    """Create `TARGET.lock` naming this process, waiting at most `wait_s` for another holder."""
    lock = target.with_name(target.name + ".lock")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, host = holder_of(lock)
            if pid is None and not lock.exists():
                continue  # released between the two calls
            if holder_is_gone(lock):
                lock.unlink(missing_ok=True)  # its holder died
                continue
            if time.monotonic() >= deadline:
                raise PipelineError(f"{target} is in use by process {pid} on {host} (lock file {lock}); wait for "
                                    f"it to finish, or delete {lock} if that process no longer runs.") from None
            time.sleep(0.1)
            continue
        except OSError as error:
            raise PipelineError(f"cannot write beside {target}: {error.strerror} ({lock}).") from None
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{os.getpid()} {socket.gethostname()}")
        return lock


def holder_of(marker: Path) -> tuple[int | None, str]:
    """(PID, host), the first two words of a lock or marker file (None when it is gone or unreadable)."""
    try:
        pid, host = marker.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def holder_is_gone(marker: Path) -> bool:
    """The process named in `marker` no longer runs (PID 0 means none; a PID of another host
    cannot be checked and counts as running)."""
    pid, host = holder_of(marker)
    return pid == 0 or (pid is not None and host == socket.gethostname() and not is_running(pid))


def _share_like_any_file(path: Path) -> None:
    """Give written files the mode any new file gets (0644 under the usual umask).

    safetensors writes its files 0600, which a container running as another user cannot read.
    """
    mask = os.umask(0)
    os.umask(mask)
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    for file in paths:
        os.chmod(file, 0o666 & ~mask)


def _sibling(target: Path, kind: str, pid: int) -> Path:
    return target.with_name(f".{target.name}.{kind}-{pid}")


def is_running(pid: int) -> bool:
    """Whether a process with this PID runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically."""
    with publishing(path) as staging:
        staging.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with publishing(path) as staging:
        staging.write_text(text, encoding="utf-8")


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM: unlike getrusage, not inherited from
    the parent that started it)."""
    try:
        with open("/proc/self/status") as status:
            return round(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration):
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide the results."""
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "tokenizers", "seqeval", "pytorch-crf", "safetensors"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
