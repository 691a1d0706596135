"""The benchmark harness (issue 6): FLOP count of a step, and both scripts running on CPU and writing their JSON.

Nothing here asserts a speed: timings belong to BENCHMARKS.md, not to tests.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_config

from caev2_hf import CAEv2Config, CAEv2ForPreTraining


BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS_DIR))

import bench_data  # noqa: E402
import bench_demos  # noqa: E402
import bench_end_to_end  # noqa: E402
import bench_help  # noqa: E402
import bench_pretrain  # noqa: E402


def test_transformer_layer_flops_equal_hand_count():
    # 2 queries, 3 keys, width 4, MLP 8: q,o 2*(2*2*4*4)=128; k,v 2*(2*3*4*4)=192; MLP 2*(2*2*4*8)=256;
    # scores and weighted sum 2*(2*2*3*4)=96.
    assert bench_pretrain.transformer_layer_flops(2, 3, 4, 8) == 128 + 192 + 256 + 96


@pytest.mark.parametrize(("regressor_layers", "expected_gflops"), [(1, 93.0), (4, 108.1)])
def test_step_flops_match_vit_base_reference(regressor_layers: int, expected_gflops: float):
    """ViT-B/16 at 50% mask: about 93 GFLOPs per image with a 1-layer regressor, 108 with 4 (issue 6), within 0.5%."""
    config = CAEv2Config.from_preset("base", regressor_num_hidden_layers=regressor_layers)
    flops = bench_pretrain.count_step_flops(config)
    assert flops["total"] / 1e9 == pytest.approx(expected_gflops, rel=0.005)
    assert flops["teacher_forward"] / 1e9 == pytest.approx(35.28, abs=0.01)  # CLIP ViT-B/16 on 197 tokens
    assert flops["total"] == 3 * flops["student_forward"] + flops["teacher_forward"]


def test_step_flops_without_teacher_count_only_the_student():
    config = CAEv2Config.from_preset("tiny")
    flops = bench_pretrain.count_step_flops(config, use_teacher=False)
    assert flops["teacher_forward"] == 0
    assert flops["total"] == 3 * sum(bench_pretrain.count_student_forward_flops(config).values())
    assert bench_pretrain.count_student_forward_flops(config)["latent_projection"] == 2 * 167 * 192 * 96


PRETRAIN_KEYS = {
    "images_per_second", "step_ms", "warmup_seconds", "peak_memory_mib", "flops_per_image", "achieved_tflops",
    "peak_tflops", "mfu", "final_loss", "loss_is_finite", "host_syncs_in_step", "dynamo", "device_name", "versions",
}  # fmt: skip


def run_bench_pretrain(tmp_path: Path, *extra: str) -> dict:
    output = tmp_path / "pretrain.json"
    argv = ["--preset", "tiny", "--precision", "fp32", "--batch_size", "1", "--warmup_steps", "1"]
    bench_pretrain.main([*argv, "--steps", "2", "--output_json", str(output), *extra])
    return json.loads(output.read_text())


@pytest.mark.parametrize("teacher", ["on", "off"])
def test_bench_pretrain_writes_json_for_two_cpu_steps(tmp_path: Path, teacher: str):
    result = run_bench_pretrain(tmp_path, "--teacher", teacher, "--peak_tflops", "2")
    config = CAEv2Config.from_preset("tiny")
    assert PRETRAIN_KEYS <= result.keys()
    settings = [result[key] for key in ("preset", "steps", "teacher")]
    assert settings == ["tiny", 2, teacher]
    assert result["flops_per_image"] == bench_pretrain.count_step_flops(config, use_teacher=teacher == "on")
    assert result["images_per_second"] == pytest.approx(1000 / result["step_ms"])  # batch 1
    achieved = result["flops_per_image"]["total"] * result["images_per_second"]
    assert result["achieved_tflops"] == pytest.approx(achieved / 1e12)
    assert result["mfu"] == pytest.approx(achieved / 2e12)
    assert result["peak_memory_mib"] is None and result["host_syncs_in_step"] == []  # CPU: no device counters
    assert result["loss_is_finite"] and 0 < result["final_loss"] < 2  # cosine distance of unit vectors
    assert result["dynamo"]["graphs_built_in_timed_steps"] == 0


def test_bench_pretrain_without_known_peak_reports_no_mfu(tmp_path: Path):
    result = run_bench_pretrain(tmp_path, "--teacher", "off")
    assert result["peak_tflops"] is None and result["mfu"] is None
    assert math.isfinite(result["achieved_tflops"]) and result["achieved_tflops"] > 0


def test_bench_data_measures_the_stream_run_pretrain_uses(tmp_path: Path):
    output = tmp_path / "data.json"
    argv = ["--num_workers", "0", "1", "--num_shards", "2", "--images_per_shard", "4", "--batch_size", "4"]
    argv += ["--batches_per_worker", "3", "--source_image_size", "64", "--previous_path", "on"]
    bench_data.main([*argv, "--output_json", str(output)])
    result = json.loads(output.read_text())
    assert [measured["num_workers"] for measured in result["loader"]] == [0, 1]
    assert [measured["num_images"] for measured in result["previous_loader"]] == [12, 12]  # the path before issue 11
    # 3 timed batches of 4 from 8 images: the endless stream crosses epoch boundaries without stopping
    assert [measured["num_images"] for measured in result["loader"]] == [12, 12]
    assert all(measured["images_per_second"] > 0 and measured["epoch_at_end"] >= 1 for measured in result["loader"])
    keys = result["loader"][0]["batch_keys"]  # run_pretrain's batches: uint8 crops, masks and device-side parameters
    assert {"pixel_values", "bool_masked_pos", "flip", "jitter_factors", "jitter_order"} <= set(keys)
    assert result["device_augmentation"]["images_per_second"] > 0 and result["data_megabytes"] > 0
    assert "batched_decode_result" not in result


def test_bench_data_reads_an_image_folder(tmp_path: Path):
    argv = ["--num_workers", "2", "--source", "folder", "--num_shards", "2", "--images_per_shard", "4"]
    result = bench_data.main([*argv, "--batch_size", "2", "--batches_per_worker", "2", "--source_image_size", "40"])
    (measured,) = result["loader"]
    assert measured["effective_workers"] == 2 and measured["num_images"] == 8  # 8 files: 8 shards, 2 workers


def test_batched_decode_returns_augmented_batches(tmp_path: Path):
    """The decode-on-device path (nvJPEG with --batched_decode cuda), run here through torchvision's CPU decoder."""
    shards = bench_data.demo.write_demo_tar_shards(str(tmp_path), num_shards=1, images_per_shard=3, image_size=40)
    args = bench_data.parse_args(["--batch_size", "2", "--batches_per_worker", "1", "--num_shards", "2"])
    measured = bench_data.measure_batched_decode(args, CAEv2Config.from_preset("base"), shards, "cpu")
    assert measured["batch_shape"] == [2, 3, 224, 224] and measured["num_images"] == 8  # 4 timed batches of 2
    assert measured["images_per_second"] > 0


