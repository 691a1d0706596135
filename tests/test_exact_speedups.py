"""Speed changes that must not change what the step computes, each compared with the computation it replaces."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModelWithProjection

from caev2_hf import CAEv2ForPreTraining
from caev2_hf.modeling_caev2 import CAEv2PatchConv2d, CAEv2PatchEmbeddings, gather_tokens


@pytest.mark.parametrize("height, width", [(32, 32), (36, 44)])  # 36 x 44 leaves partial patches, as Conv2d drops
def test_patch_embedding_equals_the_convolution(tiny_config, height, width):
    torch.manual_seed(0)
    embeddings = CAEv2PatchEmbeddings(tiny_config)
    pixel_values = torch.randn(2, tiny_config.num_channels, height, width)
    expected = F.conv2d(pixel_values, embeddings.projection.weight, embeddings.projection.bias, stride=8)
    expected = expected.flatten(2).transpose(1, 2)
    torch.testing.assert_close(embeddings(pixel_values), expected, rtol=1e-5, atol=1e-5)

    patch_ids = torch.stack([torch.randperm(expected.shape[1])[:5] for _ in range(2)])
    torch.testing.assert_close(
        embeddings(pixel_values, patch_ids), gather_tokens(expected, patch_ids), rtol=1e-5, atol=1e-5
    )


def embed_with_the_convolution(self, pixel_values, patch_ids=None):
    """The computation the matmul replaced: Conv2d over every patch, then the visible ones gathered."""
    embedded = self.projection(pixel_values).flatten(2).transpose(1, 2)
    return embedded if patch_ids is None else gather_tokens(embedded, patch_ids)


def test_the_training_step_gives_the_loss_and_gradients_of_the_convolution(
    tiny_config, pixel_values, fixed_mask, monkeypatch
):
    torch.manual_seed(0)
    model = CAEv2ForPreTraining(tiny_config).train()
    results = []
    for embed in (CAEv2PatchEmbeddings.forward, embed_with_the_convolution):
        monkeypatch.setattr(CAEv2PatchEmbeddings, "forward", embed)
        model.zero_grad(set_to_none=True)
        outputs = model(pixel_values, bool_masked_pos=fixed_mask)
        outputs.loss.backward()
        results.append(
            (outputs.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (loss, gradients), (reference_loss, reference_gradients) = results
    torch.testing.assert_close(loss, reference_loss, rtol=1e-6, atol=1e-6)
    assert gradients.keys() == reference_gradients.keys()
    assert "caev2.embeddings.patch_embeddings.projection.weight" in gradients
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, reference_gradients[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_teacher_patch_embedding_gives_the_targets_of_the_convolution(tiny_config, pixel_values, monkeypatch):
    torch.manual_seed(0)
    teacher = CAEv2ForPreTraining(tiny_config).teacher
    assert isinstance(teacher.model.vision_model.embeddings.patch_embedding, CAEv2PatchConv2d)
    targets = teacher(pixel_values)
    monkeypatch.setattr(CAEv2PatchConv2d, "forward", nn.Conv2d.forward)
    torch.testing.assert_close(targets, teacher(pixel_values), rtol=1e-5, atol=1e-6)
    # The keys stay CLIP's: the teacher's weights load into a plain CLIP vision tower and back, strictly.
    plain = CLIPVisionModelWithProjection(tiny_config.teacher_config)
    plain.load_state_dict(teacher.model.state_dict())
    teacher.model.load_state_dict(plain.state_dict())


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(3, 8, 4, stride=2), nn.Conv2d(3, 8, 4, stride=4, padding=1), nn.Conv2d(4, 8, 4, stride=4, groups=2)],
)
def test_only_a_plain_patchifying_convolution_is_replaced(conv):
    assert CAEv2PatchConv2d.replacing(conv) is conv
    patchifier = nn.Conv2d(3, 8, 4, stride=4)
    replacement = CAEv2PatchConv2d.replacing(patchifier)
    assert isinstance(replacement, CAEv2PatchConv2d) and replacement.weight is patchifier.weight
    pixel_values = torch.randn(2, 3, 12, 14)
    torch.testing.assert_close(replacement(pixel_values), patchifier(pixel_values), rtol=1e-5, atol=1e-6)
