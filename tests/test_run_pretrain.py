"""Tests for run_pretrain.py: the real entry point on tiny models and local images, offline, a few CPU steps each."""

import importlib.util
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import build_tiny_config, find_free_port
from fake_hub import FakeHfApi, install_fake_hub
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoImageProcessor, AutoModel

from caev2_hf import CAEv2Config, CAEv2ForPreTraining, CAEv2Model
from caev2_hf.data.demo import write_demo_image_folder
from caev2_hf.pretraining.checkpointing import read_training_state
from caev2_hf.pretraining.step import PretrainingStep, build_accelerator
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import parse_arguments
from caev2_hf_cli.pretraining import ARGUMENT_CLASSES, MASK_LAYOUT_ARGUMENTS


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_SPEC = importlib.util.spec_from_file_location("run_pretrain", REPO_ROOT / "run_pretrain.py")
run_pretrain = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(run_pretrain)


def pretrain(argv: list[str]) -> None:
    """`python run_pretrain.py ARGV` in this process: the script's parse and checks, then its main."""
    run_pretrain.main(*run_pretrain.parse_and_check_arguments(argv))


def parse_pretraining_arguments(argv: list[str]) -> tuple:
    """The arguments alone, unchecked."""
    return parse_arguments(ARGUMENT_CLASSES, argv)


def tiny_model_overrides() -> dict:
    """conftest's tiny model (one regressor block) as overrides of the "base" preset, whose values are the defaults."""
    overrides = build_tiny_config(regressor_num_hidden_layers=1).to_diff_dict()
    for key in ("model_type", "transformers_version"):
        overrides.pop(key, None)
    return overrides


