"""A saved folder loads with trust_remote_code=True in a process that cannot import caev2_hf."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from conftest import BLOCK_CAEV2_HF, build_tiny_config
from PIL import Image
from transformers import UperNetForSemanticSegmentation, pipeline

from caev2_hf import CAEv2ForPreTraining
from caev2_hf.evaluation.segmentation.model import build_segmentation_image_processor, load_segmentation_model


LOADER = BLOCK_CAEV2_HF + textwrap.dedent(
    """
    import sys

    import torch
    from transformers import AutoModel, AutoModelForPreTraining

    folder = sys.argv[1]
    inputs = torch.load(folder + "/inputs.pt")
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    pretraining = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    assert "caev2_hf" not in sys.modules
    with torch.no_grad():
        hidden = encoder(inputs["pixel_values"]).last_hidden_state
        outputs = pretraining(**inputs)  # targets from the teacher saved in the folder
    saved = {"hidden": hidden, "logits": outputs.logits, "loss": outputs.loss, "class": type(encoder).__module__}
    torch.save(saved, folder + "/outputs.pt")
    """
)


def test_remote_code_loads_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(build_tiny_config()).eval()
    model.save_pretrained(tmp_path)
    assert set(json.loads((tmp_path / "config.json").read_text())["auto_map"]) >= {"AutoModel", "AutoConfig"}
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3:9] = True
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "bool_masked_pos": mask}
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", LOADER, str(tmp_path)], check=True, cwd=tmp_path, env=env, timeout=300)
    outputs = torch.load(tmp_path / "outputs.pt")
    assert outputs["class"].startswith("transformers_modules")
    with torch.no_grad():
        torch.testing.assert_close(outputs["hidden"], model.caev2(inputs["pixel_values"]).last_hidden_state)
        expected = model(**inputs)
        torch.testing.assert_close(outputs["logits"], expected.logits)
        torch.testing.assert_close(outputs["loss"], expected.loss, rtol=0, atol=1e-6)


SEGMENTATION_LOADER = BLOCK_CAEV2_HF + textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForSemanticSegmentation, pipeline

    folder = sys.argv[1]
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True, device="cpu")
    assert "caev2_hf" not in sys.modules
    with torch.no_grad():
        logits = model(torch.load(folder + "/inputs.pt")).logits
    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    masks = {segment["label"]: np.asarray(segment["mask"]) > 0 for segment in segmenter(image)}
    torch.save({"logits": logits, "masks": masks, "class": type(model).__module__}, folder + "/outputs.pt")
    """
)


def test_segmentation_folder_loads_without_the_package(tmp_path):
    """UperNet's backbone_config names `model_type: "caev2"`, which transformers cannot resolve without the package:
    the folder's auto_map names CAE v2's UperNet classes, whose code the folder carries."""
    torch.manual_seed(0)
    model, _ = load_segmentation_model(
        None, 3, {0: "ground", 1: "sky", 2: "tree"}, 32, decoder_channels=16, auxiliary_channels=8,
        random_encoder_config=build_tiny_config(num_hidden_layers=4),
    )  # fmt: skip
    model.eval().save_pretrained(tmp_path)
    build_segmentation_image_processor(model, 32, reduce_labels=False).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "upernet" and saved["backbone_config"]["model_type"] == "caev2"
    assert set(saved["auto_map"]) == {"AutoConfig", "AutoModelForSemanticSegmentation"}
    inputs = torch.randn(2, 3, 32, 32)
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    subprocess.run(
        [sys.executable, "-c", SEGMENTATION_LOADER, str(tmp_path)], check=True, cwd=tmp_path, env=env, timeout=300
    )
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=False)
    assert outputs["class"].startswith("transformers_modules")
    with torch.no_grad():
        torch.testing.assert_close(outputs["logits"], model(inputs).logits)
    segmenter = pipeline("image-segmentation", model=str(tmp_path), device="cpu")  # with the package: its own code
    assert type(segmenter.model) is UperNetForSemanticSegmentation
    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    expected = {segment["label"]: np.asarray(segment["mask"]) > 0 for segment in segmenter(image)}
    assert outputs["masks"].keys() == expected.keys()
    for label, mask in expected.items():
        np.testing.assert_array_equal(outputs["masks"][label], mask)
