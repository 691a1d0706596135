"""Tests for caev2_hf/data/: opening local data, bad images, transforms, normalisation, sharding, the evaluation loader
(the pretraining stream: tests/test_pretrain_stream.py)."""

import io
import os
import tarfile

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets.exceptions import DatasetNotFoundError
from PIL import Image
from torch.utils.data import default_collate

from caev2_hf.data import loader, sources
from caev2_hf.data.decoding import decode_rgb_image
from caev2_hf.data.demo import write_demo_image_folder, write_demo_tar_shards
from caev2_hf.data.device_augment import normalize_pixel_values
from caev2_hf.data.errors import EmptyPassError
from caev2_hf.data.loader import LabelledImageStream, build_labelled_image_loader, iterate_forever
from caev2_hf.data.sources import open_image_dataset, shard_for_process
from caev2_hf.data.transforms import build_eval_transform, build_random_crop_transform


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def encode(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def write_parquet(path: str, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def image_bytes_of(dataset: datasets.IterableDataset) -> list[bytes]:
    return [example["image"]["bytes"] for example in dataset]


def palette_image(color: tuple[int, int, int]) -> Image.Image:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, *color])
    return image


def record_warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    messages = []
    for module in (loader, sources):
        monkeypatch.setattr(module.logger, "warning", lambda message, *args: messages.append(message))
    return messages


def test_write_demo_image_folder_writes_decodable_photos_per_class(tmp_path) -> None:
    output_dir = write_demo_image_folder(str(tmp_path / "a"), num_images=6, image_size=24, seed=3)
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(output_dir) for name in names)
    assert sorted(os.listdir(output_dir)) == ["china", "flower"] and len(files) == 6
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) == 24
            assert np.asarray(image).std() > 5  # a photo crop, not a flat colour
    again = write_demo_image_folder(str(tmp_path / "b"), num_images=6, image_size=24, seed=3)
    for path in files:
        with open(path, "rb") as first, open(path.replace(output_dir, again), "rb") as second:
            assert first.read() == second.read()


def test_write_demo_tar_shards_writes_webdataset_members(tmp_path) -> None:
    paths = write_demo_tar_shards(str(tmp_path), num_shards=2, images_per_shard=3, image_size=16)
    assert [os.path.basename(path) for path in paths] == ["shard-00000.tar", "shard-00001.tar"]
    with tarfile.open(paths[1]) as archive:
        names = archive.getnames()
        assert names[:2] == ["00001_00000.jpg", "00001_00000.cls"] and len(names) == 6
        labels = [int(archive.extractfile(name).read()) for name in names if name.endswith(".cls")]
        image = Image.open(io.BytesIO(archive.extractfile(names[0]).read()))
        assert image.mode == "RGB" and min(image.size) == 16
    assert labels == [1, 0, 1]  # images 3, 4, 5 of the run alternate between the two photos


def test_open_image_dataset_reads_an_image_folder(demo_image_folder: str) -> None:
    dataset = open_image_dataset(train_dir=demo_image_folder)
    examples = list(dataset)
    assert dataset.column_names == ["image", "label"] and len(examples) == 16
    assert sorted(example["label"] for example in examples) == [0] * 8 + [1] * 8
    assert decode_rgb_image(examples[0]["image"])[0].size[1] == 32  # undecoded {"bytes", "path"}, decodable


def test_open_image_dataset_maps_webdataset_jpg_and_cls_columns(demo_tar_shards: list[str]) -> None:
    dataset = open_image_dataset(data_files=demo_tar_shards)
    examples = list(dataset)
    assert dataset.column_names == ["image", "label", "__url__"] and dataset.num_shards == 4  # url: to name skips
    assert [example["label"] for example in examples] == [index % 2 for index in range(32)]
    assert isinstance(examples[0]["image"]["bytes"], bytes)


def test_open_image_dataset_detects_img_and_labels_in_parquet(tmp_path) -> None:
    image = Image.new("RGB", (16, 16), (10, 20, 30))
    rows = [{"img": {"bytes": encode(image), "path": None}, "labels": 7, "caption": "x"}]
    dataset = open_image_dataset(data_files=write_parquet(str(tmp_path / "a.parquet"), rows))
    (example,) = list(dataset)
    assert dataset.column_names == ["image", "label"] and example["label"] == 7
    assert decode_rgb_image(example["image"])[0].getpixel((0, 0)) == (10, 20, 30)


