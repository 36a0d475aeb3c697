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

Speed. Neighbours come from the exact grid search of :mod:`.knn` (equal
distances: lower index first); one compiled kernel finds a seed's
neighbours, builds its frame and writes its feature row, batch by batch of
grid cells on a thread pool. :func:`sample_markers` is the inference path
(no autograd): float32 rows straight into the network's input buffer, the
MLP in preallocated buffers, markers stored in the seeds' order.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence

import numba
import numpy as np
import torch

from .._threads import default_workers, run_all
from ..errors import StereograinError
from ..fit2d import D_FLOOR, D_MAX, R_RANGE
from ..tessellation import _frame
from . import knn as _k
from .seeds import Seeds

__all__ = [
    "neighbour_features",
    "MarkerNet",
    "metrics",
    "generate_markers",
    "sample_markers",
    "N_FEATURES_PER_NEIGHBOUR",
]

#: Numbers per neighbour in the generator input: 3 rotated displacement + 2 noise.
N_FEATURES_PER_NEIGHBOUR = 5
#: Threads :func:`sample_markers` cuts its batches for, whatever the real count (determinism).
_BATCH_THREADS = 4
#: Largest batch of :func:`sample_markers` (seeds); batches shrink to give each of ``_BATCH_THREADS`` about 4.
SAMPLE_CHUNK = 16384

# ----------------------------------------------------------------------------- features kernel
#
# Hand-written because the numpy steps (cKDTree query, radial frames, einsum
# and gathers) each stream (n, kappa, .) arrays through memory: 4.6e-6 s per
# seed before the network at 25,000 seeds, 9.3e-6 s at 1e6, on 2 cores. The kernel below runs per grid cell of
# :mod:`.knn`: it finds a seed's neighbours, builds its frame and writes its
# feature row in one go. Frames come from the same compiled function as
# :func:`stereograin.tessellation.radial_frames` (``_frame``), bit for bit.


@numba.njit(cache=True, nogil=True)
def _features_cells(gp, start, order, origin, h, gx, gy, gz, slack, k, scale, nz, gam, c_lo, c_hi, rank, row0, sorted_rows, fscale, feats, Q):  # pragma: no cover - compiled
    """Features and frames of the seeds of cells ``[c_lo, c_hi)``.

    ``nz`` (n, 2) and ``gam`` (n,) are in the grid's sorted order. Feature row
    of sorted seed ``q``: ``rank[q] - row0`` if ``sorted_rows`` (seeds with
    ``rank[q] < 0`` are skipped: no features, no frame) else ``order[q]``;
    ``feats[row, 5 j + a]`` = value times ``fscale[5 j + a]`` in ``feats``'s
    dtype (float64 with ones: plain values; float32: the net's input
    scaling). Frames go to ``Q[order[q]]`` (all n seeds, original order).
    """
    inv_h = 1.0 / h
    h2m = h * h * (1.0 - _k._REL_MARGIN)
    fb = np.empty((5, 256), np.float64)
    ib = np.empty((5, 256), np.int64)
    nbr = np.empty(k, np.int64)
    for c in range(c_lo, c_hi):
        s0 = start[c]
        wanted = 0
        for q in range(s0, start[c + 1]):
            wanted += (not sorted_rows) or rank[q] >= 0
        if wanted == 0:
            continue
        fb, ib, nb, home, guess, ix, iy, iz = _k._load_cell(c, gp, start, gx, gy, gz, k, h2m, fb, ib)
        for q in range(s0, start[c + 1]):
            if sorted_rows and rank[q] < 0:
                continue
            fb, ib = _k._query(q, s0, home, nb, guess, ix, iy, iz, gp, start, order, origin, inv_h, h2m, gx, gy, gz, slack, k, scale, fb, ib, nbr)
            o = order[q]
            row = rank[q] - row0 if sorted_rows else o
            px, py, pz = gp[q, 0], gp[q, 1], gp[q, 2]
            _frame(px, py, pz, gam[q], Q, o)
            q00, q01, q02 = Q[o, 0, 0], Q[o, 0, 1], Q[o, 0, 2]
            q10, q11, q12 = Q[o, 1, 0], Q[o, 1, 1], Q[o, 1, 2]
            q20, q21, q22 = Q[o, 2, 0], Q[o, 2, 1], Q[o, 2, 2]
            for r in range(k):
                j = nbr[r]
                dx = gp[j, 0] - px
                dy = gp[j, 1] - py
                dz = gp[j, 2] - pz
                col = 5 * r
                feats[row, col] = q00 * dx + q01 * dy + q02 * dz
                feats[row, col + 1] = q10 * dx + q11 * dy + q12 * dz
                feats[row, col + 2] = q20 * dx + q21 * dy + q22 * dz
                feats[row, col + 3] = nz[j, 0]
                feats[row, col + 4] = nz[j, 1]
                for a in range(5):
                    feats[row, col + a] *= fscale[col + a]