def test_try_measure_records_a_failure_instead_of_raising():
    def fail() -> dict:
        raise OSError("No space left on device")

    assert bench_data.try_measure("16 workers", fail) == {"error": "OSError: No space left on device"}
    assert bench_data.try_measure("1 worker", lambda: {"images_per_second": 5.0}) == {"images_per_second": 5.0}


def test_bench_end_to_end_times_run_pretrain_after_warmup(tmp_path: Path):
    tiny = {key: value for key, value in build_tiny_config(regressor_num_hidden_layers=1).to_diff_dict().items()
            if key not in ("model_type", "transformers_version")}  # fmt: skip
    output = tmp_path / "end_to_end.json"
    argv = ["--preset", "base", "--config_overrides", json.dumps(tiny), "--batch_size", "2", "--precision", "fp32"]
    argv += ["--num_workers", "0", "--warmup_steps", "1", "--steps", "3", "--num_shards", "1", "--images_per_shard"]
    argv += ["4", "--source_image_size", "40", "--logging_steps", "2", "--output_json", str(output)]
    bench_end_to_end.main(argv)
    result = json.loads(output.read_text())
    for run in ("end_to_end", "synthetic"):
        measured = result[run]
        assert measured["updates_timed"] == 3 and measured["images_per_second"] == pytest.approx(
            6 / measured["seconds"]
        )
        assert 0 <= measured["data_wait_seconds"] < measured["seconds"] and measured["warmup_seconds"] > 0
    ratio = result["end_to_end"]["images_per_second"] / result["synthetic"]["images_per_second"]
    assert result["end_to_end_share_of_synthetic"] == pytest.approx(ratio)


