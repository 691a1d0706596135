"""Tests for caev2_hf/checkpointing.py: atomic saves, latest discovery, resume checks, and the data-position replay."""

import json
import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from caev2_hf.data.loader import build_pretrain_loader
from caev2_hf.data.masking import RandomMaskGenerator
from caev2_hf.data.sources import open_image_dataset
from caev2_hf.data.transforms import PretrainCrop
from caev2_hf.pretraining.checkpointing import (
    ResumableBatchStream,
    list_checkpoints,
    load_checkpoint,
    read_training_state,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from caev2_hf_cli.errors import UserError


def prepared_linear(accelerator: Accelerator) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    return accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))


def write_checkpoint_folder(folder: Path, step: int | None) -> None:
    folder.mkdir(parents=True)
    if step is not None:
        (folder / "training_state.json").write_text(json.dumps({"step": step, "data_positions": [{}]}))


def test_save_checkpoint_renames_complete_folders_and_keeps_the_last_ones(tmp_path, fresh_accelerate_state) -> None:
    accelerator = Accelerator(cpu=True)
    prepared_linear(accelerator)
    for step in (1, 2, 3):
        position = {"epoch": 0, "batches_in_epoch": step}
        save_checkpoint(accelerator, str(tmp_path), step, position, {"skipped_steps": 0}, save_total_limit=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000002", "checkpoint-00000003"]
    state = read_training_state(str(tmp_path / "checkpoint-00000003"))
    assert state == {"skipped_steps": 0, "step": 3, "data_positions": [{"epoch": 0, "batches_in_epoch": 3}]}
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(
        os.listdir(tmp_path / "checkpoint-00000003")
    )


def test_save_checkpoint_replaces_a_checkpoint_of_the_same_step(tmp_path, fresh_accelerate_state) -> None:
    accelerator = Accelerator(cpu=True)
    prepared_linear(accelerator)
    for skipped_steps in (0, 1):
        save_checkpoint(accelerator, str(tmp_path), 4, {}, {"skipped_steps": skipped_steps}, save_total_limit=2)
    assert os.listdir(tmp_path) == ["checkpoint-00000004"]
    assert read_training_state(str(tmp_path / "checkpoint-00000004"))["skipped_steps"] == 1


def test_list_checkpoints_ignores_half_written_folders(tmp_path: Path) -> None:
    write_checkpoint_folder(tmp_path / ".incomplete-checkpoint-00000009", step=9)  # killed before the rename
    write_checkpoint_folder(tmp_path / "checkpoint-00000008", step=None)  # no state file: not ours or damaged
    write_checkpoint_folder(tmp_path / "checkpoint-00000010", step=10)
    write_checkpoint_folder(tmp_path / "checkpoint-00000005", step=5)
    assert list_checkpoints(str(tmp_path)) == [
        str(tmp_path / "checkpoint-00000005"),
        str(tmp_path / "checkpoint-00000010"),
    ]
    assert resolve_resume_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-00000010")


def test_resolve_resume_checkpoint_starts_fresh_or_refuses_a_missing_path(tmp_path: Path) -> None:
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    assert resolve_resume_checkpoint("latest", str(tmp_path / "not-yet-created")) is None
    with pytest.raises(UserError, match="--resume_from_checkpoint /no/such/checkpoint is not a complete checkpoint"):
        resolve_resume_checkpoint("/no/such/checkpoint", str(tmp_path))


def test_load_checkpoint_restores_weights_and_rng(tmp_path: Path, fresh_accelerate_state) -> None:
    accelerator = Accelerator(cpu=True)
    model, _ = prepared_linear(accelerator)
    saved_weight = model.weight.detach().clone()
    torch.manual_seed(123)
    path = save_checkpoint(accelerator, str(tmp_path), 7, {"epoch": 1, "batches_in_epoch": 2}, {}, save_total_limit=1)
    expected_draw = torch.rand(2)
    with torch.no_grad():
        model.weight.zero_()
    state = load_checkpoint(accelerator, path)
    assert torch.equal(model.weight.detach(), saved_weight) and torch.equal(torch.rand(2), expected_draw)
    assert state["step"] == 7 and state["data_position"] == {"epoch": 1, "batches_in_epoch": 2}


def test_load_checkpoint_refuses_another_number_of_processes(tmp_path: Path, fresh_accelerate_state) -> None:
    write_checkpoint_folder(tmp_path / "checkpoint-00000003", step=3)
    state_file = tmp_path / "checkpoint-00000003" / "training_state.json"
    state_file.write_text(json.dumps({"step": 3, "data_positions": [{}, {}]}))
    with pytest.raises(UserError, match="written by 2 process\\(es\\) but this run has 1"):
        load_checkpoint(Accelerator(cpu=True), str(tmp_path / "checkpoint-00000003"))


def test_a_damaged_checkpoint_is_named_with_the_way_out(tmp_path: Path, fresh_accelerate_state) -> None:
    accelerator = Accelerator(cpu=True)
    prepared_linear(accelerator)
    path = save_checkpoint(accelerator, str(tmp_path), 7, {}, {}, save_total_limit=1)
    weights = Path(path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])  # cut short, as by a full disk
    with pytest.raises(UserError, match=r"Cannot resume from .*checkpoint-00000007 \(.*\): resume from an earlier"):
        load_checkpoint(accelerator, path)
    (Path(path) / "training_state.json").write_text('{"step": 7,')
    with pytest.raises(UserError, match=r"training_state.json is damaged .*: move that checkpoint folder away"):
        load_checkpoint(accelerator, path)
    with pytest.raises(UserError, match=r"latest: no checkpoint in .* is intact \(.*checkpoint-00000007: its "):
        resolve_resume_checkpoint("latest", str(tmp_path))  # never a fresh start over a damaged checkpoint


