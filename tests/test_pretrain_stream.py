"""Tests for the pretraining data path: decoding (high bit depth, tiny images, reduced-size JPEG decoding), image
folders as sharded streams, the endless per-worker batch stream, exact skip counts and the data source on the
command line."""

import io
import logging
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from caev2_hf.data import loader as loader_module
from caev2_hf.data import transforms as transforms_module
from caev2_hf.data.decoding import open_image, to_rgb_image
from caev2_hf.data.loader import build_pretrain_loader
from caev2_hf.data.masking import RandomMaskGenerator
from caev2_hf.data.sources import open_image_dataset, shard_for_process
from caev2_hf.data.transforms import PretrainCrop, _draft_request
from caev2_hf.pretraining.checkpointing import ResumableBatchStream
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import parse_arguments
from caev2_hf_cli.pretraining import ARGUMENT_CLASSES


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped() -> None:
    png = encode(Image.fromarray(np.full((6, 5), 32768, dtype=np.uint16)))
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    rgb = np.asarray(to_rgb_image({"bytes": png, "path": None}))
    assert rgb.shape == (6, 5, 3) and np.abs(rgb.astype(int) - 128).max() <= 1  # plain convert("RGB") gives 255
    white = np.asarray(to_rgb_image(encode(Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16)))))
    assert (white == 255).all()
    crop = PretrainCrop(image_size=8)(open_image(png))["pixel_values"]
    assert crop.shape == (3, 8, 8) and (crop.int() - 128).abs().max() <= 1


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((3, 3), 1000, np.int32), round(1000 / 257)),  # 32-bit integer holding 16-bit values
        (np.full((3, 3), 200, np.int32), 200),  # 32-bit integer holding 8-bit values
        (np.full((3, 3), 0.5, np.float32), 128),  # float fractions of white
    ],
    ids=["I-16-bit", "I-8-bit", "F"],
)
def test_other_high_bit_depth_modes_are_scaled(array: np.ndarray, expected: int) -> None:
    rgb = np.asarray(to_rgb_image(Image.fromarray(array)))
    assert rgb.shape == (3, 3, 3) and (rgb == expected).all()


def test_a_1x1_image_is_used() -> None:
    png = encode(Image.new("RGB", (1, 1), (10, 200, 30)))
    crop = PretrainCrop(image_size=8)(open_image(png))["pixel_values"]
    assert crop.shape == (3, 8, 8) and crop[:, 0, 0].tolist() == [10, 200, 30] and (crop == crop[:, :1, :1]).all()


def test_draft_request_keeps_the_crop_at_least_the_output_size() -> None:
    assert _draft_request((1000, 800), (500, 400), 224) == (448, 448)  # a 1/2 decode still has 250x200... >= 224
    assert _draft_request((300, 300), (150, 150), 224) == (448, 448)  # larger than the image: no reduction


def test_reduced_size_jpeg_decoding_matches_the_full_decode_and_is_used() -> None:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((64, 64, 1))).astype(np.uint8)  # 768 x 1024
    jpeg = encode(Image.fromarray(smooth), "JPEG", quality=95)
    drafted_sizes = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(image, mode, size):
        result = original_draft(image, mode, size)
        drafted_sizes.append(image.size)
        return result

    outputs = {}
    for draft in (True, False):
        torch.manual_seed(0)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
            outputs[draft] = PretrainCrop(image_size=32, scale=(0.5, 1.0), draft=draft)(open_image(jpeg))
    assert drafted_sizes and max(drafted_sizes) <= (256, 192)  # decoded at 1/4 or 1/8, not 1024 x 768
    assert outputs[True]["flip"] == outputs[False]["flip"]
    difference = (outputs[True]["pixel_values"].float() - outputs[False]["pixel_values"].float()).abs()
    assert difference.mean() < 4  # the same crop of the same photo, up to resampling differences


def refuse(*args, **kwargs):
    raise RuntimeError("torchvision's decoder is off")


def test_full_size_jpegs_decode_through_torchvision_as_pil_decodes_them(monkeypatch) -> None:
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    jpeg, calls = encode(photo, "JPEG", quality=90), []
    decode_jpeg = transforms_module.decode_jpeg
    monkeypatch.setattr(
        transforms_module, "decode_jpeg", lambda *args, **kwargs: calls.append(1) or decode_jpeg(*args, **kwargs)
    )  # noqa: E501
    crop = PretrainCrop(image_size=64)  # at least the image's size: no reduced-size decode
    torch.manual_seed(0)
    through_torchvision = crop(jpeg)["pixel_values"]
    monkeypatch.setattr(transforms_module, "decode_jpeg", refuse)
    torch.manual_seed(0)
    through_pil = crop(jpeg)["pixel_values"]
    assert calls == [1] and torch.equal(through_torchvision, through_pil)


