"""Generalised balanced power diagrams (GBPDs) in 2D and 3D (Eq. 8, 11, 12).

A GBPD with seeds ``s_i``, positive definite matrices ``M_i`` and offsets
``r_i`` assigns a point ``x`` to the cell

    argmin_i  |x - s_i|_{M_i} - r_i,   |v|_M = sqrt(v^T M v)

(the reading notes' metric: a square root, not the squared form). Ties go to
the lowest index. The *restricted* form (Algorithm 1) has
``M_i = Q_i^T diag(D_i) Q_i`` where ``Q_i`` maps world vectors into the
grain's radial frame, whose first axis is ``s_i / |s_i|`` (Eq. 12).

Conventions: points are ``(n, d)`` float64 in ``(x, y[, z])`` order. A grid
of shape ``(H, W)`` or ``(Z, Y, X)`` has its point ``[k, j, i]`` at
``origin + spacing * (i, j, k)``. Labels are ``1..n`` (cell index + 1), so 0
stays free for background / unindexed pixels.

The soft map (Eq. 11) is ``softmax_i((-|x - s_i|_{M_i} + r_i) / temperature)``,
differentiable in torch with respect to seeds, matrices and offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StereograinError

__all__ = [
    "radial_frames",
    "restricted_metrics",
    "GBPD",
    "soft_map",
    "grid_points",
    "plane_points",
]


def _rotation_about(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation matrices, ``axis`` (n, 3) unit, ``angle`` (n,) -> (n, 3, 3)."""
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    k = axis
    K = np.zeros((len(k), 3, 3))
    K[:, 0, 1], K[:, 0, 2] = -k[:, 2], k[:, 1]
    K[:, 1, 0], K[:, 1, 2] = k[:, 2], -k[:, 0]
    K[:, 2, 0], K[:, 2, 1] = -k[:, 1], k[:, 0]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def radial_frames(seeds: np.ndarray, gamma: np.ndarray | None = None, eps: float = 1e-9) -> np.ndarray:
    """Basis changes ``Q_i`` into each seed's radial frame (Eq. 12).

    3D: ``Q = R(e1, gamma) R(s~ + e1, pi)``: the half-turn about the bisector of
    ``s~ = s/|s|`` and ``e1`` maps ``s~`` to ``e1``, then the spin ``gamma``
    turns the tangential axes about ``e1``. The first row of ``Q`` is ``s~``.
    Degenerate cases: ``s = 0`` takes ``s~ = e1`` (no half-turn); ``s~ = -e1``
    (no bisector) takes the half-turn about ``e3``.

    2D: the rotation taking ``s~`` to ``e1`` (no spin: the tangential axis is
    unique; ``gamma`` is ignored). ``s = 0`` gives the identity.

    Parameters
    ----------
    seeds : (n, d) array, d in {2, 3}
        Seed positions relative to the particle centre.
    gamma : (n,) array, optional
        Spin angles in radians (3D only); default 0.
    eps : float
        Below this norm a vector counts as zero.

    Returns
    -------
    (n, d, d) float64
        ``Q_i``; ``Q_i @ v`` expresses world vector ``v`` in the grain frame.
    """
    s = np.asarray(seeds, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] not in (2, 3):
        raise StereograinError(f"seeds must have shape (n, 2) or (n, 3), got {s.shape}")
    n, d = s.shape
    norm = np.linalg.norm(s, axis=1)
    st = np.where(norm[:, None] > eps, s / np.where(norm > eps, norm, 1.0)[:, None], np.eye(d)[0])
    if d == 2:
        c, sn = st[:, 0], st[:, 1]
        return np.stack([np.stack([c, sn], -1), np.stack([-sn, c], -1)], axis=1)
    e1 = np.array([1.0, 0.0, 0.0])
    b = st + e1
    bn = np.linalg.norm(b, axis=1)
    axis = np.where(bn[:, None] > eps, b / np.where(bn > eps, bn, 1.0)[:, None], np.array([0.0, 0.0, 1.0]))
    half_turn = 2.0 * axis[:, :, None] * axis[:, None, :] - np.eye(3)
    g = np.zeros(n) if gamma is None else np.asarray(gamma, dtype=np.float64).reshape(n)
    spin = _rotation_about(np.tile(e1, (n, 1)), g)
    return spin @ half_turn


