"""Speed changes that must not change what the step computes, each compared with the computation it replaces."""

import pytest
import torch
import torch.nn.functional as F

from caev2_hf import CAEv2ForPreTraining
from caev2_hf.modeling_caev2 import CAEv2PatchEmbeddings, gather_tokens


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