def test_open_image_dataset_uses_a_named_image_column(tmp_path) -> None:
    rows = [{"picture": encode(Image.new("RGB", (16, 16))), "caption": "x"}]
    dataset = open_image_dataset(data_files=[write_parquet(str(tmp_path / "a.parquet"), rows)], image_column="picture")
    assert dataset.column_names == ["image"] and decode_rgb_image(next(iter(dataset))["image"])[0].size == (16, 16)


def test_open_image_dataset_without_image_column_names_the_columns(tmp_path) -> None:
    path = write_parquet(str(tmp_path / "a.parquet"), [{"pixels_blob": b"x", "target": 1}])
    with pytest.raises(ValueError, match=r"\['pixels_blob', 'target'\]: name it with --image_column"):
        open_image_dataset(data_files=path)


def test_open_image_dataset_names_the_columns_when_a_requested_column_is_missing(demo_tar_shards) -> None:
    with pytest.raises(ValueError, match=r"No column 'target'.*'jpg', 'cls'.*Fix --label_column"):
        open_image_dataset(data_files=demo_tar_shards, label_column="target")


def hub_like_stream():
    yield {"jpg": encode(Image.new("RGB", (16, 16), (4, 5, 6))), "cls": 3, "__key__": "a"}


def test_open_image_dataset_reads_a_hub_stream_without_features(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = datasets.IterableDataset.from_generator(hub_like_stream)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: stream)
    (example,) = list(open_image_dataset(dataset_name="timm/imagenet-1k-wds"))
    assert sorted(example) == ["image", "label"] and example["label"] == 3
    assert decode_rgb_image(example["image"])[0].getpixel((0, 0)) == (4, 5, 6)


@pytest.mark.parametrize("sources", [{}, {"dataset_name": "a/b", "train_dir": "c"}])
def test_open_image_dataset_needs_exactly_one_source(sources: dict) -> None:
    with pytest.raises(ValueError, match="exactly one of dataset_name"):
        open_image_dataset(**sources)


def test_open_image_dataset_rejects_unknown_file_types() -> None:
    with pytest.raises(ValueError, match=r"must all end in .tar .* or all in .parquet"):
        open_image_dataset(data_files=["a.tar", "b.zip"])


def test_open_image_dataset_explains_gated_hub_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise DatasetNotFoundError("Dataset 'ILSVRC/imagenet-1k' is a gated dataset on the Hub.")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)gated.*accept its terms.*huggingface-cli login.*HF_TOKEN"):
        open_image_dataset(dataset_name="ILSVRC/imagenet-1k")


