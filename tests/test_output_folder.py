"""caev2_hf_cli.outputs: what counts as another run in an output folder, what --overwrite_output_dir deletes, which
checkpoint `latest` is, and the hint an interrupted run leaves (issue 22). Through the scripts: test_bad_input.py."""

import signal
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from caev2_hf.evaluation.trainer_steps import hold_output_dir, start_in_output_dir
from caev2_hf.run_lock import RunLock
from caev2_hf_cli.errors import UserError
from caev2_hf_cli.outputs import (
    check_output_dir,
    clear_previous_run,
    find_previous_run,
    list_checkpoints,
    resolve_resume_checkpoint,
    resume_hint_on_interrupt,
)


def write_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    if complete:  # the Trainer writes trainer_state.json last
        (checkpoint / "trainer_state.json").write_text("{}")
    return checkpoint


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A finished Trainer run beside files that are no run's: a study's record, TensorBoard logs, notes."""
    for name in ("results.json", "model.safetensors", "config.json", "README.md", "training_args.bin"):
        (tmp_path / name).write_text("{}")
    for step in (9, 10):
        write_checkpoint(tmp_path, step)
    write_checkpoint(tmp_path, 11, complete=False)  # the run stopped while writing it
    (tmp_path / "runs" / "one").mkdir(parents=True)
    (tmp_path / "study_step.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    return tmp_path


def test_checkpoints_are_ordered_by_step_and_incomplete_ones_left_out(run_folder: Path):
    assert list_checkpoints(str(run_folder)) == [str(run_folder / "checkpoint-9"), str(run_folder / "checkpoint-10")]
    assert len(list_checkpoints(str(run_folder), complete_only=False)) == 3
    assert list_checkpoints(str(run_folder / "missing")) == []


def test_a_run_is_its_results_model_or_complete_checkpoints(run_folder: Path, tmp_path_factory):
    assert find_previous_run(str(run_folder)) == [
        "results.json",
        "model.safetensors",
        "checkpoint-9/",
        "checkpoint-10/",
    ]
    other = tmp_path_factory.mktemp("other")
    write_checkpoint(other, 3, complete=False)
    (other / "config.json").write_text("{}")  # a config alone, or a checkpoint cut short, is no run to keep
    assert find_previous_run(str(other)) == [] and find_previous_run(str(other / "missing")) == []


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(run_folder: Path):
    with pytest.raises(UserError) as refused:
        check_output_dir(str(run_folder), overwrite=False)
    assert str(refused.value) == (
        f"--output_dir {run_folder} holds another run (results.json, model.safetensors, checkpoint-9/, checkpoint-10/)."
        " Continue it with --resume_from_checkpoint latest, start afresh with --overwrite_output_dir true (which "
        "deletes it), or choose another --output_dir."
    )
    with pytest.raises(UserError, match=r"checkpoint-10/\)\. Start afresh with --overwrite_output_dir"):
        check_output_dir(str(run_folder), overwrite=False, resumable=False)  # the probe has no resume
    write_checkpoint(run_folder, 12)
    with pytest.raises(UserError, match=r"\(results.json, model.safetensors, checkpoint-9/, checkpoint-10/, \.\.\.\)"):
        check_output_dir(str(run_folder), overwrite=False)
    check_output_dir(str(run_folder), overwrite=True)
    check_output_dir(str(run_folder), overwrite=False, resume="latest")
    check_output_dir(str(run_folder / "new"), overwrite=False)
    with pytest.raises(UserError, match="notes.txt is a file: give a folder"):
        check_output_dir(str(run_folder / "notes.txt"), overwrite=True)


def test_a_run_without_checkpoints_is_not_offered_a_resume(tmp_path: Path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds another run \(results.json\)\. Start afresh with --overwrite"):
        check_output_dir(str(tmp_path), overwrite=False)


def test_overwriting_deletes_the_runs_files_and_every_checkpoint_and_nothing_else(
    run_folder: Path, capsys: pytest.CaptureFixture
):
    removed = clear_previous_run(str(run_folder))
    assert removed == [
        "README.md", "checkpoint-10/", "checkpoint-11/", "checkpoint-9/", "config.json", "model.safetensors",
        "results.json", "training_args.bin",
    ]  # fmt: skip
    assert sorted(path.name for path in run_folder.iterdir()) == ["notes.txt", "runs", "study_step.json"]
    assert capsys.readouterr().err == (
        f"--overwrite_output_dir: deleted {', '.join(removed)} of the previous run in {run_folder}.\n"
    )
    assert clear_previous_run(str(run_folder)) == [] and capsys.readouterr().err == ""


def test_latest_is_the_newest_complete_checkpoint_of_the_folder(run_folder: Path, tmp_path_factory):
    assert resolve_resume_checkpoint(None, str(run_folder)) is None
    for word in ("latest", "true", "LATEST"):
        assert resolve_resume_checkpoint(word, str(run_folder)) == str(run_folder / "checkpoint-10")
    assert resolve_resume_checkpoint(str(run_folder / "checkpoint-9"), "elsewhere") == str(run_folder / "checkpoint-9")
    with pytest.raises(UserError, match="checkpoint-11 is no complete Trainer checkpoint"):
        resolve_resume_checkpoint(str(run_folder / "checkpoint-11"), str(run_folder))
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(UserError, match="holds no complete checkpoint-N folder, so there is nothing to continue"):
        resolve_resume_checkpoint("latest", str(empty))
    with pytest.raises(UserError, match="missing does not exist, so there is nothing to continue"):
        resolve_resume_checkpoint("latest", str(empty / "missing"))


def test_an_interrupt_names_the_checkpoint_to_resume_and_goes_on(run_folder: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(KeyboardInterrupt), resume_hint_on_interrupt(str(run_folder)):
        raise KeyboardInterrupt
    assert capsys.readouterr().err == (  # on a line of its own, after whatever a progress bar left on the line
        f"\nInterrupted: the last checkpoint is {run_folder / 'checkpoint-10'}. The same command with "
        "--resume_from_checkpoint latest continues from it.\n"
    )
    with pytest.raises(KeyboardInterrupt), resume_hint_on_interrupt(str(run_folder / "new")):
        raise KeyboardInterrupt
    assert "Interrupted: no checkpoint was written yet" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt), resume_hint_on_interrupt(str(run_folder), is_main_process=False):
        raise KeyboardInterrupt
    assert capsys.readouterr().err == ""  # one process says it


def test_a_trainer_job_clears_the_folder_only_when_overwriting_and_not_resuming(run_folder: Path):
    def arguments(**fields) -> TrainingArguments:
        return TrainingArguments(output_dir=str(run_folder), report_to="none", use_cpu=True, **fields)

    start_in_output_dir(arguments(), overwrite_output_dir=False)
    start_in_output_dir(arguments(resume_from_checkpoint=str(run_folder / "checkpoint-10")), overwrite_output_dir=True)
    assert (run_folder / "results.json").is_file() and (run_folder / "checkpoint-10").is_dir()
    start_in_output_dir(arguments(), overwrite_output_dir=True)
    assert find_previous_run(str(run_folder)) == [] and (run_folder / "notes.txt").is_file()


def test_a_trainer_run_holds_its_folder_and_a_live_runs_folder_is_left_untouched(
    run_folder: Path, capsys: pytest.CaptureFixture
):
    """hold_output_dir, which every Trainer script runs in: a folder another run holds is refused before anything
    in it is deleted; while held, a second run is refused; Ctrl-C names the checkpoint; the lock goes with the run."""
    arguments = TrainingArguments(output_dir=str(run_folder), report_to="none", use_cpu=True)
    other_run = RunLock(str(run_folder)).acquire()
    with pytest.raises(UserError, match="is in use by another run"), hold_output_dir(arguments, True):
        pass
    assert (run_folder / "results.json").is_file() and (run_folder / "checkpoint-10").is_dir()
    other_run.release()
    with pytest.raises(KeyboardInterrupt), hold_output_dir(arguments, overwrite_output_dir=False):
        assert "is in use by another run" in RunLock(str(run_folder)).try_acquire()
        raise KeyboardInterrupt
    assert f"Interrupted: the last checkpoint is {run_folder / 'checkpoint-10'}." in capsys.readouterr().err
    with hold_output_dir(arguments, overwrite_output_dir=True):  # the interrupted run let the folder go
        assert find_previous_run(str(run_folder)) == []
    assert RunLock(str(run_folder)).try_acquire() is None


class RaisesSigintWhenCollected:
    """SIGINT arriving while a finaliser runs, as it may while a checkpoint is being saved."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # pytest reports what Python drops
def test_a_ctrl_c_python_drops_in_a_finaliser_still_stops_the_run_at_the_next_step(tmp_path: Path):
    """Python prints a KeyboardInterrupt raised inside `__del__` as "Exception ignored" and goes on, so a Trainer
    run went on after Ctrl-C; under hold_output_dir the next step raises it again, and SIGINT is Python's again
    after the run."""
    arguments = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    went_on = False
    with pytest.raises(KeyboardInterrupt), hold_output_dir(arguments, overwrite_output_dir=False) as interrupts:
        RaisesSigintWhenCollected()  # collected at once: the interrupt is raised in __del__ and dropped
        went_on = True
        interrupts.on_step_end(arguments, TrainerState(), TrainerControl())
    assert went_on and interrupts.interrupted  # the first KeyboardInterrupt was dropped, the step raised it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with hold_output_dir(arguments, overwrite_output_dir=False) as quiet:  # no Ctrl-C: the steps go on
        quiet.on_step_end(arguments, TrainerState(), TrainerControl())
