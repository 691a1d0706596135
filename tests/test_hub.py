"""Tests for caev2_hf/hub.py and caev2_hf/model_card.py: cards, ready-to-push folders, remote code, upload."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from fake_hub import FakeHfApi, install_fake_hub
from huggingface_hub import EvalResult, ModelCard
from PIL import Image
from transformers import AutoImageProcessor

from caev2_hf import CAEv2Config, CAEv2Model
from caev2_hf.hub.model_card import add_eval_results, render_model_card, write_size_cards
from caev2_hf.hub.publish import list_folder_files, main, prepare_from_weights, push_folder
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.hub import parse_publish_arguments


REPO_ROOT = Path(__file__).resolve().parents[1]


def hub(argv: list[str]) -> None:
    """`caev2-hub ARGV` in this process: the command's parse and checks, then its main."""
    main(parse_publish_arguments(argv))


SIZES = ("tiny", "small", "base", "large")
# docs/method.md#paper-results, CAE v2+ (the official recipe): ImageNet-1k LIN / FT top-1, ADE20K mIoU, COCO Mask R-CNN 1x AP box / mask.
PAPER_RESULTS = {
    "tiny": {"Top-1 (LIN)": 69.3, "Top-1 (FT)": 77.8, "mIoU": 44.7},
    "small": {"Top-1 (LIN)": 77.5, "Top-1 (FT)": 83.1, "mIoU": 49.7, "AP box": 49.0, "AP mask": 42.2},
    "base": {"Top-1 (LIN)": 80.6, "Top-1 (FT)": 85.3, "mIoU": 52.9, "AP box": 52.0, "AP mask": 44.9},
    "large": {"Top-1 (LIN)": 81.7, "Top-1 (FT)": 86.7, "mIoU": 55.9},
}
# docs/method.md#paper-results, CAE v2 with visible-only supervision: LIN / FT / ADE20K, shown in the card's prose only.
PAPER_VISIBLE_ONLY = {
    "tiny": "| 68.8 | 77.4 | 44.2 |",
    "small": "| 77.3 | 82.8 | 49.1 |",
    "base": "| 80.5 | 85.2 | 53.1 |",
}


def yaml_header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0].removeprefix("---\n"))


def authors_card(size: str, **kwargs) -> ModelCard:
    """The card of the authors' released weights of `size` (what the per-size cards and the converter write)."""
    return render_model_card(CAEv2Config.from_preset(size), size=size, authors_weights=True, **kwargs)


