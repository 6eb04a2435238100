"""VAE, ConResNet residual and Vox2Vox adversarial losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.conresnet import conresnet_residual_loss, residual_logits, residual_target, weighted_bce
from autoseg.networks.segresnet import vae_loss
from autoseg.networks.vox2vox import (
    generalised_dice_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    vox2vox_generator_loss,
)
from autoseg.training.losses import one_hot

torch.set_num_threads(1)
LOG2 = math.log(2.0)


def test_vae_loss_is_a_tenth_of_l2_plus_a_tenth_of_kl() -> None:
    reconstruction, image = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    mu, sigma = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, math.exp(0.5)]])
    # L2: (1 + 4) / 2 = 2.5; KL terms: 0 + 1 - 0 - 1 = 0 and 1 + e - 1 - 1 = e - 1, mean (e - 1) / 2.
    expected = 0.1 * 2.5 + 0.1 * (math.e - 1) / 2
    assert vae_loss(reconstruction, image, mu, sigma).item() == pytest.approx(expected, rel=1e-6)
    # A perfect reconstruction with the prior's latent (mu 0, sigma 1) costs nothing.
    assert vae_loss(image, image, torch.zeros(1, 4), torch.ones(1, 4)).item() == pytest.approx(0.0, abs=1e-7)


def test_residual_target_is_the_xor_of_adjacent_slices_along_the_slice_axis() -> None:
    labels = torch.tensor([[0, 1], [1, 1], [1, 0], [0, 0]]).view(1, 1, 4, 2, 1)
    assert residual_target(labels, 0).view(4, 2).tolist() == [[0, 0], [1, 0], [0, 1], [1, 0]]
    assert residual_target(labels, 1).view(4, 2).tolist() == [[0, 1], [0, 0], [0, 1], [0, 0]]


def test_weighted_bce_weights_positives_by_log_of_rarity() -> None:
    target = torch.zeros(1, 1, 8)
    target[0, 0, 3] = 1
    # p = 0.5 everywhere: BCE log 2 per voxel; the positive counts log(8 / (1 + 1)) = log 4 times.
    expected = (math.log(4.0) * LOG2 + 7 * LOG2) / 8
    assert weighted_bce(torch.zeros(1, 1, 8), target).item() == pytest.approx(expected, rel=1e-6)
    # Frequent positives (6 of 8): log(8 / 7) < 1 is raised to 1, plain BCE.
    target[0, 0, :6] = 1
    assert weighted_bce(torch.zeros(1, 1, 8), target).item() == pytest.approx(LOG2, rel=1e-6)


def test_conresnet_residual_loss_weights_lower_scales_by_half() -> None:
    labels = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, 1:3, :2, :2] = 1  # 8 voxels of class 1 on slices 1-2
    aux = {"residual_1": torch.zeros(1, 2, 2, 2, 2), "residual_0": torch.zeros(1, 2, 4, 4, 4)}
    # Residual GT of both one-hot channels: 4 voxels on slice 1 (enter) and 4 on slice 3 (leave).
    # Zero logits: each channel's wBCE = (w * 8 + 56) log 2 / 64 with w = log(64 / 9) > 1.
    w = math.log(64 / 9)
    per_scale = (w * 8 + 56) * LOG2 / 64
    loss = conresnet_residual_loss(aux, one_hot(labels, 2), slice_axis=0)
    assert loss.item() == pytest.approx(1.5 * per_scale, rel=1e-6)
    assert [t.shape[2] for t in residual_logits(aux)] == [4, 2]


def test_conresnet_residual_loss_trains_a_real_conresnet() -> None:
    topology = Topology(3, [8, 8], [[1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2]])
    model = create_network("conresnet", topology, 1, 2, slice_axis=0).train()
    labels = (torch.rand(2, 1, 4, 8, 8) > 0.7).long()
    _, aux = model.forward_with_aux(torch.randn(2, 1, 4, 8, 8))
    loss = get_network_spec("conresnet").auxiliary_loss(model, aux, torch.zeros(0), one_hot(labels, 2), None)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert model.res_heads[0].weight.grad is not None


def _sparse_slices() -> tuple[torch.Tensor, torch.Tensor]:
    """Slices labelled 1, 1, ignore, ignore, 1 (ignore label 2): the one-hot target with the ignore label
    mapped to background, and the annotated mask."""
    labels = torch.tensor([1, 1, 2, 2, 1]).view(1, 1, 5, 1, 1)
    annotated = (labels != 2).float()
    return one_hot(torch.where(labels == 2, torch.zeros_like(labels), labels), 2), annotated


def test_conresnet_residual_loss_counts_no_edge_at_an_ignored_slice() -> None:
    target, annotated = _sparse_slices()
    # Residual GT 0, 0, 1, 0, 1: the edges at slices 2 and 4 are where the ignore label meets a labelled
    # slice, not real edges. Only slices 0 and 1 have both slices annotated; logits 3 there (GT 0) cost
    # softplus(3) each. Unmasked, slices 2 and 4 count as positives (weight 1): (3 softplus(3) + 2 softplus(-3)) / 5.
    aux = {"residual_0": torch.full((1, 2, 5, 1, 1), 3.0)}
    softplus = torch.nn.functional.softplus
    masked = conresnet_residual_loss(aux, target, slice_axis=0, annotated=annotated)
    assert masked.item() == pytest.approx(softplus(torch.tensor(3.0)).item(), rel=1e-6)
    unmasked = conresnet_residual_loss(aux, target, slice_axis=0)
    expected = (3 * softplus(torch.tensor(3.0)) + 2 * softplus(torch.tensor(-3.0))).item() / 5
    assert unmasked.item() == pytest.approx(expected, rel=1e-6)
    # The logits at uncounted slices play no part.
    aux["residual_0"][:, :, 2:] = -7.0
    assert conresnet_residual_loss(aux, target, slice_axis=0, annotated=annotated).item() == pytest.approx(masked.item())


def test_vox2vox_generalised_dice_leaves_ignored_voxels_out() -> None:
    target, annotated = _sparse_slices()
    fake = torch.tensor([1.0])
    logits = torch.zeros(1, 2, 5, 1, 1)
    logits[:, 1, [0, 1, 4]] = 20.0  # the annotated slices right: foreground
    loss = vox2vox_generator_loss(fake, logits, target, annotated)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # perfect where annotated (LSGAN term 0 at score 1)
    logits[:, 1, 2:4] = 20.0  # calling the ignored slices foreground costs nothing
    assert vox2vox_generator_loss(fake, logits, target, annotated).item() == pytest.approx(0.0, abs=1e-6)
    assert vox2vox_generator_loss(fake, logits, target).item() > 1.0  # unmasked, they count as background


def test_vox2vox_real_pairs_carry_the_generators_answer_on_ignored_voxels() -> None:
    from autoseg.training.config import resolve_config
    from autoseg.training.model_setup import build_optimizer
    from autoseg.training.steps import AdversarialStep, LabelSpec, WithAux

    seen: list[torch.Tensor] = []

    class Recording(torch.nn.Module):
        def __init__(self, discriminator: torch.nn.Module) -> None:
            super().__init__()
            self.discriminator = discriminator

        def forward(self, image: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
            seen.append(segmentation.detach().clone())
            return self.discriminator(image, segmentation)

    torch.manual_seed(0)
    config = resolve_config("vox2vox", [])
    network = torch.nn.Conv3d(1, 2, 1)
    step = AdversarialStep(WithAux(network), network, "vox2vox", build_optimizer(network.parameters(), config["optimizer"]),
                           LabelSpec(2, None, 2), config, torch.device("cpu"), None, wrap=Recording, in_channels=1)
    labels = torch.tensor([1, 1, 2, 2, 1, 0, 0, 2]).view(1, 1, 8, 1, 1).expand(2, 1, 8, 16, 16).contiguous()
    step.train(torch.randn(2, 1, 8, 16, 16), labels)
    real, fake = seen[0][:2], seen[0][2:]
    ignored = (labels == 2).expand_as(real)
    torch.testing.assert_close(real[ignored], fake[ignored])  # nothing to tell apart where nobody annotated
    assert torch.equal(real[~ignored], one_hot(labels.clamp_max(1), 2)[~ignored])


def test_lsgan_losses() -> None:
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    # D: 0.5 [((0)^2 + (0.5)^2) / 2 + (0 + 1) / 2] = 0.3125; G: ((0 - 1)^2 + 0) / 2 = 0.5.
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(0.3125)
    assert lsgan_generator_loss(fake).item() == pytest.approx(0.5)


def _two_class_example() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).view(1, 2, 4)
    probs = torch.tensor([[1.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]]).view(1, 2, 4)
    return probs, target


def test_generalised_dice_by_hand() -> None:
    probs, target = _two_class_example()
    # w = (1/9, 1); sum pg = (2.5, 0.5); sum p+g = (6, 2): 1 - 2 (2.5/9 + 0.5) / (6/9 + 2) = 5/12.
    assert generalised_dice_loss(probs, target).item() == pytest.approx(5 / 12, rel=1e-6)
    # An absent class takes the largest weight (1): predicting it is penalised, leaving it empty is free.
    empty = torch.cat([probs, torch.zeros(1, 1, 4)], 1), torch.cat([target, torch.zeros(1, 1, 4)], 1)
    assert generalised_dice_loss(*empty).item() == pytest.approx(5 / 12, rel=1e-6)
    wrong = torch.cat([probs * 0.5, torch.full((1, 1, 4), 0.5)], 1)
    # sum pg = (1.25, 0.25, 0); sum p+g = (4.5, 1.5, 2): 1 - 2 (1.25/9 + 0.25) / (4.5/9 + 1.5 + 2).
    expected = 1 - 2 * (1.25 / 9 + 0.25) / (4.5 / 9 + 3.5)
    assert generalised_dice_loss(wrong, empty[1]).item() == pytest.approx(expected, rel=1e-6)


def test_vox2vox_generator_loss_adds_five_generalised_dice() -> None:
    probs, target = _two_class_example()
    logits = torch.log(probs.clamp_min(1e-12))  # softmax(log p) = p for normalised p
    fake = torch.tensor([0.0, 1.0])
    expected = 0.5 + 5 * 5 / 12
    assert vox2vox_generator_loss(fake, logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_segresnet_declares_its_vae_term_in_the_registry_and_it_is_zero_without_the_branch() -> None:
    hook = get_network_spec("segresnet").auxiliary_loss
    image = torch.zeros(1, 2)
    assert hook(None, {}, image, image, None).item() == 0.0
    aux = {"reconstruction": torch.tensor([[1.0, 2.0]]), "mu": torch.zeros(1, 4), "sigma": torch.ones(1, 4)}
    assert hook(None, aux, image, image, None).item() == pytest.approx(0.1 * 2.5, rel=1e-6)  # L2 only; KL is 0
    assert get_network_spec("unet").auxiliary_loss is None


def test_the_adversarial_step_refuses_a_region_dataset() -> None:
    from autoseg.errors import NetworkError
    from autoseg.training.config import resolve_config
    from autoseg.training.model_setup import build_optimizer
    from autoseg.training.steps import AdversarialStep, LabelSpec, WithAux

    config = resolve_config("vox2vox", [])
    network = torch.nn.Conv3d(1, 2, 1)
    with pytest.raises(NetworkError, match="vox2vox trains adversarially on softmax outputs; region-based datasets"):
        AdversarialStep(WithAux(network), network, "vox2vox", build_optimizer(network.parameters(), config["optimizer"]),
                        LabelSpec(2, [[1, 2], [2]], None), config, torch.device("cpu"), None, wrap=lambda m: m,
                        in_channels=1)
