#!/usr/bin/env python
# Copyright 2026 The caev2_hf authors. Licensed under the Apache License, Version 2.0.
r"""Pretrain CAE v2 with Accelerate on a stream of images (docs/design.md#training-loop, recipe in docs/method.md#recipes).

    python run_pretrain.py --config configs/demo.yaml            # offline demo on a CPU, well under a minute
    accelerate launch --config_file configs/accelerate/ddp-8gpu.yaml run_pretrain.py --config configs/vit-base.yaml
    accelerate launch --config_file configs/accelerate/ddp-8gpu.yaml run_pretrain.py --config configs/vit-base.yaml \
        --resume_from_checkpoint latest                          # after a preemption: same command + resume
    torchrun --nproc_per_node 2 run_pretrain.py --config configs/vit-tiny.yaml --per_device_train_batch_size 128

Every key of the YAML file can be overridden on the command line (`--max_steps 100`). Outputs, under output_dir:
checkpoints/ (atomic, last save_total_limit kept), logs/RUN/ (TensorBoard, one subfolder per run), loss.png (the
curves, redrawn at each checkpoint; needs matplotlib) and final/ (encoder + image processor + model card, with
final/pretraining/ holding the regressor and head too). An output_dir that holds another run is refused unless
resuming (--resume_from_checkpoint latest) or --overwrite_output_dir, and one that a live run holds (its lock,
output_dir/.run.lock) is refused always. SIGTERM or SIGUSR1 (a scheduler's notice) saves a checkpoint at the next
update and exits with 128 + the signal (143 for SIGTERM); the same command plus --resume_from_checkpoint latest
continues (docs/design.md#checkpoints-and-resume).

The arguments are parsed once, before torch is imported (`--help` and a bad argument answer at once), and handed
to `main`; a data source on the command line replaces the YAML file's, and `--config_overrides` changes only the
keys it names (`caev2_hf_cli/pretraining.py`).
"""

import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time

from caev2_hf_cli.checks import check_model_path
from caev2_hf_cli.errors import StoppedBySignal, UserError
from caev2_hf_cli.parsing import parse_arguments, run_command
from caev2_hf_cli.pretraining import (
    ARGUMENT_CLASSES,
    RUN_FOLDERS,
    PretrainingArguments,
    PretrainingDataArguments,
    PretrainingModelArguments,
    check_pretraining_arguments,
)


def parse_and_check_arguments(
    argv: list[str] | None = None,
) -> tuple[PretrainingModelArguments, PretrainingDataArguments, PretrainingArguments]:
    """The arguments, checked before anything heavy is imported or built: a bad one costs a second, not a setup."""
    arguments = parse_arguments(ARGUMENT_CLASSES, argv, description=__doc__)
    check_pretraining_arguments(*arguments)
    return arguments


if __name__ == "__main__":  # parsed and checked before the heavy imports below
    ARGUMENTS = run_command(parse_and_check_arguments)

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm

from caev2_hf import CAEv2Config, CAEv2ForPreTraining
from caev2_hf.configuration_caev2 import MASK_LAYOUT_FIELDS
from caev2_hf.data.demo import write_demo_image_folder
from caev2_hf.data.errors import DataStreamError, UnreadableShardError
from caev2_hf.data.masking import build_mask_generator
from caev2_hf.data.pretraining_stream import ResumableBatchStream, StreamPosition, build_pretrain_loader
from caev2_hf.data.sources import find_unreadable_tar_shards, open_image_dataset, shard_for_process
from caev2_hf.data.transforms import PretrainCrop
from caev2_hf.plots import TrainingCurves
from caev2_hf.pretraining.checkpointing import (
    list_checkpoints,
    load_checkpoint,
    read_training_state,
    resolve_resume_checkpoint,
    save_checkpoint,
    set_aside_checkpoints,
)
from caev2_hf.pretraining.export import (
    describe_data_source,
    describe_training,
    export_final_model,
    preset_of,
    push_to_hub_in_background,
)
from caev2_hf.pretraining.preemption import StopRequests
from caev2_hf.pretraining.schedule import (
    SCHEDULE_KEY,
    TrainingSchedule,
    compute_training_schedule,
    saved_schedule,
    set_peak_learning_rates,
)
from caev2_hf.pretraining.step import PretrainingStep, build_accelerator, build_pretraining_step
from caev2_hf.pretraining.step_tracking import NonFiniteStreak
from caev2_hf.run_lock import RunLock


