"""One decoding everywhere (issue 22, #2): an EXIF-rotated JPEG and a 16-bit PNG, written here, give the same pixels
through every path of the package (pretraining crops, probe and fine-tuning stream, segmentation, detection,
visualize) and, for orientation, the same as `datasets.Image()` and transformers' `load_image` (the pipelines')."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from transformers import pipeline
from transformers.image_utils import load_image

from caev2_hf import CAEv2ForImageClassification
from caev2_hf.data.decoding import decode_image, decode_rgb_image, upright_size
from caev2_hf.data.loader import LabelledImageStream
from caev2_hf.data.sources import open_image_dataset
from caev2_hf.data.transforms import PretrainCrop
from caev2_hf.evaluation.detection.coco import open_coco_folder, open_hub_detection
from caev2_hf.evaluation.detection.training import DetectionDataset
from caev2_hf.evaluation.segmentation.data import load_pair
from caev2_hf.visualize import load_image as visualize_load_image


STORED = (200, 140)  # (width, height) of the stored pixels; orientation 6 shows them 140 wide and 200 high


def stored_pixels() -> np.ndarray:
    """A picture whose every quarter turn and flip differs: a gradient, with a red block top left and a blue bar at
    the bottom of the stored pixels."""
    rows, cols = np.mgrid[0 : STORED[1], 0 : STORED[0]]
    pixels = np.stack([cols * 255 // STORED[0], rows * 255 // STORED[1], np.full_like(rows, 96)], -1)
    pixels[10:50, 10:70] = (230, 20, 20)
    pixels[-20:, :] = (20, 20, 230)
    return pixels.astype(np.uint8)


def write_jpeg(path, orientation: int) -> str:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(stored_pixels()).save(path, quality=95, exif=exif)
    return str(path)


def write_16_bit_png(path) -> str:
    """One channel, 16 bits, values over the whole range (a scan or a microscope image)."""
    rows, cols = np.mgrid[0:48, 0:64]
    Image.fromarray(((rows * 64 + cols) * 21).astype(np.uint16)).save(path)
    return str(path)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("decoding")
    (root / "folder" / "photos").mkdir(parents=True)
    return {
        "rotated": write_jpeg(root / "folder" / "photos" / "rotated.jpg", 6),
        "sixteen_bit": write_16_bit_png(root / "folder" / "photos" / "scan.png"),
        "root": str(root),
    }


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_decodes_as_transformers_and_datasets_decode_it(tmp_path, orientation):
    path = write_jpeg(tmp_path / "photo.jpg", orientation)
    ours = as_array(decode_image(path))
    np.testing.assert_array_equal(ours, as_array(load_image(path)))  # what transformers' pipelines decode
    decoded_by_datasets = datasets.Image().decode_example({"path": path, "bytes": None})
    np.testing.assert_array_equal(ours, as_array(decoded_by_datasets))
    turned = orientation in (5, 6, 7, 8)
    assert ours.shape[:2] == (STORED[::-1] if not turned else STORED)
    with Image.open(path) as header_only:
        assert upright_size(header_only) == (ours.shape[1], ours.shape[0])


def test_a_rotated_jpeg_is_the_same_picture_through_every_path_of_the_package(images):
    path = images["rotated"]
    upright = as_array(decode_image(path))
    assert upright.shape == (200, 140, 3)  # 140 wide, 200 high, as a phone shows it
    with open(path, "rb") as file:
        encoded = file.read()
    for source in (encoded, {"bytes": encoded, "path": None}, {"bytes": None, "path": path}):
        np.testing.assert_array_equal(as_array(decode_rgb_image(source)[0]), upright)
    assert_every_path_gives(images, path, upright)


def test_a_16_bit_png_is_the_same_8_bit_picture_through_every_path_of_the_package(images):
    """Scaled (65535 -> 255), not clipped: transformers' `load_image` clips, so pipelines get `decode_image(path)`."""
    path = images["sixteen_bit"]
    scaled = as_array(decode_image(path))
    with Image.open(path) as stored:
        expected = np.rint(np.asarray(stored, dtype=np.float64) / 257).astype(np.uint8)
    np.testing.assert_array_equal(scaled, np.repeat(expected[..., None], 3, axis=-1))
    assert 120 < scaled.mean() < 135 and as_array(load_image(path)).mean() > 250  # transformers saturates
    assert_every_path_gives(images, path, scaled)


