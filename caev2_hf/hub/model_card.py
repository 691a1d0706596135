# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
"""Model cards for CAE v2 checkpoints, all rendered from `model_card_template.md` (converted, trained or pushed).
`caev2-model-cards --output_dir model_cards [--namespace my-org]` writes one per official size
(`python -m caev2_hf.hub.model_card` runs the same).
"""

import argparse
import re
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from caev2_hf_cli.hub import parse_model_card_arguments
from caev2_hf_cli.parsing import run_command

from ..configuration_caev2 import CAEV2_PRESETS, CAEv2Config
from ..modeling_caev2 import CAEv2Model


TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
PAPER_URL = "https://arxiv.org/abs/2211.09799"
PAPER_SOURCE = "Reported by the CAE v2 paper (Table 4, Table 5); not yet reproduced with this code"
# What a folder holds, by the head class it was saved from (`config.architectures`).
CONTENTS = {
    "CAEv2Model": "the **encoder**",
    "CAEv2ForPreTraining": "the **full pretraining model** (encoder, latent regressor, head and frozen CLIP teacher)",
    "CAEv2ForImageClassification": "the encoder with a **classification head**",
}
# The card's list of evaluations sits between these markers, so `add_eval_results` rewrites it with the model-index.
EVALUATIONS_START, EVALUATIONS_END = "<!-- caev2_hf:evaluations -->", "<!-- /caev2_hf:evaluations -->"
NO_EVALUATION = "No evaluation yet."
TRAINING_DETAILS_HEADING = "### This checkpoint"
TAGS = ["caev2", "vision", "vit", "self-supervised-learning", "masked-image-modeling", "clip-distillation"]

# How the Hub's model-index describes each result: (task type, task name, dataset id, dataset name, metric type,
# metric name).
RESULT_FIELDS = {
    "imagenet_linear_probe_top1": (
        "image-classification", "Linear probing", "ILSVRC/imagenet-1k", "ImageNet-1k", "accuracy", "Top-1 (LIN)"
    ),
    "imagenet_finetune_top1": (
        "image-classification", "Fine-tuning", "ILSVRC/imagenet-1k", "ImageNet-1k", "accuracy", "Top-1 (FT)"
    ),
    "ade20k_miou": ("image-segmentation", "Semantic segmentation", "scene_parse_150", "ADE20K", "mean_iou", "mIoU"),
    "coco_box_ap": ("object-detection", "Mask R-CNN 1x", "coco", "COCO", "map", "AP box"),
    "coco_mask_ap": ("image-segmentation", "Mask R-CNN 1x", "coco", "COCO", "map", "AP mask"),
}  # fmt: skip
# docs/method.md#paper-results: CAE v2+ (visible + masked supervision, the official recipe and presets), 300 epochs of ImageNet-1k.
PAPER_RESULTS = {
    "tiny": {"imagenet_linear_probe_top1": 69.3, "imagenet_finetune_top1": 77.8, "ade20k_miou": 44.7},
    "small": {
        "imagenet_linear_probe_top1": 77.5, "imagenet_finetune_top1": 83.1, "ade20k_miou": 49.7,
        "coco_box_ap": 49.0, "coco_mask_ap": 42.2,
    },
    "base": {
        "imagenet_linear_probe_top1": 80.6, "imagenet_finetune_top1": 85.3, "ade20k_miou": 52.9,
        "coco_box_ap": 52.0, "coco_mask_ap": 44.9,
    },
    "large": {"imagenet_linear_probe_top1": 81.7, "imagenet_finetune_top1": 86.7, "ade20k_miou": 55.9},
}  # fmt: skip
# docs/method.md#paper-results: CAE v2 with visible-only supervision (paper Table 1), for the card's prose only: another objective.
PAPER_VISIBLE_ONLY_RESULTS = {
    "tiny": {"imagenet_linear_probe_top1": 68.8, "imagenet_finetune_top1": 77.4, "ade20k_miou": 44.2},
    "small": {"imagenet_linear_probe_top1": 77.3, "imagenet_finetune_top1": 82.8, "ade20k_miou": 49.1},
    "base": {"imagenet_linear_probe_top1": 80.5, "imagenet_finetune_top1": 85.2, "ade20k_miou": 53.1},
}


def build_eval_results(results: dict[str, float], source_name: str | None, source_url: str | None) -> list[EvalResult]:
    """Model-index entries for `results` (keys of `RESULT_FIELDS`); numbers not measured here name their source."""
    unknown = sorted(set(results) - set(RESULT_FIELDS))
    if unknown:
        raise ValueError(f"Unknown result names {unknown}: use keys of RESULT_FIELDS ({sorted(RESULT_FIELDS)}).")
    entries = []
    for name, value in results.items():
        task_type, task_name, dataset_type, dataset_name, metric_type, metric_name = RESULT_FIELDS[name]
        entries.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=value,
                source_name=source_name,
                source_url=source_url,
            )
        )
    return entries


