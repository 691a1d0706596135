"""Tests for caev2_hf/study: the paper's studies as data, the steps' commands, states read from folders, the runner
and the report, and the offline mini-study end to end with the real scripts."""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from caev2_hf import CAEv2Config
from caev2_hf.study import list_study, report_study, run_study
from caev2_hf.study.actions import find_repository, open_study
from caev2_hf.study.commands import pretraining_step, resume_arguments
from caev2_hf.study.definition import load_study
from caev2_hf.study.runner import Launch, run_step
from caev2_hf.study.state import FAILED_FILE, STEP_FILE, read_run_status
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.parsing import parse_arguments
from caev2_hf_cli.pretraining import ARGUMENT_CLASSES, MASK_LAYOUT_ARGUMENTS
from caev2_hf_cli.study import parse_study_command


REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER = REPO_ROOT / "configs" / "paper"
ROW_COUNTS = {"table1-supervision": 9, "table2-loss": 9, "table3-mask-strategy": 6, "figure3-mask-ratio": 18}
ROW_COUNTS |= {"main-results": 7, "mini": 2}
PAPER_NUMBERS = {"table1-supervision": 27, "table2-loss": 27, "table3-mask-strategy": 18, "figure3-mask-ratio": 9}
PAPER_NUMBERS |= {"main-results": 31}  # 7 rows x 3 (Table 4), 6 of Table 5, 4 of Table 6


def load(name: str):
    return load_study(str(PAPER / f"{name}.yaml"), str(REPO_ROOT))


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_paper_study_loads_with_one_row_per_table_row(name: str):
    study = load(name)
    assert len(study.rows) == ROW_COUNTS[name]
    if name in PAPER_NUMBERS:
        assert sum(len(row.paper) for row in study.rows) == PAPER_NUMBERS[name]


def test_default_rows_of_every_table_share_the_recipe_runs():
    """Table 1's default rows, Table 2's cosine, Table 3's block-wise, Figure 3's default ratios and the main
    results' CAE v2+ are one setting each size: one run folder, named after the recipe alone."""
    defaults = {
        "table1-supervision": "Y_m + Y_v (default)",
        "table2-loss": "Cosine distance (default)",
        "table3-mask-strategy": "Blockwise (default)",
        "main-results": "CAE v2+",
    }
    for name, label in defaults.items():
        runs = [row.run_name for row in load(name).rows if row.label == label]
        assert runs[:3] == ["vit-tiny", "vit-small", "vit-base"], name
    figure = [row.run_name for row in load("figure3-mask-ratio").rows if row.paper]
    assert figure == ["vit-tiny", "vit-small", "vit-base"]
    main_v2 = {row.run_name for row in load("main-results").rows if row.label == "CAE v2"}
    table1_visible = {row.run_name for row in load("table1-supervision").rows if row.label == "Y_v"}
    assert main_v2 == table1_visible and len(main_v2) == 3


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_rows_change_their_recipe_into_arguments_pretraining_accepts(name: str, tmp_path: Path):
    """Every change is a real one (a value equal to the recipe's would give the same setting a second run folder),
    and the row's command gives run_pretrain.py a config the pretraining model computes and the row's mask layout
    (a data argument) or count (a config field)."""
    for row in load(name).rows:
        _, recipe_data, _ = parse_arguments(ARGUMENT_CLASSES, ["--config", str(REPO_ROOT / row.pretraining)])
        recipe = CAEv2Config.from_preset(row.size, **row.recipe_overrides)
        step = pretraining_step(row, {}, str(tmp_path))
        with contextlib.chdir(REPO_ROOT):  # the command names its recipe as the study does, from the repository
            model_args, data_args, _ = parse_arguments(ARGUMENT_CLASSES, list(step.arguments))
        config = CAEv2Config.from_preset(row.size, **(model_args.config_overrides or {}))
        config.validate_for_pretraining()
        for field, value in {**row.model, **row.masking}.items():
            owner, recipe_owner = (data_args, recipe_data) if field in MASK_LAYOUT_ARGUMENTS else (config, recipe)
            assert getattr(recipe_owner, field) != value, f"{row.group} {row.label}: {field}={value} is the recipe's"
            assert getattr(owner, field) == value, f"{row.group} {row.label}: {field} does not reach the run"


