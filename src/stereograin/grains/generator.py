"""The marker generator ``G_net`` (Algorithm 1): neighbourhood features -> ``(D_i, r_i)``.

For seed ``i`` with radial frame ``Q_i`` (Eq. 12) and Euclidean nearest
neighbours ``i_1..i_kappa`` (self excluded, increasing distance), the input is
``(v_1, n_{i_1}, ..., v_kappa, n_{i_kappa})`` with ``v_j = Q_i (s_{i_j} - s_i)``
in px: 5 numbers per neighbour, 60 for ``kappa = 12``. The network is an MLP
with ReLU hidden layers and scaled sigmoid outputs (paper, Fig. 5a; widths are
our choice): ``r = 1 + 9 sigmoid`` in ``[1, 10]`` px and
``D = eps + (50 - eps) sigmoid`` in ``(eps, 50]``. The paper's range for ``D``
is ``[0, 50]``; a zero entry makes ``M`` singular, so ``eps = 1e-2`` (the
fit's :data:`~stereograin.fit2d.D_FLOOR`) keeps ``M`` positive definite. The
metric is ``M_i = Q_i^T diag(D_i) Q_i``.

Rotation equivariance (what the tests check). For a rotation ``R`` about the
particle centre, the half-turn frames satisfy ``Q_0(R s) R = P(R, s) Q_0(s)``
with ``P`` a rotation about ``e1`` by some angle ``phi(R, s)`` (both sides map
``s/|s|`` to ``e1``), where ``Q_0`` is the frame with spin 0. Hence with the
spins ``gamma'_i = gamma_i - phi(R, s_i)`` the rotated pattern has
``Q'_i = Q_i R^T``: the features (and so ``D``, ``r``) are identical and
``M'_i = R M_i R^T``. The spin is uniform in ``[0, pi]`` rather than
``[0, 2 pi)``, but adding ``pi`` flips the signs of both tangential axes, a
rotation under which the isotropic Poisson neighbourhood is invariant in law;
so the law of the generated tessellation is rotation invariant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..errors import StereograinError
from ..fit2d import D_FLOOR, D_MAX, R_RANGE
from ..tessellation import radial_frames
from .seeds import Seeds

__all__ = ["neighbour_features", "MarkerNet", "metrics", "generate_markers", "N_FEATURES_PER_NEIGHBOUR"]

#: Numbers per neighbour in the generator input: 3 rotated displacement + 2 noise.
N_FEATURES_PER_NEIGHBOUR = 5


def _knn(positions: np.ndarray, kappa: int, workers: int = -1) -> np.ndarray:
    """Indices ``(n, kappa)`` of each point's nearest other points, by increasing distance."""
    n = len(positions)
    _, idx = cKDTree(positions).query(positions, k=kappa + 1, workers=workers)
    is_self = idx == np.arange(n)[:, None]
    # duplicated positions can push self out of the first column or out of the list
    is_self[~is_self.any(axis=1), -1] = True
    return idx[~is_self].reshape(n, kappa)