def test_benchmarks_import_without_datasets_installed():
    """The GPU image has no `datasets`: data.py imports it only to open streams, so the benchmarks still run."""
    code = (
        "import sys; sys.modules['datasets'] = None\n"  # makes `import datasets` fail as if it were not installed
        f"sys.path.insert(0, {str(BENCHMARKS_DIR)!r})\n"
        "import torch, bench_data, bench_end_to_end, bench_pretrain\n"
        "pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)\n"
        "print(bench_data.augment_and_normalize(pixels, [0.5] * 3, [0.25] * 3).flatten().tolist()[0])\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["2.0"]  # (1 - 0.5) / 0.25


def test_bench_help_covers_every_script_and_console_command(tmp_path: Path):
    """Every run_*.py and every console script setup.py installs (run as its generated wrapper runs it)."""
    import re

    import caev2_hf_commands

    root = BENCHMARKS_DIR.parent
    entry_points = dict(re.findall(r'"(caev2-[\w-]+) = caev2_hf_commands:(\w+)"', (root / "setup.py").read_text()))
    assert len(entry_points) == 5 and bench_help.CONSOLE_COMMANDS == entry_points
    assert all(callable(getattr(caev2_hf_commands, function)) for function in entry_points.values())
    scripts = {path.name for path in root.glob("run_*.py")}
    assert len(scripts) == 6 and set(bench_help.COMMANDS) == scripts | set(entry_points)
    result = bench_help.main(
        ["--repeats", "1", "--only", "caev2-model-cards", "--output_json", str(tmp_path / "h.json")]
    )
    saved = json.loads((tmp_path / "h.json").read_text())
    assert saved == result and list(saved) == ["caev2-model-cards"]
    assert saved["caev2-model-cards"]["lines"] >= 5 and saved["caev2-model-cards"]["best_s"] > 0


def test_gpu_suite_script_parses():
    completed = subprocess.run(["bash", "-n", str(BENCHMARKS_DIR / "gpu_suite.sh")], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_bench_pretrain_profile_splits_the_eager_step_into_its_parts(tmp_path: Path):
    result = run_bench_pretrain(tmp_path, "--profile", "on")
    profile = result["profile"]
    assert profile["clock"] == "cpu"
    expected = {"forward/teacher", "forward/caev2", "forward/latent_projection", "forward/regressor", "forward/head"}
    assert set(profile["parts_ms"]) == expected | {"optimizer"}
    assert all(ms > 0 for ms in profile["parts_ms"].values())
    assert 0 <= profile["rest_of_step_ms"] < profile["step_ms"]  # backward, clipping and the loss are the rest
    assert len(profile["top_kernels_ms"]) == 15 and profile["top_kernels_ms"][0]["ms"] > 0


def test_bench_pretrain_times_the_amortised_step(tmp_path: Path):
    result = run_bench_pretrain(tmp_path, "--masks_per_image", "2")
    config = CAEv2Config.from_preset("tiny")
    assert result["student_samples_per_second"] == pytest.approx(2 * result["images_per_second"])
    assert result["flops_per_image"] == bench_pretrain.count_step_flops(config, masks_per_image=2)
    flops = result["flops_per_image"]
    assert flops["total"] == 6 * flops["student_forward"] + flops["teacher_forward"]
    assert result["loss_is_finite"]


def test_bench_pretrain_ab_row_puts_back_the_teachers_conv2d(tmp_path: Path):
    """The "before" row of the teacher's patch-embedding change: CLIP's plain Conv2d, on the same parameters."""
    model = CAEv2ForPreTraining(build_tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    targets = model.teacher(pixels)
    matmul = model.teacher.model.vision_model.embeddings.patch_embedding
    bench_pretrain.restore_teacher_conv2d(model)
    conv = model.teacher.model.vision_model.embeddings.patch_embedding
    assert type(conv) is torch.nn.Conv2d and conv.weight is matmul.weight and conv.stride == matmul.stride
    torch.testing.assert_close(model.teacher(pixels), targets, rtol=1e-5, atol=1e-5)

    matmul_row = run_bench_pretrain(tmp_path, "--teacher_patch_embedding", "matmul")
    conv_row = run_bench_pretrain(tmp_path, "--teacher_patch_embedding", "conv")
    assert (matmul_row["teacher_patch_embedding"], conv_row["teacher_patch_embedding"]) == ("matmul", "conv")
    assert conv_row["final_loss"] == pytest.approx(matmul_row["final_loss"], rel=1e-4)


@pytest.mark.parametrize(
    "name, family",
    [  # kernel names as the H100 profile of the compiled step printed them
        ("nvjet_sm90_tst_192x192_64x4_1x2_h_bz_coopB_bias_TNN", "matmul"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64", "attention"),
        ("triton_poi_fused_gelu_gelu_backward_view_35", "triton_fused"),
        ("void precomputed_convolve_sgemm<__nv_bfloat16, 128, 6, 7, 3, 3, 5, 1, false>", "convolution"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>",
            "optimizer_and_clipping",
        ),
        ("Memcpy HtoD (Pinned -> Device)", "copy"),
        ("void at::native::elementwise_kernel<128, 2>", "other"),
    ],
)
def test_profile_sorts_kernels_into_families(name: str, family: str):
    assert bench_pretrain.kernel_family(name) == family


def test_bench_demos_runs_each_command_and_records_its_conditions(tmp_path: Path, monkeypatch):
    """The harness, on a stand-in command (the real demos take minutes): wall and CPU time, threads, load, figures."""
    demo = bench_demos.Demo(["-c", "print('Done. Final loss 0.1610.')"], "python run_pretrain.py ...",
                            bench_demos.pretraining_figures, takes_threads=False)  # fmt: skip
    monkeypatch.setitem(bench_demos.DEMOS, "pretrain", demo)
    output = tmp_path / "demos.json"
    arguments = ["--demos", "pretrain", "--work_dir", str(tmp_path / "work"), "--output_json", str(output)]
    result = bench_demos.main([*arguments, "--omp_num_threads", "1"])
    assert json.loads(output.read_text()) == result and result["omp_num_threads"] == 1
    assert result["machine"]["cpu_count"] == os.cpu_count() and result["machine"]["torch_threads_by_default"] == 1
    measured = result["demos"]["pretrain"]
    assert measured["returncode"] == 0 and measured["figures"] == {"final_loss": 0.161}
    assert measured["wall_seconds"] >= 0 and measured["cpu_seconds"] >= 0
    assert len(measured["load_average_before"]) == 3 and measured["torch_num_threads"] is None


def test_bench_demos_reads_the_figures_the_demos_print():
    line = "pictures/china.png: mask 16/64 patches, cosine to the teacher: visible 0.9370, masked 0.2900, [CLS] 0.5100"
    assert bench_demos.visualize_figures(line) == {"visible": 0.937, "masked": 0.29, "cls": 0.51}
    # 64 held-out images of the segmentation demo, all background predicted: its pixel share over 4 classes
    assert 0.15 < bench_demos.best_constant_miou(seed=1_000_003) < 0.25


def test_the_readme_commands_are_the_benchmarked_ones():
    """The demos' figures in README.md come from these commands; the probes' commands are in BENCHMARKS.md."""
    readme, benchmarks = ((BENCHMARKS_DIR.parent / name).read_text() for name in ("README.md", "BENCHMARKS.md"))
    in_readme = ("pretrain", "visualize", "segmentation", "detection", "study")
    assert [name for name in in_readme if bench_demos.DEMOS[name].readme not in readme] == []
    in_benchmarks = ("probe_fast", "probe_official")
    assert [name for name in in_benchmarks if bench_demos.DEMOS[name].readme not in benchmarks] == []