def test_pretraining_command_gives_run_pretrain_the_row_setting(tmp_path):
    _, plans, output_dir = open_study(str(PAPER / "table1-supervision.yaml"), str(tmp_path))
    step = plans[0].pretraining
    folder = os.path.join(output_dir, "vit-tiny+supervise_cls=false+supervise_visible=false")
    overrides = '{"supervise_cls": false, "supervise_visible": false}'
    assert step.arguments == (
        "--config",
        "configs/vit-tiny.yaml",
        "--output_dir",
        folder,
        "--config_overrides",
        overrides,
    )
    model_args, _, training_args = parse_arguments(ARGUMENT_CLASSES, [*step.arguments, *resume_arguments(step)])
    assert model_args.config_overrides == {"supervise_cls": False, "supervise_visible": False}
    assert training_args.output_dir == folder and training_args.lr_scheduler_type == "authors_cosine"


def test_mask_count_reaches_the_config_with_the_recipe_s_own_overrides(tmp_path):
    """configs/demo.yaml's small model survives the row's mask count, also beside a data-source flag."""
    _, plans, _ = open_study(str(PAPER / "mini.yaml"), str(tmp_path))
    step = plans[1].pretraining
    assert "--demo_dir" in step.arguments and step.setting["arguments"]["config_overrides"] == {
        "num_masking_patches": 32
    }
    model_args, _, _ = parse_arguments(ARGUMENT_CLASSES, list(step.arguments))
    demo = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())["config_overrides"]
    assert model_args.config_overrides == {**demo, "num_masking_patches": 32}


def test_evaluations_follow_each_size_s_recipe(tmp_path):
    _, plans, output_dir = open_study(str(PAPER / "main-results.yaml"), str(tmp_path))
    by_run = {plan.name: {step.name: (step, reason) for step, reason in plan.evaluations} for plan in plans}
    segmentation, _ = by_run["vit-tiny"]["segmentation"]
    final = os.path.join(output_dir, "vit-tiny", "final")
    assert segmentation.arguments == (
        "--config", "configs/segmentation-vit-base.yaml", "--model", final,
        "--output_dir", os.path.join(output_dir, "vit-tiny", "segmentation"), "--decoder_channels", "192",
    )  # fmt: skip
    assert by_run["vit-small"]["finetune-200ep"][0].arguments[-4:] == (
        "--num_train_epochs",
        "200",
        "--warmup_steps",
        "0.1",
    )
    assert "finetune" not in by_run["vit-small"]  # the CAE v2+ row reports 200 epochs only
    small_v2 = by_run["vit-small+supervise_cls=false+supervise_masked=false"]["finetune"][0]
    assert small_v2.arguments[-4:] == ("--num_train_epochs", "100", "--warmup_steps", "0.05")
    assert by_run["vit-large"]["linear_probe"][1] == "no recipe for ViT-Large"
    assert by_run["vit-base"]["mask_rcnn"][1] == "no detection script in this package yet"


def write_study(path: Path, rows: list[dict], **changes) -> str:
    """The mini-study with other rows (and other top-level entries), written to `path`."""
    study = yaml.safe_load((PAPER / "mini.yaml").read_text())
    study |= {"rows": rows, **changes}
    path.write_text(yaml.safe_dump(study))
    return str(path)


def demo_row(count: int | None, x: float) -> dict:
    row = {"group": "demo", "label": f"{x}%", "x": x, "pretraining": "configs/demo.yaml"}
    return row | ({"masking": {"num_masking_patches": count}} if count else {})


def fake_done_run(output_dir: Path, run: str, top1: float) -> None:
    (output_dir / run / "final").mkdir(parents=True)
    (output_dir / run / "final" / "config.json").write_text("{}")
    (output_dir / run / "linear_probe").mkdir()
    (output_dir / run / "linear_probe" / "results.json").write_text(json.dumps({"top1_accuracy": top1}))