def test_open_image_dataset_without_streaming_gives_shards_per_example(demo_image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    dataset = open_image_dataset(train_dir=demo_image_folder, streaming=False)
    assert dataset.num_shards == 16 and len(list(dataset)) == 16
    assert dataset.features["label"].names == ["china", "flower"]


@pytest.mark.parametrize(
    ("image", "expected_pixel"),
    [
        (Image.new("CMYK", (16, 16), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("L", (16, 16), 77), (77, 77, 77)),
        (Image.new("LA", (16, 16), (77, 0)), (255, 255, 255)),  # fully transparent: white background
        (Image.new("RGBA", (16, 16), (200, 0, 0, 255)), (200, 0, 0)),
        (Image.new("RGBA", (16, 16), (200, 0, 0, 0)), (255, 255, 255)),
        (palette_image((10, 20, 30)), (10, 20, 30)),
    ],
    ids=["cmyk", "grayscale", "grayscale-alpha", "rgba-opaque", "rgba-transparent", "palette"],
)
def test_decode_rgb_image_converts_modes_to_rgb(image: Image.Image, expected_pixel: tuple[int, int, int]) -> None:
    for source in (image, {"bytes": encode(image, "TIFF" if image.mode == "CMYK" else "PNG"), "path": None}):
        rgb = decode_rgb_image(source)[0]
        assert rgb.mode == "RGB" and rgb.size == (16, 16) and rgb.getpixel((5, 5)) == expected_pixel


def test_decode_rgb_image_composites_transparent_palette_on_white() -> None:
    image = palette_image((10, 20, 30))
    image.info["transparency"] = 1
    assert decode_rgb_image({"bytes": encode(image), "path": None})[0].getpixel((0, 0)) == (255, 255, 255)


def test_decode_rgb_image_gives_a_reason_for_unusable_images(tmp_path) -> None:
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert decode_rgb_image({"bytes": jpeg[: len(jpeg) // 2], "path": None})[0] is None
    assert decode_rgb_image(b"not an image")[0] is None
    assert decode_rgb_image({"bytes": None, "path": str(tmp_path / "missing.jpg")})[0] is None
    assert decode_rgb_image(Image.new("RGB", (1, 1)))[0].size == (1, 1)  # tiny but valid: used
    assert decode_rgb_image(jpeg[:100])[1].startswith("OSError")


def test_random_crop_transform_returns_a_uint8_crop_with_unscaled_values() -> None:
    torch.manual_seed(0)
    crop = build_random_crop_transform(image_size=32)(Image.effect_noise((80, 60), 40).convert("RGB"))
    assert crop.dtype == torch.uint8 and crop.shape == (3, 32, 32) and crop.float().std() > 1
    # Without jitter, a flat colour stays exactly that colour: no rescaling to [0, 1] on the host.
    flat = build_random_crop_transform(image_size=32, color_jitter=0.0)(Image.new("RGB", (80, 60), (200, 100, 50)))
    assert torch.equal(flat, torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))


def test_eval_transform_resizes_then_center_crops() -> None:
    pixels = torch.arange(3 * 10 * 20).remainder(256).to(torch.uint8).reshape(3, 10, 20)
    # The short side is already resize_size, so the resize is the identity and the crop is exact.
    crop = build_eval_transform(image_size=8, resize_size=10)(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
    assert crop.dtype == torch.uint8 and torch.equal(crop, pixels[:, 1:9, 6:14])


def test_normalize_pixel_values_matches_hand_computation() -> None:
    pixel_values = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 1, 1)
    normalized = normalize_pixel_values(pixel_values, IMAGENET_MEAN, IMAGENET_STD)
    # (0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (0.2 - 0.406) / 0.225
    expected = torch.tensor([-2.1179039, 2.4285714, -0.9155556]).view(1, 3, 1, 1).expand(2, 3, 1, 1)
    assert normalized.dtype == torch.float32
    torch.testing.assert_close(normalized, expected, atol=1e-6, rtol=0)
    half = normalize_pixel_values(pixel_values, IMAGENET_MEAN, IMAGENET_STD, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device == pixel_values.device


def test_labelled_image_stream_counts_skipped_images(monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"bytes": encode(Image.new("RGB", (16, 16), (9, 9, 9))), "path": None}
    bad, tiny = (
        {"bytes": b"broken", "path": "bad.jpg"},
        {"bytes": encode(Image.new("RGB", (1, 1), (9, 9, 9))), "path": None},
    )
    images = [good, bad, bad, good, tiny, good, bad]
    dataset = datasets.Dataset.from_dict({"image": images, "label": list(range(7))}).to_iterable_dataset()
    warnings = record_warnings(monkeypatch)
    examples = list(LabelledImageStream(dataset, build_eval_transform(image_size=8, resize_size=8)))
    assert [(example["label"], example["num_skipped"]) for example in examples] == [(0, 0), (3, 2), (4, 0), (5, 0)]
    # the same file is logged once, by name, not as PIL's `<_io.BytesIO object at ...>`
    assert len(warnings) == 1 and "bad.jpg" in warnings[0] and "UnidentifiedImageError" in warnings[0]
    assert "BytesIO" not in warnings[0]
    batch = default_collate(examples)  # the probe's collator
    assert batch["num_skipped"].sum().item() == 2 and batch["pixel_values"].flatten().unique().tolist() == [9]


def test_shard_for_process_gives_disjoint_complete_parts(demo_tar_shards: list[str]) -> None:
    dataset = open_image_dataset(data_files=demo_tar_shards)
    parts = [image_bytes_of(shard_for_process(dataset, index, 2)) for index in range(2)]
    assert len(parts[0]) == len(parts[1]) == 16
    assert set(parts[0]).isdisjoint(parts[1]) and set(parts[0]) | set(parts[1]) == set(image_bytes_of(dataset))


def test_shard_for_process_warns_and_stays_complete_when_shards_do_not_divide(demo_tar_shards, monkeypatch) -> None:
    dataset = open_image_dataset(data_files=demo_tar_shards[:3])
    warnings = record_warnings(monkeypatch)
    parts = [image_bytes_of(shard_for_process(dataset, index, 2)) for index in range(2)]
    assert len(warnings) == 2 and "each process reads every shard and keeps 1/2" in warnings[0]
    assert set(parts[0]).isdisjoint(parts[1]) and len(parts[0]) + len(parts[1]) == 24


def test_shard_for_process_refuses_fewer_shards_than_processes(demo_tar_shards: list[str]) -> None:
    dataset = open_image_dataset(data_files=demo_tar_shards[:1])
    with pytest.raises(ValueError, match=r"1 shards cannot feed 2 processes: write at least 2 shards"):
        shard_for_process(dataset, 0, 2)


def build_demo_loader(tar_paths: list[str], seed: int, batch_size: int = 4) -> torch.utils.data.DataLoader:
    collator = default_collate  # the probe's
    transform = build_random_crop_transform(image_size=16)
    dataset = open_image_dataset(data_files=tar_paths)
    return build_labelled_image_loader(dataset, transform, collator, batch_size, num_workers=2, seed=seed)


def test_build_labelled_image_loader_is_reproducible_with_workers(demo_tar_shards: list[str]) -> None:
    first, second, other = (list(build_demo_loader(demo_tar_shards, seed)) for seed in (0, 0, 1))
    assert len(first) == 8  # 2 workers x 2 shards x 8 images / batch 4
    batch = first[0]
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (4, 3, 16, 16)
    assert sorted(torch.cat([batch["label"] for batch in first]).tolist()) == [0] * 16 + [1] * 16
    for batch_a, batch_b in zip(first, second, strict=True):
        assert all(torch.equal(batch_a[key], batch_b[key]) for key in batch_a)
    assert not torch.equal(first[0]["pixel_values"], other[0]["pixel_values"])


def test_build_labelled_image_loader_replays_an_epoch_after_a_restart(demo_tar_shards: list[str]) -> None:
    # A resumed run starts fresh workers at epoch 1; its batches must equal the uninterrupted run's epoch 1,
    # although the uninterrupted run's persistent workers already drew the crops of epoch 0.
    uninterrupted = iterate_forever(build_demo_loader(demo_tar_shards, seed=0))
    epochs_zero_and_one = [next(uninterrupted) for _ in range(16)]
    resumed = iterate_forever(build_demo_loader(demo_tar_shards, seed=0), start_epoch=1)
    for batch_a, batch_b in zip(epochs_zero_and_one[8:], [next(resumed) for _ in range(8)], strict=True):
        assert all(torch.equal(batch_a[key], batch_b[key]) for key in batch_a)
    assert not torch.equal(epochs_zero_and_one[0]["pixel_values"], epochs_zero_and_one[8]["pixel_values"])


def test_labelled_image_stream_leaves_the_global_rng_untouched(demo_tar_shards: list[str]) -> None:
    stream = LabelledImageStream(open_image_dataset(data_files=demo_tar_shards[:1]), build_random_crop_transform(16))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    crops = [example["pixel_values"] for example in stream]
    assert torch.equal(torch.rand(3), expected) and len(crops) == 8


def test_labelled_image_stream_draws_different_crops_per_process(demo_tar_shards: list[str]) -> None:
    dataset = open_image_dataset(data_files=demo_tar_shards[:1])
    first, second = (
        [
            example["pixel_values"]
            for example in LabelledImageStream(dataset, build_random_crop_transform(16), 0, index)
        ]
        for index in (0, 1)
    )
    assert not any(torch.equal(crop_a, crop_b) for crop_a, crop_b in zip(first, second, strict=True))


def test_iterate_forever_advances_the_epoch_each_pass(demo_tar_shards: list[str]) -> None:
    dataset = open_image_dataset(data_files=demo_tar_shards[:1])
    loader = build_labelled_image_loader(dataset, build_eval_transform(16, 16), default_collate, 4, 0, seed=0)
    batches = iterate_forever(loader)
    epochs = []
    for _ in range(5):  # 8 images, batch 4: two batches per pass
        next(batches)
        epochs.append(loader.dataset.epoch)
    assert epochs == [0, 0, 1, 1, 2]


def no_examples():
    yield from ()


def test_iterate_forever_raises_on_an_empty_dataset() -> None:
    empty = datasets.IterableDataset.from_generator(no_examples)
    loader = build_labelled_image_loader(empty, build_eval_transform(16, 16), default_collate, 4, 0, seed=0)
    with pytest.raises(EmptyPassError, match=r"A whole pass \(epoch 0\) over this process's part of the data gave no"):
        next(iterate_forever(loader))


def test_iterate_forever_raises_when_every_image_is_unreadable(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "broken.tar")
    with tarfile.open(path, "w") as archive:
        for name, payload in (("a.jpg", b"broken"), ("a.cls", b"0"), ("b.jpg", b"\xff\xd8"), ("b.cls", b"1")):
            member = tarfile.TarInfo(name)
            member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))
    dataset = open_image_dataset(data_files=path)
    warnings = record_warnings(monkeypatch)
    loader = build_labelled_image_loader(dataset, build_eval_transform(16, 16), default_collate, 1, 0, seed=0)
    with pytest.raises(EmptyPassError, match=r"every image was unreadable"):
        next(iterate_forever(loader))
    assert len(warnings) == 2


def test_open_image_dataset_without_streaming_refuses_an_empty_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_dict({"image": []}))
    with pytest.raises(ValueError, match="The dataset has no examples"):
        open_image_dataset(data_files=["unused.parquet"], streaming=False)


def write_images(root, *relative_paths: str) -> None:
    for index, relative in enumerate(relative_paths):
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (8, 8), (index, 0, 0)).save(path)


def labels_by_file(dataset) -> dict[str, str]:
    names = dataset.features["label"].names
    return {os.path.basename(ex["image"]["path"]): names[ex["label"]] for ex in dataset}


def test_image_folder_class_is_the_first_level_folder_at_any_depth(tmp_path) -> None:
    write_images(tmp_path, "cat/2020/a.png", "cat/2021/b.png", "dog/2020/c.png", "dog/d.png")
    assert labels_by_file(open_image_dataset(train_dir=str(tmp_path))) == {
        "a.png": "cat", "b.png": "cat", "c.png": "dog", "d.png": "dog"
    }  # fmt: skip


def test_image_folder_classes_may_be_named_like_splits(tmp_path) -> None:
    write_images(tmp_path, "cat/a.png", "test/b.png", "val/c.png")
    assert labels_by_file(open_image_dataset(train_dir=str(tmp_path))) == {
        "a.png": "cat",
        "b.png": "test",
        "c.png": "val",
    }


def test_folder_of_split_folders_reads_the_asked_split(tmp_path) -> None:
    write_images(tmp_path, "train/cat/a.png", "train/dog/b.png", "val/cat/c.png", "val/dog/d.png")
    assert labels_by_file(open_image_dataset(train_dir=str(tmp_path))) == {"a.png": "cat", "b.png": "dog"}
    validation = open_image_dataset(train_dir=str(tmp_path), split="validation")
    assert labels_by_file(validation) == {"c.png": "cat", "d.png": "dog"}
    with pytest.raises(ValueError, match=r"split folders \['train', 'val'\] but none for the 'test' split"):
        open_image_dataset(train_dir=str(tmp_path), split="test")


def test_image_folder_follows_links_once(tmp_path) -> None:
    write_images(tmp_path, "cat/a.png", "dog/b.png")
    os.symlink(tmp_path, tmp_path / "cat" / "loop")  # a link back to the top: must not be walked forever
    assert labels_by_file(open_image_dataset(train_dir=str(tmp_path))) == {"a.png": "cat", "b.png": "dog"}


def test_find_unreadable_tar_shards_names_the_cut_and_the_foreign_ones(tmp_path, demo_tar_shards: list[str]) -> None:
    data = open(demo_tar_shards[0], "rb").read()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "page.tar").write_bytes(b"<html>403 Forbidden</html>")  # a failed download saved under the name
    (tmp_path / "good.tar").write_bytes(data)
    problems = sources.find_unreadable_tar_shards([str(tmp_path / "*.tar")])
    assert sorted(problems) == [str(tmp_path / "cut.tar"), str(tmp_path / "page.tar")]
    assert "bytes past the end of the file" in problems[str(tmp_path / "cut.tar")]
    assert problems[str(tmp_path / "page.tar")].startswith("ReadError: ")