def write_config(tmp_path: Path, name: str = "config", **arguments) -> str:
    values = {
        "model_preset": "base",
        "config_overrides": tiny_model_overrides(),
        "output_dir": str(tmp_path / name),
        "dataloader_num_workers": 0,
        "shuffle_buffer_size": 8,
        "mask_min_num_patches": 2,  # blocks on the tiny model's 4x4 grid
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "learning_rate_batch_size": 4,
        "max_steps": 4,
        "warmup_steps": 1,
        "logging_steps": 1,
        "save_steps": 2,
        "save_total_limit": 2,
        "mixed_precision": "no",
        "report_to": "none",
        **arguments,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def run_until_preempted(monkeypatch: pytest.MonkeyPatch, config_path: str, step_calls: int) -> None:
    """Runs `run_pretrain.py --config config_path` and stops it as a preemption would, with a KeyboardInterrupt at
    the start of its step call number `step_calls` (counted from 0, one per micro-batch)."""
    original_call, calls = PretrainingStep.__call__, itertools.count()

    def crash(step, batch):
        if next(calls) == step_calls:
            raise KeyboardInterrupt("simulated preemption")
        return original_call(step, batch)

    with monkeypatch.context() as patched:
        patched.setattr(PretrainingStep, "__call__", crash)
        with pytest.raises(KeyboardInterrupt):
            pretrain(["--config", config_path])


def final_weights(output_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(output_dir, "final", "pretraining", "model.safetensors"))


def checkpoint_state(output_dir: str | Path, step: int) -> dict:
    return read_training_state(os.path.join(output_dir, "checkpoints", f"checkpoint-{step:08d}"))


def test_demo_config_runs_end_to_end_and_its_final_folder_loads(tmp_path: Path) -> None:
    output_dir, image_dir = tmp_path / "demo_output", tmp_path / "demo_images"
    pretrain(
        ["--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--output_dir", str(output_dir),
         "--demo_dir", str(image_dir), "--num_demo_images", "16", "--per_device_train_batch_size", "4",
         "--max_steps", "3", "--warmup_steps", "1", "--logging_steps", "1", "--save_steps", "1"]
    )  # fmt: skip
    assert len(list(image_dir.rglob("*.jpg"))) == 16
    assert sorted(os.listdir(output_dir / "checkpoints")) == ["checkpoint-00000002", "checkpoint-00000003"]
    encoder = AutoModel.from_pretrained(output_dir / "final")
    assert isinstance(encoder, CAEv2Model)
    trained = final_weights(output_dir)
    for name, parameter in encoder.state_dict().items():
        torch.testing.assert_close(parameter, trained[f"caev2.{name}"], rtol=0, atol=0)
    processor = AutoImageProcessor.from_pretrained(output_dir / "final")
    assert processor.crop_size == {"height": 64, "width": 64}
    card = (output_dir / "final" / "README.md").read_text()
    assert "randomly initialised teacher" in card and "3 updates at an effective batch of 4" in card
    (run_logs,) = (output_dir / "logs").iterdir()  # one subfolder per run
    events = EventAccumulator(str(run_logs))
    events.Reload()
    for name in ("loss", "visible_loss", "masked_loss", "cls_loss", "learning_rate", "grad_norm",
                 "images_per_second", "skipped_images", "skipped_steps"):  # fmt: skip
        values = [event.value for event in events.Scalars(f"train/{name}")]
        assert len(values) == 3 and all(value == value for value in values), name
    assert [event.value for event in events.Scalars("train/skipped_steps")] == [0, 0, 0]
    assert 0 < events.Scalars("train/loss")[-1].value < 2  # cosine distance lies in [0, 2]


PRESET_DROP_PATH = {"drop_path_rate": CAEv2Config.from_preset("base").drop_path_rate}  # 0.1, as every preset


@pytest.mark.parametrize("source, num_workers", [("folder", 0), ("folder", 2), ("shards", 0), ("shards", 2)])
def test_resume_matches_uninterrupted_run(
    tmp_path: Path,
    demo_image_folder: str,
    demo_tar_shards: list[str],
    monkeypatch,
    caplog,
    source: str,
    num_workers: int,
) -> None:
    # 16 (folder) or 32 (shards) images, 2 micro-batches of 4 per update: update 3 ends inside the second epoch
    # (folder) or first epoch (shards), and the crash below hits the middle of update 5's accumulation, after the
    # checkpoint at 3 and the log at 4.
    # Drop path as the presets have it: its draws come from the RNG the checkpoint restores, so the resumed run must
    # leave that RNG exactly where the uninterrupted run has it (starting the loader takes no draw from it).
    data = {"train_dir": demo_image_folder} if source == "folder" else {"data_files": demo_tar_shards}
    arguments = dict(gradient_accumulation_steps=2, max_steps=6, save_steps=3, dataloader_num_workers=num_workers,
                     logging_steps=2, report_to="tensorboard",
                     config_overrides={**tiny_model_overrides(), **PRESET_DROP_PATH})  # fmt: skip
    uninterrupted = write_config(tmp_path, "uninterrupted", **data, **arguments)
    interrupted = write_config(tmp_path, "interrupted", **data, **arguments)
    pretrain(["--config", uninterrupted])

    with caplog.at_level("WARNING", logger="run_pretrain"):
        run_until_preempted(monkeypatch, interrupted, step_calls=9)  # the middle of update 5's accumulation
    assert "Interrupted: the last checkpoint is" in caplog.text and "checkpoint-00000003" in caplog.text
    pretrain(["--config", interrupted, "--resume_from_checkpoint", "latest"])

    # The logs: the checkpoint at 3 closes a window too, so the resumed run logs the same windows (2, 3, 4, 6), and
    # TensorBoard hides what the interrupted run logged after its checkpoint (update 4, before the crash).
    histories = [
        json.loads((tmp_path / name / "loss_history.json").read_text()) for name in ("uninterrupted", "interrupted")
    ]
    assert [row["step"] for row in histories[1]] == [row["step"] for row in histories[0]] == [2, 3, 4, 6]
    for row, other in zip(*histories, strict=True):
        assert row["metrics"]["loss"] == pytest.approx(other["metrics"]["loss"], rel=1e-6)
    (interrupted_logs,) = (tmp_path / "interrupted" / "logs").iterdir()
    events = EventAccumulator(str(interrupted_logs))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [2, 3, 4, 6]

    expected, resumed = final_weights(tmp_path / "uninterrupted"), final_weights(tmp_path / "interrupted")
    assert expected.keys() == resumed.keys()
    for name in expected:  # tolerance: none, the resumed run recomputes the same operations in the same order
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)
    positions = checkpoint_state(tmp_path / "interrupted", 6)["data_positions"]
    assert positions == checkpoint_state(tmp_path / "uninterrupted", 6)["data_positions"]
    # 12 batches of 4. Folder, no worker: one lane of 16 images, so the last batch taken ends epoch 2 (the next comes
    # from epoch 3). Folder, 2 workers: two lanes of 8 images taking turns, 6 batches each, also ending epoch 2.
    # Shards, no worker: one lane of 32 images, 8 batches an epoch: epoch 1, its fourth batch. Shards, 2 workers: two
    # lanes of 16 images, each 6 batches in: epoch 1, its second batch.
    expected = {
        ("folder", 0): {"epoch": 3, "lanes": [{"epoch": 2, "start": 12, "end": 16, "end_of_epoch": True}]},
        ("folder", 2): {"epoch": 3, "lanes": [{"epoch": 2, "start": 4, "end": 8, "end_of_epoch": True}] * 2},
        ("shards", 0): {"epoch": 1, "lanes": [{"epoch": 1, "start": 12, "end": 16, "end_of_epoch": False}]},
        ("shards", 2): {"epoch": 1, "lanes": [{"epoch": 1, "start": 4, "end": 8, "end_of_epoch": False}] * 2},
    }[source, num_workers]
    assert positions == [{**expected, "batches": 12}]


