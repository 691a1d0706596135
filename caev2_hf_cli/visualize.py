# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Pictures of what a CAE v2 encoder learned: one PNG per image, with labelled panels.

    caev2-visualize --model demo_output/final --image photo.jpg [more.jpg ...] --output_dir pictures

Panels, on the centre crop the model sees:
- the input, and the block mask pretraining would draw for it (`caev2_hf.data.masking.build_mask_generator`);
- for a pretraining folder whose targets can be computed (a `CAEv2ForPreTraining` checkpoint, or an encoder folder
  with a `pretraining/` subfolder, as `run_pretrain.py` writes): the cosine similarity between each patch's prediction
  and the teacher's target, for visible and for masked patches, with their means (1 - the loss's cosine terms);
- the first three PCA components of the encoder's patch features as RGB (as DINOv2 shows them);
- the last block's [CLS] attention to every patch, one panel per head.

A segmentation output folder shows its fine-tuned backbone (blocks with their relative position bias, features
before the neck). A folder whose weights would leave the encoder randomly initialised is refused.

Runs on the CPU, at the model's resolution or any multiple of the patch size (`--image_size`; the encoder then
uses an exact sin-cos table for the new grid, and the pretraining panels, trained at one grid, are left out).
matplotlib is needed for the PNGs (`pip install "caev2_hf[plots]"`); without it the numbers are still printed.
`python -m caev2_hf.visualize` is the same command (slower to start: it imports torch before it parses).
"""

import argparse

from .checks import check_model_path, check_positive


def parse_visualize_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's arguments, checked (the model folder exists, the size is positive); `--help` exits here."""
    parser = argparse.ArgumentParser(
        prog="caev2-visualize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="Hub id or folder of a CAE v2 checkpoint (any head, backbone or segmentation output).",
    )
    parser.add_argument("--image", nargs="+", required=True, help="One or more image files.")
    parser.add_argument("--output_dir", required=True, help="Where <image name>.png are written.")
    parser.add_argument("--image_size", type=int, help="Crop size in pixels, a multiple of the patch size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the masks (one generator for all images).")
    parser.add_argument(
        "--load_teacher", action="store_true",
        help="Load the CLIP teacher from config.teacher_name_or_path (a download) when the folder holds none with weights.",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda.")
    arguments = parser.parse_args(argv)
    check_model_path(arguments.model)
    check_positive(image_size=arguments.image_size)
    return arguments