def test_a_truncated_jpeg_is_refused_not_padded() -> None:
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(OSError, match="truncated"):
        PretrainCrop(image_size=16)(jpeg[: len(jpeg) // 2])


def test_a_whole_image_crop_of_a_reduced_decode_stays_inside_the_image() -> None:
    jpeg = encode(Image.new("RGB", (1000, 750), (200, 100, 50)), "JPEG", quality=95)
    crop = PretrainCrop(image_size=32, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))(open_image(jpeg))["pixel_values"]
    expected = torch.tensor([200, 100, 50]).view(3, 1, 1)
    assert (crop.int() - expected).abs().max() <= 2  # no black border from a box rounded past the reduced image


def test_image_folder_streams_as_interleaved_shards(demo_image_folder: str) -> None:
    dataset = open_image_dataset(train_dir=demo_image_folder)
    assert dataset.num_shards == 16 and dataset.features["label"].names == ["china", "flower"]
    examples = list(dataset)
    paths = [example["image"]["path"] for example in examples]
    assert sorted(paths) == sorted(
        os.path.join(root, name) for root, _, names in os.walk(demo_image_folder) for name in names
    )
    assert all(example["label"] == ["china", "flower"].index(os.path.basename(os.path.dirname(path)))
               for example, path in zip(examples, paths, strict=True))  # fmt: skip


def write_flat_image_folder(folder, num_images: int) -> dict[int, str]:
    """Flat grey images whose value (10 * index + 5) identifies them after any crop."""
    values = {}
    for index in range(num_images):
        os.makedirs(folder / f"class_{index % 3}", exist_ok=True)
        path = folder / f"class_{index % 3}" / f"{index:03d}.png"
        Image.new("RGB", (20 + index, 24), (10 * index + 5,) * 3).save(path)
        values[10 * index + 5] = str(path)
    return values


def test_an_image_folder_with_2_processes_x_2_workers_reads_every_file_once_per_epoch(tmp_path) -> None:
    values = write_flat_image_folder(tmp_path / "folder", 24)
    dataset = open_image_dataset(train_dir=str(tmp_path / "folder"))
    seen = {epoch: [] for epoch in range(3)}
    for rank in range(2):
        part = shard_for_process(dataset, rank, 2)
        loader = build_pretrain_loader(part, PretrainCrop(8), None, 2, 2, seed=0, process_index=rank,
                                       shuffle_buffer_size=4)  # fmt: skip
        batches = iter(loader)
        for _ in range(3 * 6):  # 12 images per process, 6 per worker: 3 batches per worker and epoch
            batch = next(batches)
            lane, epoch, *_ = batch["position"].tolist()
            seen[epoch] += batch["pixel_values"][:, 0, 0, 0].tolist()
        del batches
    for epoch in range(3):
        assert sorted(seen[epoch]) == sorted(values)  # every file once, none twice, in every epoch
    assert seen[0] != seen[1]  # reshuffled each epoch


def write_tar_with_bad_members(path: str, shard: int, num_good: int, num_bad: int) -> None:
    """Good and malformed JPEG members, interleaved."""
    with tarfile.open(path, "w") as archive:
        for index in range(num_good + num_bad):
            bad = index % 3 == 1 and index // 3 < num_bad
            payload = b"broken" if bad else encode(Image.new("RGB", (12, 10), (index, 0, 0)), "JPEG")
            for suffix, data in (("jpg", payload), ("cls", b"0")):
                member = tarfile.TarInfo(f"{shard}_{index:03d}.{suffix}")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_counts_equal_the_malformed_members_read_with_drop_last(tmp_path, num_workers: int, caplog) -> None:
    paths = [str(tmp_path / f"shard-{shard}.tar") for shard in range(2)]
    for shard, path in enumerate(paths):
        write_tar_with_bad_members(path, shard, num_good=7, num_bad=3)  # 14 good, 6 malformed in all
    dataset = open_image_dataset(data_files=paths)
    loader = build_pretrain_loader(dataset, PretrainCrop(8), RandomMaskGenerator((2, 2), 1), 3, num_workers, seed=0)
    stream = ResumableBatchStream(loader)
    # One worker: 14 images, 4 batches of 3, 2 dropped. Two: 7 each, 2 batches, 1 dropped; 4 batches an epoch.
    counts = [int(next(stream)["num_skipped_images"]) for _ in range(3 * 4)]
    per_epoch = [sum(counts[epoch * 4 : epoch * 4 + 4]) for epoch in range(3)]
    assert per_epoch == [6, 6, 6]  # the malformed members in the dropped tails included
    assert stream.position()["epoch"] == 3
    if num_workers == 0:  # worker logs do not reach caplog: check the main process's
        skips = [
            record.getMessage() for record in caplog.records if "Skipping an unusable image" in record.getMessage()
        ]
        assert len(skips) == 6  # each member once, not once per epoch
        assert all(f"{paths[0]}:0_" in message or f"{paths[1]}:1_" in message for message in skips)
        assert not any("BytesIO" in message for message in skips)


def test_skip_log_is_rate_limited_and_reports_the_rest(monkeypatch) -> None:
    messages = []
    monkeypatch.setattr(loader_module.logger, "warning", messages.append)
    clock = iter([0.0, 1.0, 2.0, 3.0, 61.0])
    monkeypatch.setattr(loader_module.time, "monotonic", lambda: next(clock))
    log = loader_module.SkipLog("worker 0", max_per_minute=2)
    for name in ("a.jpg", "b.jpg", "a.jpg", "c.jpg", "d.jpg", "e.jpg"):
        log.record(name, "OSError: broken")
    assert [message.split()[4] for message in messages[:2]] == ["a.jpg", "b.jpg"]
    # issue 22: the line a user reads names no internal (it named batch['num_skipped_images'])
    assert messages[0] == "Skipping an unusable image a.jpg (worker 0): OSError: broken. The run goes on without it."
    assert "2 more unusable images in the last minute" in messages[2] and "e.jpg" in messages[3]


def test_a_lane_without_any_usable_image_raises(tmp_path) -> None:
    path = str(tmp_path / "broken.tar")
    with tarfile.open(path, "w") as archive:
        for name in ("a.jpg", "b.jpg"):
            member = tarfile.TarInfo(name)
            member.size = 6
            archive.addfile(member, io.BytesIO(b"broken"))
    loader = build_pretrain_loader(open_image_dataset(data_files=path), PretrainCrop(8), None, 1, 0, seed=0)
    with pytest.raises(UserError, match=r"A whole pass \(epoch 0\) .* gave no batch"):
        next(iter(loader))


def test_resume_with_another_worker_count_is_refused(demo_tar_shards) -> None:
    loader = build_pretrain_loader(open_image_dataset(data_files=demo_tar_shards), PretrainCrop(8), None, 2, 0, 0)
    with pytest.raises(ValueError, match=r"written with dataloader_num_workers=2 but this run has 0: .* 2 again"):
        ResumableBatchStream(loader, {"batches": 4, "lanes": [None, None]})


def test_a_data_source_on_the_command_line_replaces_the_config_files(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("train_dir: images\nnum_demo_images: 4\ndataset_config_name: x\nmax_steps: 3\n")
    _, data_args, training_args = parse_arguments(ARGUMENT_CLASSES, ["--config", str(config), "--data_files", "a.tar"])
    assert (data_args.data_files, data_args.train_dir, data_args.dataset_config_name) == (["a.tar"], None, None)
    assert training_args.max_steps == 3  # the rest of the file still applies
    _, data_args, _ = parse_arguments(ARGUMENT_CLASSES, [str(config), "--dataset_name=org/data"])
    assert (data_args.dataset_name, data_args.train_dir) == ("org/data", None)
    _, data_args, _ = parse_arguments(ARGUMENT_CLASSES, [str(config), "--max_steps", "5"])
    assert data_args.train_dir == "images"  # no source on the command line: the file's


def test_logging_of_skips_goes_through_the_package_logger(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    path = str(tmp_path / "one.tar")
    write_tar_with_bad_members(path, 0, num_good=2, num_bad=1)
    loader = build_pretrain_loader(open_image_dataset(data_files=path), PretrainCrop(8), None, 2, 0, seed=0)
    batch = next(iter(loader))
    assert int(batch["num_skipped_images"]) == 1 and batch["position"].tolist()[2:] == [0, 3, 1]
    assert "1 unusable images skipped in epoch 0" in caplog.text


def test_k_masks_per_image_keep_the_single_mask_draws_first(demo_tar_shards) -> None:
    dataset = open_image_dataset(data_files=demo_tar_shards[:1])
    batches = {
        k: next(
            iter(
                build_pretrain_loader(
                    dataset, PretrainCrop(8), RandomMaskGenerator((2, 2), 1), 4, 0, seed=0, masks_per_image=k
                )
            )
        )  # fmt: skip
        for k in (1, 3)
    }
    single, triple = batches[1]["bool_masked_pos"], batches[3]["bool_masked_pos"]
    assert single.shape == (4, 4) and triple.shape == (12, 4)  # copy k of image b at row k * 4 + b
    assert torch.equal(triple[:4], single) and torch.equal(batches[3]["pixel_values"], batches[1]["pixel_values"])
    assert not torch.equal(triple[4:8], triple[:4])