def test_report_names_the_missing_and_the_failed_run(tmp_path):
    study = write_study(tmp_path / "study.yaml", [demo_row(None, 25), demo_row(32, 50), demo_row(48, 75)])
    output_dir = tmp_path / "runs"
    fake_done_run(output_dir, "demo", 0.5)
    _, plans, _ = open_study(study, str(output_dir))
    failed = plans[1].pretraining
    os.makedirs(failed.folder)
    (Path(failed.folder) / STEP_FILE).write_text(json.dumps({"setting": failed.setting}))
    (Path(failed.folder) / FAILED_FILE).write_text(json.dumps({"returncode": 1, "log": "x/study.log"}))
    paths = report_study(study, str(output_dir))
    markdown, report = Path(paths["markdown"]).read_text(), json.loads(Path(paths["json"]).read_text())
    assert "| demo | 25% | 25 | 50.00 (-) |" in markdown
    assert "| demo | 50% | 50 | failed (-) |" in markdown and "| demo | 75% | 75 | not started (-) |" in markdown
    assert "- `demo+num_masking_patches=32` pretraining: failed: exit status 1, log: x/study.log" in markdown
    assert "- `demo+num_masking_patches=48`: not started" in markdown
    assert [row["run_state"] for row in report["rows"]] == ["done", "failed", "not started"]
    listing = list_study(study, str(output_dir))
    assert listing.startswith("3 runs: 1 done, 1 failed, 1 not started")


def test_a_failed_step_is_recorded_with_its_log_and_cleared_when_retried(tmp_path):
    _, plans, _ = open_study(str(PAPER / "mini.yaml"), str(tmp_path))
    step = plans[0].pretraining
    failing = Launch(find_repository(), (sys.executable, "-c", "print('boom'); raise SystemExit(3)"))
    state = run_step(step, failing)
    log = os.path.join(step.folder, "study.log")
    assert state.state == "failed" and state.detail == f"exit status 3, log: {log}"
    assert "boom" in Path(log).read_text() and read_run_status(plans[0]).state == "failed"
    quiet = Launch(find_repository(), (sys.executable, "-c", "pass"))
    state = run_step(step, quiet)  # exits 0 but exports nothing: still a failure, with its reason
    assert state.detail == f"exit status 0, exited 0 without writing final/, log: {log}"


def test_run_refuses_a_folder_that_holds_another_setting(tmp_path):
    study = str(PAPER / "mini.yaml")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / STEP_FILE).write_text(json.dumps({"setting": {"script": "run_pretrain.py", "other": 1}}))
    assert "pretraining              other setting" in list_study(study, str(tmp_path))
    with pytest.raises(UserError, match="holds pretraining of another setting"):
        run_study(study, str(tmp_path), launch_command=f"{sys.executable} -c pass")


def test_launcher_prints_the_missing_steps_and_resumes_a_trainer_checkpoint(tmp_path):
    study = write_study(tmp_path / "study.yaml", [demo_row(None, 25), demo_row(32, 50)])
    output_dir = tmp_path / "runs"
    fake_done_run(output_dir, "demo", 0.5)
    script = run_study(study, str(output_dir), launcher=True)
    commands = [line for line in script.splitlines() if not line.startswith("#")]
    folder = output_dir / "demo+num_masking_patches=32"
    assert commands[0] == f"cd {REPO_ROOT}" and len(commands) == 3  # the done run prints nothing
    assert commands[1].startswith("accelerate launch run_pretrain.py --config configs/demo.yaml --output_dir ")
    assert commands[1].endswith("--resume_from_checkpoint latest")
    assert commands[2].startswith(f"accelerate launch run_linear_probe.py --model {folder}/final --output_dir")
    _, plans, _ = open_study(study, str(output_dir))
    finetune = dataclasses.replace(plans[0].evaluations[0][0], resumes_from_trainer_checkpoint=True)
    for number in (7, 12):
        (Path(finetune.folder) / f"checkpoint-{number}").mkdir(parents=True)
    (Path(finetune.folder) / "checkpoint-7" / "trainer_state.json").write_text("{}")  # 12 is incomplete
    assert resume_arguments(finetune) == ["--resume_from_checkpoint", os.path.join(finetune.folder, "checkpoint-7")]


