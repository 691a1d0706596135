"""Tests for caev2_hf/pretraining/preemption.py: SIGTERM / SIGUSR1 caught as a stop request, and the update at which
every process agrees to stop (the runs themselves: tests/test_pretrain_faults.py)."""

import os
import signal

import torch

from caev2_hf.pretraining.preemption import StopRequests


class Processes:
    """What StopRequests uses of the Accelerator, for this process and others whose votes (SIGTERM, SIGUSR1 counts)
    are `others`."""

    def __init__(self, num_processes: int, others: tuple[float, float] = (0.0, 0.0)) -> None:
        self.num_processes = num_processes
        self.device = torch.device("cpu")
        self.others = torch.tensor(others)

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        return tensor + self.others


def test_a_real_signal_is_a_stop_request_until_the_context_closes() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests(Processes(1)) as requests:
        assert requests.agreed_signal() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert requests.agreed_signal() == signal.SIGUSR1  # the first one counts; one process needs no agreement
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_several_processes_stop_lag_updates_after_the_signal() -> None:
    requests = StopRequests(Processes(2), lag=2)
    assert [requests.agreed_signal() for _ in range(3)] == [None, None, None]
    requests._handle(signal.SIGTERM, None)  # arrives during update 4
    decisions = [requests.agreed_signal() for _ in range(3)]  # updates 4, 5, 6
    assert decisions == [None, None, signal.SIGTERM]  # update 4's vote, read at update 6 by every process


def test_a_signal_seen_by_another_process_stops_this_one_too_and_sigterm_wins() -> None:
    requests = StopRequests(Processes(2, others=(0.0, 1.0)), lag=0)  # another process caught SIGUSR1
    assert requests.agreed_signal() == signal.SIGUSR1
    requests._handle(signal.SIGTERM, None)
    assert requests.agreed_signal() == signal.SIGTERM