@pytest.mark.parametrize("size", SIZES)
def test_card_metadata_parses_as_hub_yaml(size):
    card = authors_card(size, model_id=f"my-org/caev2-vit-{size}")
    metadata = yaml_header(str(card))
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-feature-extraction"
    assert metadata["license"] == "apache-2.0"
    assert metadata["datasets"] == ["ILSVRC/imagenet-1k"]
    assert {"caev2", "masked-image-modeling"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["name"] == f"caev2-vit-{size}"


@pytest.mark.parametrize("size", SIZES)
def test_card_model_index_holds_the_paper_numbers_marked_as_reported(size):
    card = ModelCard(str(authors_card(size)))
    results = card.data.eval_results
    assert {result.metric_name: result.metric_value for result in results} == PAPER_RESULTS[size]
    assert all(result.source_url == "https://arxiv.org/abs/2211.09799" for result in results)
    assert all(result.source_name.startswith("Reported by the CAE v2 paper") for result in results)


@pytest.mark.parametrize("size", SIZES)
def test_card_body_shows_the_paper_tables_as_reported_not_reproduced(size):
    text = str(authors_card(size, model_id=f"my-org/caev2-vit-{size}"))
    assert "**Reported by the paper, not reproduced by this repository**" in text
    assert (PAPER_VISIBLE_ONLY.get(size, "visible-only") in text) == (size != "large")
    assert f'AutoModel.from_pretrained("my-org/caev2-vit-{size}", trust_remote_code=True)' in text
    masking = {
        "tiny": "30 of 196 patches (15%)",
        "small": "49 of 196 patches (25%)",
        "base": "98 of 196 patches (50%)",
    }
    assert f"block-wise, {masking.get(size, '98 of 196 patches (50%)')}" in text  # docs/method.md#encoder, #masking


@pytest.mark.parametrize("size", SIZES)
def test_other_weights_of_an_official_shape_get_no_paper_numbers_in_the_model_index(size):
    """Issue 22 #10: a Base-shaped run of ours is not the paper's Base; the table stays, as a reference only."""
    text = str(render_model_card(CAEv2Config.from_preset(size), size=size, model_id=f"me/caev2-vit-{size}"))
    metadata = yaml_header(text)
    assert "model-index" not in metadata and "No evaluation yet." in text
    capitalized = size.capitalize()
    assert f"**Reported by the paper for the authors' ViT-{capitalized} weights, not for these**" in text
    assert "which the model-index of this card does not hold" in text
    assert "not reproduced by this repository**" not in text and "Converted official weights" not in text
    assert f"| {PAPER_RESULTS[size]['Top-1 (LIN)']} |" in text  # the reference table itself


def test_card_counts_the_spec_encoder_parameters():
    text = str(render_model_card(CAEv2Config.from_preset("base"), size="base"))
    assert "| Encoder parameters | 85,656,576 |" in text  # docs/method.md#checkpoint-keys-of-the-authors-code


@pytest.mark.parametrize(
    ("architecture", "contents"),
    [("CAEv2Model", "the **encoder**"), ("CAEv2ForPreTraining", "the **full pretraining model**")],
)
def test_card_says_what_the_folder_holds(architecture, contents):
    config = CAEv2Config.from_preset("base", architectures=[architecture])
    assert f"This repository holds {contents}" in str(render_model_card(config, size="base"))


def test_own_results_replace_the_paper_numbers_in_the_model_index():
    config = CAEv2Config.from_preset("tiny", supervise_cls=False)
    card = render_model_card(config, results={"imagenet_linear_probe_top1": 68.1}, training_details="800 steps.")
    (result,) = ModelCard(str(card)).data.eval_results
    assert (result.metric_name, result.metric_value, result.source_url) == ("Top-1 (LIN)", 68.1, None)
    assert "800 steps." in str(card) and "visible and masked tokens" in str(card)


def test_unknown_result_name_is_refused():
    with pytest.raises(ValueError, match=r"Unknown result names \['top5'\]"):
        render_model_card(CAEv2Config.from_preset("tiny"), results={"top5": 90.0})


@pytest.mark.parametrize("size", SIZES)
def test_committed_size_cards_match_the_template(size, tmp_path):
    write_size_cards(tmp_path)
    committed = (REPO_ROOT / "model_cards" / f"caev2-vit-{size}.md").read_text(encoding="utf-8")
    assert committed == (tmp_path / f"caev2-vit-{size}.md").read_text(encoding="utf-8"), "rerun model_cards/README.md"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A randomly initialised CAE v2 ViT-Tiny encoder saved with save_pretrained."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights") / "caev2-vit-tiny"
    CAEv2Model(CAEv2Config.from_preset("tiny")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prepared_folder(tiny_weights, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub") / "caev2-vit-tiny"
    arguments = ["--size", "tiny", "--weights", str(tiny_weights), "--output_dir", str(folder)]
    hub(["prepare", *arguments, "--model_id", "my-org/caev2-vit-tiny"])
    return folder


PREPARED_FILES = [
    "README.md",
    "config.json",
    "configuration_caev2.py",
    "model.safetensors",
    "modeling_caev2.py",
    "preprocessor_config.json",
]


def test_prepare_assembles_weights_code_processor_and_card(prepared_folder):
    assert list_folder_files(prepared_folder) == PREPARED_FILES
    config = json.loads((prepared_folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_caev2.CAEv2Model"
    assert config["auto_map"]["AutoConfig"] == "configuration_caev2.CAEv2Config"
    assert (
        'AutoModel.from_pretrained("my-org/caev2-vit-tiny", trust_remote_code=True)'
        in (prepared_folder / "README.md").read_text()
    )


def test_prepare_dry_run_lists_the_same_files_and_writes_nothing(tiny_weights, tmp_path):
    files = prepare_from_weights(tiny_weights, tmp_path / "out", size="tiny", dry_run=True)
    assert files == PREPARED_FILES
    assert not (tmp_path / "out").exists()


def test_prepare_size_names_the_architecture_but_puts_no_paper_number_on_other_weights(prepared_folder):
    """Issue 22 #10: `prepare --size` on weights that are not the authors' (no converter record saying so)."""
    text = (prepared_folder / "README.md").read_text()
    assert "# CAE v2 ViT-Tiny" in text and "model-index" not in yaml_header(text)
    assert "**Reported by the paper for the authors' ViT-Tiny weights, not for these**" in text


def test_prepare_drops_paper_numbers_an_older_card_put_on_other_weights(tiny_weights, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    authors_card("tiny").save(weights / "README.md")  # as `prepare --size tiny` wrote it before
    own = EvalResult(task_type="image-classification", task_name="Linear probing", dataset_type="digits",
                     dataset_name="digits", metric_type="accuracy", metric_name="Top-1 (LIN)",
                     metric_value=50.0)  # fmt: skip
    add_eval_results(weights, [own])
    hub(["prepare", "--size", "tiny", "--weights", str(weights), "--output_dir", str(tmp_path / "out")])
    results = ModelCard.load(tmp_path / "out" / "README.md").data.eval_results
    assert [(result.dataset_name, result.metric_value) for result in results] == [("digits", 50.0)]


def test_prepare_refuses_weights_of_another_size(tiny_weights, tmp_path):
    with pytest.raises(ValueError, match=r"not CAE v2 ViT-base: hidden_size=192 \(preset 768\)"):
        hub(["prepare", "--size", "base", "--weights", str(tiny_weights), "--output_dir", str(tmp_path / "out")])


# Runs in a fresh interpreter that cannot import caev2_hf (installed editable, so a meta-path hook blocks it).
REMOTE_CODE_CHILD = r"""
import sys


class BlockCaev2:
    def find_spec(self, name, path=None, target=None):
        if name == "caev2_hf" or name.startswith("caev2_hf."):
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, BlockCaev2())
try:
    import caev2_hf  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("caev2_hf is importable: the test would not prove anything")
import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel

folder, output = sys.argv[1], sys.argv[2]
image = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)
pixel_values = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    last_hidden_state = model(pixel_values).last_hidden_state
outputs = {"module": type(model).__module__, "pixel_values": pixel_values, "last_hidden_state": last_hidden_state}
torch.save(outputs, output)
"""


def test_prepared_folder_loads_with_remote_code_where_the_package_is_missing(prepared_folder, tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    command = [sys.executable, "-I", "-c", REMOTE_CODE_CHILD, str(prepared_folder), str(tmp_path / "outputs.pt")]
    finished = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    remote = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert remote["module"].startswith("transformers_modules.") and remote["module"].endswith("modeling_caev2")

    image = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    pixel_values = AutoImageProcessor.from_pretrained(prepared_folder)(images=image, return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        local = CAEv2Model.from_pretrained(prepared_folder).eval()(pixel_values).last_hidden_state
    torch.testing.assert_close(remote["pixel_values"], pixel_values, atol=0, rtol=0)
    torch.testing.assert_close(remote["last_hidden_state"], local, atol=1e-6, rtol=1e-6)


@pytest.fixture
def fake_hub(monkeypatch) -> type[FakeHfApi]:
    return install_fake_hub(monkeypatch)


def stray_files(folder: Path) -> None:
    """What issue 21 found uploaded with a folder: a secret, a big stray file, a checkpoint's optimizer state."""
    (folder / ".env").write_text("HF_TOKEN=hf_secret\n")
    with open(folder / "scratch.bin", "wb") as file:
        file.truncate(300_000_000)  # 300 MB, sparse: no disk used
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.bin").write_bytes(b"0" * 1000)


@pytest.fixture
def folder_with_strays(prepared_folder, tmp_path) -> Path:
    folder = tmp_path / "to_push"
    shutil.copytree(prepared_folder, folder)
    stray_files(folder)
    (folder / "pictures").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "pictures" / "china.png")  # a picture the card may show
    return folder


def test_push_sends_only_the_model_files_to_a_private_repository(prepared_folder, fake_hub):
    hub(["push", "--folder", str(prepared_folder), "--repo_id", "my-org/caev2-vit-tiny"])
    assert [call for call, _ in fake_hub.calls] == [
        "init",
        "whoami",
        "auth_check",
        "init",
        "create_repo",
        "upload_folder",
    ]
    assert fake_hub.calls[0][1] == {"token": None} and fake_hub.calls[3][1] == {"token": "hf_from_environment"}
    (create,) = fake_hub.named("create_repo")
    assert create == {"repo_id": "my-org/caev2-vit-tiny", "repo_type": "model", "private": True, "exist_ok": True}
    (upload,) = fake_hub.named("upload_folder")
    assert upload["folder_path"] == str(prepared_folder) and upload["repo_id"] == "my-org/caev2-vit-tiny"
    assert upload["files"] == PREPARED_FILES and upload["repo_type"] == "model"


def test_push_public_only_when_asked(prepared_folder, fake_hub):
    hub(["push", "--folder", str(prepared_folder), "--repo_id", "me/caev2-vit-tiny", "--public"])
    (create,) = fake_hub.named("create_repo")
    assert create["private"] is False


def test_push_refuses_stray_files_in_one_line_and_sends_nothing(folder_with_strays, fake_hub):
    """Issue 21 #7: a .env with a secret, a 300 MB file and checkpoints/optimizer.bin are listed, never sent."""
    with pytest.raises(UserError) as refused:
        hub(["push", "--folder", str(folder_with_strays), "--repo_id", "me/caev2-vit-tiny"])
    assert str(refused.value) == (
        f"--folder {folder_with_strays} holds files a model repository does not need: .env (19 bytes), "
        "checkpoints/ (1 file(s), 1.0 kB), scratch.bin (300.0 MB). Move them out, or name them with --include to "
        "upload them too (e.g. --include .env)."
    )
    assert fake_hub.calls == []  # refused before the Hub is asked anything


def test_push_include_adds_exactly_the_named_files(folder_with_strays, fake_hub):
    arguments = ["push", "--folder", str(folder_with_strays), "--repo_id", "me/caev2-vit-tiny"]
    hub([*arguments, "--include", "checkpoints", "scratch.bin", ".env"])
    (upload,) = fake_hub.named("upload_folder")
    expected = [".env", "checkpoints/optimizer.bin", "pictures/china.png", "scratch.bin", *PREPARED_FILES]
    assert upload["files"] == sorted(expected)
    with pytest.raises(UserError, match=r"--include checkpoint: no file of .* matches it"):
        hub([*arguments, "--include", "checkpoint"])


def test_push_of_a_run_final_folder_leaves_pretraining_out_unless_included(demo_final_folder, fake_hub):
    arguments = ["push", "--folder", str(demo_final_folder), "--repo_id", "me/caev2-demo"]
    with pytest.raises(UserError, match=r"need: pretraining/ \(5 file\(s\), [0-9.]+ kB\)\. .*--include pretraining\)"):
        hub(arguments)
    hub([*arguments, "--include", "pretraining"])
    (upload,) = fake_hub.named("upload_folder")
    assert {"pretraining/config.json", "pretraining/model.safetensors"} <= set(upload["files"])


@pytest.mark.parametrize(
    ("situation", "message"),
    [
        ("no token", "--repo_id other/caev2: no Hugging Face token to upload with; set HF_TOKEN=hf_..."),
        ("read-only token", "--repo_id other/caev2: the token of me is read-only; set HF_TOKEN=hf_..."),
        ("foreign namespace", "--repo_id other/caev2: me cannot create a repository under 'other' (it may under: "
                              "me, my-org)"),
        ("existing, not writable", "Cannot upload to other/caev2: the token may not do this"),
        ("bad id", "--repo_id other/caev2//x is not a Hub repository id"),
    ],
)  # fmt: skip
def test_push_checks_the_token_and_the_repository_before_sending(
    prepared_folder, fake_hub, monkeypatch, situation, message
):
    repo_id = "other/caev2//x" if situation == "bad id" else "other/caev2"
    if situation == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # and no saved login
    fake_hub.role = "read" if situation == "read-only token" else "write"
    if situation == "existing, not writable":
        fake_hub.existing = {"other/caev2": False}
    with pytest.raises(UserError) as refused:
        hub(["push", "--folder", str(prepared_folder), "--repo_id", repo_id])
    assert str(refused.value).startswith(message), str(refused.value)
    assert fake_hub.named("create_repo") == [] and fake_hub.named("upload_folder") == []


def test_push_into_an_existing_writable_repository(prepared_folder, fake_hub):
    fake_hub.existing = {"other/caev2": True}
    hub(["push", "--folder", str(prepared_folder), "--repo_id", "other/caev2"])
    assert fake_hub.named("auth_check") == [{"repo_id": "other/caev2", "write": True}]
    assert len(fake_hub.named("upload_folder")) == 1


def test_a_failed_upload_is_one_line_naming_the_network(prepared_folder, fake_hub):
    fake_hub.upload_error = ConnectionError("Connection reset by peer")
    with pytest.raises(UserError, match=r"^Cannot upload .* to me/x: the Hub cannot be reached \(ConnectionError: "):
        hub(["push", "--folder", str(prepared_folder), "--repo_id", "me/x"])


def test_push_refuses_a_folder_that_is_not_prepared(tiny_weights, fake_hub):
    with pytest.raises(ValueError, match="not a prepared CAE v2 folder; missing README.md"):
        push_folder(tiny_weights, "my-org/caev2-vit-tiny")
    assert fake_hub.calls == []


def test_card_of_a_demo_run_says_the_teacher_was_random_and_the_data_local():
    config = CAEv2Config.from_preset("tiny", use_random_teacher=True)
    card = str(render_model_card(config, datasets=[], training_details="Pretrained on demo_data/images."))
    assert "a randomly initialised CLIP vision tower" in card and "openai/clip-vit-base-patch16`, frozen" not in card
    assert "Pretrained on local data" in card and "imagenet" not in card.split("---")[1].lower()
    unnamed = str(render_model_card(config, datasets=[]))
    assert "Pretrained on data that this card does not name" in unnamed


@pytest.fixture
def demo_final_folder(tmp_path, fresh_accelerate_state) -> Path:
    """What `run_pretrain.py --config configs/demo.yaml` leaves in demo_output/final (a tiny model, a random teacher,
    local images, a final loss), written by the same export function."""
    from accelerate import Accelerator
    from conftest import build_tiny_config

    from caev2_hf import CAEv2ForPreTraining
    from caev2_hf.pretraining.export import describe_training, export_final_model

    numbers = {"max_steps": 200, "effective_batch_size": 16, "num_processes": 1, "learning_rate": 1e-3,
               "warmup_steps": 20}  # fmt: skip
    details = describe_training(None, numbers, 0.1234, "demo_data/images", use_random_teacher=True)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(CAEv2ForPreTraining(build_tiny_config()))
    final_dir = tmp_path / "demo_output" / "final"
    export_final_model(accelerator, model, str(final_dir), None, None, [], details)
    return final_dir


def test_demo_card_loads_from_the_folder_it_names(demo_final_folder):
    card = (demo_final_folder / "README.md").read_text()
    assert f'AutoModel.from_pretrained("{demo_final_folder}")' in card
    assert f'from_pretrained("{demo_final_folder.parent}")' not in card
    assert "model_name: demo_output" in card and "No evaluation yet." in card


def test_hub_prepare_keeps_what_the_demo_card_knows(demo_final_folder, tmp_path):
    """Round trip: a demo run's final/ -> `hub prepare` -> the same facts (data, updates, loss, teacher, results),
    no ImageNet, and usage snippets that load the prepared folder."""
    results = [EvalResult(task_type="image-classification", task_name="Linear probing", dataset_type="digits",
                          dataset_name="digits", dataset_split="validation", metric_type="accuracy",
                          metric_name="Top-1 (LIN, fast protocol)", metric_value=91.5)]  # fmt: skip
    add_eval_results(demo_final_folder, results)
    prepared = tmp_path / "hub" / "caev2-demo"
    hub(["prepare", "--weights", str(demo_final_folder), "--output_dir", str(prepared)])
    text = (prepared / "README.md").read_text()
    metadata = yaml_header(text)
    assert "datasets" not in metadata or metadata["datasets"] in (None, [])
    assert "imagenet" not in text.split("## Pretraining recipe")[0].lower()  # metadata, title, details: no ImageNet
    assert "on demo_data/images: 200 updates at an effective batch of 16" in text
    assert "Training loss at the end: 0.1234." in text and "**Trained against a randomly initialised teacher**" in text
    assert "Pretrained on local data" in text and "a **randomly initialised** CLIP vision tower" in text
    (result,) = ModelCard(text).data.eval_results
    assert (result.dataset_name, result.metric_name, result.metric_value) == (
        "digits",
        "Top-1 (LIN, fast protocol)",
        91.5,
    )
    assert "| Linear probing | digits (validation) | Top-1 (LIN, fast protocol) | 91.5 |" in text
    assert "No evaluation yet." not in text
    assert f'AutoModel.from_pretrained("{prepared}")' in text


def test_add_eval_results_updates_the_body_with_the_metadata(tiny_weights, tmp_path):
    folder = tmp_path / "encoder"
    prepare_from_weights(tiny_weights, folder)
    assert "No evaluation yet." in (folder / "README.md").read_text()
    first = EvalResult(task_type="image-classification", task_name="Linear probing", dataset_type="flowers",
                       dataset_name="flowers", metric_type="accuracy", metric_name="Top-1 (LIN)", metric_value=50.0)  # fmt: skip
    add_eval_results(folder, [first])
    add_eval_results(folder, [dataclasses.replace(first, metric_value=60.0)])  # replaces the same entry
    text = (folder / "README.md").read_text()
    assert [result.metric_value for result in ModelCard(text).data.eval_results] == [60.0]
    assert "| Linear probing | flowers | Top-1 (LIN) | 60.0 |" in text and "| 50.0 |" not in text
    assert "No evaluation yet." not in text