def test_a_results_json_without_the_column_s_metric_is_a_failure_in_the_report(tmp_path):
    fake_done_run(tmp_path, "demo", 0.5)
    (tmp_path / "demo" / "linear_probe" / "results.json").write_text(json.dumps({"top5_accuracy": 0.9}))
    report = json.loads(Path(report_study(str(PAPER / "mini.yaml"), str(tmp_path))["json"]).read_text())
    cell = report["rows"][0]["cells"]["LIN (digits)"]
    assert (
        cell["ours"] is None and cell["state"] == "failed" and cell["detail"].endswith("has no number top1_accuracy")
    )
    assert {"run": "demo", "step": "linear_probe", "state": "failed", "detail": cell["detail"]} in report["problems"]


def test_study_command_takes_the_study_file_first_or_as_a_flag():
    command, arguments = parse_study_command(["run", "configs/paper/mini.yaml", "--launcher", "true"])
    assert (command, arguments.study, arguments.launcher, arguments.output_dir) == (
        "run", "configs/paper/mini.yaml", True, "outputs/paper"
    )  # fmt: skip
    _, arguments = parse_study_command(["report", "--study", "configs/paper/mini.yaml", "--output_dir", "x"])
    assert (arguments.study, arguments.output_dir, arguments.report_dir) == ("configs/paper/mini.yaml", "x", None)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "error: give a command first, list, run, report: e.g. caev2-study list"),
        (["lst", "configs/paper/mini.yaml"], "error: give a command first, list, run, report (got 'lst')"),
        (["list", "configs/paper/nothing.yaml"], "error: --study configs/paper/nothing.yaml: no such file."),
    ],
)
def test_study_command_answers_a_mistake_in_one_line(arguments: list[str], message: str):
    completed = subprocess.run(
        [sys.executable, "-m", "caev2_hf.study", *arguments], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert (
        completed.returncode == 2 and completed.stderr.startswith(message) and len(completed.stderr.splitlines()) == 1
    )


@pytest.mark.slow
def test_mini_study_runs_end_to_end_and_reports_its_results_json(tmp_path):
    """The mini-study at a few updates and probe epochs: both runs pretrain and are probed by the real scripts, the
    report's numbers are their results.json's, and a second `run` launches nothing."""
    study = yaml.safe_load((PAPER / "mini.yaml").read_text())
    study["pretraining_arguments"] |= {"max_steps": 4, "warmup_steps": 1, "save_steps": 2, "logging_steps": 2}
    study["offline_data"]["digits"] |= {"num_train": 200, "num_validation": 100}
    study["evaluations"]["linear_probe"]["arguments"] |= {"epochs": 3, "warmup_epochs": 1}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(study))
    output_dir = tmp_path / "runs"
    outcomes = run_study(str(path), str(output_dir))
    assert [(step.run, step.name, state.state) for step, state in outcomes] == [
        ("demo", "pretraining", "done"), ("demo", "linear_probe", "done"),
        ("demo+num_masking_patches=32", "pretraining", "done"), ("demo+num_masking_patches=32", "linear_probe", "done"),
    ]  # fmt: skip
    report = json.loads(Path(report_study(str(path), str(output_dir))["json"]).read_text())
    markdown = (output_dir / "reports" / "mini.md").read_text()
    for row, run in zip(report["rows"], ("demo", "demo+num_masking_patches=32"), strict=True):
        results = json.loads((output_dir / run / "linear_probe" / "results.json").read_text())
        assert row["cells"]["LIN (digits)"]["ours"] == 100 * results["top1_accuracy"]
        assert f"| {100 * results['top1_accuracy']:.2f} (-) |" in markdown
        assert row["pretraining"]["updates"] == 4 and row["run_state"] == "done"
    assert (output_dir / "reports" / "mini.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_study(str(path), str(output_dir)) == []