LEGACY_RUN = REPO_ROOT / "tests" / "fixtures" / "legacy" / "pretraining_run"  # tests/fixtures/make_legacy_run.py


def test_a_checkpoint_written_by_earlier_code_resumes_exactly(tmp_path: Path, demo_image_folder: str, caplog) -> None:
    # Written before the stream's position was a named type, the schedule was called so, and the mask layout was a
    # data argument: its training_state.json holds the position as plain JSON and the schedule under "numbers", and
    # its arguments the layout among the model overrides. The same command, the layout given as data arguments,
    # resumes it: drop path 0.1 and all, it ends on the weights the earlier code's run ended on.
    arguments = read_training_state(str(LEGACY_RUN / "checkpoints" / "checkpoint-00000003"))["arguments"]
    overrides = dict(arguments["config_overrides"])
    layout = {name: overrides.pop(name) for name in MASK_LAYOUT_ARGUMENTS if name in overrides}
    assert layout == {"mask_min_num_patches": 2} and overrides["drop_path_rate"] == 0.1
    output_dir = tmp_path / "run"
    shutil.copytree(LEGACY_RUN / "checkpoints", output_dir / "checkpoints")
    values = {**arguments, **layout, "config_overrides": overrides, "train_dir": demo_image_folder,
              "output_dir": str(output_dir), "resume_from_checkpoint": "latest"}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    with caplog.at_level("INFO", logger="run_pretrain"):
        pretrain(["--config", str(tmp_path / "run.yaml")])
    assert "Resumed from" in caplog.text and "schedule changed" not in caplog.text  # "numbers" read as the schedule
    expected = load_file(LEGACY_RUN / "final" / "pretraining" / "model.safetensors")
    resumed = final_weights(output_dir)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_folder_saved_with_its_mask_layout_says_when_the_run_lays_masks_out_otherwise(
    tmp_path: Path, demo_image_folder: str, caplog
) -> None:
    start = str(LEGACY_RUN / "final" / "pretraining")  # its config.json: mask_min_num_patches 2, block
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=1, model_name_or_path=start)
    with caplog.at_level("WARNING", logger="run_pretrain"):
        pretrain(["--config", config, "--mask_min_num_patches", "3"])
    assert "was pretrained with --mask_min_num_patches 2 (its config.json" in caplog.text
    assert "this run uses --mask_min_num_patches 3. Pass --mask_min_num_patches 2" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="run_pretrain"):
        pretrain(["--config", config, "--overwrite_output_dir", "true"])  # write_config's layout: the folder's
    assert "was pretrained with" not in caplog.text
    saved = json.loads((tmp_path / "config" / "final" / "pretraining" / "config.json").read_text())
    assert not set(MASK_LAYOUT_ARGUMENTS) & set(saved) and saved["num_masking_patches"] == 6  # saved again without


class ConcatenatedStreams:
    """One process's view of a two-process run: each batch is rank 0's batch followed by rank 1's."""

    def __init__(self, streams: list) -> None:
        self.streams = streams

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batches = [next(stream) for stream in self.streams]
        keys = ("pixel_values", "bool_masked_pos", "flip", "jitter_factors", "jitter_order")  # + device augmentation
        merged = {key: torch.cat([batch[key] for batch in batches]) for key in keys}
        return {**merged, "num_skipped_images": sum(batch["num_skipped_images"] for batch in batches)}

    @property
    def position(self):
        return self.streams[0].position


def raw_images(stream) -> set[bytes | str]:
    """The images a rank's stream reads (encoded bytes, or file paths of an image folder), from its part of the data."""
    return {example["image"]["bytes"] or example["image"]["path"] for example in stream.dataloader.dataset.dataset}