logger = logging.getLogger("run_pretrain")
NONFINITE_SUFFIX = ".nonfinite"  # a checkpoint whose weights gave a run of non-finite updates, set aside


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def build_logged_accelerator(training_args: PretrainingArguments) -> Accelerator:
    """The Accelerator, with INFO logs on the local main process only."""
    accelerator = build_accelerator(training_args)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING,
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    return accelerator


def compute_schedule(training_args: PretrainingArguments, num_processes: int) -> TrainingSchedule:
    """Effective batch, scaled lr and step counts, logged once (they are saved in every checkpoint too)."""
    schedule = compute_training_schedule(
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        num_processes,
        training_args.learning_rate,
        training_args.learning_rate_batch_size,
        max_steps=training_args.max_steps,
        num_train_epochs=training_args.num_train_epochs,
        num_train_examples=training_args.num_train_examples,
        warmup_steps=training_args.warmup_steps,
        warmup_epochs=training_args.warmup_epochs,
    )
    logger.info(
        f"Effective batch {schedule.effective_batch_size} = {training_args.per_device_train_batch_size} per device x "
        f"{training_args.gradient_accumulation_steps} accumulation x {num_processes} process(es); lr "
        f"{schedule.learning_rate:.4g} = {training_args.learning_rate:g} x {schedule.effective_batch_size} / "
        f"{training_args.learning_rate_batch_size}; {schedule.max_steps} updates, {schedule.warmup_steps} of warmup."
    )
    return schedule


def build_config(model_args: PretrainingModelArguments) -> CAEv2Config | None:
    """The preset with its overrides, checked as the pretraining model computes it (every key a config field, the
    mask count and teacher grid it needs); None when a saved folder brings its own config."""
    if model_args.model_name_or_path:
        return None
    try:
        config = CAEv2Config.from_preset(model_args.model_preset, **(model_args.config_overrides or {}))
        config.validate_for_pretraining()
    except ValueError as error:  # the user's overrides, not a bug
        raise UserError(f"--config_overrides: {error}") from error
    return config


def check_teacher_can_load(config: CAEv2Config | None, training_args: PretrainingArguments) -> None:
    """A fresh run downloads its CLIP teacher after the model is built: a teacher that cannot be fetched (offline and
    not cached, no network) is refused before that, in one line. A resumed run brings its teacher's weights."""
    if config is None or config.use_random_teacher or training_args.resume_from_checkpoint:
        return
    check_model_path(config.teacher_name_or_path, "the teacher (teacher_name_or_path)")


def build_model(
    model_args: PretrainingModelArguments,
    config: CAEv2Config | None,
    accelerator: Accelerator,
    seed: int,
    resuming: bool = False,
) -> CAEv2ForPreTraining:
    """The student from `config` (or the saved folder) with the same initial weights on every process, and its
    teacher's weights unless a random teacher is intended. The teacher is saved with the model
    (docs/design.md#teacher): a folder whose teacher was loaded, or the checkpoint a resumed run restores, brings
    its weights, so only a teacher that never received any is downloaded."""
    set_seed(seed)
    if model_args.model_name_or_path:
        model = CAEv2ForPreTraining.from_pretrained(model_args.model_name_or_path)
    else:
        model = CAEv2ForPreTraining(config)
    teacher_dtype = torch.bfloat16 if accelerator.device.type == "cuda" else None
    if model.config.use_random_teacher:
        pass
    elif resuming or bool(model.teacher.has_weights):
        if teacher_dtype is not None:  # the precision load_teacher gives, so a resumed run computes the same
            model.teacher.model.to(teacher_dtype)
    else:
        with accelerator.main_process_first():  # one download; the other processes then read the cache
            model.load_teacher(dtype=teacher_dtype)
    set_seed(seed, device_specific=True)  # same initial weights everywhere, but each process its own drop-path draws
    return model


