"""Faults a pretraining run meets on a cluster, through the real script (issue 21): a second run in the same folder,
a scheduler's SIGTERM / SIGUSR1 (real signals to real processes, one and two of them), runs of non-finite updates,
damaged checkpoints and failed writes. Where resume exactness is asserted, the model has the presets' drop path, 0.1.
"""

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_run_pretrain import (
    REPO_ROOT,
    checkpoint_state,
    final_weights,
    find_free_port,
    nan_losses,
    pretrain,
    tiny_model_overrides,
    write_config,
)

import caev2_hf.plots
from caev2_hf.pretraining.schedule import build_lr_scheduler, compute_training_schedule
from caev2_hf_cli.errors import UserError


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
SCRIPT = str(REPO_ROOT / "run_pretrain.py")
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# run_pretrain.py as `python run_pretrain.py ARGS` runs it, each micro-batch slowed down by SECONDS, so that a test
# can act while it trains: `python slowed_run_pretrain.py SECONDS ARGS`.
SLOWED_SCRIPT = f"""
import runpy, sys, time
from caev2_hf.pretraining.step import PretrainingStep

seconds = float(sys.argv.pop(1))
step_call = PretrainingStep.__call__

def slowed(step, batch):
    time.sleep(seconds)
    return step_call(step, batch)

PretrainingStep.__call__ = slowed
sys.argv[0] = {SCRIPT!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def with_drop_path(tmp_path: Path, name: str, **arguments) -> str:
    """A tiny-model config with the presets' drop path, 0.1: every resume below must repeat its random draws."""
    return write_config(
        tmp_path, name, config_overrides={**tiny_model_overrides(), "drop_path_rate": 0.1}, **arguments
    )


