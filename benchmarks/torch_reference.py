"""The PyTorch side of ``benchmarks/vs_pytorch.py``: the models and the authors' optimizers.

Written for this project from the published semantics of the authors' PyTorch trainer
(google-research, ``coherent_gradients/``), not copied from it:

* every optimizer keeps, per parameter, a ring buffer of the last three gradients (weight
  decay added first); the first gradient fills all three slots; each later call of
  ``step()`` overwrites the oldest slot;
* **M3** applies an update on every third call only (calls 3, 6, 9, ...: the three
  gradients are those of three consecutive batches at the same parameters), with the
  coordinate-wise median ``a + b + c - min - max``;
* **RM3** applies the median of the buffer on every call from the third on (no update on
  the first two); **RA3** the mean of the buffer;
* the learning rate multiplies the median or mean; no momentum.

The training loop body is theirs: ``model(x)``, cross-entropy, ``zero_grad()``,
``backward()``, ``step()`` (:func:`train_iteration`), the model in train mode (BatchNorm
updates its running statistics on every forward pass, three times per M3 update).

The models match ``cgh_jax.models.get_model`` parameter for parameter: the MLP
(``Linear``/``ReLU``; 784-2048-10 has 1,628,170 parameters) and ResNet-18 with the CIFAR
stem (3x3 stride-1 convolution, no max pool; BasicBlocks with 1x1 projection shortcuts;
11,173,962 parameters at width 64 and 10 classes).

Only the benchmark's PyTorch worker imports this module (it imports torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "M3",
    "MLP",
    "RA3",
    "RM3",
    "ResNet18",
    "make_optimizer",
    "train_iteration",
]


class MLP(nn.Sequential):
    """ReLU MLP on flattened inputs: ``in -> hidden... -> classes``."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (NCHW input), stage widths ``width * 2**i``."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks, channels = [], width
        for i in range(4):
            out = width * 2**i
            for j in range(2):
                blocks.append(_BasicBlock(channels, out, 2 if i > 0 and j == 0 else 1))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _RingBufferSGD(torch.optim.Optimizer):
    """SGD on an aggregate of the ring buffer of each parameter's last three gradients."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {lr}, {weight_decay}.")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    def updates_on(self, count: int) -> bool:
        """Whether the ``count``-th call (1-based) applies an update."""
        raise NotImplementedError

    def aggregate(self, ring: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "ring" not in state:
                    state["ring"] = [grad.detach().clone() for _ in range(3)]
                    state["count"] = 1
                else:
                    state["ring"][state["count"] % 3].copy_(grad)
                    state["count"] += 1
                if self.updates_on(state["count"]):
                    p.add_(self.aggregate(state["ring"]), alpha=-group["lr"])


def _median3(ring: list[torch.Tensor]) -> torch.Tensor:
    a, b, c = ring
    low = torch.minimum(torch.minimum(a, b), c)
    high = torch.maximum(torch.maximum(a, b), c)
    return a + b + c - low - high


class M3(_RingBufferSGD):
    """Median of the gradients of three consecutive batches, applied every third call."""

    def updates_on(self, count: int) -> bool:
        return count % 3 == 0

    def aggregate(self, ring):
        return _median3(ring)


class RM3(_RingBufferSGD):
    """Running median of the last three gradients, from the third call on."""

    def updates_on(self, count: int) -> bool:
        return count >= 3

    def aggregate(self, ring):
        return _median3(ring)


class RA3(_RingBufferSGD):
    """Running mean of the last three gradients, from the third call on (RM3's control)."""

    def updates_on(self, count: int) -> bool:
        return count >= 3

    def aggregate(self, ring):
        a, b, c = ring
        return (a + b + c) / 3


def make_optimizer(name: str, params, lr: float = 0.1) -> torch.optim.Optimizer:
    """``sgd`` (``torch.optim.SGD``, no momentum), ``m3``, ``rm3`` or ``ra3``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    classes = {"m3": M3, "rm3": RM3, "ra3": RA3}
    if name not in classes:
        raise ValueError(f"Unknown optimizer {name!r}; expected sgd, m3, rm3 or ra3.")
    return classes[name](params, lr=lr)


def train_iteration(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """One iteration of the authors' training loop on one batch; returns the loss."""
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
