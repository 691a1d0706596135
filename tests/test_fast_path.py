"""Correctness of the fast path (issue 6): half-precision teacher, autocast student, torch.compile. Never its speed."""

import copy
import shutil

import pytest
import torch
from conftest import TINY_TEACHER, build_tiny_config

from caev2_hf import CAEv2ForPreTraining


def build_model(**overrides) -> CAEv2ForPreTraining:
    torch.manual_seed(0)
    return CAEv2ForPreTraining(build_tiny_config(**overrides))


def mean_cosine(first: torch.Tensor, second: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(first, second, dim=-1).mean().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_teacher_targets_agree_with_fp32_targets(pixel_values: torch.Tensor, dtype: torch.dtype):
    model = build_model()
    fp32_targets = model.compute_target_features(pixel_values)
    model.teacher.model.to(dtype)  # what load_teacher(dtype=...) does
    half_targets = model.compute_target_features(pixel_values)
    assert half_targets.dtype == torch.float32  # normalised in fp32 whatever the teacher's dtype
    assert not torch.equal(half_targets, fp32_targets)  # the teacher really ran in half precision
    assert mean_cosine(half_targets, fp32_targets) > 0.99


def test_bf16_autocast_step_matches_fp32_loss_and_gradients(pixel_values: torch.Tensor, fixed_mask: torch.Tensor):
    model = build_model()
    fp32_loss = model(pixel_values, bool_masked_pos=fixed_mask).loss
    fp32_loss.backward()
    fp32_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.teacher.model.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_loss = model(pixel_values, bool_masked_pos=fixed_mask).loss
    bf16_loss.backward()
    assert bf16_loss.dtype == torch.float32
    torch.testing.assert_close(bf16_loss, fp32_loss, atol=1e-2, rtol=0)
    # The regressor's key-norm bias shifts every score of a query equally, which softmax ignores: its gradient is zero
    # up to rounding (~1e-9) and has no direction to compare. Every other gradient tensor keeps its direction.
    compared = {name: grad for name, grad in fp32_grads.items() if grad.norm() > 1e-6}
    assert len(fp32_grads) - len(compared) == 2  # layernorm_key.bias of the two regressor blocks
    for name, grad in compared.items():
        cosine = torch.nn.functional.cosine_similarity(model.get_parameter(name).grad.flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


def compile_unavailable_reason() -> str | None:
    """Why torch.compile cannot run here, or None. Inductor's CPU backend builds C++ kernels with a compiler."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile (dynamo) does not support this Python/platform with torch {torch.__version__}"
    if not any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++")):
        return "no C++ compiler on PATH (g++/c++/clang++): inductor cannot build its CPU kernels"
    return None


@pytest.fixture(scope="module")
def eager_and_compiled():
    """A one-block model and a compiled copy with identical weights (small, to bound the compile time)."""
    reason = compile_unavailable_reason()
    if reason:
        pytest.skip(reason)
    teacher = {**TINY_TEACHER, "num_hidden_layers": 1}
    eager = build_model(num_hidden_layers=1, regressor_num_hidden_layers=1, teacher_config=teacher)
    torch._dynamo.reset()
    yield eager, torch.compile(copy.deepcopy(eager), dynamic=False)
    torch._dynamo.reset()


def run_step(model: torch.nn.Module, pixel_values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values, bool_masked_pos=mask).loss
    loss.backward()
    parameters = getattr(model, "_orig_mod", model).named_parameters()  # a compiled wrapper prefixes "_orig_mod."
    return loss.detach(), {name: p.grad for name, p in parameters if p.grad is not None}


def test_compiled_step_matches_eager_loss_and_gradients(eager_and_compiled, pixel_values, fixed_mask):
    eager, compiled = eager_and_compiled
    eager_loss, eager_grads = run_step(eager, pixel_values, fixed_mask)
    compiled_loss, compiled_grads = run_step(compiled, pixel_values, fixed_mask)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_model_does_not_recompile_for_new_images_and_masks(eager_and_compiled, pixel_values, fixed_mask):
    """Mask counts are fixed by the config, so new masks keep every shape: the compiled graphs are reused."""
    eager, compiled = eager_and_compiled
    run_step(compiled, pixel_values, fixed_mask)
    new_mask = fixed_mask.roll(shifts=3, dims=1)  # other patches, the same count per image
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled_loss, _ = run_step(compiled, pixel_values.flip(-1), new_mask)
    eager_loss, _ = run_step(eager, pixel_values.flip(-1), new_mask)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