class Run:
    """run_pretrain.py in a subprocess (plain, slowed, or under torchrun with 2 processes), its output collected."""

    def __init__(self, tmp_path: Path, argv: list[str], seconds: float | None = None, processes: int = 1) -> None:
        script = [SCRIPT]
        if seconds is not None:
            (tmp_path / "slowed_run_pretrain.py").write_text(SLOWED_SCRIPT)
            script = [str(tmp_path / "slowed_run_pretrain.py"), str(seconds)]
        launcher = [sys.executable]
        if processes > 1:
            launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
                         "127.0.0.1", "--master_port", str(find_free_port())]  # fmt: skip
        self.process = subprocess.Popen(
            [*launcher, *script, *argv], env=ENVIRONMENT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, as a job step has
        )  # fmt: skip
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.process.stderr.read1(4096), b""):
            self.output += chunk

    def wait_for(self, path: Path, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.process.poll() is None, f"ended with {self.process.returncode}: {self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no {path} after {timeout} s: {self.text[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 240) -> int:
        returncode = self.process.wait(timeout)
        self._reader.join(timeout)
        return returncode

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def last_line(self) -> str:
        return self.text.strip().splitlines()[-1]


def saved_steps(output_dir: Path) -> list[int]:
    names = os.listdir(output_dir / "checkpoints") if (output_dir / "checkpoints").is_dir() else []
    return sorted(int(name.split("-")[1]) for name in names if re.fullmatch(r"checkpoint-\d+", name))


def assert_same_weights(resumed: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert resumed.keys() == expected.keys()
    for name in expected:  # tolerance: none, the resumed run recomputes the same operations on the same draws
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_live_run_keeps_its_folder_from_a_second_one_until_sigusr1_stops_it(
    tmp_path: Path, demo_image_folder: str
) -> None:
    first = with_drop_path(
        tmp_path, "run", train_dir=demo_image_folder, max_steps=200, save_steps=2, save_total_limit=200
    )
    run = Run(tmp_path, ["--config", first], seconds=0.3)
    run.wait_for(tmp_path / "run" / "checkpoints" / "checkpoint-00000002")
    # A second run, even one told to overwrite the folder, is refused while the first lives; nothing is deleted.
    second = subprocess.run(
        [sys.executable, SCRIPT, "--config", first, "--seed", "1", "--overwrite_output_dir", "true"],
        env=ENVIRONMENT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr[-3000:]
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: --output_dir {tmp_path / 'run'} is in use by another run (pid ")
    assert f"(pid {run.process.pid} on " in message and "slowed_run_pretrain.py" not in message  # argv[0]: the script
    assert "Traceback" not in second.stderr
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-00000002").is_dir()

    run.process.send_signal(signal.SIGUSR1)  # some schedulers' early warning: saved at the next update boundary
    assert run.finish() == 128 + signal.SIGUSR1, run.text[-3000:]
    stopped_at = saved_steps(tmp_path / "run")[-1]
    assert 2 < stopped_at < 200 and not (tmp_path / "run" / "final").exists()
    assert run.last_line() == (
        f"stopped: SIGUSR1: saved {tmp_path / 'run' / 'checkpoints' / f'checkpoint-{stopped_at:08d}'}; continue with "
        "--resume_from_checkpoint latest."
    )
    assert (tmp_path / "run" / ".run.lock").read_text() == ""  # released


def test_sigterm_to_the_job_saves_a_checkpoint_and_the_resumed_run_ends_with_the_same_weights(
    tmp_path: Path, demo_image_folder: str
) -> None:
    # The signal goes to the whole process group, loader workers included, as SLURM sends it to every process. The
    # interrupted run is a subprocess, the other two run here: all three on one torch thread, since the thread count
    # splits the CPU's reductions and so changes their last bits (about 1e-10 in LayerNorm biases after two updates).
    arguments = dict(
        train_dir=demo_image_folder, dataloader_num_workers=2, max_steps=8, save_steps=2, torch_num_threads=1
    )
    pretrain(["--config", with_drop_path(tmp_path, "uninterrupted", **arguments)])
    interrupted = with_drop_path(tmp_path, "interrupted", **arguments)
    run = Run(tmp_path, ["--config", interrupted], seconds=0.4)
    run.wait_for(tmp_path / "interrupted" / "checkpoints" / "checkpoint-00000002")
    os.killpg(run.process.pid, signal.SIGTERM)
    assert run.finish() == 143, run.text[-3000:]  # 128 + SIGTERM, as the shell reports a process SIGTERM ended
    stopped_at = saved_steps(tmp_path / "interrupted")[-1]
    assert 2 < stopped_at < 8, run.text[-3000:]
    checkpoint = tmp_path / "interrupted" / "checkpoints" / f"checkpoint-{stopped_at:08d}"
    assert run.last_line() == f"stopped: SIGTERM: saved {checkpoint}; continue with --resume_from_checkpoint latest."
    assert f"Stopped by SIGTERM: saved {checkpoint}." in run.text
    assert f"python {SCRIPT} --config {interrupted} --resume_from_checkpoint latest" in run.text  # the command
    assert "DataLoader worker" not in run.text and "Traceback" not in run.text
    assert checkpoint_state(tmp_path / "interrupted", stopped_at)["data_positions"][0]["batches"] == stopped_at

    pretrain(["--config", interrupted, "--resume_from_checkpoint", "latest"])
    assert_same_weights(final_weights(tmp_path / "interrupted"), final_weights(tmp_path / "uninterrupted"))


def process_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker of `rank` (a child of the launcher whose environment says RANK=rank)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environment:
            return int(entry)
    raise AssertionError(f"no worker of rank {rank} under {launcher_pid}")


@pytest.mark.slow  # three torchrun launches: about a minute on 2 CPU cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers through /proc")
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_update_and_resumes_exactly(
    tmp_path: Path, demo_tar_shards: list[str]
) -> None:
    arguments = dict(data_files=demo_tar_shards, per_device_train_batch_size=2, max_steps=10, save_steps=2)
    reference = Run(tmp_path, ["--config", with_drop_path(tmp_path, "uninterrupted", **arguments)], processes=2)
    assert reference.finish() == 0, reference.text[-3000:]
    interrupted = with_drop_path(tmp_path, "interrupted", **arguments)
    run = Run(tmp_path, ["--config", interrupted], seconds=0.4, processes=2)
    run.wait_for(tmp_path / "interrupted" / "checkpoints" / "checkpoint-00000002")
    os.kill(process_of_rank(run.process.pid, rank=1), signal.SIGTERM)  # rank 0 never receives it
    assert run.finish() != 0  # torchrun reports its workers' 143 as a failure
    assert "stopped: SIGTERM: saved" in run.text and "Stopped by SIGTERM" in run.text, run.text[-3000:]
    stopped_at = saved_steps(tmp_path / "interrupted")[-1]
    assert 2 < stopped_at < 10
    positions = checkpoint_state(tmp_path / "interrupted", stopped_at)["data_positions"]
    assert [position["batches"] for position in positions] == [stopped_at, stopped_at]  # the same update on both

    resumed = Run(tmp_path, ["--config", interrupted, "--resume_from_checkpoint", "latest"], processes=2)
    assert resumed.finish() == 0, resumed.text[-3000:]
    assert_same_weights(final_weights(tmp_path / "interrupted"), final_weights(tmp_path / "uninterrupted"))


def test_a_checkpoint_due_during_skipped_updates_waits_for_an_applied_one(
    tmp_path: Path, demo_image_folder: str, monkeypatch
) -> None:
    nan_losses(monkeypatch, bad_calls={3})  # update 4 is skipped
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=6, save_steps=2, save_total_limit=5)
    pretrain(["--config", config])
    assert saved_steps(tmp_path / "config") == [2, 5, 6]  # the checkpoint due at 4 came at 5
    assert checkpoint_state(tmp_path / "config", 5)["skipped_steps"] == 1


def learning_rates_of(schedule, update_steps: list[int]) -> list[float]:
    """The lr scheduler's lr after each of `update_steps` updates, for a run of `schedule`."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=schedule.learning_rate)
    scheduler = build_lr_scheduler(optimizer, schedule, min_learning_rate=1e-5)
    rates = {}
    for update in range(1, max(update_steps) + 1):
        optimizer.step()
        scheduler.step()
        rates[update] = scheduler.get_last_lr()[0]
    return [rates[update] for update in update_steps]


def test_a_diverging_run_stops_in_one_line_naming_its_last_good_checkpoint_and_resumes_at_a_lower_lr(
    tmp_path: Path, demo_image_folder: str, caplog
) -> None:
    # The scaled lr is 1000 x 4 / 12 = 333, reached through 10 updates of warmup: the weights blow up a few updates in.
    arguments = dict(learning_rate=1000, learning_rate_batch_size=12, warmup_steps=10, max_steps=12, save_steps=2,
                     save_total_limit=3, max_consecutive_skipped_steps=4)  # fmt: skip
    config = with_drop_path(tmp_path, "config", train_dir=demo_image_folder, **arguments)
    with pytest.raises(UserError) as stop:
        pretrain(["--config", config])
    message = str(stop.value)
    first_skipped = int(re.search(r"4 updates in a row, from update (\d+) on, had a non-finite", message)[1])
    good = [step for step in range(2, first_skipped - 1, 2)]  # written before the weights that gave the streak
    assert good and "\n" not in message
    last_good = tmp_path / "config" / "checkpoints" / f"checkpoint-{good[-1]:08d}"
    assert message.endswith(
        f"The last good checkpoint is {last_good}: lower --learning_rate (or prefer bf16 to fp16, or check the data) "
        "and continue from it with --resume_from_checkpoint latest; the new learning rate applies there."
    )
    # None written during the streak; the one whose weights started it (if one was due then) is set aside, not
    # deleted, after rotation had kept it as one of the last 3.
    set_aside = [f"checkpoint-{first_skipped - 1:08d}.nonfinite"] if (first_skipped - 1) % 2 == 0 else []
    kept = good[-(3 - len(set_aside)) :]
    assert saved_steps(tmp_path / "config") == kept
    assert all(checkpoint_state(tmp_path / "config", step)["skipped_steps"] == 0 for step in kept)
    assert sorted(os.listdir(tmp_path / "config" / "checkpoints"))[len(kept) :] == set_aside

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="run_pretrain"):
        pretrain(["--config", config, "--resume_from_checkpoint", "latest", "--learning_rate", "0.003"])
    assert f"The peak learning rate changed since the checkpoint (333.3 -> 0.001): the schedule continues from " \
        f"update {good[-1]} with the new peak." in caplog.text  # fmt: skip
    history = json.loads((tmp_path / "config" / "loss_history.json").read_text())
    resumed_rows = [row for row in history if row["step"] > good[-1]]
    assert [row["step"] for row in resumed_rows] == list(range(good[-1] + 1, 13))
    schedule = compute_training_schedule(4, 1, 1, 0.003, 12, max_steps=12, warmup_steps=10)
    expected = learning_rates_of(schedule, [row["step"] for row in resumed_rows])
    np.testing.assert_allclose([row["metrics"]["learning_rate"] for row in resumed_rows], expected, rtol=1e-12)
    assert all(row["metrics"]["skipped_steps"] == 0 for row in resumed_rows)  # no update skipped at the lower lr
    assert all(torch.isfinite(tensor).all() for tensor in final_weights(tmp_path / "config").values())


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_checkpoint_without_its_rng_states_is_refused_in_one_line(
    tmp_path: Path, demo_image_folder: str, damage: str
) -> None:
    config = with_drop_path(tmp_path, "config", train_dir=demo_image_folder, max_steps=4, save_steps=2)
    pretrain(["--config", config])
    rng_states = tmp_path / "config" / "checkpoints" / "checkpoint-00000004" / "random_states_0.pkl"
    if damage == "truncated":
        cut_short(rng_states)
    else:
        rng_states.unlink()
    with pytest.raises(UserError) as refusal:
        pretrain(["--config", config, "--resume_from_checkpoint", "latest", "--max_steps", "6"])
    reason = "is missing" if damage == "missing" else "is damaged ("
    earlier = tmp_path / "config" / "checkpoints" / "checkpoint-00000002"
    assert str(refusal.value).startswith(
        f"Cannot resume from {rng_states.parent}: random_states_0.pkl {reason}"
    ) and str(refusal.value).endswith(
        "so the resumed run's random draws (drop path) would not repeat the interrupted run's. Resume from the "
        f"checkpoint before it (--resume_from_checkpoint {earlier})."
    )
    assert "\n" not in str(refusal.value)


def test_latest_and_rotation_skip_an_older_damaged_checkpoint(tmp_path: Path, demo_image_folder: str, caplog) -> None:
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=4, save_steps=2, save_total_limit=2)
    pretrain(["--config", config])
    older = tmp_path / "config" / "checkpoints" / "checkpoint-00000002"
    cut_short(older / "training_state.json")
    with caplog.at_level(logging.WARNING):
        pretrain(["--config", config, "--resume_from_checkpoint", "latest", "--max_steps", "8"])
    assert f"Skipping {older}: its training_state.json is damaged" in caplog.text
    assert checkpoint_state(tmp_path / "config", 8)["step"] == 8  # resumed from 4, not stopped by 2
    # Rotation kept the last 2 intact ones and left the damaged one alone.
    assert sorted(os.listdir(tmp_path / "config" / "checkpoints")) == [
        "checkpoint-00000002", "checkpoint-00000006", "checkpoint-00000008"
    ]  # fmt: skip


def test_a_failed_checkpoint_write_ends_in_one_line_and_the_previous_checkpoint_resumes(
    tmp_path: Path, demo_image_folder: str, monkeypatch
) -> None:
    original_save, calls = torch.save, itertools.count()

    def disk_full_at_the_second_checkpoint(obj, f, *args, **kwargs):
        if "checkpoint-00000004" in str(f) and next(calls) == 0:  # torch.save's own words on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4416 vs 4304")
        return original_save(obj, f, *args, **kwargs)

    config = with_drop_path(tmp_path, "config", train_dir=demo_image_folder, max_steps=6, save_steps=2)
    with monkeypatch.context() as patched:
        patched.setattr(torch, "save", disk_full_at_the_second_checkpoint)
        with pytest.raises(UserError) as failure:
            pretrain(["--config", config])
    checkpoints = tmp_path / "config" / "checkpoints"
    assert str(failure.value) == (
        f"Could not write checkpoint-00000004 in {checkpoints} ([enforce fail at inline_container.cc:626] . "
        f"unexpected pos 4416 vs 4304): the disk may be full or the folder not writable; the previous checkpoint, "
        f"{checkpoints / 'checkpoint-00000002'}, is intact. Free space or fix the folder, then continue with "
        "--resume_from_checkpoint latest."
    )
    assert os.listdir(checkpoints) == ["checkpoint-00000002"]  # no half-written folder left
    pretrain(["--config", config, "--resume_from_checkpoint", "latest"])  # once the disk has room again
    assert saved_steps(tmp_path / "config") == [4, 6] and (tmp_path / "config" / "final").is_dir()


def test_a_failed_loss_png_write_is_a_warning_and_the_run_goes_on(
    tmp_path: Path, demo_image_folder: str, monkeypatch, caplog
) -> None:
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(caev2_hf.plots, "save_figure", no_space)
    with caplog.at_level(logging.WARNING):
        pretrain(["--config", write_config(tmp_path, train_dir=demo_image_folder, max_steps=2, save_steps=1)])
    assert caplog.text.count("Could not write the loss curves in") == 2  # at both checkpoints
    assert "[Errno 28] No space left on device); the run goes on." in caplog.text
    assert (tmp_path / "config" / "final" / "config.json").is_file()
