"""Tests for caev2_hf.optim against hand-computed values: weight decay by rank, the layer-decay AdamW of fine-tuning
and segmentation (on a classifier's and an UperNet's parameter names), and LARS."""

import pytest
import torch
from conftest import build_tiny_config, build_tiny_upernet

from caev2_hf import CAEv2ForImageClassification
from caev2_hf.evaluation.classification.finetune import token_parameter_names
from caev2_hf.optim import LARS, build_layer_decay_optimizer


# One encoder block of the tiny model: name -> decayed (matrices decay; biases, norms and layer scales do not).
BLOCK_PARAMETERS = {
    "layernorm_before.weight": False, "layernorm_before.bias": False,
    "attention.q_proj.weight": True, "attention.q_proj.bias": False,
    "attention.k_proj.weight": True,
    "attention.v_proj.weight": True, "attention.v_proj.bias": False,
    "attention.o_proj.weight": True, "attention.o_proj.bias": False,
    "layer_scale1.lambda1": False,
    "layernorm_after.weight": False, "layernorm_after.bias": False,
    "mlp.fc1.weight": True, "mlp.fc1.bias": False,
    "mlp.fc2.weight": True, "mlp.fc2.bias": False,
    "layer_scale2.lambda1": False,
}  # fmt: skip


def test_layer_decay_groups_of_a_two_layer_model_match_the_hand_written_table():
    # docs/method.md#recipes: scale = decay ** (L + 1 - id) with L = 2: embeddings 0.75^3, block 0 0.75^2, block 1 0.75, head 1.
    model = CAEv2ForImageClassification(build_tiny_config(num_labels=3))
    optimizer = build_layer_decay_optimizer(
        model, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.75, num_layers=2,
        skip_weight_decay=token_parameter_names(model), betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    expected = {
        "caev2.embeddings.cls_token": (0.421875, 0.0),  # a token: no decay in fine-tuning
        "caev2.embeddings.patch_embeddings.projection.weight": (0.421875, 0.05),
        "caev2.embeddings.patch_embeddings.projection.bias": (0.421875, 0.0),
        "caev2.layernorm.weight": (1.0, 0.0),
        "caev2.layernorm.bias": (1.0, 0.0),  # mean pooling: the final norm normalises the pooled feature
        "classifier.weight": (1.0, 0.05),
        "classifier.bias": (1.0, 0.0),
    }
    for layer, scale in ((0, 0.5625), (1, 0.75)):
        for name, decayed in BLOCK_PARAMETERS.items():
            expected[f"caev2.encoder.layers.{layer}.{name}"] = (scale, 0.05 if decayed else 0.0)
    found = {
        name: (group["lr_scale"], group["weight_decay"]) for group in optimizer.param_groups for name in group["names"]
    }
    assert found.keys() == expected.keys()
    for name, (lr_scale, weight_decay) in expected.items():  # approx compares flat containers only (pytest >= 9.2)
        assert found[name] == pytest.approx((lr_scale, weight_decay)), name
    assert all(group["lr"] == pytest.approx(1e-3 * group["lr_scale"]) for group in optimizer.param_groups)
    assert all((group["betas"], group["eps"]) == ((0.9, 0.98), 1e-6) for group in optimizer.param_groups)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_layer_decay_groups_of_an_upernet_match_the_authors_constructor():
    # Their LayerDecayOptimizerConstructor: the backbone's blocks by depth, the neck and heads at L + 1; no exemption.
    torch.manual_seed(0)
    model = build_tiny_upernet()  # 4 blocks: embeddings 0.5**5, block i 0.5**(4 - i), neck and heads 1
    optimizer = build_layer_decay_optimizer(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5, num_layers=4)
    found = {name: (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for name in group["names"]}
    expected = {
        "backbone.embeddings.cls_token": (1 / 32, 0.05),  # 3-D: decays, as in the authors' constructor
        "backbone.embeddings.patch_embeddings.projection.weight": (1 / 32, 0.05),
        "backbone.embeddings.patch_embeddings.projection.bias": (1 / 32, 0.0),
        "backbone.encoder.layers.0.attention.q_proj.weight": (1 / 16, 0.05),
        "backbone.encoder.layers.0.attention.q_proj.bias": (1 / 16, 0.0),
        "backbone.encoder.layers.0.relative_position_bias.relative_position_bias_table": (1 / 16, 0.05),
        "backbone.encoder.layers.1.layer_scale1.lambda1": (1 / 8, 0.0),
        "backbone.encoder.layers.3.mlp.fc2.weight": (1 / 2, 0.05),
        "backbone.encoder.layers.3.layernorm_after.weight": (1 / 2, 0.0),
        "backbone.fpn1.0.weight": (1.0, 0.05),
        "decode_head.classifier.weight": (1.0, 0.05),
        "decode_head.classifier.bias": (1.0, 0.0),
        "auxiliary_head.convs.0.batch_norm.weight": (1.0, 0.0),
    }
    assert {name: found[name] for name in expected} == expected  # powers of 2: exact
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert sorted(found) == sorted(trainable)  # every parameter once
    assert {group["lr"] for group in optimizer.param_groups} == {1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0}


def lars_step(parameter: torch.Tensor, gradient: torch.Tensor, optimizer: LARS) -> None:
    parameter.grad = gradient.clone()
    optimizer.step()


def test_lars_scales_a_matrix_step_to_the_trust_fraction_of_its_norm():
    # ||w|| = 5, ||g|| = 10: the step is lr * 0.001 * 5 / 10 * g = 2 * 0.0005 * [6, 8] = [0.006, 0.008].
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    optimizer = LARS([weight], lr=2.0)
    lars_step(weight, torch.tensor([[6.0, 8.0]]), optimizer)
    torch.testing.assert_close(weight.data, torch.tensor([[2.994, 3.992]]))
    # Second step: ||w|| = 4.99, ratio 0.000499, buffer = 0.9 * [0.003, 0.004] + [0.002994, 0.003992].
    lars_step(weight, torch.tensor([[6.0, 8.0]]), optimizer)
    torch.testing.assert_close(weight.data, torch.tensor([[2.982612, 3.976816]]))


def test_lars_adds_weight_decay_to_a_matrix_before_the_trust_ratio():
    # u = 0 + 0.5 * [3, 4] = [1.5, 2], ||u|| = 2.5: the step is 2 * 0.001 * 5 / 2.5 * u = [0.006, 0.008].
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    lars_step(weight, torch.zeros(1, 2), LARS([weight], lr=2.0, weight_decay=0.5))
    torch.testing.assert_close(weight.data, torch.tensor([[2.994, 3.992]]))


def test_lars_gives_vectors_plain_sgd_without_decay_or_adaptation():
    bias = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    lars_step(bias, torch.tensor([0.5, -0.5]), LARS([bias], lr=2.0, weight_decay=0.1))
    torch.testing.assert_close(bias.data, torch.tensor([0.0, 2.0]))


def test_lars_falls_back_to_plain_steps_for_a_zero_matrix():
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    lars_step(weight, torch.ones(2, 2), LARS([weight], lr=0.5))
    torch.testing.assert_close(weight.data, torch.full((2, 2), -0.5))


def test_lars_uses_each_group_s_learning_rate():
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = LARS([{"params": [first], "lr": 1.0}, {"params": [second], "lr": 3.0}])
    first.grad, second.grad = torch.ones(2), torch.ones(2)
    optimizer.step()
    torch.testing.assert_close(torch.stack([first.data, second.data]), torch.tensor([[0.0, 0.0], [-2.0, -2.0]]))


def test_lars_refuses_invalid_settings():
    with pytest.raises(ValueError, match="momentum"):
        LARS([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=1.5)