def warn_about_saved_mask_layout(model_name_or_path: str, data_args: PretrainingDataArguments) -> None:
    """A folder saved before the mask layout moved to the data arguments holds it in its config.json, where loading
    ignores it: say so when this run lays its masks out otherwise (pass the data arguments to keep the folder's)."""
    saved, _ = CAEv2Config.get_config_dict(model_name_or_path)
    differing = [name for name in MASK_LAYOUT_FIELDS if name in saved and saved[name] != getattr(data_args, name)]
    if differing:
        saved_flags = " ".join(f"--{name} {saved[name]}" for name in differing)
        logger.warning(
            f"{model_name_or_path} was pretrained with {saved_flags} (its config.json, from before the mask layout "
            f"moved to the data arguments); this run uses "
            f"{' '.join(f'--{name} {getattr(data_args, name)}' for name in differing)}. Pass {saved_flags} to keep "
            "the folder's layout."
        )


def write_demo_images_once(
    data_args: PretrainingDataArguments, image_size: int, accelerator: Accelerator
) -> PretrainingDataArguments:
    """The offline demo's images: crops of scikit-learn's sample photos, written once (to a temporary name first)
    into the demo's own folder (`demo_dir`, never `train_dir`); returns the data arguments that read them."""
    if not data_args.demo_dir:
        return data_args
    with accelerator.main_process_first():
        if accelerator.is_main_process and not os.path.isdir(data_args.demo_dir):
            temporary = data_args.demo_dir.rstrip("/") + ".incomplete"
            shutil.rmtree(temporary, ignore_errors=True)
            write_demo_image_folder(temporary, num_images=data_args.num_demo_images, image_size=2 * image_size)
            os.replace(temporary, data_args.demo_dir)
            logger.info(f"Wrote {data_args.num_demo_images} demo images to {data_args.demo_dir}.")
    return dataclasses.replace(data_args, train_dir=data_args.demo_dir, demo_dir=None)


def open_train_stream(
    data_args: PretrainingDataArguments,
    config: CAEv2Config,
    seed: int,
    batch_size: int,
    process_index: int,
    num_processes: int,
    position: dict | None = None,
    masks_per_image: int = 1,
) -> ResumableBatchStream:
    """This process's part of the data as uint8 crops with masks (`masks_per_image` per image, laid out as the data
    arguments say) and augmentation parameters (flip and colour jitter run on the device, in
    `PretrainingStep.prepare_inputs`), from `position` (a checkpoint's `StreamPosition.to_dict()`) on."""
    dataset = open_image_dataset(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        split=data_args.train_split,
        train_dir=data_args.train_dir,
        data_files=data_args.data_files,
        image_column=data_args.image_column,
    )
    dataset = shard_for_process(dataset, process_index, num_processes)
    crop = PretrainCrop(config.image_size, scale=(data_args.crop_min_scale, 1.0), color_jitter=data_args.color_jitter)
    grid_side = config.image_size // config.patch_size
    masks = build_mask_generator((grid_side, grid_side), config.num_masking_patches, data_args)
    dataloader = build_pretrain_loader(
        dataset, crop, masks, batch_size, data_args.dataloader_num_workers, seed, process_index=process_index,
        shuffle_buffer_size=data_args.shuffle_buffer_size, prefetch_factor=data_args.dataloader_prefetch_factor,
        masks_per_image=masks_per_image,
    )  # fmt: skip
    return ResumableBatchStream(dataloader, StreamPosition.from_dict(position) if position else None)


def describe_data_error(error: DataStreamError, data_args: PretrainingDataArguments) -> str:
    """A data failure as the command's one line; a shard that cannot be read is named (the local .tar files are
    checked, headers only, once the stream has failed: `datasets` does not say which shard it was reading)."""
    if not isinstance(error, UnreadableShardError):
        return str(error)
    damaged = find_unreadable_tar_shards(data_args.data_files) if data_args.data_files else {}
    resume = (
        "then run the same command with --resume_from_checkpoint latest (the run continues from its last checkpoint)"
    )
    if not damaged:
        return f"{error} Check the data source (a local copy cut short, a failed download), {resume}."
    listing = "; ".join(f"{path} ({reason})" for path, reason in damaged.items())
    shards = "A .tar shard" if len(damaged) == 1 else f"{len(damaged)} .tar shards"
    return (
        f"{shards} of --data_files cannot be read to the end (cut short, or no tar archive): {listing}. Copy or "
        f"download {'it' if len(damaged) == 1 else 'them'} again, {resume}."
    )


