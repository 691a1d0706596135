"""Per-image transforms on the host: uint8 crops, never float tensors.

- `PretrainCrop`: what a pretraining loader worker does to one image. It draws the augmentation's random parameters
  (crop box, flip, colour-jitter factors and order) with torchvision's own samplers, decodes the JPEG at a reduced size
  when the crop allows it (PIL's draft mode) or else with torchvision's `decode_jpeg`, crops and resizes to uint8
  (torchvision's `resized_crop`, bicubic with antialiasing), and returns the flip and jitter parameters
  for `device_augment.augment_on_device`, which applies them batched on the accelerator.
- `build_random_crop_transform`: a whole random augmentation on the host (crop, flip, jitter), the training view of the
  linear probe's official protocol (and of the data path before issue 11, which `benchmarks/bench_data.py
  --previous_path on` times).
- `build_eval_transform`: resize the short side, centre crop.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision import transforms as v1
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .decoding import QUARTER_TURNS, ImageLike, encoded_bytes, exif_orientation, open_image, to_rgb, upright_size


JITTER_OPS = ("brightness", "contrast", "saturation")  # index = op code in `jitter_order`; hue stays 0 in CAE v2


def build_random_crop_transform(
    image_size: int = 224, scale: tuple[float, float] = (0.4, 1.0), color_jitter: float = 0.4, hflip: bool = True
) -> v2.Compose:
    """Random-resized crop (bicubic), then flip and jitter of the crop, all on the host, to uint8. The defaults are the
    pretraining recipe's (docs/method.md#recipes); the linear probe asks for scale 0.08-1 and no jitter."""
    transforms = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(image_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
    ]
    if hflip:
        transforms.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        transforms.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose(transforms)


def build_eval_transform(image_size: int = 224, resize_size: int = 256) -> v2.Compose:
    """docs/method.md#recipes evaluation view: bicubic resize of the short side, centre crop, uint8."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(resize_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
        ]
    )


def _draft_request(size: tuple[int, int], crop_size: tuple[int, int], output_size: int) -> tuple[int, int]:
    """The smallest full-image size at which the crop still has `output_size` px on each side (never upsampled)."""
    (width, height), (crop_width, crop_height) = size, crop_size
    return math.ceil(width * output_size / crop_width), math.ceil(height * output_size / crop_height)


def _draft_scale(size: tuple[int, int], request: tuple[int, int]) -> int:
    """The reduction PIL's JPEG draft mode picks for `request`: the largest of 8, 4, 2, 1 that keeps it covered."""
    reduction = min(size[0] // request[0], size[1] // request[1])
    return next(scale for scale in (8, 4, 2, 1) if reduction >= scale or scale == 1)


class PretrainCrop:
    """One pretraining image in a loader worker: random-resized crop to uint8 and the device augmentation's parameters.

    Call it on an image as `datasets` yields it (bytes, path, {"bytes", "path"}, PIL image), under a seeded torch RNG:
    only the header is read before the parameters are drawn, for the upright picture (EXIF orientation applied). The
    parameters are drawn from torch's global generator, in the order crop box, flip, jitter (factors and order, as
    `ColorJitter` draws them). Returns {"pixel_values": uint8 (3, S, S), "flip": bool, "jitter_factors": float32 (3,) for brightness,
    contrast and saturation, "jitter_order": int64 (3,) the order to apply them in}. Raises when the image is unusable.
    """

    def __init__(
        self,
        image_size: int = 224,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        color_jitter: float = 0.4,
        hflip: bool = True,
        draft: bool = True,
    ) -> None:
        self.image_size, self.scale, self.ratio = image_size, tuple(scale), tuple(ratio)
        self.color_jitter, self.hflip, self.draft = color_jitter, hflip, draft

    def draw_parameters(
        self, size: tuple[int, int]
    ) -> tuple[tuple[int, int, int, int], bool, torch.Tensor, torch.Tensor]:
        """(top, left, height, width) of the crop, flip, jitter factors and order, from torch's global RNG."""
        width, height = size
        # get_params reads only the size of what it is given: an empty tensor of that size spares a decode
        top, left, crop_height, crop_width = v1.RandomResizedCrop.get_params(
            torch.empty(0, height, width), list(self.scale), list(self.ratio)
        )
        flip = bool(torch.rand(1) < 0.5) if self.hflip else False
        factors, order = torch.ones(3), torch.arange(3)
        if self.color_jitter > 0:
            bounds = [max(0.0, 1 - self.color_jitter), 1 + self.color_jitter]
            op_order, brightness, contrast, saturation, _ = v1.ColorJitter.get_params(bounds, bounds, bounds, None)
            factors = torch.tensor([brightness, contrast, saturation])
            order = op_order[op_order < 3]  # the permutation of 4 ops, hue (3) left out
        return (top, left, crop_height, crop_width), flip, factors, order

    def _decode(self, image: Image.Image, source: ImageLike, draft_request: tuple[int, int]) -> torch.Tensor:
        """The upright image (`decoding.to_rgb`) as a uint8 RGB tensor: a JPEG that can be decoded smaller through
        PIL's draft mode, an upright JPEG decoded at full size through torchvision's `decode_jpeg` (about twice as
        fast as PIL's decode and copy), any other image through PIL. A JPEG without its end marker (truncated) goes
        to PIL, which refuses it. `draft_request` is in upright pixels; the draft is asked in stored ones."""
        orientation = exif_orientation(image)
        if image.format == "JPEG":
            stored_request = draft_request[::-1] if orientation in QUARTER_TURNS else draft_request
            if self.draft and _draft_scale(image.size, stored_request) > 1:
                image.draft("RGB", stored_request)
            elif orientation == 1 and image.mode in ("RGB", "L") and (data := encoded_bytes(source)) is not None:
                if data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
                    try:
                        return decode_jpeg(
                            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
                        )
                    except RuntimeError:
                        pass  # PIL decides: it decodes what it can read, or raises
        return F.pil_to_tensor(to_rgb(image))

    def __call__(self, source: ImageLike) -> dict[str, torch.Tensor | bool]:
        image = open_image(source)
        full_size = upright_size(image)
        (top, left, crop_height, crop_width), flip, factors, order = self.draw_parameters(full_size)
        pixels = self._decode(image, source, _draft_request(full_size, (crop_width, crop_height), self.image_size))
        if image is not source:
            image.close()  # the file a path opened, when torchvision decoded it instead of PIL
        (height, width), bottom, right = pixels.shape[1:], top + crop_height, left + crop_width
        if (width, height) != full_size:  # the box in the reduced image, kept inside it (crop would pad outside)
            x_scale, y_scale = width / full_size[0], height / full_size[1]
            top, left = min(height - 1, round(top * y_scale)), min(width - 1, round(left * x_scale))
            bottom, right = (
                min(height, max(top + 1, round(bottom * y_scale))),
                min(width, max(left + 1, round(right * x_scale))),
            )
            crop_height, crop_width = bottom - top, right - left
        # torchvision's uint8 kernel (bicubic, antialiased like PIL's) resizes about 4x faster than PIL's resize
        crop = F.resized_crop(
            pixels, top, left, crop_height, crop_width, [self.image_size] * 2,
            interpolation=v2.InterpolationMode.BICUBIC, antialias=True,
        )  # fmt: skip
        return {
            "pixel_values": crop,
            "flip": flip,
            "jitter_factors": factors.float(),
            "jitter_order": order.long(),
        }
