"""Unit tests for caev2_hf.evaluation.segmentation.data: mmsegmentation's augmentation (crop, pad, flip, photometric
distortion), reduced labels, folder pairing and the offline demo task."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caev2_hf.evaluation.segmentation.data import (
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    collate_segmentation_batch,
    make_demo_segmentation,
    pair_image_and_mask_folders,
    photometric_distortion,
    random_crop_box,
    reduce_zero_label,
)


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_reduce_zero_label_moves_other_to_ignore():
    mask = np.array([[0, 1, 150], [255, 2, 0]])
    assert reduce_zero_label(mask, 255).tolist() == [[255, 0, 149], [255, 1, 255]]


def test_train_transform_crops_pads_and_keeps_image_and_mask_aligned():
    image = np.zeros((40, 24, 3), dtype=np.uint8)
    image[:, 12:] = 255  # right half white, its mask class 1
    mask = np.zeros((40, 24), dtype=np.uint8)
    mask[:, 12:] = 1
    example = {"image": Image.fromarray(image), "annotation": Image.fromarray(mask)}
    transform = SegmentationTrainTransform(
        crop_size=32, scale=(40, 24), ratio_range=(1.0, 1.0), image_mean=[0.5] * 3, image_std=[0.5] * 3,
        photometric=False,
    )  # fmt: skip
    for seed in range(4):
        output = transform(example, torch.Generator().manual_seed(seed))
        pixels, labels = output["pixel_values"], output["labels"]
        assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32)
        assert (labels[:, 24:] == 255).all() and (pixels[:, :, 24:] == 0).all()  # padded: 24 px wide image
        assert ((pixels[0, :, :24] > 0) == (labels[:, :24] == 1)).all()  # white exactly where class 1


def test_crop_redraw_avoids_one_class_filling_the_crop():
    mask = np.zeros((100, 100), dtype=np.int64)
    mask[:, 60:] = 1  # a 20 px crop has neither class above 75% only when its left edge is in 46..54: 9 in 81
    generator = torch.Generator().manual_seed(0)

    def balanced(cat_max_ratio: float) -> int:
        boxes = [random_crop_box(mask, 20, cat_max_ratio, 255, generator) for _ in range(40)]
        return sum(46 <= left <= 54 for _, left in boxes)

    # up to 10 draws each: about 1 - (72/81)**10 = 69% of crops are balanced, against 11% with a single draw
    assert balanced(0.75) > 18 and balanced(1.0) < 10


def test_photometric_distortion_stays_in_range_and_changes_colours():
    image = torch.rand(3, 16, 16) * 255
    outputs = [photometric_distortion(image, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert all(output.min() >= 0 and output.max() <= 255 for output in outputs)
    assert sum(not torch.allclose(output, image) for output in outputs) >= 6


def test_eval_transform_rescales_the_image_and_keeps_the_mask_size():
    example = {"image": Image.new("RGB", (200, 100)), "annotation": Image.new("L", (200, 100))}
    output = SegmentationEvalTransform((2048, 64), MEAN, STD)(example)
    assert output["pixel_values"].shape == (3, 64, 128) and output["labels"].shape == (100, 200)
    batch = collate_segmentation_batch([output, SegmentationEvalTransform((2048, 32), MEAN, STD)(example)])
    assert isinstance(batch["pixel_values"], list) and batch["image_sizes"].tolist() == [[100, 200], [100, 200]]


def test_folders_pair_images_with_masks_by_name(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"{name}.jpg")
        Image.new("L", (8, 8)).save(tmp_path / "ann" / f"{name}.png")
    rows = pair_image_and_mask_folders(str(tmp_path / "img"), str(tmp_path / "ann"))
    assert [Path(row["annotation"]).name for row in rows] == ["a.png", "b.png"]
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "c.jpg")
    with pytest.raises(ValueError, match="have no mask of the same name.*'c'"):
        pair_image_and_mask_folders(str(tmp_path / "img"), str(tmp_path / "ann"))


def test_demo_task_is_deterministic_and_has_every_class():
    first, second = make_demo_segmentation(8, 64, seed=3), make_demo_segmentation(8, 64, seed=3)
    masks = np.stack([np.asarray(example["annotation"]) for example in first])
    assert np.array_equal(masks, np.stack([np.asarray(example["annotation"]) for example in second]))
    assert set(np.unique(masks)) == {0, 1, 2, 3} and 0.3 < (masks == 0).mean() < 0.95
