"""The discriminator ``D`` (paper, Fig. 5b; widths are our choice).

A small CNN on ``(B, 12, 32, 32)`` cutouts: three blocks of
``conv 3x3 -> batch norm -> ReLU -> max-pool 2`` (16, 32, 64 channels:
32 -> 16 -> 8 -> 4 px), then dense ``1024 -> 64 -> ReLU -> 1``. The output is
unbounded (least-squares GAN: targets 1 for ground truth, 0 for generated).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import StereograinError
from .cutouts import CUTOUT
from .generator import seeded_layer

__all__ = ["Discriminator"]


class Discriminator(torch.nn.Module):
    """Least-squares GAN discriminator on cutout images.

    Parameters
    ----------
    in_channels : int
        Channels of a cutout (12, the truncation).
    widths : sequence of int
        Convolution channels of the blocks (each halves the image side).
    dense : int
        Width of the hidden dense layer.
    seed : int
        Seed of the weight init (a private ``torch.Generator``).
    device, dtype
        Default CPU float32.
    """

    def __init__(
        self,
        in_channels: int = 12,
        widths: Sequence[int] = (16, 32, 64),
        dense: int = 64,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if CUTOUT % 2 ** len(widths):
            raise StereograinError(f"{len(widths)} pooling blocks do not divide the {CUTOUT} px cutout")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.in_channels = int(in_channels)
        layers: list[torch.nn.Module] = []
        c = self.in_channels
        for w in widths:
            layers += [
                seeded_layer(torch.nn.Conv2d, c, int(w), 3, padding=1, gen=gen, dtype=dtype),
                torch.nn.BatchNorm2d(int(w), dtype=dtype),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
            ]
            c = int(w)
        side = CUTOUT // 2 ** len(widths)
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(),
            seeded_layer(torch.nn.Linear, c * side * side, int(dense), gen=gen, dtype=dtype),
            torch.nn.ReLU(),
            seeded_layer(torch.nn.Linear, int(dense), 1, gen=gen, dtype=dtype),
        )
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, 1)`` of cutouts ``(B, in_channels, 32, 32)``."""
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, CUTOUT, CUTOUT):
            raise StereograinError(
                f"discriminator input must be (B, {self.in_channels}, {CUTOUT}, {CUTOUT}), got {tuple(x.shape)};"
                " use to_nchw for (B, 32, 32, C) cutouts"
            )
        return self.head(self.features(x))