def format_evaluations(eval_results: list[EvalResult] | None) -> str:
    """The card's evaluations block: a table of the model-index entries measured here (the paper's numbers have
    their own table), nothing when only the paper's exist, else "No evaluation yet."."""
    own = [result for result in eval_results or [] if result.source_url != PAPER_URL]
    if not own:
        return "" if eval_results else NO_EVALUATION
    rows = [
        f"| {result.task_name or result.task_type} | {result.dataset_name or result.dataset_type}"
        f"{f' ({result.dataset_split})' if result.dataset_split else ''} | {result.metric_name or result.metric_type} "
        f"| {result.metric_value} |"
        for result in own
    ]
    header = "Evaluated with caev2_hf (the model-index of this card holds these numbers):"
    return "\n".join([header, "", "| Evaluation | Dataset | Metric | Value |", "|---|---|---|---|", *rows])


def evaluations_block(eval_results: list[EvalResult] | None) -> str:
    return f"{EVALUATIONS_START}\n{format_evaluations(eval_results)}\n{EVALUATIONS_END}"


def count_encoder_parameters(config: CAEv2Config) -> int:
    """Trainable encoder parameters (fixed tables are buffers), counted on the meta device without memory."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in CAEv2Model(config).parameters())


def describe_supervised_tokens(config: CAEv2Config) -> str:
    """`"[CLS], visible and masked"` for the supervised token groups (paper Eq. 1 switches)."""
    groups = (
        ("[CLS]", config.supervise_cls),
        ("visible", config.supervise_visible),
        ("masked", config.supervise_masked),
    )
    names = [name for name, supervised in groups if supervised]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def render_model_card(
    config: CAEv2Config,
    size: str | None = None,
    model_id: str | None = None,
    results: dict[str, float] | None = None,
    base_model: str | None = None,
    datasets: tuple[str, ...] | list[str] = ("ILSVRC/imagenet-1k",),
    training_details: str | None = None,
    license: str = "apache-2.0",
    eval_results: list[EvalResult] | None = None,
    usage_path: str | None = None,
    picture: str | None = None,
    mask_strategy: str = "block",
    authors_weights: bool = False,
    conversion: dict | None = None,
) -> ModelCard:
    """The card of one checkpoint, from the single template.

    Args:
        config: The checkpoint's configuration (architecture, mask count, teacher).
        size: Official preset the checkpoint follows (`tiny|small|base|large`): names it, and shows the paper's
            results for the authors' weights of that size as a reference.
        model_id: Hub id used in the usage snippets; defaults to `caev2-vit-{size}`.
        results: Our own evaluations (keys of `RESULT_FIELDS`, values in %); they replace the paper's numbers in the
            model-index, whose every entry names its source.
        base_model: Hub id of the checkpoint this one was trained from, if any.
        datasets: Hub ids of the pretraining data; empty for local data (the card then says so, never ImageNet).
        training_details: Free text on how this checkpoint was trained (steps, batch, data), shown under the recipe.
        license: License id of the weights.
        eval_results: Model-index entries to keep as they are (e.g. read from the card of the folder a checkpoint
            comes from); they replace `results` and the paper's numbers.
        usage_path: What the usage snippets load: a Hub id or the folder's real path; defaults to `model_id`.
        picture: Path (relative to the card) or URL of a PNG from `caev2-visualize`, shown under the
            introduction; none by default.
        mask_strategy: How pretraining laid out its masks (`run_pretrain.py --mask_strategy`; the paper's: block).
        authors_weights: These are the authors' released weights of `size` (the converter's output): only then does
            the model-index hold the paper's numbers, named as their source. Other weights of the same shape
            (a run of run_pretrain.py, say) get the paper's table as a reference for the architecture only.
        conversion: The converter's record (`conversion.json`: the authors' file and its sha256), quoted in the card.
    """
    if size is not None and size not in CAEV2_PRESETS:
        raise ValueError(f"Unknown size {size!r}: choose one of {sorted(CAEV2_PRESETS)}.")
    model_id = model_id or (f"caev2-vit-{size}" if size else "caev2-vit")
    if eval_results:
        eval_results = list(eval_results)
    elif results:
        eval_results = build_eval_results(results, None, None)
    elif authors_weights:
        eval_results = build_eval_results(PAPER_RESULTS.get(size, {}), PAPER_SOURCE, PAPER_URL)
    else:
        eval_results = []
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        license=license,
        tags=list(TAGS),
        datasets=list(datasets),
        base_model=base_model,
        model_name=model_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_id=usage_path or model_id,
        size=size,
        config=config,
        num_parameters=count_encoder_parameters(config),
        contents=CONTENTS[(config.architectures or ["CAEv2Model"])[0]],
        supervised_tokens=describe_supervised_tokens(config),
        mask_strategy=mask_strategy,
        mask_percent=round(100 * config.num_masking_patches / config.num_patches),
        datasets=list(datasets),
        evaluations=evaluations_block(eval_results),
        has_own_results=any(result.source_url != PAPER_URL for result in eval_results),
        paper_results=PAPER_RESULTS.get(size),
        paper_visible_only_results=PAPER_VISIBLE_ONLY_RESULTS.get(size),
        training_details=training_details,
        paper_url=PAPER_URL,
        picture=picture,
        authors_weights=authors_weights,
        conversion=conversion,
    )


def write_model_card(folder: str | Path, config: CAEv2Config, **kwargs) -> Path:
    """Render the card (keyword arguments as `render_model_card`) to `folder/README.md`, the Hub's card file."""
    path = Path(folder) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    render_model_card(config, **kwargs).save(path)
    return path