@pytest.mark.parametrize("source", ["shards", "folder"])
def test_two_processes_match_one_process_with_the_same_global_batch(
    tmp_path: Path, demo_tar_shards: list[str], demo_image_folder: str, monkeypatch, source: str
) -> None:
    # Exactly comparable: rank r's crops and masks depend only on (seed, r, epoch, position), so the one-process
    # run below can be fed the very batches the two ranks drew; no dropout, drop path 0, no BatchNorm.
    data = {"data_files": demo_tar_shards} if source == "shards" else {"train_dir": demo_image_folder}
    two = write_config(tmp_path, "two_processes", **data, per_device_train_batch_size=2, max_steps=3, save_steps=3)
    result = torchrun(tmp_path, str(REPO_ROOT / "run_pretrain.py"), ["--config", two])
    assert result.returncode == 0, result.stderr[-4000:]
    last_batch = {"epoch": 0, "start": 4, "end": 6, "end_of_epoch": False}  # raw examples 4 and 5 of epoch 0
    assert (
        checkpoint_state(tmp_path / "two_processes", 3)["data_positions"]
        == [
            {"epoch": 0, "batches": 3, "lanes": [last_batch]},
        ]
        * 2
    )  # both ranks ran the same number of updates on the same number of batches

    model_args, data_args, training_args = parse_pretraining_arguments(["--config", two])
    config = CAEv2Config.from_preset("base", **model_args.config_overrides)
    streams = [run_pretrain.open_train_stream(data_args, config, 0, 2, rank, 2) for rank in (0, 1)]
    rank_images = [raw_images(stream) for stream in streams]
    num_images = 32 if source == "shards" else 16
    assert not rank_images[0] & rank_images[1] and len(rank_images[0] | rank_images[1]) == num_images
    monkeypatch.setattr(run_pretrain, "open_train_stream", lambda *args, **kwargs: ConcatenatedStreams(streams))
    pretrain(["--config", two, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "one")])

    one_process, two_processes = final_weights(tmp_path / "one"), final_weights(tmp_path / "two_processes")
    # The regressor's key-LayerNorm bias shifts every key alike, to which softmax is blind: its true gradient is 0
    # and Adam turns the rounding noise left in it into steps of +-lr, different for any summation order.
    compared = [name for name in one_process if not name.endswith("layernorm_key.bias")]
    assert len(compared) == len(one_process) - 1
    for name in compared:  # tolerance: float32 sums in another order (DDP averages two half-batch gradients)
        torch.testing.assert_close(two_processes[name], one_process[name], rtol=0, atol=1e-6, msg=name)


