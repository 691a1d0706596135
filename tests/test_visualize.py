"""Tests for caev2_hf.visualize: every panel against a hand computation, and the command on saved folders."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_config
from PIL import Image

from caev2_hf import CAEv2ForImageClassification, CAEv2ForPreTraining, CAEv2Model, visualize
from caev2_hf.data.masking import build_mask_generator
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.visualize import parse_visualize_arguments


REPO_ROOT = Path(__file__).resolve().parents[1]


def random_image(size: int = 32, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def hand_pca(features: np.ndarray) -> np.ndarray:
    """PCA by the eigenvectors of the covariance matrix (not an SVD), with the same sign and [0, 1] conventions."""
    centred = features - features.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    top = eigenvectors[:, np.argsort(eigenvalues)[::-1][:3]]  # (dim, 3)
    top = top * np.sign(top[np.abs(top).argmax(axis=0), range(3)])
    projected = centred @ top
    return (projected - projected.min(axis=0)) / (projected.max(axis=0) - projected.min(axis=0))


def test_pca_panel_equals_a_hand_computation():
    torch.manual_seed(0)
    encoder = CAEv2Model(build_tiny_config()).eval()
    image = random_image()
    pixel_values = visualize.normalise(image, encoder.config)
    with torch.no_grad():
        features = encoder(pixel_values).last_hidden_state[0, 1:].double().numpy()
    pca, _ = visualize.encoder_panels(encoder, pixel_values)
    assert pca.shape == (4, 4, 3)
    np.testing.assert_allclose(pca.reshape(16, 3), hand_pca(features), atol=1e-6)
    # each channel spans [0, 1]: the patch lowest on a component is black in it, the highest full
    np.testing.assert_allclose(pca.reshape(16, 3).min(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(pca.reshape(16, 3).max(axis=0), 1, atol=1e-12)


def test_normalise_uses_the_student_statistics():
    config = build_tiny_config()
    image = random_image()
    pixel_values = visualize.normalise(image, config)
    expected = (image[3, 5, 1] / 255 - config.image_mean[1]) / config.image_std[1]
    assert pixel_values.shape == (1, 3, 32, 32)
    assert pixel_values[0, 1, 3, 5].item() == pytest.approx(expected, abs=1e-6)


def test_attention_panel_is_the_last_blocks_cls_row_per_head():
    torch.manual_seed(0)
    encoder = CAEv2Model(build_tiny_config()).eval()
    pixel_values = visualize.normalise(random_image(), encoder.config)
    last = encoder.encoder.layers[-1]
    captured = {}
    handle = last.layernorm_before.register_forward_hook(lambda module, args, output: captured.update(x=output))
    _, attention = visualize.encoder_panels(encoder, pixel_values)
    handle.remove()
    normed, heads = captured["x"][0], encoder.config.num_attention_heads
    with torch.no_grad():
        query = last.attention.q_proj(normed).view(17, heads, -1).transpose(0, 1)
        key = last.attention.k_proj(normed).view(17, heads, -1).transpose(0, 1)
        weights = torch.softmax(query @ key.transpose(1, 2) * last.attention.scaling, dim=-1)
    assert attention.shape == (heads, 4, 4)
    np.testing.assert_allclose(attention.reshape(heads, 16), weights[:, 0, 1:].numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"mask_strategy": "random"},
        {"image_size": 64, "num_masking_patches": 40, "teacher_grid_resampling": "bilinear"},
    ],
)
def test_mask_panel_shows_exactly_num_masking_patches(overrides):
    config = build_tiny_config(**overrides)
    patch, grid = config.patch_size, config.image_size // config.patch_size
    mask = visualize.draw_pretraining_mask(config, config.image_size, np.random.default_rng(3))
    # the pretraining generator itself, with the same draws
    np.testing.assert_array_equal(mask, build_mask_generator(config)(np.random.default_rng(3)))
    image = random_image(config.image_size)
    shown = visualize.show_mask(image, mask, patch)
    patches_of = lambda array: array.reshape(grid, patch, grid, patch, 3).transpose(0, 2, 1, 3, 4).reshape(grid**2, -1)  # noqa: E731
    changed = np.any(patches_of(shown) != patches_of(image), axis=1)
    assert changed.sum() == config.num_masking_patches
    np.testing.assert_array_equal(changed, mask)
    masked_pixel = shown[(np.flatnonzero(mask)[0] // grid) * patch, (np.flatnonzero(mask)[0] % grid) * patch]
    original = image[(np.flatnonzero(mask)[0] // grid) * patch, (np.flatnonzero(mask)[0] % grid) * patch]
    np.testing.assert_array_equal(masked_pixel, np.round(0.3 * original.astype(np.float32) + 0.7 * 128))


def test_mask_at_another_resolution_keeps_the_ratio():
    config = build_tiny_config()  # 6 of 16 patches
    mask = visualize.draw_pretraining_mask(config, 64, np.random.default_rng(0))
    assert mask.shape == (64,) and mask.sum() == round(6 * 64 / 16)


@pytest.mark.parametrize("loss_type", ["cosine", "mse"])
def test_similarity_map_mean_equals_the_loss_cosine_terms(fixed_mask, loss_type):
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(build_tiny_config(loss_type=loss_type)).eval()
    pixel_values = visualize.normalise(random_image(), model.config)
    mask = fixed_mask[2].numpy()  # patches 0, 3, 6, 9, 12, 15 masked
    targets = torch.nn.functional.normalize(torch.randn(1, 17, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    similarity = visualize.similarity_map(model, pixel_values, mask, targets)
    with torch.no_grad():
        outputs = model(pixel_values, bool_masked_pos=torch.from_numpy(mask)[None], target_features=targets)
    # per patch: the prediction for that patch (rank in its group) against that patch's own target (image order)
    logits, visible, masked = outputs.logits[0], list(np.flatnonzero(~mask)), list(np.flatnonzero(mask))
    for patch in range(16):
        row = 1 + visible.index(patch) if patch in visible else 1 + len(visible) + masked.index(patch)
        assert similarity.per_patch[patch] == pytest.approx(float(logits[row] @ targets[0, 1 + patch]), abs=1e-5)
    assert similarity.visible_mean == pytest.approx(similarity.per_patch[~mask].mean())
    assert similarity.masked_mean == pytest.approx(similarity.per_patch[mask].mean())
    if loss_type == "cosine":  # the loss's cosine terms: 1 - mean cosine per group
        assert similarity.visible_mean == pytest.approx(1 - outputs.visible_loss.item(), abs=1e-6)
        assert similarity.masked_mean == pytest.approx(1 - outputs.masked_loss.item(), abs=1e-6)
        assert similarity.cls == pytest.approx(1 - outputs.cls_loss.item(), abs=1e-6)


def test_compute_panels_with_the_models_teacher_uses_its_targets():
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(build_tiny_config()).eval()
    image = random_image()
    panels = visualize.compute_panels(model.caev2, image, np.random.default_rng(0), model)
    pixel_values = visualize.normalise(image, model.config)
    with torch.no_grad():
        outputs = model(pixel_values, bool_masked_pos=torch.from_numpy(panels.mask)[None])
    assert panels.similarity.visible_mean == pytest.approx(1 - outputs.visible_loss.item(), abs=1e-6)
    assert panels.similarity.masked_mean == pytest.approx(1 - outputs.masked_loss.item(), abs=1e-6)
    assert "random teacher" in panels.note


def test_compute_panels_without_teacher_weights_says_why():
    """A real-teacher run's folder holds no teacher weights: the panels say so (and --load_teacher fetches them)."""
    model = CAEv2ForPreTraining(build_tiny_config(use_random_teacher=False)).eval()
    panels = visualize.compute_panels(model.caev2, random_image(), np.random.default_rng(0), model)
    assert panels.similarity is None and "load_teacher" in panels.note
    assert len(visualize.panel_titles(panels)) == 3 + model.config.num_attention_heads