def assert_every_path_gives(images: dict, path: str, expected: np.ndarray) -> None:
    height, width = expected.shape[:2]
    as_tensor = torch.from_numpy(expected.copy()).permute(2, 0, 1)
    # Pretraining: the crop of the whole picture, without and with the JPEG draft path
    whole = PretrainCrop(64, scale=(1.0, 1.0), ratio=(width / height, width / height), color_jitter=0, hflip=False)
    reference = F.resized_crop(
        as_tensor, 0, 0, height, width, [64, 64], interpolation=v2.InterpolationMode.BICUBIC, antialias=True
    )
    for draft in (False, True):
        whole.draft = draft
        crop = whole(path)["pixel_values"]
        if draft and path.endswith(".jpg"):  # decoded at a quarter of the size: close, and the same way up
            assert (crop.float() - reference.float()).abs().mean() < 6
            assert (crop.float() - reference.flip(-1).float()).abs().mean() > 30
        else:
            torch.testing.assert_close(crop, reference, rtol=0, atol=0)
    # Linear probe and fine-tuning: the labelled stream of an image folder
    folder = open_image_dataset(train_dir=f"{images['root']}/folder")
    stream = LabelledImageStream(folder, v2.PILToTensor())
    decoded = {tuple(example["pixel_values"].shape): example["pixel_values"] for example in stream}
    torch.testing.assert_close(decoded[tuple(as_tensor.shape)], as_tensor, rtol=0, atol=0)
    # Segmentation: the image of an (image, mask) pair
    mask = f"{images['root']}/mask-{width}x{height}.png"
    Image.new("L", (width, height)).save(mask)
    image, _ = load_pair({"image": path, "annotation": mask}, reduce_labels=False, ignore_index=255)
    np.testing.assert_array_equal(np.asarray(image), expected)
    # Detection: a COCO folder annotated on the upright picture, and a Hub dataset without size columns
    assert_detection_reads(images["root"], path, expected)
    # caev2-visualize: the centre square the model sees
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(expected[top : top + side, left : left + side])
    np.testing.assert_array_equal(visualize_load_image(path, side), np.asarray(square))


def assert_detection_reads(root: str, path: str, expected: np.ndarray) -> None:
    height, width = expected.shape[:2]
    name = path.rsplit("/", 1)[1]
    coco = {
        "images": [{"id": 1, "file_name": name, "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 10], "area": 200, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    with open(f"{root}/instances.json", "w") as file:
        json.dump(coco, file)
    example = DetectionDataset(open_coco_folder(path.rsplit("/", 1)[0], f"{root}/instances.json"))[0]
    torch.testing.assert_close(example["image"], torch.from_numpy(expected.copy()).permute(2, 0, 1), rtol=0, atol=0)
    hub = datasets.Dataset.from_dict(
        {"image": [path], "objects": [{"bbox": [[2, 2, 20, 10]], "category": [0]}]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "objects": {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                            "category": datasets.Sequence(datasets.Value("int64"))},
            }
        ),
    )  # fmt: skip
    split = open_hub_detection(hub, "rotated")
    assert (split.examples[0]["width"], split.examples[0]["height"]) == (width, height)


def test_a_pipeline_given_decode_image_sees_what_training_saw(images, tmp_path):
    """The README's command for 16-bit images: `classifier(decode_image(path))` classifies the pixels training
    used; `classifier(path)` gets transformers' clipped ones."""
    from conftest import build_tiny_config

    torch.manual_seed(0)
    CAEv2ForImageClassification(build_tiny_config(num_labels=3)).save_pretrained(tmp_path / "classifier")
    classifier = pipeline("image-classification", model=str(tmp_path / "classifier"), device="cpu")
    path = images["sixteen_bit"]
    Image.fromarray(as_array(decode_image(path))).save(tmp_path / "as_trained.png")
    ours = classifier(decode_image(path), top_k=3)
    assert ours == classifier(str(tmp_path / "as_trained.png"), top_k=3)
    assert ours != classifier(path, top_k=3)