PREEMPTED_RUN = """
import itertools, runpy, sys
from caev2_hf.pretraining.step import PretrainingStep

calls, original_call = itertools.count(), PretrainingStep.__call__

def preempted(step, batch):
    if next(calls) == {step_calls}:
        raise KeyboardInterrupt("simulated preemption")
    return original_call(step, batch)

PretrainingStep.__call__ = preempted
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def torchrun(tmp_path: Path, script: str, arguments: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 SCRIPT ARGUMENTS` on this machine's CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(find_free_port()), script, *arguments]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.parametrize("source, num_workers", [("folder", 0), ("shards", 2)])
def test_two_processes_resume_as_they_would_have_run_on(
    tmp_path: Path, demo_image_folder: str, demo_tar_shards: list[str], source: str, num_workers: int
) -> None:
    # Both ranks are stopped in the middle of update 5's accumulation (after the checkpoint at 3), as a preemption
    # stops a job, and resumed with torchrun; drop path 0.1, each rank drawing its own.
    data = {"train_dir": demo_image_folder} if source == "folder" else {"data_files": demo_tar_shards}
    overrides = {**tiny_model_overrides(), **PRESET_DROP_PATH}
    arguments = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6, save_steps=3,
                     dataloader_num_workers=num_workers, config_overrides=overrides, **data)  # fmt: skip
    uninterrupted = write_config(tmp_path, "uninterrupted", **arguments)
    interrupted = write_config(tmp_path, "interrupted", **arguments)
    script = str(REPO_ROOT / "run_pretrain.py")
    assert torchrun(tmp_path, script, ["--config", uninterrupted]).returncode == 0

    (tmp_path / "preempted.py").write_text(PREEMPTED_RUN.format(step_calls=9, script=script))
    stopped = torchrun(tmp_path, str(tmp_path / "preempted.py"), ["--config", interrupted])
    assert stopped.returncode != 0 and "Interrupted: the last checkpoint is" in stopped.stderr, stopped.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "interrupted" / "checkpoints")) == ["checkpoint-00000003"]
    resumed = torchrun(tmp_path, script, ["--config", interrupted, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, ended = final_weights(tmp_path / "uninterrupted"), final_weights(tmp_path / "interrupted")
    assert expected.keys() == ended.keys()
    for name in expected:  # tolerance: none, as for one process
        torch.testing.assert_close(ended[name], expected[name], rtol=0, atol=0, msg=name)
    positions = checkpoint_state(tmp_path / "interrupted", 6)["data_positions"]
    assert positions == checkpoint_state(tmp_path / "uninterrupted", 6)["data_positions"] and len(positions) == 2


def nan_losses(monkeypatch, bad_calls: set[int] | None) -> None:
    """Makes the loss NaN on the given forward calls (every call when None)."""
    original_forward, calls = CAEv2ForPreTraining.forward, itertools.count()

    def forward(self, *args, **kwargs):
        outputs = original_forward(self, *args, **kwargs)
        if bad_calls is None or next(calls) in bad_calls:
            outputs.loss = outputs.loss * float("nan")
        return outputs

    monkeypatch.setattr(CAEv2ForPreTraining, "forward", forward)


def test_nonfinite_loss_skips_the_update_and_counts_it(tmp_path: Path, demo_image_folder: str, monkeypatch) -> None:
    nan_losses(monkeypatch, bad_calls={1})
    pretrain(["--config", write_config(tmp_path, train_dir=demo_image_folder, max_steps=3, save_steps=3)])
    assert checkpoint_state(tmp_path / "config", 3)["skipped_steps"] == 1
    optimizer_state = torch.load(tmp_path / "config" / "checkpoints" / "checkpoint-00000003" / "optimizer.bin")
    assert {int(state["step"]) for state in optimizer_state["state"].values()} == {2}  # 3 updates, 1 skipped
    assert all(torch.isfinite(tensor).all() for tensor in final_weights(tmp_path / "config").values())


def test_nonfinite_losses_in_a_row_stop_the_run(tmp_path: Path, demo_image_folder: str, monkeypatch) -> None:
    nan_losses(monkeypatch, bad_calls=None)
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=4, max_consecutive_skipped_steps=2)
    with pytest.raises(UserError, match="2 updates in a row, from update 1 on, had a non-finite loss"):
        pretrain(["--config", config])


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def test_unusable_images_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    folder = Path(write_demo_image_folder(str(tmp_path / "images"), num_images=5, image_size=32))
    photo = Image.open(next(folder.rglob("*.jpg")))
    files = {
        "a_truncated.jpg": encode(photo, "JPEG")[:200],
        "b_not_an_image.jpg": b"not an image",
        "c_tiny.png": encode(Image.new("RGB", (1, 1)), "PNG"),  # usable: RandomResizedCrop resizes it
        "d_cmyk.jpg": encode(photo.convert("CMYK"), "JPEG"),
        "e_gray.png": encode(photo.convert("L"), "PNG"),
        "f_rgba.png": encode(photo.convert("RGBA"), "PNG"),
        "g_16_bit.png": encode(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG"),
    }
    for name, payload in files.items():
        (folder / "china" / name).write_bytes(payload)
    # 10 usable images, batches of 4: one epoch is 2 batches and a dropped tail of 2; the 2 unusable files are
    # counted wherever the shuffle put them, the dropped tail included.
    config = write_config(tmp_path, train_dir=str(folder), shuffle_buffer_size=1, max_steps=2, save_steps=2)
    pretrain(["--config", config])
    assert checkpoint_state(tmp_path / "config", 2)["skipped_images"] == 2
    skips = [record.getMessage() for record in caplog.records if "Skipping an unusable image" in record.getMessage()]
    assert len(skips) == 2 and not any("BytesIO" in message for message in skips)
    assert sorted(Path(message.split()[4].rstrip(":")).name for message in skips) == [
        "a_truncated.jpg",
        "b_not_an_image.jpg",
    ]
    assert "2 unusable images were skipped in all" in caplog.text  # the total, at the end of the run


def test_empty_dataset_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no image files"):
        pretrain(["--config", write_config(tmp_path, train_dir=str(tmp_path / "empty"))])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_of_only_unreadable_images_is_reported(tmp_path: Path, num_workers: int) -> None:
    for index in range(5):  # a batch of 2 for each worker, so that only reading them finds them all unusable
        (tmp_path / "broken" / "class").mkdir(parents=True, exist_ok=True)
        (tmp_path / "broken" / "class" / f"{index}.jpg").write_bytes(b"not an image")
    config = write_config(
        tmp_path, train_dir=str(tmp_path / "broken"), dataloader_num_workers=num_workers, per_device_train_batch_size=2
    )
    with pytest.raises(UserError) as raised:
        pretrain(["--config", config])
    message = str(raised.value)  # one line, even from a loader worker, whose traceback PyTorch would prepend
    assert message.startswith("A whole pass (epoch 0) over loader worker") and "every image was unreadable" in message
    assert "\n" not in message


def cut_shard(source: str, destination: Path, readable_examples: int) -> int:
    """Writes a copy of a demo shard cut short in the middle of the image of example `readable_examples` (counted
    from 0), as an interrupted copy leaves it: the examples before it read, then `tarfile.ReadError: unexpected end
    of data`. Returns how many bytes of that image are missing."""
    with tarfile.open(source) as archive:
        image = [member for member in archive.getmembers() if member.name.endswith(".jpg")][readable_examples]
    destination.write_bytes(Path(source).read_bytes()[: image.offset_data + image.size // 2])
    return image.size - image.size // 2


@pytest.mark.parametrize(
    "case, readable_examples, extra, checkpoints",
    [
        # the first shard, cut in its first image: `datasets` reads it to learn the columns, before any batch
        ("start", 0, {}, []),
        # a second shard cut in its first image, read by loader worker 1 for the first update's second micro-batch
        ("start, in a loader worker", 0, {"dataloader_num_workers": 2, "gradient_accumulation_steps": 2}, []),
        # one shard cut in its seventh image, 2 images per batch, a shuffle buffer of one: update 1 is saved, then
        # the cut stops the pass (the second batch is held back until a third is full, as every batch is)
        ("mid-run", 6, {"shuffle_buffer_size": 1}, ["checkpoint-00000001"]),
    ],
)
def test_a_truncated_shard_ends_the_run_with_one_line_naming_it(
    tmp_path: Path, demo_tar_shards: list[str], case: str, readable_examples: int, extra: dict, checkpoints: list[str]
) -> None:
    cut = str(tmp_path / "cut.tar")
    missing = cut_shard(demo_tar_shards[1], tmp_path / "cut.tar", readable_examples)
    data_files = [demo_tar_shards[0], cut] if "worker" in case else [cut]
    config = write_config(tmp_path, data_files=data_files, per_device_train_batch_size=2, max_steps=8, save_steps=1,
                          **extra)  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "run_pretrain.py"), "--config", config],
                            env=environment, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]  # on a line of its own
    reason = f"member 00001_{readable_examples:05d}.jpg ends {missing} bytes past the end"
    assert line == (
        f"error: A .tar shard of --data_files cannot be read to the end (cut short, or no tar archive): {cut} "
        f"({reason} of the file). Copy or download it again, then run the same command with --resume_from_checkpoint "
        "latest (the run continues from its last checkpoint)."
    )
    saved = tmp_path / "config" / "checkpoints"
    assert (sorted(os.listdir(saved)) if saved.is_dir() else []) == checkpoints


def test_column_without_images_is_reported(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist([{"text": "a caption"}] * 4), tmp_path / "captions.parquet")
    config = write_config(tmp_path, data_files=[str(tmp_path / "captions.parquet")])
    with pytest.raises(ValueError, match=r"No image column among the dataset's columns \['text'\]"):
        pretrain(["--config", config])


def test_fewer_shards_than_processes_is_reported(tmp_path: Path, demo_tar_shards: list[str]) -> None:
    model_args, data_args, _ = parse_pretraining_arguments(["--config", write_config(tmp_path)])
    data_args.data_files = demo_tar_shards[:1]
    config = CAEv2Config.from_preset("base", **model_args.config_overrides)
    with pytest.raises(ValueError, match="1 shards cannot feed 2 processes"):
        run_pretrain.open_train_stream(data_args, config, 0, 4, process_index=0, num_processes=2)


def test_resume_from_a_missing_checkpoint_is_reported(tmp_path: Path, demo_image_folder: str) -> None:
    config = write_config(tmp_path, train_dir=demo_image_folder)
    with pytest.raises(UserError, match="is not a complete checkpoint"):
        pretrain(["--config", config, "--resume_from_checkpoint", str(tmp_path / "no-such-checkpoint")])


@pytest.fixture
def fake_hub(monkeypatch) -> type[FakeHfApi]:
    return install_fake_hub(monkeypatch)


ENCODER_FILES = ["README.md", "config.json", "configuration_caev2.py", "model.safetensors", "modeling_caev2.py",
                 "preprocessor_config.json"]  # fmt: skip


def test_push_to_hub_sends_the_encoder_folder_to_a_private_repository(
    tmp_path: Path, demo_image_folder: str, fake_hub
) -> None:
    """Issue 21 #7: private by default, final/pretraining/ (with the CLIP teacher) left out, and a card that names the
    data without the machine's absolute path."""
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=1)
    pretrain(["--config", config, "--push_to_hub", "--hub_model_id", "me/caev2-test"])
    assert [call for call, _ in fake_hub.calls][:3] == ["init", "whoami", "auth_check"]  # asked before training
    (create,) = fake_hub.named("create_repo")
    assert (create["repo_id"], create["private"]) == ("me/caev2-test", True)
    (upload,) = fake_hub.named("upload_folder")
    assert upload["files"] == ENCODER_FILES
    card = (tmp_path / "config" / "final" / "README.md").read_text()
    folder_name = os.path.basename(demo_image_folder)
    assert f"on a local image folder (`{folder_name}`): 1 updates" in card and demo_image_folder not in card


