"""utils.py: `publishing` (the one atomic-write helper), recovery after a killed writer, output folders."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from utils import PipelineError, check_writable, find_published, prepare_output_dir, publishing, run_cli, write_json


def dead_pid() -> int:
    """The PID of a process that has exited (as a killed writer's would be)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_a_file_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("previous\n")
    with pytest.raises(RuntimeError):
        with publishing(target) as staging:
            staging.write_text("half")
            assert staging.parent == tmp_path and staging.name.startswith(".out.jsonl.staging-")
            raise RuntimeError("killed mid-way")
    assert target.read_text() == "previous\n" and os.listdir(tmp_path) == ["out.jsonl"]
    with publishing(target) as staging:
        staging.write_text("new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["out.jsonl"]


def test_a_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with publishing(target) as staging:
        staging.mkdir()
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert os.listdir(tmp_path) == ["model"]


def test_merge_keeps_the_other_files_of_the_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_log.jsonl").write_text("log\n")
    (run / "config.json").write_text('{"v": 1}')
    with publishing(run, merge=True) as staging:
        staging.mkdir()
        (staging / "config.json").write_text('{"v": 2}')
        (staging / "model.safetensors").write_bytes(b"weights")
    assert (run / "training_log.jsonl").read_text() == "log\n"
    assert json.loads((run / "config.json").read_text()) == {"v": 2} and (run / "model.safetensors").is_file()
    assert os.listdir(tmp_path) == ["run"]


def test_write_json_is_whole_or_absent(tmp_path):
    write_json(tmp_path / "a.json", {"é": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"é": [1, 2]}
    with pytest.raises(TypeError):
        write_json(tmp_path / "b.json", {"x": object()})
    assert os.listdir(tmp_path) == ["a.json"]


def test_leftovers_of_dead_writers_are_tidied_and_a_folder_set_aside_comes_back(tmp_path):
    pid = dead_pid()
    target = tmp_path / "checkpoint"
    (tmp_path / f".checkpoint.staging-{pid}").mkdir()        # killed while writing the new one
    aside = tmp_path / f".checkpoint.old-{pid}"                # killed between the two renames
    aside.mkdir()
    (aside / "trainer_state.pt").write_bytes(b"state")
    live = tmp_path / f".checkpoint.staging-{os.getpid()}"     # a writer still running: untouched
    live.mkdir()
    assert find_published(target) == target
    assert (target / "trainer_state.pt").read_bytes() == b"state"
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint", live.name])
    assert find_published(tmp_path / "missing") is None


def test_a_writer_killed_between_the_renames_loses_nothing(tmp_path):
    """kill -9 right after the old folder was set aside: the next reader gets the old folder back."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    script = f"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
import utils
renames = []
original = Path.rename
def rename(self, destination):
    result = original(self, destination)
    renames.append(destination)
    if len(renames) == 1:               # the old folder is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    return result
Path.rename = rename
with utils.publishing(Path({str(target)!r})) as staging:
    staging.mkdir()
    (staging / "weights").write_text("new")
"""
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert not target.exists() and len(os.listdir(tmp_path)) == 2       # aside + staging, both left behind
    assert find_published(target) == target and (target / "weights").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]


def test_output_folder_rules(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "result.txt").write_text("keep")
    with pytest.raises(PipelineError, match="already exists and is not empty"):
        prepare_output_dir(busy)
    with pytest.raises(PipelineError, match="exclude each other"):
        prepare_output_dir(busy, overwrite=True, resume=True)
    with pytest.raises(PipelineError, match="no run to resume"):
        prepare_output_dir(tmp_path / "absent", resume=True)
    prepare_output_dir(busy, overwrite=True, create=False)          # checks only
    assert (busy / "result.txt").read_text() == "keep"
    assert prepare_output_dir(busy, overwrite=True) == busy and list(busy.iterdir()) == []


def test_published_files_get_the_mode_of_any_new_file(tmp_path):
    """safetensors writes 0600; a container running as another user must still read the weights."""
    previous = os.umask(0o022)
    try:
        with publishing(tmp_path / "model") as staging:
            staging.mkdir()
            (staging / "weights").write_bytes(b"w")
            os.chmod(staging / "weights", 0o600)
        with publishing(tmp_path / "alone.json") as staging:
            staging.write_text("{}")
            os.chmod(staging, 0o600)
    finally:
        os.umask(previous)
    assert (tmp_path / "model" / "weights").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "alone.json").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_one_error_line_and_exit_code_2(capsys):
    import errno

    def writes_on_a_full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "artifacts/run/model.safetensors")
    with pytest.raises(SystemExit) as stopped:
        run_cli(writes_on_a_full_disk, [])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: no space left on the device (writing artifacts/run/model.safetensors). Nothing "
                          "half-written was published") and "--resume" in err

    def other_failure(argv):
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(OSError):  # anything else is a bug to see whole
        run_cli(other_failure, [])


def test_writability_and_input_checks_come_before_any_work(tmp_path):
    source = tmp_path / "notes.txt"
    source.write_text("x\n")
    (tmp_path / "link.txt").symlink_to(source)
    with pytest.raises(PipelineError, match="--output .*link.txt is the input file .*notes.txt"):
        check_writable(tmp_path / "link.txt", (source,))
    with pytest.raises(PipelineError, match="is a folder; name the file to write"):
        check_writable(tmp_path, (source,))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PipelineError, match="--report .*cannot write in .*a_file"):
        check_writable(tmp_path / "a_file" / "r.json", flag="--report")
    check_writable(tmp_path / "new" / "deeper" / "r.json")
    assert (tmp_path / "new" / "deeper").is_dir() and not list((tmp_path / "new" / "deeper").iterdir())


def test_an_output_in_a_folder_that_does_not_exist_yet_is_claimed_and_released(tmp_path):
    from utils import claim_output, release_claims
    target = tmp_path / "new" / "deeper" / "student"        # artifacts/demo/student on a clean checkout
    claim_output(target)
    assert (tmp_path / "new" / "deeper" / "student.lock").read_text().split()[0] == str(os.getpid())
    release_claims()
    assert not (tmp_path / "new" / "deeper" / "student.lock").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(PipelineError, match=r"cannot write beside .*file/student"):
        claim_output(tmp_path / "file" / "student")                     # a file where a folder should be
