"""A saved folder loads with trust_remote_code=True in a process that cannot import caev2_hf."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from conftest import BLOCK_CAEV2_HF, build_tiny_config

from caev2_hf import CAEv2ForPreTraining


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