def test_push_to_hub_public_with_the_pretraining_model_only_when_asked(
    tmp_path: Path, demo_image_folder: str, fake_hub
) -> None:
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=1)
    pretrain(["--config", config, "--push_to_hub", "--hub_model_id", "me/caev2-test", "--hub_private_repo", "false",
              "--hub_include_pretraining", "true"])  # fmt: skip
    (create,) = fake_hub.named("create_repo")
    (upload,) = fake_hub.named("upload_folder")
    assert create["private"] is False
    assert {"pretraining/config.json", "pretraining/model.safetensors", *ENCODER_FILES} <= set(upload["files"])


def test_a_failed_upload_after_training_says_how_to_send_final(
    tmp_path: Path, demo_image_folder: str, fake_hub
) -> None:
    fake_hub.upload_error = TimeoutError("timed out")
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=1)
    with pytest.raises(UserError) as failed:
        pretrain(["--config", config, "--push_to_hub", "--hub_model_id", "me/caev2-test"])
    final_dir = str(tmp_path / "config" / "final")
    assert str(failed.value).startswith(f"Cannot upload {final_dir} to me/caev2-test: the Hub cannot be reached")
    assert str(failed.value).endswith(
        f"final/ is written: upload it with `caev2-hub push --folder {final_dir} --repo_id me/caev2-test`."
    )
    assert (Path(final_dir) / "model.safetensors").is_file()