@numba.njit(cache=True, nogil=True)
def _gather_marks(order, noise, gamma):  # pragma: no cover - compiled
    """Noise and spins in the grid's sorted order."""
    n = order.shape[0]
    nz = np.empty((n, 2), np.float64)
    g = np.empty(n, np.float64)
    for q in range(n):
        o = order[q]
        nz[q, 0] = noise[o, 0]
        nz[q, 1] = noise[o, 1]
        g[q] = gamma[o]
    return nz, g


@numba.njit(cache=True, nogil=True)
def _store_markers(idx, out, eps, span_d, lo, span_r, D, r):  # pragma: no cover - compiled
    """``r[idx] = lo + span_r out[0]``, ``D[idx] = eps + span_d out[1:]^T`` in float32 (as
    :meth:`MarkerNet.markers` computes them), stored as float64; ``out`` (4, m) sigmoids."""
    for i in range(idx.shape[0]):
        q = idx[i]
        r[q] = lo + span_r * out[0, i]
        D[q, 0] = eps + span_d * out[1, i]
        D[q, 1] = eps + span_d * out[2, i]
        D[q, 2] = eps + span_d * out[3, i]


def _checked_marks(positions: np.ndarray, noise: np.ndarray, gamma: np.ndarray, kappa: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(positions)
    nz = np.asarray(noise)
    g = np.asarray(gamma)
    n = len(s) if s.ndim >= 1 else 0
    if s.ndim != 2 or s.shape[1] != 3 or nz.shape != (n, 2):
        raise StereograinError(f"positions must be (n, 3) and noise (n, 2), got {s.shape} and {nz.shape}")
    if g.size != n:
        raise StereograinError(f"gamma must hold one angle per seed ({n}), got shape {g.shape}")
    g = g.reshape(n)
    if int(kappa) < 1:
        raise StereograinError(f"kappa must be at least 1, got {kappa}")
    if n <= kappa:
        raise StereograinError(f"need more than kappa = {kappa} seeds for the neighbour features, got {n}")
    try:
        s, nz, g = (np.ascontiguousarray(a, dtype=np.float64) for a in (s, nz, g))
    except (TypeError, ValueError) as err:
        raise StereograinError(f"positions, noise and gamma must be real numbers: {err}") from None
    for name, a in (("noise", nz), ("gamma", g)):
        if not np.isfinite(a).all():
            raise StereograinError(f"{name} contains NaN or infinite values; drop or fix those seeds first")
    return s, nz, g


def _run_features(grid: _k.CellGrid, nz_s: np.ndarray, g_s: np.ndarray, kappa: int, c_lo: int, c_hi: int, rank: np.ndarray | None, row0: int, fscale: np.ndarray, feats: np.ndarray, Q: np.ndarray) -> None:
    """:func:`_features_cells` on a grid (in the calling thread, GIL released).

    ``rank`` (n,) int64 in the grid's sorted order: rows ``rank[q] - row0``
    (``-1``: skip the seed); None: rows in the seeds' original order.
    """
    gx, gy, gz = (int(d) for d in grid.dims)
    _features_cells(
        grid.points, grid.start, grid.order, grid.origin, grid.h, gx, gy, gz, grid.slack, int(kappa), _k._scale_table(kappa),
        nz_s, g_s, int(c_lo), int(c_hi), _NO_RANK if rank is None else rank, int(row0), rank is not None, fscale, feats, Q,
    )


_NO_RANK = np.zeros(0, np.int64)


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
    s, nz, g = _checked_marks(positions, noise, gamma, kappa)
    n = len(s)
    grid = _k.cell_grid(s)  # raises for NaN / infinite positions
    nz_s, g_s = _gather_marks(grid.order, nz, g)
    feats = np.empty((n, N_FEATURES_PER_NEIGHBOUR * kappa), np.float64)
    Q = np.empty((n, 3, 3), np.float64)
    ones = np.ones(N_FEATURES_PER_NEIGHBOUR * kappa, np.float64)
    nw = default_workers()

    def job(batch: tuple[int, int]) -> None:
        _run_features(grid, nz_s, g_s, kappa, batch[0], batch[1], None, 0, ones, feats, Q)

    run_all(job, _k._cell_batches(grid, _k._batch_size(n, nw, 1 << 16)), nw)
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


def seeded_layer(module_cls: type, *args: int, gen: torch.Generator, dtype: torch.dtype, **kw: int) -> torch.nn.Module:
    """A linear / conv layer with torch's default init drawn from ``gen`` (the global RNG is not used)."""
    m = torch.nn.utils.skip_init(module_cls, *args, device="cpu", dtype=dtype, **kw)
    fan_in = m.weight[0].numel()
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(m.weight, a=np.sqrt(5.0), generator=gen)
        m.bias.uniform_(-1.0 / np.sqrt(fan_in), 1.0 / np.sqrt(fan_in), generator=gen)
    return m


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
            layers += [seeded_layer(torch.nn.Linear, a, b, gen=gen, dtype=dtype), torch.nn.ReLU()]
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


class _FastMLP:
    """Inference-only forward of a CPU float32 :class:`MarkerNet` MLP into preallocated buffers.

    Hidden layers: ``addmm`` + in-place ReLU. The last (narrow) layer is
    computed transposed, ``W h^T`` (4, m): MKL's ``h W^T`` kernel for 4
    outputs costs as much as a 64-wide layer. Inputs must already be scaled
    by ``in_scale``; outputs are the sigmoids (4, m).
    """

    def __init__(self, net: MarkerNet, rows: int) -> None:
        lins = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
        self.Wt = [lin.weight.detach().t().contiguous() for lin in lins[:-1]]
        self.b = [lin.bias.detach() for lin in lins[:-1]]
        self.W_last = lins[-1].weight.detach().contiguous()
        self.b_last = lins[-1].bias.detach()[:, None]
        self.hidden = [torch.empty(rows, W.shape[1]) for W in self.Wt]
        self.out = torch.empty(lins[-1].out_features * rows)

    @staticmethod
    def supports(net: MarkerNet) -> bool:
        mods = list(net.mlp)
        p = net.in_scale
        return (
            p.device.type == "cpu"
            and p.dtype == torch.float32
            and len(mods) % 2 == 1
            and all(isinstance(m, torch.nn.Linear) and m.bias is not None for m in mods[::2])
            and all(isinstance(m, torch.nn.ReLU) for m in mods[1::2])
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        h = x
        for Wt, b, buf in zip(self.Wt, self.b, self.hidden):
            nxt = buf[:m]
            torch.addmm(b, h, Wt, out=nxt)
            h = nxt.relu_()
        o = self.out[: self.W_last.shape[0] * m].view(self.W_last.shape[0], m)
        torch.mm(self.W_last, h.t(), out=o)
        return o.add_(self.b_last).sigmoid_()


def sample_markers(
    net: MarkerNet,
    seeds: Seeds,
    chunk: int = SAMPLE_CHUNK,
    workers: int | None = None,
    need: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Markers of a realisation without autograd: the fast path of Algorithm 1.

    Same result as ``net.markers(neighbour_features(...))`` up to float32
    rounding (about 1e-6 relative: the matrix products are blocked
    differently), but batched: the seeds are sorted into the cell grid of
    :mod:`stereograin.grains.knn` and processed ``chunk`` at a time (whole
    cells). Per batch, a compiled kernel writes the network's float32 input
    rows (neighbours, frames, displacements, noise, times ``in_scale``)
    straight into a buffer, the MLP runs on it under
    :func:`torch.inference_mode` into preallocated buffers, and the markers
    are stored in the seeds' order. Memory beyond the outputs: the grid
    (~90 bytes per seed) and per worker one batch (~800 bytes per seed of
    ``chunk``).

    Threads. Batches are shared out to ``workers`` threads, each running the
    whole batch pipeline single-threaded (numba kernels and torch ops release
    the GIL), so no parallel region waits for a busy core; torch's intra-op
    threads are set to 1 during the call and restored after (process-wide:
    torch work in other threads runs on one thread meanwhile). Parallel
    regions instead (numba's and torch's OpenMP pools alternating) spin
    against each other: several times slower on 2 cores when another process
    is running.

    Parameters
    ----------
    net : MarkerNet
        Any device / dtype; CPU float32 (the default) takes the fast path,
        others get ``net.markers`` on float64 features, batch by batch in
        the calling thread.
    seeds : Seeds
        Positions in px relative to the particle centre, noise, spins; ``n > net.kappa``.
    chunk : int
        Largest batch in seeds (``>= 1``; batches are whole grid cells and
        shrink, down to 2048 seeds, to make about 16). Results depend on it
        only through float32 rounding, and not at all on ``workers``.
    workers : int, optional
        Threads (default: numba's thread count).
    need : (n,) bool array, optional
        Only these seeds' markers are wanted (all seeds still serve as
        neighbours); the others' rows are NaN. A seed's markers do not depend
        on ``need`` beyond float32 rounding (the batches' rows change).

    Returns
    -------
    D : (n, 3) float64
        Diagonal of ``M_i`` in the radial frame (radial, tangential,
        tangential), dimensionless, in ``(eps, d_max]``.
    r : (n,) float64
        Offsets in px, in ``[r_min, r_max]``.
    Q : (n, 3, 3) float64
        Radial frames (rows: grain axes in world coordinates), so that
        ``M_i = Q_i^T diag(D_i) Q_i`` (:func:`metrics`).

    Raises
    ------
    StereograinError
        Bad shapes, NaN / infinite values, ``n <= kappa``, ``chunk < 1`` or ``workers < 1``.
    """
    if not isinstance(seeds, Seeds):
        raise StereograinError(f"seeds must be a Seeds pattern, got {type(seeds).__name__}")
    for name, val in (("chunk", chunk), ("workers", 1 if workers is None else workers)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise StereograinError(f"{name} must be a positive integer, got {val!r}")
    kappa = net.kappa
    s, nz, g = _checked_marks(seeds.positions, seeds.noise, seeds.gamma, kappa)
    n = len(s)
    nf = N_FEATURES_PER_NEIGHBOUR * kappa
    if net.in_scale.shape[0] != nf:
        raise StereograinError(f"net expects {net.in_scale.shape[0]} inputs, but kappa = {kappa} gives {nf}")
    nw = default_workers() if workers is None else int(workers)
    grid = _k.cell_grid(s)  # raises for NaN / infinite positions
    nz_s, g_s = _gather_marks(grid.order, nz, g)
    if need is None:
        want = np.ones(n, bool)
    else:
        want = np.asarray(need)
        if want.dtype != np.bool_ or want.shape != (n,):
            raise StereograinError(f"need must be a boolean array of shape ({n},), got {want.dtype} {want.shape}")
    want_s = want[grid.order]
    # rank[q]: row of sorted seed q among the wanted ones (-1: not wanted); a batch's rows are
    # rank[a:b] - first[a] with first = the wanted seeds before a
    first = np.concatenate([[0], np.cumsum(want_s)]).astype(np.int64)
    rank = np.where(want_s, first[:-1], -1).astype(np.int64)
    D = np.full((n, 3), np.nan)
    r = np.full(n, np.nan)
    Q = np.full((n, 3, 3), np.nan)
    if not want.any():
        return D, r, Q
    # Batches are cut for a fixed notional thread count, so the float32 products (whose
    # rounding depends on the batch's rows) and hence the markers do not depend on ``workers``.
    batches = _k._cell_batches(grid, _k._batch_size(n, _BATCH_THREADS, int(chunk)))
    rows = max(1, max(int(first[grid.start[b]] - first[grid.start[a]]) for a, b in batches))

    if not _FastMLP.supports(net):
        feats = np.empty((rows, nf), np.float64)
        ones = np.ones(nf, np.float64)
        with torch.inference_mode():
            for c_lo, c_hi in batches:
                a, b = int(grid.start[c_lo]), int(grid.start[c_hi])
                m = int(first[b] - first[a])
                if m == 0:
                    continue
                _run_features(grid, nz_s, g_s, kappa, c_lo, c_hi, rank, int(first[a]), ones, feats[:m], Q)
                Dc, rc = net.markers(torch.from_numpy(feats[:m]))
                idx = grid.order[a:b][want_s[a:b]]
                D[idx] = Dc.detach().cpu().numpy()
                r[idx] = rc.detach().cpu().numpy()
        return D, r, Q

    fscale = net.in_scale.detach().numpy().astype(np.float32)
    f32 = (np.float32(net.eps), np.float32(net.d_max - net.eps), np.float32(net.r_range[0]), np.float32(net.r_range[1] - net.r_range[0]))
    states: queue.SimpleQueue = queue.SimpleQueue()  # one feature buffer + MLP per thread
    for _ in range(max(1, min(nw, len(batches)))):
        states.put((np.empty((rows, nf), np.float32), _FastMLP(net, rows)))

    def job(batch: tuple[int, int]) -> None:
        c_lo, c_hi = batch
        a, b = int(grid.start[c_lo]), int(grid.start[c_hi])
        m = int(first[b] - first[a])
        if m == 0:
            return
        feats, mlp = states.get()
        try:
            _run_features(grid, nz_s, g_s, kappa, c_lo, c_hi, rank, int(first[a]), fscale, feats[:m], Q)
            with torch.inference_mode():
                out = mlp(torch.from_numpy(feats[:m])).numpy()
            _store_markers(grid.order[a:b][want_s[a:b]], out, *f32, D, r)
        finally:
            states.put((feats, mlp))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_all(job, batches, nw)
    finally:
        torch.set_num_threads(threads)
    return D, r, Q
