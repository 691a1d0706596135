"""Tests for caev2_hf/run_lock.py: one run per output folder, a dead holder's lock taken over, the record that names
the holder, and the record-only rule where a filesystem has no flock."""

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import caev2_hf.run_lock
from caev2_hf.run_lock import LOCK_NAME, RunLock
from caev2_hf_cli.errors import UserError


# The module alone, without `import caev2_hf` (which imports torch): the holder is ready in a fraction of a second.
HOLD_THE_LOCK = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
run_lock.RunLock(sys.argv[2]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def start_holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it until killed."""
    command = [sys.executable, "-c", HOLD_THE_LOCK, caev2_hf.run_lock.__file__, str(folder)]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_is_refused_with_the_holder_named_until_the_first_releases(tmp_path: Path) -> None:
    first = RunLock(str(tmp_path / "run")).acquire()
    refusal = RunLock(str(tmp_path / "run")).try_acquire()
    assert refusal.startswith(f"--output_dir {tmp_path / 'run'} is in use by another run (pid {os.getpid()} on ")
    assert socket.gethostname() in refusal and "\n" not in refusal
    with pytest.raises(UserError, match="is in use by another run"):
        RunLock(str(tmp_path / "run")).acquire()
    first.release()
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # the record is cleared, the file stays
    with RunLock(str(tmp_path / "run")) as second:
        assert second.is_held and json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        refusal = RunLock(str(tmp_path)).try_acquire()
        assert f"(pid {holder.pid} on {socket.gethostname()}, started " in refusal
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the record stays
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    lock = RunLock(str(tmp_path)).acquire()  # the kernel dropped the dead holder's flock
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def no_flock(fd: int, operation: int) -> None:
    raise OSError(errno.ENOLCK, "No locks available")


def write_record(folder: Path, **record) -> None:
    folder.mkdir(exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"started": "then", "command": "run_pretrain.py", **record}))


def test_without_flock_a_record_counts_while_its_process_lives(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fcntl, "flock", no_flock)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_record(tmp_path, host=socket.gethostname(), pid=holder.pid, process_start=None)
        assert f"(pid {holder.pid} on" in RunLock(str(tmp_path)).try_acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(str(tmp_path), heartbeat_seconds=3600).acquire()  # the process is gone: a stale record
    lock.release()
    write_record(tmp_path, host=socket.gethostname(), pid=os.getpid(), process_start=1)  # a reused pid
    RunLock(str(tmp_path), heartbeat_seconds=3600).acquire().release()


def test_without_flock_a_record_from_another_host_counts_while_it_is_refreshed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fcntl, "flock", no_flock)
    write_record(tmp_path, host="another-node", pid=1)
    refusal = RunLock(str(tmp_path), stale_seconds=120).try_acquire()
    assert "(pid 1 on another-node, started then: run_pretrain.py)" in refusal
    assert f"This filesystem has no flock, so the record decides: if that run has ended, delete {tmp_path}" in refusal
    old = time.time() - 121
    os.utime(tmp_path / LOCK_NAME, (old, old))  # its holder stopped refreshing it two minutes ago
    lock = RunLock(str(tmp_path), heartbeat_seconds=0.05).acquire()
    os.utime(tmp_path / LOCK_NAME, (old, old))
    time.sleep(0.5)
    assert time.time() - os.stat(tmp_path / LOCK_NAME).st_mtime < 60  # refreshed by the holder's heartbeat
    lock.release()
