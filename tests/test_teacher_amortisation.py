"""Teacher amortisation: K masks per image, one teacher pass, the student on K x B views.

An amortised step must equal K separate steps that use the same teacher targets: the same loss (the mean of the K
losses) and the same gradients."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from caev2_hf import CAEv2ForPreTraining
from caev2_hf.data.masking import build_mask_generator
from caev2_hf.pretraining.step import PretrainingStep
from caev2_hf_cli.pretraining import PretrainingDataArguments


def build_step(model: CAEv2ForPreTraining, masks_per_image: int) -> PretrainingStep:
    """Only what `share_teacher_pass` reads: the model, through the Accelerator, and K."""
    config = model.config
    return PretrainingStep(
        Accelerator(cpu=True), model, None, None, None, None, config.image_mean, config.image_std,
        masks_per_image=masks_per_image,
    )  # fmt: skip


def test_amortised_step_equals_k_separate_steps_with_the_same_targets(tiny_config, pixel_values):
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(tiny_config).train()
    batch_size, num_masks = pixel_values.shape[0], 3
    rng = np.random.default_rng(0)
    generator = build_mask_generator((4, 4), tiny_config.num_masking_patches, PretrainingDataArguments())
    masks = torch.from_numpy(np.stack([generator(rng) for _ in range(num_masks * batch_size)]))

    teacher_calls = []
    model.teacher.register_forward_hook(lambda module, args, output: teacher_calls.append(args[0].shape[0]))
    student_rows = []
    model.caev2.register_forward_pre_hook(lambda module, args, kwargs: student_rows.append(kwargs.get(
        "pixel_values", args[0] if args else None).shape[0]), with_kwargs=True)  # fmt: skip
    inputs = build_step(model, num_masks).share_teacher_pass({"pixel_values": pixel_values, "bool_masked_pos": masks})
    amortised = model(**inputs)
    amortised.loss.backward()
    amortised_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert teacher_calls == [batch_size] and student_rows == [num_masks * batch_size]

    model.zero_grad(set_to_none=True)
    targets = model.teacher(pixel_values)
    separate = [
        model(pixel_values, bool_masked_pos=masks[k * batch_size : (k + 1) * batch_size], target_features=targets)
        for k in range(num_masks)
    ]
    mean_loss = torch.stack([outputs.loss for outputs in separate]).mean()
    mean_loss.backward()
    torch.testing.assert_close(amortised.loss, mean_loss, rtol=1e-6, atol=1e-6)
    separate_grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert amortised_grads.keys() == separate_grads.keys() and len(amortised_grads) > 10
    for name, gradient in amortised_grads.items():
        torch.testing.assert_close(gradient, separate_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_batch_with_the_wrong_number_of_masks_is_refused(tiny_config, pixel_values, fixed_mask):
    step = build_step(CAEv2ForPreTraining(tiny_config), masks_per_image=2)
    with pytest.raises(ValueError, match="3 masks for 3 images: masks_per_image=2"):
        step.share_teacher_pass({"pixel_values": pixel_values, "bool_masked_pos": fixed_mask})
