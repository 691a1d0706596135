# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Small labelled image folders a study writes once, before its runs, from data shipped with scikit-learn (no
download): the offline mini-study probes its encoders on them."""

import inspect
import os
import shutil

import numpy as np
from PIL import Image

from caev2_hf_cli.errors import UserError


def write_digits(path: str, image_size: int = 32, num_train: int = 1500, num_validation: int = 297) -> str:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes) as `train/` and `validation/` image folders of RGB PNGs
    upscaled to `image_size`, one subfolder per digit: the first `num_train` images train, the next validate."""
    try:
        from sklearn.datasets import load_digits  # optional dependency, only for offline studies
    except ImportError as error:
        raise UserError("The offline study's digits come with scikit-learn: pip install scikit-learn.") from error
    digits = load_digits()
    if num_train + num_validation > len(digits.images):
        raise UserError(f"offline_data: digits: {num_train} + {num_validation} images, but there are 1,797.")
    splits = {"train": range(num_train), "validation": range(num_train, num_train + num_validation)}
    for split, indices in splits.items():
        for index in indices:
            folder = os.path.join(path, split, str(digits.target[index]))
            os.makedirs(folder, exist_ok=True)
            pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
            image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BICUBIC)
            image.convert("RGB").save(os.path.join(folder, f"{index:04d}.png"))
    return path


OFFLINE_DATA_WRITERS = {"digits": write_digits}


def prepare_offline_data(offline_data: dict, output_dir: str) -> list[str]:
    """Writes each `{name: {path, ...options}}` entry whose folder does not exist yet (under a temporary name,
    renamed when complete, so an interrupted write is redone); returns the folders written now."""
    written = []
    for name, options in offline_data.items():
        if name not in OFFLINE_DATA_WRITERS:
            raise UserError(f"offline_data: {name!r}: choose one of {', '.join(OFFLINE_DATA_WRITERS)}.")
        writer, options = OFFLINE_DATA_WRITERS[name], dict(options or {})
        path = options.pop("path", os.path.join("{output_dir}", "data", name)).replace("{output_dir}", output_dir)
        unknown = sorted(set(options) - set(inspect.signature(writer).parameters))
        if unknown:
            raise UserError(f"offline_data: {name}: unknown option(s) {', '.join(unknown)}.")
        if os.path.isdir(path):
            continue
        temporary = os.path.normpath(path) + ".incomplete"
        shutil.rmtree(temporary, ignore_errors=True)
        writer(temporary, **options)
        os.replace(temporary, path)
        written.append(path)
    return written