def resume(
    accelerator: Accelerator,
    resume_from_checkpoint: str | None,
    output_dir: str,
    schedule: TrainingSchedule,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Restores a checkpoint's states when asked; returns its step, counters and this process's data position.

    A learning rate changed since the checkpoint applies from there on (the schedule continues from the new peak):
    lowering it and resuming from the last good checkpoint is how a run that diverged continues."""
    checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, checkpoints_dir(output_dir))
    if checkpoint is None:
        return {"step": 0, "skipped_steps": 0, "skipped_images": 0, "data_position": None}
    lr_scheduler = getattr(scheduler, "scheduler", scheduler)  # inside Accelerate's wrapper
    peak_learning_rates = list(lr_scheduler.base_lrs)  # this run's, before the checkpoint's replace them
    state = load_checkpoint(accelerator, checkpoint)
    logger.info(f"Resumed from {checkpoint} at update {state['step']}, data position {state['data_position']}.")
    report = accelerator.is_main_process  # once, not once per process
    if saved_schedule(state) != schedule.to_dict() and report:
        logger.warning(
            f"The run's schedule changed since the checkpoint: {saved_schedule(state)} -> {schedule.to_dict()}."
        )
    if lr_scheduler.base_lrs != peak_learning_rates:
        if report:
            logger.warning(
                f"The peak learning rate changed since the checkpoint ({lr_scheduler.base_lrs[0]:.4g} -> "
                f"{peak_learning_rates[0]:.4g}): the schedule continues from update {state['step']} with the new peak."
            )
        set_peak_learning_rates(lr_scheduler, peak_learning_rates)
    return state


def check_checkpoint_within_run(checkpoint: str | None, schedule: TrainingSchedule) -> None:
    """A checkpoint past the run's last update is refused: its weights are not those of a run of max_steps updates,
    and re-exporting them under that length would be silently wrong. One at the last update has nothing left to
    train: final/ is written from it again, and the log says so."""
    if checkpoint is None:
        return
    step = read_training_state(checkpoint)["step"]
    if step > schedule.max_steps:
        raise UserError(
            f"{checkpoint} is at update {step}, past this run's {schedule.max_steps} updates: nothing was trained or "
            f"written. Resume with --max_steps {step} or more to continue it (or --max_steps {step} to export it "
            "again), or start afresh in another --output_dir."
        )
    if step == schedule.max_steps:
        logger.info(f"{checkpoint} is at the run's last update ({step}): nothing to train; final/ is written from it.")


def log_window(
    step: PretrainingStep, update: int, output_dir: str, curves: TrainingCurves | None, progress: tqdm
) -> dict[str, float]:
    """Reads and logs the window's metrics (a host sync); a run of non-finite updates too long ends the run."""
    accelerator = step.accelerator
    try:
        metrics = {**step.tracker.summarize(accelerator), "learning_rate": step.scheduler.get_last_lr()[0]}
    except NonFiniteStreak as streak:
        raise UserError(stop_for_nonfinite_streak(streak, accelerator, output_dir)) from streak
    if curves is not None:
        curves.record(update, metrics)
    accelerator.log({f"train/{name}": value for name, value in metrics.items()}, step=update)
    progress.set_postfix(
        loss=f"{metrics['loss']:.4f}", lr=f"{metrics['learning_rate']:.3g}",
        images_per_s=f"{metrics['images_per_second']:.1f}",
    )  # fmt: skip
    return metrics


def stop_for_nonfinite_streak(streak: NonFiniteStreak, accelerator: Accelerator, output_dir: str) -> str:
    """The one-line stop after too many skipped updates in a row, naming the last good checkpoint.

    No checkpoint is written while updates are skipped, but one written just before the streak holds the very weights
    every skipped update started from: it is set aside (renamed `*.nonfinite`, kept for inspection) so that
    `--resume_from_checkpoint latest` finds the last good one."""
    folder = checkpoints_dir(output_dir)
    if accelerator.is_main_process:
        set_aside = set_aside_checkpoints(folder, streak.first_skipped - 1, NONFINITE_SUFFIX)
        if set_aside:
            logger.warning(f"Set aside {', '.join(set_aside)}: its weights gave the non-finite updates.")
    accelerator.wait_for_everyone()
    good = list_checkpoints(folder)
    if not good:
        return (
            f"{streak} No checkpoint was written before: lower --learning_rate (or prefer bf16 to fp16, or check the "
            "data) and start again with --overwrite_output_dir true."
        )
    return (
        f"{streak} The last good checkpoint is {good[-1]}: lower --learning_rate (or prefer bf16 to fp16, or check "
        "the data) and continue from it with --resume_from_checkpoint latest; the new learning rate applies there."
    )


def stop_for_signal(stop: signal.Signals, saved: str | None, output_dir: str) -> StoppedBySignal:
    """The stop after SIGTERM / SIGUSR1, with the command that continues the run (logged, and the exception's
    one-line message)."""
    if saved is None:  # updates were being skipped: no checkpoint of those weights
        saved_checkpoints = list_checkpoints(checkpoints_dir(output_dir))
        saved = saved_checkpoints[-1] if saved_checkpoints else None
        where = f"updates were being skipped, so the last checkpoint is still {saved}" if saved else "no checkpoint"
    else:
        where = f"saved {saved}"
    logger.warning(
        f"Stopped by {stop.name}: {where}. To continue, launch the same command (with the same launcher) plus "
        f"--resume_from_checkpoint latest: {resume_command(sys.argv)}"
    )
    return StoppedBySignal(stop, f"{stop.name}: {where}; continue with --resume_from_checkpoint latest.")


def resume_command(argv: list[str]) -> str:
    """This process's command with `--resume_from_checkpoint latest` (in place of any checkpoint it named). argv
    holds the script and its arguments; a launcher (torchrun, accelerate launch) goes in front of it again."""
    kept, skip_value = [], False
    for argument in argv:
        if skip_value:
            skip_value = False
        elif argument == "--resume_from_checkpoint":
            skip_value = True
        elif not argument.startswith("--resume_from_checkpoint="):
            kept.append(argument)
    return f"python {shlex.join([*kept, '--resume_from_checkpoint', 'latest'])}"


def save(
    step: PretrainingStep, stream: ResumableBatchStream, training_args: PretrainingArguments, update: int,
    checkpoint_state: dict, metrics: dict, curves: TrainingCurves | None,
) -> str:  # fmt: skip
    """A checkpoint of `update` and the curves drawn up to it."""
    accelerator = step.accelerator
    state = {**checkpoint_state, **step.tracker.totals(accelerator), "last_metrics": metrics}
    saved = save_checkpoint(
        accelerator, checkpoints_dir(training_args.output_dir), update, stream.position.to_dict(), state,
        training_args.save_total_limit,
    )  # fmt: skip
    if curves is not None and accelerator.is_main_process:
        curves.write()  # loss.png in output_dir, at every checkpoint and so at the end
    return saved


def train(
    step: PretrainingStep,
    stream: ResumableBatchStream,
    training_args: PretrainingArguments,
    schedule: TrainingSchedule,
    start_step: int,
    checkpoint_state: dict,
    curves: TrainingCurves | None = None,
    stop_requests: StopRequests | None = None,
) -> dict[str, float]:
    """Updates `start_step + 1 .. max_steps`; every process runs exactly that many, so none waits for another.
    Returns the last logged metrics.

    A checkpoint due while updates are being skipped waits for the next applied update. A stop request (SIGTERM,
    SIGUSR1), agreed by every process, saves a checkpoint at the update boundary and raises `StoppedBySignal`."""
    accelerator, output_dir = step.accelerator, training_args.output_dir
    metrics, save_waits = {}, False
    step.model.train()
    # the bar is closed on any exit, so that an error or stop message starts a line of its own
    with tqdm(
        total=schedule.max_steps, initial=start_step, desc="pretraining", disable=not accelerator.is_local_main_process
    ) as progress:
        for update in range(start_step + 1, schedule.max_steps + 1):
            for _ in range(training_args.gradient_accumulation_steps):
                step(next(stream))
            progress.update(1)
            is_last = update == schedule.max_steps
            stop = stop_requests.agreed_signal() if stop_requests is not None and not is_last else None
            saves = save_waits or update % training_args.save_steps == 0 or is_last or stop is not None
            if saves:  # one host sync, at checkpoints only; the skip decision is the same on every process
                saves = not step.tracker.is_skipping()
                save_waits = not saves
            # A checkpoint also closes the logging window: a run resumed from it then logs the uninterrupted
            # run's windows.
            if update % training_args.logging_steps == 0 or saves:
                metrics = log_window(step, update, output_dir, curves, progress)
            saved = save(step, stream, training_args, update, checkpoint_state, metrics, curves) if saves else None
            if stop is not None:
                raise stop_for_signal(stop, saved, output_dir)
    if metrics.get("skipped_images"):  # the data path logs each one once per worker, and a total per worker and epoch
        logger.warning(
            f"{metrics['skipped_images']} unusable images were skipped in all (every process, every epoch)."
        )
    return metrics


def flat_hyperparameters(arguments: dict) -> dict[str, int | float | str | bool]:
    """TensorBoard's hparams take scalars and strings only."""
    return {name: value if isinstance(value, int | float | str | bool) else json.dumps(value)
            for name, value in arguments.items()}  # fmt: skip


def finish(
    accelerator: Accelerator,
    model: torch.nn.Module,
    arguments: dict,
    schedule: TrainingSchedule,
    final_loss: float | None,
) -> None:
    """Exports final/ (+ pretraining/), starts the Hub upload in the background, says where everything is."""
    output_dir, preset = arguments["output_dir"], arguments["model_preset"]
    data_source = describe_data_source(
        arguments["dataset_name"], arguments["train_dir"], arguments["data_files"], arguments["demo_dir"]
    )
    config = accelerator.unwrap_model(model).config
    size = preset_of(config, preset)  # named in the card only when the architecture is exactly the preset's
    details = describe_training(size, schedule.to_dict(), final_loss, data_source, config.use_random_teacher)
    datasets = [arguments["dataset_name"]] if arguments["dataset_name"] else []
    final_dir = os.path.join(output_dir, "final")
    export_final_model(
        accelerator, model, final_dir, size, arguments["hub_model_id"], datasets, details, arguments["mask_strategy"]
    )
    upload = None
    if arguments["push_to_hub"] and accelerator.is_main_process:
        upload = push_to_hub_in_background(
            final_dir, arguments["hub_model_id"], arguments["hub_private_repo"], arguments["hub_include_pretraining"]
        )
    loss = "not logged" if final_loss is None else f"{final_loss:.4f}"
    logger.info(
        f"Done. Final loss {loss}.\n  checkpoints: {checkpoints_dir(output_dir)}\n"
        f"  TensorBoard: tensorboard --logdir {os.path.join(output_dir, 'logs')}\n"
        f"  final model: {final_dir} (encoder + image processor + card; pretraining/ holds regressor and head)"
    )
    if upload is not None:
        try:
            logger.info(f"Uploaded to https://huggingface.co/{arguments['hub_model_id']}: {upload.result()}")
        except UserError as error:  # the run's work is safe in final_dir: say how to send it
            include = " --include pretraining" if arguments["hub_include_pretraining"] else ""
            public = "" if arguments["hub_private_repo"] else " --public"
            raise UserError(
                f"{error} The run is complete and final/ is written: upload it with `caev2-hub push --folder "
                f"{final_dir} --repo_id {arguments['hub_model_id']}{include}{public}`."
            ) from None


def lock_output_dir(accelerator: Accelerator, output_dir: str) -> RunLock | None:
    """The main process locks `output_dir` for the run's life (`caev2_hf.run_lock`); every process learns whether the
    run may go on. Taken before anything is written or deleted there, so --overwrite_output_dir never touches a live
    run's files."""
    lock = RunLock(output_dir) if accelerator.is_main_process else None
    (refusal,) = broadcast_object_list([lock.try_acquire() if lock is not None else None])
    if refusal is not None:
        raise UserError(refusal)
    return lock


def clear_previous_run(training_args: PretrainingArguments, accelerator: Accelerator) -> None:
    """With --overwrite_output_dir (and no resume), the previous run's checkpoints/ and final/ are deleted first."""
    if training_args.overwrite_output_dir and not training_args.resume_from_checkpoint:
        if accelerator.is_main_process:
            for name in RUN_FOLDERS:
                shutil.rmtree(os.path.join(training_args.output_dir, name), ignore_errors=True)
        accelerator.wait_for_everyone()


def tensorboard_run_name(state: dict, output_dir: str) -> str:
    """logs/ holds one subfolder per run, named by its start time: a resumed run continues the one it resumes."""
    if state.get("run_name"):
        return state["run_name"]
    name = base = time.strftime("run-%Y%m%d-%H%M%S")
    while os.path.exists(os.path.join(output_dir, "logs", name)):
        name = f"{base}-{int(name.rsplit('-', 1)[1]) + 1 if name != base else 2}"
    return name


def main(
    model_args: PretrainingModelArguments, data_args: PretrainingDataArguments, training_args: PretrainingArguments
) -> None:
    """Pretrains on arguments from `parse_and_check_arguments`, holding the output folder's lock throughout and
    turning SIGTERM / SIGUSR1 into a checkpoint and a stop (`StopRequests`)."""
    if training_args.torch_num_threads is not None:
        torch.set_num_threads(training_args.torch_num_threads)
    config = build_config(model_args)  # before anything is built or written: a bad override costs a second
    check_teacher_can_load(config, training_args)
    accelerator = build_logged_accelerator(training_args)
    lock = None
    try:
        lock = lock_output_dir(accelerator, training_args.output_dir)
        with StopRequests(accelerator) as stop_requests:
            run_training(model_args, data_args, training_args, config, accelerator, stop_requests)
    except DataStreamError as error:  # the data layer's message, as the command's one line
        raise UserError(describe_data_error(error, data_args)) from error
    except KeyboardInterrupt:
        if accelerator.is_main_process:
            saved = list_checkpoints(checkpoints_dir(training_args.output_dir))
            where = f"the last checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"
            logger.warning(f"Interrupted: {where}. The same command with --resume_from_checkpoint latest continues.")
        raise
    finally:
        accelerator.end_training()  # closes the trackers and destroys the process group
        if lock is not None:
            lock.release()


def run_training(
    model_args: PretrainingModelArguments,
    data_args: PretrainingDataArguments,
    training_args: PretrainingArguments,
    config: CAEv2Config | None,
    accelerator: Accelerator,
    stop_requests: StopRequests,
) -> None:
    """The run's phases (docs/design.md#training-loop), from the schedule to final/."""
    arguments = {
        **dataclasses.asdict(model_args),
        **dataclasses.asdict(data_args),
        **dataclasses.asdict(training_args),
    }
    try:
        schedule = compute_schedule(training_args, accelerator.num_processes)
    except ValueError as error:  # the step counts the arguments imply: a user's choice, not a bug
        raise UserError(str(error)) from error
    clear_previous_run(training_args, accelerator)
    checkpoint = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint, checkpoints_dir(training_args.output_dir)
    )
    check_checkpoint_within_run(checkpoint, schedule)
    model = build_model(model_args, config, accelerator, training_args.seed, resuming=checkpoint is not None)
    config = model.config
    if model_args.model_name_or_path:
        warn_about_saved_mask_layout(model_args.model_name_or_path, data_args)
    data_args = write_demo_images_once(data_args, config.image_size, accelerator)
    step = build_pretraining_step(accelerator, model, training_args, schedule)
    state = resume(accelerator, checkpoint, training_args.output_dir, schedule, step.scheduler)  # the teacher too
    step.tracker.restore_totals(state["skipped_steps"], state["skipped_images"], start_step=state["step"])
    stream = open_train_stream(
        data_args, config, training_args.seed, training_args.per_device_train_batch_size,
        accelerator.process_index, accelerator.num_processes, state["data_position"],
        masks_per_image=training_args.masks_per_image,
    )  # fmt: skip
    run_name = tensorboard_run_name(state, training_args.output_dir)
    # TensorBoard hides what the interrupted run logged after the checkpoint, so no step appears twice.
    purge = {"tensorboard": {"purge_step": state["step"] + 1}} if state["step"] else {}
    accelerator.init_trackers(run_name, config=flat_hyperparameters(arguments), init_kwargs=purge)
    checkpoint_state = {SCHEDULE_KEY: schedule.to_dict(), "arguments": arguments, "run_name": run_name}
    curves = TrainingCurves(training_args.output_dir, state["step"], logger)
    metrics = train(step, stream, training_args, schedule, state["step"], checkpoint_state, curves, stop_requests)
    # A resumed run that had already finished trains no update: its loss is the last checkpoint's.
    final_loss = metrics.get("loss", state.get("last_metrics", {}).get("loss"))
    finish(accelerator, step.model, arguments, schedule, final_loss)


if __name__ == "__main__":
    run_command(main, *ARGUMENTS)
