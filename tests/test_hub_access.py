"""Hub and network failures through the real commands, in subprocesses, without the network (issue 22 #6): each ends
in one line naming what to do (the token, HF_HUB_OFFLINE, the network, the repository), exit status 2, before any
work: no folder converted, no update trained."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image


REPO_ROOT = Path(__file__).resolve().parents[1]
HUB = ["-c", "import caev2_hf_commands; caev2_hf_commands.hub()"]
CONVERT = ["-c", "import caev2_hf_commands; caev2_hf_commands.convert_checkpoint()"]
VISUALIZE = ["-c", "import caev2_hf_commands; caev2_hf_commands.visualize()"]
PRETRAIN = [str(REPO_ROOT / "run_pretrain.py"), str(REPO_ROOT / "configs" / "demo.yaml")]
PROBE = [str(REPO_ROOT / "run_linear_probe.py")]


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def situations(tmp_path_factory) -> dict[str, dict[str, str]]:
    """The environments of the three failures: offline mode, no token (and no saved login), no network (the Hub's
    address refuses connections)."""
    home = tmp_path_factory.mktemp("hf_home")  # no saved login, an empty cache
    base = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    base.update(HF_HOME=str(home), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return {
        "offline": {**base, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test"},
        "no token": {**base, "HF_HUB_OFFLINE": "0"},
        "no network": {
            **base, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"
        },
    }  # fmt: skip


EXPECTED = {
    "offline": "HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it",
    "no token": "no Hugging Face token to upload with; set HF_TOKEN=hf_... (a token with write access",
    "no network": "the Hub cannot be reached (ConnectError: ",
}


def run(command: list[str], environment: dict, cwd: Path) -> str:
    """The command's one error line (asserting exit status 2, no traceback, nothing else on stderr)."""
    result = subprocess.run(
        [sys.executable, *command], env=environment, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder with the files a prepared one holds (their contents do not matter before the upload)."""
    folder = tmp_path_factory.mktemp("prepared")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "configuration_caev2.py",
                 "modeling_caev2.py", "README.md"):  # fmt: skip
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize("situation", list(EXPECTED))
def test_hub_push_fails_in_one_line(situations, prepared, tmp_path, situation):
    line = run([*HUB, "push", "--folder", str(prepared), "--repo_id", "me/caev2"], situations[situation], tmp_path)
    assert EXPECTED[situation] in line, line
    if situation == "offline":
        assert line == (
            "error: --repo_id me/caev2: HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it (the upload needs "
            "the network)."
        )


@pytest.mark.parametrize("situation", list(EXPECTED))
def test_pretraining_with_push_to_hub_is_refused_before_training(situations, tmp_path, situation):
    """Issue 22 #6: the run used to train to its end and fail at the upload."""
    output_dir = tmp_path / "run"
    command = [*PRETRAIN, "--output_dir", str(output_dir), "--demo_dir", str(tmp_path / "images"), "--push_to_hub",
               "true", "--hub_model_id", "me/caev2"]  # fmt: skip
    line = run(command, situations[situation], tmp_path)
    assert line.startswith("error: ") and EXPECTED[situation] in line, line
    if situation == "offline":
        assert line.endswith("or leave out --push_to_hub and upload final/ after the run with `caev2-hub push`.")
    assert not output_dir.exists() and not (tmp_path / "images").exists()  # nothing written, nothing trained


def test_converter_push_is_refused_before_converting(situations, tmp_path):
    torch.save({"model": {}}, tmp_path / "caev2_tiny.pth")
    command = [*CONVERT, "--checkpoint", str(tmp_path / "caev2_tiny.pth"), "--size", "tiny", "--output_dir",
               str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "me/caev2"]  # fmt: skip
    line = run(command, situations["no token"], tmp_path)
    assert EXPECTED["no token"] in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("situation", "expected"),
    [
        ("offline", "error: --model nope: no such folder, and HF_HUB_OFFLINE is set while the Hub model 'nope' is "
                    "not in the local cache. Give the folder a model was saved to (save_pretrained, run_pretrain.py's "
                    "final/, the converter's output) or a Hub model id, or unset "
                    "HF_HUB_OFFLINE to download it."),
        ("no network", "error: --model nope: no such folder. Cannot look up the Hub model 'nope': the Hub cannot be "
                       "reached (ConnectError: "),
    ],
)  # fmt: skip
def test_a_model_that_is_no_folder_and_no_reachable_hub_id_is_one_line(situations, tmp_path, situation, expected):
    """Issue 22 #6: `caev2-visualize --model nope` printed 48 lines about the Hub; every command with --model shares
    the check (caev2_hf_cli.checks.check_model_path)."""
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.jpg")
    visualize = [*VISUALIZE, "--model", "nope", "--image", str(tmp_path / "photo.jpg"), "--output_dir", "pictures"]
    assert run(visualize, situations[situation], tmp_path).startswith(expected)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "cat" / "1.png")
    probe = [*PROBE, "--model", "nope", "--train_dir", "data", "--validation_dir", "data", "--output_dir", "probe"]
    assert run(probe, situations[situation], tmp_path).startswith(expected)


def test_a_hub_id_in_the_local_cache_passes_offline(tmp_path, monkeypatch):
    """What `from_pretrained` would load offline passes the check: the cache's snapshot of the id's main revision."""
    import huggingface_hub

    from caev2_hf_cli.checks import check_model_path

    snapshot = tmp_path / "models--org--caev2" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--caev2" / "refs").mkdir()
    (tmp_path / "models--org--caev2" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_model_path("org/caev2")
    with pytest.raises(ValueError, match="'org/other' is not in the local cache"):
        check_model_path("org/other")


def test_a_name_under_an_existing_folder_is_a_local_path(tmp_path, monkeypatch):
    """`demo_output/fianl` beside `demo_output/final` is a typo of a folder, not a Hub id: say what is there."""
    from caev2_hf_cli.checks import check_model_path

    (tmp_path / "demo_output" / "final").mkdir(parents=True)
    (tmp_path / "demo_output" / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as refused:
        check_model_path("demo_output/fianl")
    assert str(refused.value) == (
        "--model demo_output/fianl: no such folder (demo_output holds checkpoints, final). Give the folder a model "
        "was saved to (save_pretrained, run_pretrain.py's final/, the converter's output) or a Hub id."
    )


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ([], "error: the teacher (teacher_name_or_path) openai/clip-vit-base-patch16: no such folder, and HF_HUB_OFFLINE "
             "is set while the Hub model 'openai/clip-vit-base-patch16' is not in the local cache."),
        (["--model_name_or_path", "org/caev2-pretraining"],
         "error: --model_name_or_path org/caev2-pretraining: no such folder, and HF_HUB_OFFLINE is set"),
    ],
)  # fmt: skip
def test_pretraining_refuses_a_teacher_or_start_it_cannot_fetch(situations, tmp_path, arguments, expected):
    """A fresh run with the real CLIP teacher downloads it once the model is built: offline and not cached, it is
    refused first, as is a --model_name_or_path Hub id."""
    config = str(REPO_ROOT / "configs" / "vit-tiny.yaml")
    command = [str(REPO_ROOT / "run_pretrain.py"), config, "--demo_dir", str(tmp_path / "images"), "--num_demo_images",
               "8", "--per_device_train_batch_size", "2", "--dataloader_num_workers", "0", "--max_steps", "1",
               "--output_dir", str(tmp_path / "run"), *arguments]  # fmt: skip
    assert run(command, situations["offline"], tmp_path).startswith(expected)
    assert not (tmp_path / "run").exists() and not (tmp_path / "images").exists()