def restricted_metrics(seeds: np.ndarray, D: np.ndarray, gamma: np.ndarray | None = None) -> np.ndarray:
    """``M_i = Q_i^T diag(D_i) Q_i`` with the radial frames of :func:`radial_frames`.

    Parameters
    ----------
    seeds : (n, d) array
    D : (n, d) array of positive entries
        ``D[:, 0]`` weighs the radial direction, the others the tangential ones.
    gamma : (n,) array, optional
        Spin angles (3D).

    Returns
    -------
    (n, d, d) float64, symmetric positive definite
    """
    Dm = np.asarray(D, dtype=np.float64)
    s = np.asarray(seeds, dtype=np.float64)
    if Dm.shape != s.shape:
        raise StereograinError(f"D must have the seeds' shape {s.shape}, got {Dm.shape}")
    if not np.all(np.isfinite(Dm)) or np.any(Dm <= 0):
        raise StereograinError("every entry of D must be positive and finite (M must be positive definite)")
    Q = radial_frames(s, gamma)
    return np.einsum("nki,nk,nkj->nij", Q, Dm, Q)


def grid_points(shape: tuple[int, ...], origin: np.ndarray | float = 0.0, spacing: float = 1.0) -> np.ndarray:
    """Points of a regular grid, ``(prod(shape), d)`` in ``(x, y[, z])`` order (C order of ``shape``)."""
    d = len(shape)
    axes = [np.arange(m) * float(spacing) for m in shape]
    mesh = np.meshgrid(*axes, indexing="ij")  # (k, j, i) order
    pts = np.stack([m.ravel() for m in mesh[::-1]], axis=1)
    return pts + np.broadcast_to(np.asarray(origin, dtype=np.float64), (d,))


def plane_points(
    origin: np.ndarray, e_u: np.ndarray, e_v: np.ndarray, shape: tuple[int, int], spacing: float = 1.0
) -> np.ndarray:
    """3D points of a planar ``(H, W)`` grid: pixel ``[j, i]`` at ``origin + spacing (i e_u + j e_v)``.

    Returns
    -------
    (H * W, 3) float64
    """
    o = np.asarray(origin, dtype=np.float64).reshape(3)
    u = np.asarray(e_u, dtype=np.float64).reshape(3)
    v = np.asarray(e_v, dtype=np.float64).reshape(3)
    uv = grid_points(tuple(shape), 0.0, spacing)  # (H*W, 2): (i*spacing, j*spacing)
    return o + uv[:, :1] * u + uv[:, 1:] * v