def neighbour_features(
    positions: np.ndarray,
    noise: np.ndarray,
    gamma: np.ndarray,
    kappa: int = 12,
    return_frames: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Generator input of every seed (Algorithm 1, lines 3-5).

    Parameters
    ----------
    positions : (n, 3) array
        Seeds in px relative to the particle centre; ``n > kappa``.
    noise : (n, 2) array
        Per-seed noise in ``[0, 1]^2``.
    gamma : (n,) array
        Spin angles (radians).
    kappa : int
        Neighbours per seed.
    return_frames : bool
        Also return the frames ``Q`` (n, 3, 3).

    Returns
    -------
    (n, 5 kappa) float64
        Per neighbour (increasing distance): ``Q_i (s_j - s_i)`` in px, then ``n_j``.
    """
    s = np.asarray(positions, dtype=np.float64)
    nz = np.asarray(noise, dtype=np.float64)
    n = len(s)
    if s.ndim != 2 or s.shape[1] != 3 or nz.shape != (n, 2):
        raise StereograinError(f"positions must be (n, 3) and noise (n, 2), got {s.shape} and {nz.shape}")
    if n <= kappa:
        raise StereograinError(f"need more than kappa = {kappa} seeds for the neighbour features, got {n}")
    idx = _knn(s, kappa)
    Q = radial_frames(s, np.asarray(gamma, dtype=np.float64))
    v = np.einsum("nab,nkb->nka", Q, s[idx] - s[:, None, :])
    feats = np.concatenate([v, nz[idx]], axis=2).reshape(n, N_FEATURES_PER_NEIGHBOUR * kappa)
    return (feats, Q) if return_frames else feats


def metrics(Q: np.ndarray | torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``M_i = Q_i^T diag(D_i) Q_i`` in torch, differentiable in ``D``.

    Parameters
    ----------
    Q : (n, 3, 3) array or tensor
        Radial frames (rows: grain axes in world coordinates).
    D : (n, 3) tensor
        Positive diagonal entries (radial, tangential, tangential).

    Returns
    -------
    (n, 3, 3) tensor of ``D``'s dtype and device, exactly symmetric
    """
    Qt = torch.as_tensor(Q, dtype=D.dtype, device=D.device)
    M = torch.einsum("nki,nk,nkj->nij", Qt, D, Qt)
    return 0.5 * (M + M.transpose(-1, -2))  # exactly symmetric despite float rounding


def _seeded_linear(n_in: int, n_out: int, gen: torch.Generator, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Linear:
    """``nn.Linear`` with torch's default init drawn from ``gen`` (the global RNG is not used)."""
    lin = torch.nn.utils.skip_init(torch.nn.Linear, n_in, n_out, device=device, dtype=dtype)
    bound = 1.0 / np.sqrt(n_in)
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(lin.weight, a=np.sqrt(5.0), generator=gen)
        lin.bias.uniform_(-bound, bound, generator=gen)
    return lin


class MarkerNet(torch.nn.Module):
    """``G_net``: MLP from neighbourhood features to markers ``(D_i, r_i)``.

    Parameters
    ----------
    kappa : int
        Neighbours per seed; the input has ``5 kappa`` numbers.
    hidden : sequence of int
        Hidden widths (ReLU).
    eps : float
        Floor of ``D``: entries lie in ``(eps, d_max]``.
    d_max : float
        Upper bound of ``D``.
    r_range : (float, float)
        Bounds of ``r`` in px.
    length_scale : float
        Displacements (px) are divided by this before the first layer so that
        inputs are O(1); a fixed constant, not learned.
    seed : int
        Seed of the weight init (a private ``torch.Generator``).
    device, dtype
        Default CPU float32.
    """

    def __init__(
        self,
        kappa: int = 12,
        hidden: Sequence[int] = (64, 64),
        eps: float = D_FLOOR,
        d_max: float = D_MAX,
        r_range: tuple[float, float] = R_RANGE,
        length_scale: float = 10.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not (0 < eps < d_max) or not (r_range[0] < r_range[1]) or length_scale <= 0:
            raise StereograinError("need 0 < eps < d_max, r_min < r_max and length_scale > 0")
        self.kappa, self.eps, self.d_max, self.r_range = int(kappa), float(eps), float(d_max), tuple(map(float, r_range))
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        widths = [N_FEATURES_PER_NEIGHBOUR * self.kappa, *map(int, hidden), 4]
        layers: list[torch.nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [_seeded_linear(a, b, gen, "cpu", dtype), torch.nn.ReLU()]
        self.mlp = torch.nn.Sequential(*layers[:-1]).to(device)
        scale = torch.ones(N_FEATURES_PER_NEIGHBOUR, dtype=dtype)
        scale[:3] = 1.0 / float(length_scale)
        self.register_buffer("in_scale", scale.repeat(self.kappa).to(device))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(n, 4)`` (before the scaled sigmoids)."""
        return self.mlp(features * self.in_scale)

    def markers(self, features: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Markers from features ``(n, 5 kappa)``.

        Returns
        -------
        D : (n, 3) tensor in ``(eps, d_max]`` (radial, tangential, tangential)
        r : (n,) tensor in ``[r_min, r_max]`` px
        """
        p = self.in_scale
        x = torch.as_tensor(features, dtype=p.dtype, device=p.device)
        if x.ndim != 2 or x.shape[1] != p.shape[0]:
            raise StereograinError(f"features must have shape (n, {p.shape[0]}), got {tuple(x.shape)}")
        out = torch.sigmoid(self(x))
        lo, hi = self.r_range
        return self.eps + (self.d_max - self.eps) * out[:, 1:], lo + (hi - lo) * out[:, 0]


def generate_markers(
    net: MarkerNet, seeds: Seeds
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Algorithm 1 for a realisation: features, markers and metrics.

    Returns
    -------
    M : (n, 3, 3) tensor
        ``Q_i^T diag(D_i) Q_i`` (differentiable in the net's parameters).
    r : (n,) tensor, px
    D : (n, 3) tensor
    Q : (n, 3, 3) float64 array
    """
    feats, Q = neighbour_features(seeds.positions, seeds.noise, seeds.gamma, net.kappa, return_frames=True)
    D, r = net.markers(feats)
    return metrics(Q, D), r, D, Q