def read_card_facts(folder: str | Path) -> dict:
    """What the card of a saved folder knows that its weights do not: its `model_name`, and as `render_model_card`
    keyword arguments the pretraining data (`datasets`, empty for local data), the evaluations (`eval_results`),
    `base_model` and the "This checkpoint" paragraph (`training_details`: data, updates, batch, loss). Empty without
    a card."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return {}
    card = ModelCard.load(path)
    facts = {"datasets": list(card.data.datasets or []), "model_name": card.data.model_name}
    if card.data.eval_results:
        facts["eval_results"] = list(card.data.eval_results)
    if card.data.base_model:
        facts["base_model"] = card.data.base_model
    found = re.search(rf"^{re.escape(TRAINING_DETAILS_HEADING)}\n+(.*?)\n*(?=^## |\Z)", card.text, re.M | re.S)
    if found and found.group(1).strip():
        facts["training_details"] = found.group(1).strip()
    return facts


def update_evaluations_in_body(text: str, eval_results: list[EvalResult] | None) -> str:
    """The card's body with its evaluations block rewritten from `eval_results` (added at the end if it has none)."""
    block = evaluations_block(eval_results)
    pattern = re.compile(rf"{re.escape(EVALUATIONS_START)}.*?{re.escape(EVALUATIONS_END)}", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    if NO_EVALUATION in text:
        return text.replace(NO_EVALUATION, block, 1)
    return f"{text.rstrip()}\n\n## Results\n\n{block}\n"


def add_eval_results(folder: str | Path, eval_results: list[EvalResult]) -> Path:
    """Adds `eval_results` to the model-index of `folder/README.md` and to the card's body, creating a bare card when
    there is none.

    An entry replaces one of the same task, dataset and metric name (e.g. the paper's number once it is reproduced);
    the body's evaluations table is rewritten from the model-index, the rest of the card is kept as it was.
    """
    path = Path(folder) / "README.md"
    name = Path(folder).resolve().name
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData(model_name=name))
    card.data.model_name = card.data.model_name or name
    replaced = {(result.task_name, result.dataset_type, result.metric_name) for result in eval_results}
    kept = [
        result
        for result in card.data.eval_results or []
        if (result.task_name, result.dataset_type, result.metric_name) not in replaced
    ]
    card.data.eval_results = kept + list(eval_results)
    card.text = update_evaluations_in_body(card.text, card.data.eval_results)
    card.save(path)
    return path


def write_size_cards(output_dir: str | Path, namespace: str | None = None) -> list[Path]:
    """One card per official size, `caev2-vit-{size}.md`, with ids `{namespace}/caev2-vit-{size}`: the cards of the
    authors' weights, so their model-index holds the paper's numbers."""
    paths = []
    for size in CAEV2_PRESETS:
        model_id = f"{namespace}/caev2-vit-{size}" if namespace else f"caev2-vit-{size}"
        path = Path(output_dir) / f"caev2-vit-{size}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        config = CAEv2Config.from_preset(size)
        render_model_card(config, size=size, model_id=model_id, authors_weights=True).save(path)
        paths.append(path)
    return paths


def main(args: argparse.Namespace) -> None:
    """Writes the cards, on arguments from `caev2_hf_cli.hub.parse_model_card_arguments`."""
    for path in write_size_cards(args.output_dir, args.namespace):
        print(path)


if __name__ == "__main__":  # the command `caev2-model-cards`, which starts faster (it parses before torch)
    run_command(main, run_command(parse_model_card_arguments))