@dataclass(frozen=True)
class GBPD:
    """A generalised balanced power diagram.

    Attributes
    ----------
    seeds : (n, d) float64
    metrics : (n, d, d) float64, symmetric positive definite
    offsets : (n,) float64 -- ``r_i``
    """

    seeds: np.ndarray
    metrics: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        s = np.ascontiguousarray(self.seeds, dtype=np.float64)
        M = np.ascontiguousarray(self.metrics, dtype=np.float64)
        r = np.ascontiguousarray(self.offsets, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] not in (2, 3) or s.shape[0] < 1:
            raise StereograinError(f"seeds must have shape (n >= 1, 2 or 3), got {s.shape}")
        n, d = s.shape
        if M.shape != (n, d, d) or r.shape != (n,):
            raise StereograinError(f"metrics must be ({n}, {d}, {d}) and offsets ({n},), got {M.shape} and {r.shape}")
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(M)) and np.all(np.isfinite(r))):
            raise StereograinError("seeds, metrics and offsets must be finite")
        object.__setattr__(self, "seeds", s)
        object.__setattr__(self, "metrics", M)
        object.__setattr__(self, "offsets", r)

    @classmethod
    def restricted(
        cls, seeds: np.ndarray, D: np.ndarray, r: np.ndarray, gamma: np.ndarray | None = None
    ) -> "GBPD":
        """The restricted GBPD with ``M_i = Q_i^T diag(D_i) Q_i`` (Eq. 12)."""
        return cls(np.asarray(seeds, dtype=np.float64), restricted_metrics(seeds, D, gamma), np.asarray(r, dtype=np.float64))

    @property
    def dim(self) -> int:
        return self.seeds.shape[1]

    @property
    def n(self) -> int:
        return self.seeds.shape[0]

    def distances(self, points: np.ndarray) -> np.ndarray:
        """``|x - s_i|_{M_i} - r_i`` for every point and cell, shape ``(m, n)`` (brute force)."""
        x = np.asarray(points, dtype=np.float64)
        diff = x[:, None, :] - self.seeds[None, :, :]
        q = np.einsum("mni,nij,mnj->mn", diff, self.metrics, diff)
        return np.sqrt(np.maximum(q, 0.0)) - self.offsets

    def label_points_bruteforce(self, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Reference labelling: argmin over all cells, ``(m,)`` int64 labels ``1..n``.

        O(m n); the ground truth that fast labelling is tested against.
        """
        x = self._check_points(points)
        out = np.empty(len(x), dtype=np.int64)
        for a in range(0, len(x), chunk):
            out[a : a + chunk] = np.argmin(self.distances(x[a : a + chunk]), axis=1) + 1
        return out

    def _check_points(self, points: np.ndarray) -> np.ndarray:
        x = np.asarray(points, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise StereograinError(f"points must have shape (m, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise StereograinError("points must be finite")
        return x


def soft_map(
    points,
    seeds,
    metrics,
    offsets,
    temperature: float = 1.0,
    candidates=None,
):
    """Soft cell membership (Eq. 11), differentiable in torch.

    ``T_i(x) = softmax_i((-|x - s_i|_{M_i} + r_i) / temperature)``; with
    ``temperature -> 0`` it tends to the one-hot exact labelling. The squared
    distance is expanded as ``x^T M x - 2 x^T M s + s^T M s`` so that the
    work is a few batched matrix products.

    Parameters
    ----------
    points : tensor (..., P, d)
    seeds : tensor (..., n, d)
    metrics : tensor (..., n, d, d)
    offsets : tensor (..., n)
    temperature : float
        Softmax temperature (the paper: 1, in pixel units).
    candidates : long tensor (..., P, k), optional
        Indices of the cells each point may belong to (e.g. its nearby
        seeds); memory is then ``O(P k)`` instead of ``O(P n)`` and the result
        is over those ``k`` candidates.

    Returns
    -------
    tensor (..., P, n), or (..., P, k) with ``candidates``
        Non-negative, summing to 1 over the last axis.
    """
    import torch

    if temperature <= 0:
        raise StereograinError(f"temperature must be positive, got {temperature}")
    x = points
    d = x.shape[-1]
    if candidates is None:
        Mflat = metrics.reshape(*metrics.shape[:-2], d * d)  # (..., n, d*d)
        xx = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], d * d)  # (..., P, d*d)
        Ms = torch.matmul(metrics, seeds[..., None])[..., 0]  # (..., n, d)
        q = (
            torch.matmul(xx, Mflat.transpose(-1, -2))
            - 2.0 * torch.matmul(x, Ms.transpose(-1, -2))
            + (seeds * Ms).sum(-1)[..., None, :]
        )
        r = offsets[..., None, :]
    else:
        idx = candidates
        batch = idx.shape[:-2]
        P, k = idx.shape[-2:]
        flat = idx.reshape(*batch, P * k)
        s = torch.gather(seeds, -2, flat[..., None].expand(*batch, P * k, d)).reshape(*batch, P, k, d)
        M = torch.gather(
            metrics.reshape(*metrics.shape[:-2], d * d), -2, flat[..., None].expand(*batch, P * k, d * d)
        ).reshape(*batch, P, k, d, d)
        r = torch.gather(offsets, -1, flat).reshape(*batch, P, k)
        diff = x[..., :, None, :] - s
        q = torch.einsum("...pki,...pkij,...pkj->...pk", diff, M, diff)
    # sqrt has an infinite derivative at 0: a floor keeps gradients finite at a seed.
    dist = torch.sqrt(torch.clamp(q, min=1e-12))
    return torch.softmax((r - dist) / temperature, dim=-1)
