"""One optimisation step for every network family, chosen from what the family declares in the registry.

Every network trains with the shared segmentation loss (Dice + CE with deep supervision, or Dice + BCE
for regions). A family may declare an auxiliary loss computed from ``forward_with_aux``'s aux outputs
(SegResNet's VAE, ConResNet's context residual; reference.md §2.2, §2.3), or an adversary: then the
step trains the family's discriminator with its own optimiser and replaces the loss by the family's
generator loss (Vox2Vox, §2.5). No family is named here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autoseg.errors import TrainingError
from autoseg.networks import get_network_spec
from autoseg.training.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    RegionDiceBCELoss,
    labels_to_regions,
    one_hot,
    split_ignore,
)


class WithAux(nn.Module):
    """``forward(x) -> (outputs list, aux dict)`` for every network, so DDP wraps one forward."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        if hasattr(self.network, "forward_with_aux"):
            outputs, aux = self.network.forward_with_aux(x)
        else:
            outputs, aux = self.network(x), {}
        return (list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]), aux


@dataclass
class LabelSpec:
    """How integer labels become the loss target."""

    n_outputs: int
    regions: list[list[int]] | None
    ignore_label: int | None

    def loss_target(self, labels: torch.Tensor) -> torch.Tensor:
        return labels_to_regions(labels, self.regions, self.ignore_label) if self.regions else labels

    def binary_target(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Region masks (regions) or one-hot classes with the ignore label mapped to background, and the
        ``(B, 1, *)`` mask of annotated voxels (None without an ignore label): a family's extra losses
        must leave the ignored voxels out, or they learn the background they were mapped to."""
        clean, annotated = split_ignore(labels, self.ignore_label)
        if self.regions:
            return labels_to_regions(clean, self.regions), annotated
        return one_hot(clean, self.n_outputs), annotated


# loss.dice_denominator -> squared_denominator of the soft Dice (V-Net's is squared, reference.md §2.4).
DICE_DENOMINATORS = {"standard": False, "squared": True}


def segmentation_loss(labels: LabelSpec, loss_config: Mapping[str, Any]) -> nn.Module:
    """Dice + CE (softmax) or Dice + BCE (regions), wrapped for deep supervision (reference.md §1.5)."""
    denominator = loss_config["dice_denominator"]
    if denominator not in DICE_DENOMINATORS:
        raise TrainingError(f"--set loss.dice_denominator={denominator!r}: choose standard or squared")
    squared = DICE_DENOMINATORS[denominator]
    if labels.regions:
        inner: nn.Module = RegionDiceBCELoss(
            has_ignore=labels.ignore_label is not None,
            batch_dice=loss_config["batch_dice"],
            squared_denominator=squared,
            weight_bce=loss_config["weight_ce"],
            weight_dice=loss_config["weight_dice"],
        )
        return DeepSupervisionLoss(inner, target_downsampling="max")
    inner = DiceCELoss(
        ignore_label=labels.ignore_label,
        batch_dice=loss_config["batch_dice"],
        squared_denominator=squared,
        weight_ce=loss_config["weight_ce"],
        weight_dice=loss_config["weight_dice"],
    )
    return DeepSupervisionLoss(inner, target_downsampling="nearest")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _apply_gradients(
    loss: torch.Tensor, parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, grad_clip: float,
) -> None:
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()


class SupervisedStep:
    """Forward, segmentation loss (+ the family's extra term), backward, clip, step."""

    def __init__(
        self, model: nn.Module, network: nn.Module, network_name: str, optimizer: torch.optim.Optimizer,
        labels: LabelSpec, config: Mapping[str, Any], device: torch.device, amp_dtype: torch.dtype | None,
    ) -> None:
        self.model, self.network, self.optimizer = model, network, optimizer
        self.labels, self.config = labels, config
        self.loss = segmentation_loss(labels, config["loss"])
        self.network_name = network_name
        self.aux_loss = get_network_spec(network_name).auxiliary_loss
        self.device, self.amp_dtype = device, amp_dtype
        self.grad_clip = float(config["grad_clip"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def train(self, data: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One iteration; returns the loss and the full-resolution logits (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            outputs, aux = self.model(data)
        outputs = [o.float() for o in outputs]
        loss = self.loss(outputs, self.labels.loss_target(labels))
        if self.aux_loss is not None:
            aux = {key: value.float() for key, value in aux.items()}
            loss = loss + self.aux_loss(self.network, aux, data.float(), *self.labels.binary_target(labels))
        _apply_gradients(loss, list(self.model.parameters()), self.optimizer, self.scaler, self.grad_clip)
        return float(loss.detach()), outputs[0].detach()

    def state_dict(self) -> dict[str, Any]:
        return {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])


class AdversarialStep(SupervisedStep):
    """The family's discriminator scores (image, segmentation) pairs and trains with its own Adam
    (``adversarial.*`` in the config); the network minimises the family's generator loss."""

    def __init__(self, *args: Any, wrap: Callable[[nn.Module], nn.Module], in_channels: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        get_network_spec(self.network_name).check_label_kind(bool(self.labels.regions))
        adversarial = self.config["adversarial"]
        self.adversary = get_network_spec(self.network_name).adversary
        self.discriminator_module = self.adversary.discriminator(in_channels, self.labels.n_outputs).to(self.device)
        self.discriminator = wrap(self.discriminator_module)
        self.d_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=adversarial["discriminator_lr"], betas=tuple(adversarial["discriminator_betas"])
        )
        self.d_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def train(self, data: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        target, annotated = self.labels.binary_target(labels)
        with autocast(self.device, self.amp_dtype):
            logits = self.model(data)[0][0]
        probs = torch.softmax(logits.float(), dim=1)
        # Ignored voxels of the real pairs take the generator's own answer: only annotated ones differ.
        real = target if annotated is None else torch.where(annotated.bool(), target, probs.detach())
        # Discriminator: real pairs -> 1, generated pairs -> 0 (one forward over both halves).
        self.d_optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            scores = self.discriminator(torch.cat([data, data]), torch.cat([real, probs.detach()])).float()
        d_loss = self.adversary.discriminator_loss(scores[: len(data)], scores[len(data) :])
        _apply_gradients(d_loss, list(self.discriminator.parameters()), self.d_optimizer, self.d_scaler, 0.0)
        # Generator: fool the discriminator and match the labels.
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            fake_scores = self.discriminator(data, probs).float()
        g_loss = self.adversary.generator_loss(fake_scores, logits.float(), target, annotated)
        _apply_gradients(g_loss, list(self.model.parameters()), self.optimizer, self.scaler, self.grad_clip)
        return float(g_loss.detach()), logits.detach().float()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "discriminator": self.discriminator_module.state_dict(),
            "discriminator_optimizer": self.d_optimizer.state_dict(),
            "discriminator_grad_scaler": self.d_scaler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.discriminator_module.load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["discriminator_optimizer"])
        if state.get("discriminator_grad_scaler"):
            self.d_scaler.load_state_dict(state["discriminator_grad_scaler"])


def build_step(
    model: nn.Module, network: nn.Module, network_name: str, optimizer: torch.optim.Optimizer, labels: LabelSpec,
    config: Mapping[str, Any], device: torch.device, amp_dtype: torch.dtype | None, *,
    wrap: Callable[[nn.Module], nn.Module], in_channels: int,
) -> SupervisedStep:
    """The step the family declares: adversarial with an ``adversary``, supervised otherwise.

    ``wrap`` prepares an extra module (a discriminator) as the trainer prepares the network (DDP).
    """
    args = (model, network, network_name, optimizer, labels, config, device, amp_dtype)
    if get_network_spec(network_name).adversarial:
        return AdversarialStep(*args, wrap=wrap, in_channels=in_channels)
    return SupervisedStep(*args)
