"""Shared fixtures: tiny CAE v2 configs and a tiny random CLIP teacher, so every test runs offline on CPU."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from caev2_hf import CAEv2Config  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_in_a_terminal():
    """SIGINT as Python sets it in a terminal, here and in every command a test starts: a shell that runs the suite
    in the background (`cmd &`, as CI scripts and nohup do) hands it over ignored, and the commands inherit that, so
    the Ctrl-C tests would wait on runs that never see their signal. A handled signal is reset to the default in a
    child at exec, where Python installs its own handler again."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


# Put first in a script run in a fresh process, to show it works where caev2_hf cannot be imported (remote code).
BLOCK_CAEV2_HF = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockCaev2(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "caev2_hf" or name.startswith("caev2_hf."):
                raise ImportError("caev2_hf is blocked in this process")

    sys.meta_path.insert(0, BlockCaev2())
    """
)

TINY_TEACHER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}


def build_tiny_config(**overrides) -> CAEv2Config:
    """A 2-layer, width-32 CAE v2 on 32x32 images (4x4 patches of 8) with a regressor narrowed to 16, as Tiny does."""
    fields = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "regressor_hidden_size": 16,
        "regressor_num_hidden_layers": 2,
        "regressor_num_attention_heads": 2,
        "num_masking_patches": 6,
        "target_hidden_size": 16,
        "drop_path_rate": 0.0,
        "teacher_config": dict(TINY_TEACHER),
        "use_random_teacher": True,
    }
    fields.update(overrides)
    return CAEv2Config(**fields)


def build_tiny_upernet(num_labels: int = 3, **overrides):
    """UperNet (hidden 16, auxiliary 8) on a 4-block tiny CAE v2 backbone."""
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone = build_tiny_config(num_hidden_layers=4, **overrides)
    config = UperNetConfig(backbone_config=backbone, num_labels=num_labels, hidden_size=16, auxiliary_channels=8)
    return UperNetForSemanticSegmentation(config)


@pytest.fixture
def tiny_config() -> CAEv2Config:
    return build_tiny_config()


@pytest.fixture
def pixel_values() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def fixed_mask() -> torch.Tensor:
    """Six masked patches per image, at different places in each image."""
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :6] = True
    mask[1, 10:] = True
    mask[2, ::3][:6] = True
    return mask


@pytest.fixture(scope="session")
def demo_image_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """16 JPEGs of 32 px in two class folders (china, flower), written once per session."""
    from caev2_hf.data.demo import write_demo_image_folder

    return write_demo_image_folder(str(tmp_path_factory.mktemp("demo_image_folder")), num_images=16, image_size=32)


@pytest.fixture(scope="session")
def demo_tar_shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """4 webdataset shards of 8 JPEGs of 32 px (keys jpg / cls), written once per session."""
    from caev2_hf.data.demo import write_demo_tar_shards

    output_dir = str(tmp_path_factory.mktemp("demo_tar_shards"))
    return write_demo_tar_shards(output_dir, num_shards=4, images_per_shard=8, image_size=32)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps its state in process-wide singletons: every test starts and ends with none."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """A script's `main` run here sets torch's thread count for the process (`--torch_num_threads`): every test
    ends with the count it started with, so no test computes on a count an earlier one left."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---- The detection scripts' data and command line


def edited_demo_coco(folder: Path, edit) -> list[str]:
    """The detection demo's data (8 training and 4 held-out images of 64 px) as COCO folders in `folder`, the
    training annotations passed through `edit`; returns the command line's four data arguments."""
    from caev2_hf.evaluation.detection.demo import write_demo_coco

    written = write_demo_coco(str(folder / "coco"), 8, 4, image_size=64, seed=0)
    content = json.loads(Path(written["train"][1]).read_text())
    edit(content)
    Path(written["train"][1]).write_text(json.dumps(content))
    (image_dir, annotations), (validation_dir, validation_annotations) = written["train"], written["validation"]
    return ["--train_image_dir", image_dir, "--train_annotation_file", annotations, "--validation_image_dir",
            validation_dir, "--validation_annotation_file", validation_annotations]  # fmt: skip


def without_demo_data(arguments: list[str]) -> list[str]:
    index = arguments.index("--demo_data")
    return arguments[:index] + arguments[index + 2 :]


def run_script_process(script: str, *arguments: str) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGUMENTS` in a fresh process, from the repository's root, with this checkout's package."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *arguments], capture_output=True, text=True, env=environment,
        timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip


def find_free_port() -> int:
    """A local TCP port no one listens on, for a test's torch.distributed rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
