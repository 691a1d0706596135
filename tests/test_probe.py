"""Unit tests for caev2_hf.evaluation.probe: the grid of linear heads and the probe's BatchNorm."""

import torch

from caev2_hf.evaluation.probe import fit_feature_batch_norm, train_linear_heads


def separable_features(num_examples: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_examples) % 3
    return torch.randn(num_examples, 8, generator=generator) + 3 * torch.eye(8)[labels], labels


def test_grid_heads_train_exactly_as_each_would_alone():
    features, labels = separable_features()
    settings = {"num_classes": 3, "epochs": 3, "warmup_epochs": 1, "batch_size": 16, "seed": 0}
    grid = train_linear_heads(features, labels, learning_rates=[2.0, 20.0], **settings)
    alone = train_linear_heads(features, labels, learning_rates=[20.0], **settings)
    torch.testing.assert_close(grid[1].weight, alone[0].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid[1].bias, alone[0].bias, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grid[0].weight, grid[1].weight)


def test_grid_heads_learn_separable_features():
    features, labels = separable_features()
    (head,) = train_linear_heads(features, labels, 3, [200.0], epochs=20, warmup_epochs=2, batch_size=16, seed=0)
    accuracy = (head(features).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9


def test_fitted_batch_norm_standardises_the_features():
    features = torch.randn(200, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + torch.tensor([3.0, -1.0, 0.0, 10.0])
    with torch.no_grad():
        standardised = fit_feature_batch_norm(features)(features)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    variance = features.var(0, unbiased=False)
    torch.testing.assert_close(standardised.var(0, unbiased=False), variance / (variance + 1e-6))  # eps 1e-6
