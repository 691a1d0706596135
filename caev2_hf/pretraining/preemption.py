# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Stopping on a scheduler's signal without losing work (docs/design.md#checkpoints-and-resume).

SLURM and Kubernetes send SIGTERM before they kill a job (SLURM at its time limit or on preemption, to every process
of the job step; Kubernetes to the container's first process, 30 s before SIGKILL by default), and a job can ask for
an earlier warning with SIGUSR1 (`sbatch --signal=USR1@120`). `StopRequests` turns either signal into a request that
the training loop honours at an update boundary: it saves a checkpoint there and the command exits with
128 + the signal's number (143 for SIGTERM), the status the shell gives a process that signal ended, so a scheduler
or a Kubernetes Job sees a run that was stopped and must be continued, never one that finished.

All processes must stop after the same update: one that stopped alone would leave the others waiting in their next
collective. Each update, every process adds its flags to an all-reduce queued on the device, and the decision at
update u reads the sum queued at update u - `lag`, which the device has long finished: reading it waits for nothing,
so the loop keeps its no-host-sync step, and every process reads the same sum at the same update. A single process
needs no agreement and reads its flag directly.
"""

import collections
import signal

import torch
from accelerate import Accelerator


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequests:
    """SIGTERM and SIGUSR1 caught as flags while the context is open (the previous handlers come back on exit);
    `agreed_signal()`, called once per update by every process, says when all of them stop.

    Args:
        accelerator: the run's Accelerator (its processes agree through it).
        lag: updates between a signal reaching any process and every process stopping, when there are several.
    """

    def __init__(self, accelerator: Accelerator, lag: int = 2) -> None:
        self.accelerator = accelerator
        self.lag = lag
        self.received: signal.Signals | None = None
        self._previous_handlers = {}
        self._pending = collections.deque()

    def __enter__(self) -> "StopRequests":
        for number in STOP_SIGNALS:
            self._previous_handlers[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()

    def _handle(self, number: int, frame) -> None:
        """Only records the signal: the loop acts on it at an update boundary."""
        self.received = self.received or signal.Signals(number)

    def agreed_signal(self) -> signal.Signals | None:
        """The signal every process now stops for (SIGTERM before SIGUSR1 when both came), or None."""
        if self.accelerator.num_processes == 1:
            return self.received
        return self._agree()

    def _agree(self) -> signal.Signals | None:
        votes = torch.zeros(len(STOP_SIGNALS), device=self.accelerator.device)
        if self.received is not None:
            votes[STOP_SIGNALS.index(self.received)] = 1.0  # a fill on the device: no copy from the host
        votes = self.accelerator.reduce(votes, reduction="sum")
        if votes.device.type == "cuda":
            event = torch.cuda.Event()
            self._pending.append((votes.to("cpu", non_blocking=True), event))  # into pinned memory
            event.record()
        else:
            self._pending.append((votes.cpu(), None))
        if len(self._pending) <= self.lag:
            return None
        votes, event = self._pending.popleft()
        if event is not None:
            event.synchronize()  # done `lag` updates ago
        return next((number for number, count in zip(STOP_SIGNALS, votes.tolist(), strict=True) if count > 0), None)
