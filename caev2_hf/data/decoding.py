"""Decoding any image `datasets` yields into an 8-bit RGB PIL image, or a reason why it cannot be used: the one
decoding of every path of this package (pretraining crops, probe, fine-tuning, segmentation and detection data,
`caev2-visualize`), `decode_image`.

Pixels are turned upright as the EXIF orientation says (`PIL.ImageOps.exif_transpose`, as `datasets.Image()` and
transformers' `load_image` do): a phone photo stored sideways with orientation 6 trains as it is seen. Modes are
converted, never clipped: CMYK, grayscale and palette images become RGB; transparent ones are composited on white;
16-bit and other high-bit-depth images (PIL modes `I;16*`, `I`, `F`) are scaled to 8 bits (transformers' `load_image`
clips them instead: give its pipelines `decode_image(path)`, see docs/design.md#images). Any size is usable, 1x1
included: RandomResizedCrop can crop and resize it.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import ExifTags, Image, ImageOps


ImageLike = Image.Image | bytes | str | dict  # what `datasets` yields: a PIL image, bytes, a path, {"bytes", "path"}

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations whose upright picture swaps width and height
_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def open_image(image: ImageLike) -> Image.Image:
    """Opens a PIL image from any `ImageLike` lazily: only the header is read, pixels are decoded by `load`."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict):
        image = image["bytes"] if image.get("bytes") is not None else image["path"]
    return Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)


def encoded_bytes(image: ImageLike) -> bytes | None:
    """The encoded file of an `ImageLike` (read from its path if need be); None for an already decoded PIL image."""
    if isinstance(image, dict):
        image = image["bytes"] if image.get("bytes") is not None else image.get("path")
    if isinstance(image, bytes):
        return image
    if isinstance(image, str):
        with open(image, "rb") as file:
            return file.read()
    return None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation `exif_transpose` applies (1 = stored upright), read from the header alone."""
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the picture `decode_image` gives, from the header alone."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in QUARTER_TURNS else (width, height)


def upright(image: Image.Image) -> Image.Image:
    """The decoded pixels turned as the EXIF orientation says (the image itself when stored upright)."""
    image.load()  # decode now: truncated data raises here rather than later in a transform
    return ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image


def _high_bit_depth_to_8_bits(image: Image.Image) -> Image.Image:
    """A one-channel 16-bit (or 32-bit integer / float) image scaled to 8 bits: 65535 -> 255, 32768 -> 128.

    `I;16*` is 16-bit by definition. `I` and `F` carry no bit depth: values up to 255 are taken as 8-bit, larger ones
    as 16-bit (the usual content of such files); floats in [0, 1] as fractions of white.
    """
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode in SIXTEEN_BIT_MODES or peak > 255:
        values = values / 257.0  # 65535 / 255
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Decodes (if not yet), turns upright and converts to 8-bit RGB; raises on unreadable or truncated data."""
    image = upright(image)
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _high_bit_depth_to_8_bits(image).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: plain conversion would expose whatever colour hides under transparent pixels.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def describe_error(error: Exception, name: str | None = None) -> str:
    """`TypeName: message`, with PIL's `<_io.BytesIO object at 0x...>` replaced by the image's name when known."""
    message = str(error)
    return f"{type(error).__name__}: {_BUFFER_REPR.sub(name, message) if name else message}"


def decode_image(image: ImageLike) -> Image.Image:
    """Any image `datasets` yields (or a file path) as the upright 8-bit RGB picture every path of this package
    sees; raises on unreadable or truncated data. `pipeline("image-classification")(decode_image(path))` gives a
    pipeline the same pixels."""
    return to_rgb(open_image(image))


def decode_rgb_image(image: ImageLike) -> tuple[Image.Image | None, str | None]:
    """Returns (RGB image, None), or (None, reason) for an unreadable or truncated image. Never raises."""
    try:
        return decode_image(image), None
    except Exception as error:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...: never raise
        return None, describe_error(error)


def to_rgb_image(image: ImageLike) -> Image.Image | None:
    """Converts any image `datasets` yields to RGB; None when it cannot be used. Never raises."""
    return decode_rgb_image(image)[0]


def image_name(example: dict) -> str | None:
    """What names an example's image in a log line: its file path, or `shard:member` for webdataset shards."""
    image = example.get("image")
    path = image.get("path") if isinstance(image, dict) else image if isinstance(image, str) else None
    url = example.get("__url__")
    if url and path:
        return f"{url}:{path}"
    return path or (f"{url}:{example['__key__']}" if url and example.get("__key__") else None)