def build_loader(tar_paths: list[str], num_workers: int = 0) -> torch.utils.data.DataLoader:
    """8 images per shard, batches of 3: two batches per shard and epoch (the incomplete third is dropped)."""
    dataset = open_image_dataset(data_files=tar_paths)
    mask_generator = RandomMaskGenerator((2, 2), 1)
    return build_pretrain_loader(
        dataset, PretrainCrop(8), mask_generator, 3, num_workers, seed=0, shuffle_buffer_size=4
    )


def test_resumable_batch_stream_tracks_its_position_across_epochs(demo_tar_shards: list[str]) -> None:
    stream = ResumableBatchStream(build_loader(demo_tar_shards[:1]))
    lanes = []
    for _ in range(5):
        next(stream)
        lanes.append(stream.position()["lanes"][0])
    # the epoch's last batch reaches the end of the pass (it carries the dropped tail's skips)
    assert [(lane["epoch"], lane["start"], lane["end"], lane["end_of_epoch"]) for lane in lanes] == [
        (0, 0, 3, False),
        (0, 3, 8, True),
        (1, 0, 3, False),
        (1, 3, 8, True),
        (2, 0, 3, False),
    ]
    assert stream.position()["epoch"] == 2 and stream.position()["batches"] == 5


def assert_same_batches(batches: list[dict], expected: list[dict]) -> None:
    assert len(batches) == len(expected)
    for batch, reference in zip(batches, expected, strict=True):
        assert batch.keys() == reference.keys()
        assert all(torch.equal(batch[key], reference[key]) for key in reference)


@pytest.mark.parametrize(("num_workers", "stop_after"), [(0, 3), (2, 3), (2, 4)])
def test_resumable_batch_stream_replays_to_a_saved_position(demo_tar_shards, num_workers, stop_after) -> None:
    # Two workers take turns: stopping after 3 batches leaves worker 1 next, which the resumed stream must honour.
    uninterrupted = ResumableBatchStream(build_loader(demo_tar_shards[:2], num_workers))
    batches = [next(uninterrupted) for _ in range(10)]
    interrupted = ResumableBatchStream(build_loader(demo_tar_shards[:2], num_workers))
    assert_same_batches([next(interrupted) for _ in range(stop_after)], batches[:stop_after])
    position = json.loads(json.dumps(interrupted.position()))  # as stored in training_state.json
    resumed = ResumableBatchStream(build_loader(demo_tar_shards[:2], num_workers), position)
    assert resumed.position() == position
    assert_same_batches([next(resumed) for _ in range(10 - stop_after)], batches[stop_after:])
    assert not torch.equal(batches[0]["bool_masked_pos"], batches[1]["bool_masked_pos"])
    assert not torch.equal(batches[0]["jitter_factors"], batches[4]["jitter_factors"])  # epochs differ


def test_resumable_batch_stream_warns_when_the_epoch_got_shorter(demo_tar_shards: list[str], caplog) -> None:
    position = {"batches": 3, "lanes": [{"epoch": 0, "start": 9, "end": 12, "end_of_epoch": False}]}  # 8 per pass
    stream = ResumableBatchStream(build_loader(demo_tar_shards[:1]), position)
    next(stream)
    assert stream.position()["lanes"][0] == {"epoch": 1, "start": 0, "end": 3, "end_of_epoch": False}
    assert "the data changed" in caplog.text


def test_list_checkpoints_ignores_folders_left_by_a_crash(tmp_path: Path) -> None:
    write_checkpoint_folder(tmp_path / "checkpoint-00000004", step=4)
    write_checkpoint_folder(tmp_path / "checkpoint-00000004.replaced", step=4)  # crash inside a replacement
    write_checkpoint_folder(tmp_path / ".incomplete-checkpoint-00000005", step=5)  # crash while writing
    assert list_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-00000004")]
