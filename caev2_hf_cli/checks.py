# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Checks the commands make before anything heavy is built: they read no more than file names and a few image
headers, and raise `UserError` naming the problem and its fix."""

import json
import os

from .errors import UserError


# The names of caev2_hf.CAEV2_PRESETS (tests/test_arguments.py checks they agree): a preset is refused at parse time,
# before the model code is imported.
PRESET_NAMES = ("tiny", "small", "base", "large")


def check_preset(name: str | None, flag: str) -> None:
    if name is not None and name not in PRESET_NAMES:
        raise UserError(f"{flag} {name}: choose one of {', '.join(PRESET_NAMES)}.")


def parse_json_mapping(value: dict | str | None, flag: str, example: str) -> dict | None:
    """A mapping given in YAML arrives as a dict, on the command line as JSON text: both become a dict."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise UserError(f"{flag}={value!r} is not JSON: write e.g. '{example}' on the command line.") from error


def check_positive(**values: float | None) -> None:
    """Refuses a size, count or rate that is not > 0 (None means unset and passes)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise UserError(f"--{name} {value}: must be greater than 0.")


def check_rate(**values: float) -> None:
    """Refuses a drop rate or probability of dropping outside [0, 1) (1 would drop everything)."""
    for name, value in values.items():
        if not 0 <= value < 1:
            raise UserError(f"--{name} {value}: must lie in [0, 1) (0: off).")


def check_decay(**values: float) -> None:
    """Refuses a per-layer learning-rate decay outside (0, 1]: 1 gives every layer the same rate, 0 freezes all but
    the top, and above 1 the lower layers would learn faster than the head."""
    for name, value in values.items():
        if not 0 < value <= 1:
            raise UserError(f"--{name} {value}: must lie in (0, 1] (1: the same learning rate for every layer).")


def check_image_folder(path: str, flag: str, at_least: int = 1, verify: int = 0) -> int:
    """Refuses a folder that does not exist or holds no image file; returns how many it holds, counting up to
    `at_least` only (a big folder is not walked to its end).

    With `verify` > 0, images are opened (header checks only) until one opens, at most `verify` of them: a folder in
    which none opens is refused too. Costs milliseconds, before any model is built.
    """
    if not os.path.exists(path):
        where = "" if os.path.isabs(path) else f" (relative paths start at {os.getcwd()})"
        raise UserError(f"{flag} {path}: no such folder. Check the path{where}.")
    if not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a folder: give a folder of images (one subfolder per class).")
    from PIL import Image  # cheap, and only where a folder is checked

    extensions = set(Image.registered_extensions())
    images, other = [], None
    for root, folders, names in os.walk(path):
        folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
        for name in sorted(names):
            if os.path.splitext(name)[1].lower() in extensions:
                images.append(os.path.join(root, name))
            else:
                other = other or os.path.join(root, name)
        if len(images) >= max(at_least, verify):
            break
    if not images:
        found = f"only other files, e.g. {os.path.relpath(other, path)}" if other else "no file at all"
        raise UserError(
            f"{flag} {path} holds no image files ({found}). Put images there (.jpg, .png, ...; one subfolder per "
            "class), or point to the folder that holds them."
        )
    if verify:
        problems = []
        for image in images[:verify]:
            try:
                with Image.open(image) as opened:
                    opened.verify()
                break
            except Exception as error:  # any decoder error means: not a usable image
                problems.append(f"{os.path.relpath(image, path)} ({type(error).__name__})")
        else:
            shown = ", ".join(problems[:3]) + (", ..." if len(problems) > 3 else "")
            raise UserError(
                f"{flag} {path}: none of the {len(problems)} image file(s) tried opens ({shown}): they are corrupt "
                "or not images. Replace them with readable images."
            )
    return min(len(images), at_least)


CONFIG_NAME = "config.json"  # what `save_pretrained` writes: a folder holds a saved model when it holds this
SAVED_MODEL = "the folder a model was saved to (save_pretrained, run_pretrain.py's final/, the converter's output)"


def check_model_path(model: str, flag: str = "--model", expected: str = SAVED_MODEL, hub_ids: bool = True) -> None:
    """The one check that a model can be loaded, for every command and loader, in one line when it cannot: a local
    folder must hold a saved model (its config.json), with a pointer when it is a run_pretrain.py output folder (the
    model is in its final/) or holds weights alone (a training checkpoint). With `hub_ids`, any other name is a Hub id,
    which must be in the local cache or, unless `HF_HUB_OFFLINE` is set, found on the Hub
    (`hub_access.check_hub_model`: one request).

    A name counts as local when it exists, starts with `.`, `/` or `~`, has more than one `/`, or starts with a folder
    that exists here (`demo_output/fianl`: a typo, shown beside what that folder holds). `flag` names the argument in
    the message (empty: the path alone); `expected` says what to give instead.
    """
    path, subject = os.path.expanduser(model), f"{flag} {model}".strip()
    or_hub_id = " or a Hub id" if hub_ids else ""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, CONFIG_NAME)):
            return
        if os.path.isfile(os.path.join(path, "final", CONFIG_NAME)):
            hint = f" (a run_pretrain.py output folder: its model is in {os.path.join(model, 'final')})"
        elif any(name.endswith((".safetensors", ".bin")) for name in os.listdir(path)):
            hint = " (weights without a config: a training checkpoint, which --resume_from_checkpoint continues)"
        else:
            hint = ""
        raise UserError(f"{subject} holds no {CONFIG_NAME}{hint}: give {expected}.")
    if os.path.exists(path):
        raise UserError(f"{subject} is a file: give the folder that holds {CONFIG_NAME}{or_hub_id}.")
    parent = os.path.dirname(path)
    if not hub_ids or model.startswith((".", "/", "~")) or model.count("/") > 1 or (parent and os.path.isdir(parent)):
        raise UserError(f"{subject}: no such folder{describe_folder(parent)}. Give {expected}{or_hub_id}.")
    from .hub_access import check_hub_model  # imports huggingface_hub: only for a name that is no local path

    check_hub_model(model, flag, expected)


def describe_folder(folder: str, shown: int = 8) -> str:
    """` (runs holds final, pretraining, ...)`: what an existing folder holds, for a path mistyped under it."""
    if not folder or not os.path.isdir(folder):
        return ""
    names = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    if not names:
        return ""
    return f" ({folder} holds {', '.join(names[:shown])}{', ...' if len(names) > shown else ''})"


CAEV2_MODEL_TYPE = "caev2"
ENCODER_SOURCES = "a CAE v2 encoder: run_pretrain.py's final/ folder, the converter's output, or a Hub id"
# Folders these commands write that hold a task model around an encoder, not an encoder.
TASK_MODEL_TYPES = {
    "upernet": "a UperNet segmentation model (what run_semantic_segmentation.py writes)",
    "lw_detr": "an LW-DETR detector (what run_object_detection.py writes)",
}
TASK_HEAD_SUFFIXES = (
    "ForSemanticSegmentation",
    "ForUniversalSegmentation",
    "ForObjectDetection",
    "ForDepthEstimation",
)


def describe_non_encoder(model_type: str | None, architectures: list[str] | None, caev2_only: bool) -> str | None:
    """What a model of this config is when a command that takes an encoder cannot use it (None: it can). Without
    `caev2_only`, any transformers vision encoder is usable; task models around an encoder never are."""
    architecture = (architectures or [None])[0]
    if model_type in TASK_MODEL_TYPES:
        return TASK_MODEL_TYPES[model_type]
    if architecture and architecture.endswith(TASK_HEAD_SUFFIXES):
        return f"a {architecture} task model"
    if caev2_only and model_type != CAEV2_MODEL_TYPE:
        return f"a {model_type or 'model_type-less'} model" + (f" ({architecture})" if architecture else "")
    return None


def check_encoder_folder(model: str, flag: str = "--model", caev2_only: bool = False) -> None:
    """Refuses a local folder whose config.json holds no usable encoder (`describe_non_encoder`), naming what it
    holds and what to give instead; a Hub id passes (its config is checked when loaded)."""
    path = os.path.join(os.path.expanduser(model), "config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as file:
        try:
            config = json.load(file)
        except json.JSONDecodeError as error:
            raise UserError(f"{flag} {model}: its config.json is not valid JSON ({error}).") from error
    found = describe_non_encoder(config.get("model_type"), config.get("architectures"), caev2_only)
    if found is not None:
        raise UserError(not_an_encoder_message(model, found, caev2_only, flag))


def not_an_encoder_message(model: str, found: str, caev2_only: bool, flag: str = "--model") -> str:
    if caev2_only:
        return f"{flag} {model} holds {found}, not a CAE v2 checkpoint: give {ENCODER_SOURCES}."
    return f"{flag} {model} holds {found}, not an image encoder: give {ENCODER_SOURCES} (or another vision encoder)."