def test_resume_past_max_steps_is_refused_and_at_max_steps_exports_again(
    tmp_path: Path, demo_image_folder: str, caplog
) -> None:
    """Issue 22 #10: a checkpoint past --max_steps is not exported as a shorter run, and nothing is overwritten."""
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=2, save_steps=2)
    pretrain(["--config", config])
    final = tmp_path / "config" / "final" / "model.safetensors"
    written = final.stat().st_mtime_ns
    with pytest.raises(UserError, match=r"checkpoint-00000002 is at update 2, past this run's 1 updates: nothing was"):
        pretrain(["--config", config, "--resume_from_checkpoint", "latest", "--max_steps", "1"])
    assert final.stat().st_mtime_ns == written
    with caplog.at_level("INFO", logger="run_pretrain"):
        pretrain(["--config", config, "--resume_from_checkpoint", "latest"])
    assert "is at the run's last update (2): nothing to train; final/ is written from it." in caplog.text


def test_a_changed_schedule_is_reported_once_by_two_processes(tmp_path: Path, demo_image_folder: str) -> None:
    """Issue 22 #10: the warning came once per process."""
    config = write_config(tmp_path, train_dir=demo_image_folder, per_device_train_batch_size=2, max_steps=1)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(find_free_port()), str(REPO_ROOT / "run_pretrain.py"), "--config", config]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-4000:]
    resumed = [*command, "--resume_from_checkpoint", "latest", "--max_steps", "2"]
    second = subprocess.run(resumed, env=environment, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stderr.count("The run's schedule changed since the checkpoint") == 1


def test_model_name_or_path_starts_from_saved_weights(tmp_path: Path, demo_image_folder: str) -> None:
    pretrain(["--config", write_config(tmp_path, "first", train_dir=demo_image_folder, max_steps=1)])
    start = str(tmp_path / "first" / "final" / "pretraining")
    # One update inside a 1-update warmup runs at lr 0 (decay is scaled by lr too): the weights stay where they
    # started, and the ignored preset "large" does not change the architecture read from the folder.
    second = write_config(tmp_path, "second", train_dir=demo_image_folder, max_steps=1, model_name_or_path=start,
                          model_preset="large")  # fmt: skip
    pretrain(["--config", second])
    started, ended = final_weights(tmp_path / "first"), final_weights(tmp_path / "second")
    for name in started:
        torch.testing.assert_close(ended[name], started[name], rtol=0, atol=0, msg=name)


def test_open_train_stream_passes_hub_dataset_arguments(tmp_path: Path, demo_tar_shards, monkeypatch) -> None:
    recorded = {}
    open_local = run_pretrain.open_image_dataset

    def open_hub_stand_in(**kwargs):
        recorded.update(kwargs)
        return open_local(data_files=demo_tar_shards)

    monkeypatch.setattr(run_pretrain, "open_image_dataset", open_hub_stand_in)
    config = write_config(tmp_path, dataset_name="timm/imagenet-1k-wds", dataset_config_name="default",
                          train_split="validation", image_column="jpg")  # fmt: skip
    model_args, data_args, _ = parse_pretraining_arguments(["--config", config])
    model_config = CAEv2Config.from_preset("base", **model_args.config_overrides)
    batch = next(run_pretrain.open_train_stream(data_args, model_config, 0, 4, 0, 1))
    assert recorded == {"dataset_name": "timm/imagenet-1k-wds", "dataset_config_name": "default",
                        "split": "validation", "train_dir": None, "data_files": None, "image_column": "jpg"}  # fmt: skip
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["bool_masked_pos"].sum(dim=1).tolist() == [6] * 4


@pytest.mark.parametrize(
    "compile_arguments, mixed_precision, backend, mode",
    [
        (["--torch_compile", "True"], "bf16", "INDUCTOR", "default"),
        (["--torch_compile_mode", "reduce-overhead"], "bf16", "INDUCTOR", "reduce-overhead"),  # the mode turns it on
        (["--torch_compile", "False"], "no", "NO", None),
    ],
)
def test_build_accelerator_applies_compile_and_precision(
    tmp_path: Path, compile_arguments: list[str], mixed_precision: str, backend: str, mode: str | None
) -> None:
    _, _, training_args = parse_pretraining_arguments(
        ["--config", write_config(tmp_path), "--mixed_precision", mixed_precision, *compile_arguments]
    )
    accelerator = build_accelerator(training_args)
    assert accelerator.mixed_precision == mixed_precision
    assert accelerator.state.dynamo_plugin.backend.value == backend
    if mode is not None:
        assert accelerator.state.dynamo_plugin.mode == mode


def test_training_state_records_schedule_and_arguments(tmp_path: Path, demo_image_folder: str) -> None:
    pretrain(["--config", write_config(tmp_path, train_dir=demo_image_folder, max_steps=2)])
    state = checkpoint_state(tmp_path / "config", 2)
    assert state["schedule"] == {"num_processes": 1, "effective_batch_size": 4, "learning_rate": 1e-3, "max_steps": 2,
                                "warmup_steps": 1, "steps_per_epoch": None}  # fmt: skip
    assert state["arguments"]["train_dir"] == demo_image_folder and state["step"] == 2
    assert json.dumps(state)  # plain JSON all the way down


def test_rerun_refuses_overwrites_or_resumes_and_a_finished_resume_keeps_its_loss(
    tmp_path: Path, demo_image_folder: str, caplog
) -> None:
    config = write_config(tmp_path, train_dir=demo_image_folder, max_steps=2, report_to="tensorboard")
    pretrain(["--config", config])
    output_dir = tmp_path / "config"
    with pytest.raises(UserError, match="holds another run"):
        pretrain(["--config", config])
    pretrain(["--config", config, "--overwrite_output_dir", "true"])
    assert len(list((output_dir / "logs").iterdir())) == 2  # each run its own TensorBoard subfolder
    loss = checkpoint_state(output_dir, 2)["last_metrics"]["loss"]
    caplog.clear()
    with caplog.at_level("INFO", logger="run_pretrain"):
        pretrain(["--config", config, "--resume_from_checkpoint", "latest"])  # already finished
    assert f"Done. Final loss {loss:.4f}." in caplog.text
    assert f"Training loss at the end: {loss:.4f}." in (output_dir / "final" / "README.md").read_text()
    assert len(list((output_dir / "logs").iterdir())) == 2  # the resumed run continues its run's subfolder
    assert not list(output_dir.glob("final.*"))  # no temporary folder left beside final/


def test_typo_in_teacher_config_is_one_error_line_before_anything_is_built(tmp_path: Path) -> None:
    """`hidden_sise` in the demo's teacher_config (YAML, or --config_overrides on the command line) is refused with
    the field it likely meant, instead of training a teacher of CLIP's default width."""
    demo = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    teacher = demo["config_overrides"]["teacher_config"]
    teacher["hidden_sise"] = teacher.pop("hidden_size")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(demo))
    output = ["--output_dir", str(tmp_path / "out")]
    overrides = ["--config_overrides", '{"teacher_config": {"hidden_sise": 64}}']
    for arguments in ([str(tmp_path / "typo.yaml")], [str(REPO_ROOT / "configs" / "demo.yaml"), *overrides]):
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "run_pretrain.py"), *arguments, *output], cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            "error: --config_overrides: teacher_config: 'hidden_sise' is not a CLIPVisionConfig field (did you mean "
            "'hidden_size'?); the teacher's fields are attention_dropout, hidden_act, hidden_size, image_size, "
            "initializer_factor, initializer_range, intermediate_size, layer_norm_eps, num_attention_heads, "
            "num_channels, num_hidden_layers, patch_size, projection_dim."
        ]
        assert not (tmp_path / "out").exists() and not (tmp_path / "demo_data").exists()
