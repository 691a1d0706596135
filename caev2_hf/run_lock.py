# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""One run per output folder: a lock that a run holds in its `output_dir` for its whole life.

The lock is `fcntl.flock` on `output_dir/.run.lock`. The kernel drops it when the holding process ends, however it
ends (`kill -9` and the out-of-memory killer included), so a dead run never blocks its folder and nothing needs
cleaning up; the file itself stays, so every run locks the same inode. The file holds a record of the holder (host,
pid, start time, command), written once the lock is won and cleared on release, so a refused run names the one it met.

Filesystems: flock is exact on a local disk. On NFS, Linux turns flock into NFS byte-range locks, which every client
sees (a crashed client's lock lapses with its lease, about 90 s). On Lustre it reaches across nodes only when mounted
with `-o flock`; with `-o localflock` (and BeeGFS without global locks) each node sees only its own locks, so two runs
on two nodes are not refused. Where flock is refused outright (ENOSYS, ENOLCK, EOPNOTSUPP: Lustre with neither option,
some FUSE filesystems), the record alone decides: a holder on this host counts while its process lives (pid and
process start time), a holder on another host while it refreshes the record (every `heartbeat_seconds`); two runs
started within the same second can then both go on.
"""

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time

from caev2_hf_cli.errors import UserError


LOCK_NAME = ".run.lock"
FLOCK_MISSING = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}
FLOCK_CONTENTION = {errno.EAGAIN, errno.EACCES}  # EWOULDBLOCK is EAGAIN on Linux


def process_start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux `/proc`), to tell a live holder from a reused pid;
    None where `/proc` does not say."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); the split starts at field 3
    except (OSError, IndexError, ValueError):
        return None


def is_running_here(pid: int, start_time: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return start_time is None or process_start_time(pid) in (None, start_time)


class RunLock:
    """The lock of one `output_dir`: `try_acquire` (the refusal message, or None once held), `acquire` (raises
    `UserError`), `release`; or use it as a context manager.

    Args:
        output_dir: the run's folder (created if missing).
        heartbeat_seconds: where flock is missing, how often the holder refreshes its record.
        stale_seconds: where flock is missing, how long a record from another host counts without a refresh.
    """

    def __init__(self, output_dir: str, heartbeat_seconds: float = 30.0, stale_seconds: float = 120.0) -> None:
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self._fd: int | None = None
        self._uses_flock = True
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def is_held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> str | None:
        """Takes the lock; returns None when held, or the one-line refusal naming the run that holds it."""
        if self.is_held:
            return None
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in FLOCK_CONTENTION:
                return self._refuse(fd, self._read_record(fd))
            if error.errno not in FLOCK_MISSING:
                os.close(fd)
                raise
            self._uses_flock = False
        if not self._uses_flock:
            record = self._read_record(fd)
            age = time.time() - os.fstat(fd).st_mtime
            if record and self._record_is_live(record, age):
                elsewhere = record.get("host") != socket.gethostname()
                return self._refuse(fd, record, stale_in=self.stale_seconds - age if elsewhere else None)
        self._fd = fd
        self._write_record()
        if not self._uses_flock:
            self._heartbeat = threading.Thread(target=self._refresh, name="run-lock-heartbeat", daemon=True)
            self._heartbeat.start()
        return None

    def acquire(self) -> "RunLock":
        refusal = self.try_acquire()
        if refusal is not None:
            raise UserError(refusal)
        return self

    def release(self) -> None:
        """Clears the record and drops the lock (the file stays: a run waiting on it keeps the same inode)."""
        if self._fd is None:
            return
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            os.ftruncate(self._fd, 0)
        except OSError:  # a full or read-only disk: the lock itself still goes with the descriptor
            pass
        if self._uses_flock:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _write_record(self) -> None:
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": process_start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join(sys.argv),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    @staticmethod
    def _read_record(fd: int) -> dict:
        try:
            record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _record_is_live(self, record: dict, age: float) -> bool:
        """Without flock: a holder on this host while its process runs; elsewhere while its record is fresh."""
        if record.get("host") == socket.gethostname():
            return isinstance(record.get("pid"), int) and is_running_here(record["pid"], record.get("process_start"))
        return age < self.stale_seconds

    def _refuse(self, fd: int, record: dict, stale_in: float | None = None) -> str:
        os.close(fd)
        holder = (
            f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: {record.get('command')}"
            if record
            else f"its record in {self.path} is not written yet"
        )
        unsure = (
            f" This filesystem has no flock, so the record decides: if that run has ended, delete {self.path} or "
            f"wait {stale_in:.0f} s."
            if stale_in is not None
            else ""
        )
        return (
            f"--output_dir {self.output_dir} is in use by another run ({holder}). Wait for it to end or stop it, or "
            f"choose another --output_dir.{unsure}"
        )

    def _refresh(self) -> None:
        while not self._stop_heartbeat.wait(self.heartbeat_seconds):
            try:
                os.utime(self._fd)
            except OSError:
                pass