def test_other_resolution_gives_encoder_panels_only():
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(build_tiny_config()).eval()
    panels = visualize.compute_panels(model.caev2, random_image(48), np.random.default_rng(0), model)
    assert panels.pca.shape == (6, 6, 3) and panels.cls_attention.shape == (4, 6, 6)
    assert panels.similarity is None and "32 px" in panels.note
    assert panels.mask.sum() == round(6 * 36 / 16)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        visualize.compute_panels(model.caev2, random_image(36), np.random.default_rng(0), model)


def save_tiny_run(folder: Path) -> Path:
    """A folder laid out as run_pretrain.py's final/: the encoder, and the full model in pretraining/."""
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(build_tiny_config())
    model.save_pretrained(folder / "pretraining")
    model.caev2.save_pretrained(folder)
    return folder


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, size in enumerate(sizes):
        path = folder / f"photo{index}.jpg"
        Image.fromarray((np.random.default_rng(index).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def draw(argv: list[str]) -> int:
    """`caev2-visualize ARGV` in this process: the command's parse and checks, then its main."""
    return visualize.main(parse_visualize_arguments(argv))


def png_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_command_on_a_final_folder_writes_one_png_per_image(tmp_path: Path, capsys):
    final = save_tiny_run(tmp_path / "final")
    images = write_images(tmp_path / "images", [(40, 30), (32, 32)])
    assert draw(["--model", str(final), "--image", *images, "--output_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["photo0.png", "photo1.png"]
    # 2 + 2 similarity + PCA + 4 heads = 9 panels: 5 columns, 2 rows of 2.2 inches at 100 dpi
    assert png_size(tmp_path / "out" / "photo0.png") == (1100, 440)
    assert printed.count("cosine to the teacher: visible") == 2 and "mask 6/16 patches" in printed


@pytest.mark.parametrize("model_class", [CAEv2Model, CAEv2ForImageClassification])
def test_command_on_an_encoder_folder_and_another_resolution(tmp_path: Path, capsys, model_class):
    torch.manual_seed(0)
    model_class(build_tiny_config(num_labels=2)).save_pretrained(tmp_path / "encoder")
    images = write_images(tmp_path / "images", [(50, 50)])
    arguments = ["--model", str(tmp_path / "encoder"), "--image", *images, "--output_dir", str(tmp_path / "out")]
    assert draw(arguments + ["--image_size", "48"]) == 0
    assert "cosine" not in capsys.readouterr().out
    # input, mask, PCA + 4 heads = 7 panels: 5 columns, 2 rows
    assert png_size(tmp_path / "out" / "photo0.png") == (1100, 440)
    with pytest.raises(UserError, match="multiple of the patch size"):
        draw(arguments + ["--image_size", "50"])


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, capsys):
    final = save_tiny_run(tmp_path / "final")
    (good,) = write_images(tmp_path / "images", [(32, 32)])
    empty = tmp_path / "images" / "empty.jpg"
    empty.write_bytes(b"")
    arguments = ["--model", str(final), "--output_dir", str(tmp_path / "out")]
    assert draw([*arguments, "--image", str(empty), good, str(tmp_path / "missing.png")]) == 1
    printed = capsys.readouterr()
    assert sorted(os.listdir(tmp_path / "out")) == ["photo0.png"]
    assert f"{empty}: skipped, not a readable image (UnidentifiedImageError" in printed.err
    assert "2 of 3 image(s) skipped." in printed.err and "photo0.png: mask 6/16 patches" in printed.out


def test_command_is_reproducible(tmp_path: Path, capsys):
    final = save_tiny_run(tmp_path / "final")
    images = write_images(tmp_path / "images", [(32, 32)])
    for name in ("a", "b"):
        draw(["--model", str(final), "--image", *images, "--output_dir", str(tmp_path / name)])
    first, second = capsys.readouterr().out.splitlines()
    assert first.split(": ", 1)[1] == second.split(": ", 1)[1]


def test_missing_matplotlib_gives_the_message_not_a_crash(tmp_path: Path):
    final = save_tiny_run(tmp_path / "final")
    images = write_images(tmp_path / "images", [(32, 32)])
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import caev2_hf_commands\n"
        f"sys.argv[1:] = ['--model', {str(final)!r}, '--image', {images[0]!r}, '--output_dir', {str(tmp_path / 'out')!r}]\n"
        "caev2_hf_commands.visualize()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert 'matplotlib is not installed, so no visualisation picture: pip install "caev2_hf[plots]"' in result.stderr
    assert "mask 6/16 patches, cosine to the teacher: visible" in result.stdout  # the numbers still come out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command", [["-m", "caev2_hf.visualize"], ["-c", "import caev2_hf_commands; caev2_hf_commands.visualize()"]]
)
def test_the_module_and_the_console_command_are_the_same_command(tmp_path: Path, command: list[str]):
    result = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0 and "--image_size" in result.stdout and "caev2-visualize" in result.stdout
    result = subprocess.run(
        [sys.executable, *command, "--model", str(tmp_path / "none"), "--image", "a.jpg", "--output_dir", "o"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith(f"error: --model {tmp_path / 'none'}: no such folder")


def test_model_card_embeds_an_optional_picture():
    from caev2_hf.hub.model_card import render_model_card

    config = build_tiny_config()
    with_picture = str(render_model_card(config, picture="pictures/china.png"))
    assert "](pictures/china.png)\n\n*Drawn by `caev2-visualize`.*" in with_picture
    assert with_picture.index("](pictures/china.png)") < with_picture.index("## Model details")
    assert "![" not in str(render_model_card(config))


def test_readme_picture_is_committed_small_and_shown():
    picture = REPO_ROOT / "docs" / "visualize_demo.png"
    assert "](docs/visualize_demo.png)" in (REPO_ROOT / "README.md").read_text()
    assert picture.stat().st_size < 100_000
    assert png_size(picture) == (1100, 440)  # the demo model: 9 panels, 5 columns


VISUALIZE_COMMAND = ["-c", "import caev2_hf_commands; caev2_hf_commands.visualize()"]


def run_visualize(arguments: list[str]) -> subprocess.CompletedProcess:
    """`caev2-visualize ARGUMENTS` as the console command runs it, in a fresh process."""
    return subprocess.run(
        [sys.executable, *VISUALIZE_COMMAND, *arguments], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


def test_command_on_a_segmentation_folder_draws_its_fine_tuned_backbone(tmp_path: Path):
    """A UperNet output folder holds the encoder as `backbone.*`: the pictures show those blocks, with their relative
    position bias, not a random encoder."""
    from caev2_hf.evaluation.segmentation.model import load_segmentation_model

    torch.manual_seed(0)
    CAEv2Model(build_tiny_config(num_hidden_layers=4)).save_pretrained(tmp_path / "final")  # four stages for the neck
    model, _ = load_segmentation_model(
        str(tmp_path / "final"), 2, {0: "ground", 1: "sky"}, 32, decoder_channels=16, auxiliary_channels=8
    )
    torch.manual_seed(1)
    for layer in model.backbone.encoder.layers:  # as if fine-tuned: the bias changes the attention
        torch.nn.init.normal_(layer.relative_position_bias.relative_position_bias_table, std=1.0)
    model.save_pretrained(tmp_path / "segmentation")
    encoder, pretraining = visualize.load_models(str(tmp_path / "segmentation"))
    assert type(encoder).__name__ == "CAEv2Backbone" and pretraining is None
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(encoder.state_dict()[name], tensor, rtol=0, atol=0)
    image = random_image(32)
    panels = visualize.compute_panels(encoder, image, np.random.default_rng(0))
    model.backbone.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model.backbone.eval().encode(visualize.normalise(image, encoder.config), output_attentions=True)
    cls_attention = expected.attentions[-1][0, :, 0, 1:].reshape(-1, 4, 4).numpy()
    np.testing.assert_allclose(panels.cls_attention, cls_attention, rtol=0, atol=1e-6)
    images = write_images(tmp_path / "images", [(32, 32)])
    result = run_visualize(
        ["--model", str(tmp_path / "segmentation"), "--image", *images, "--output_dir", str(tmp_path / "out")]
    )
    assert result.returncode == 0, result.stderr
    assert png_size(tmp_path / "out" / "photo0.png") == (1100, 440)
    assert "missing" not in result.stderr.lower() and "unexpected" not in result.stderr.lower()


def test_a_checkpoint_that_leaves_encoder_weights_missing_is_one_error_line(tmp_path: Path):
    """Weights under names the encoder does not know (here `backbone.*`, as a UperNet saves them) would load as a
    random encoder: the command refuses in one line; so it does for a folder of another model type."""
    from safetensors.torch import load_file, save_file
    from transformers import ResNetConfig

    torch.manual_seed(0)
    CAEv2Model(build_tiny_config()).save_pretrained(tmp_path / "renamed")
    weights = load_file(tmp_path / "renamed" / "model.safetensors")
    renamed = {f"backbone.{name}": tensor for name, tensor in weights.items()}
    save_file(renamed, tmp_path / "renamed" / "model.safetensors", metadata={"format": "pt"})
    ResNetConfig().save_pretrained(tmp_path / "resnet")
    images = write_images(tmp_path / "images", [(32, 32)])
    expected = {
        "renamed": f"error: --model {tmp_path / 'renamed'}: {len(weights)} weights of its CAEv2Model are missing from "
        "the checkpoint (first: embeddings.cls_token), so the pictures would show a random model",
        "resnet": f"error: --model {tmp_path / 'resnet'} holds a 'resnet' model, not CAE v2",
    }
    for folder, message in expected.items():
        result = run_visualize(
            ["--model", str(tmp_path / folder), "--image", *images, "--output_dir", str(tmp_path / "o")]
        )
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "o").exists()
