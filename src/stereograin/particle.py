"""Virtual particles: one shell and one grain architecture overlaid at the shell's centre.

A particle (paper, "Multi-scale model", Fig. 9) is made from

* a shell: SH coefficients of a star-shaped radius function, in CT voxels
  (128 nm by default), about the particle centre, and
* a 3D grain architecture: seeds and markers of a restricted GBPD in EBSD
  pixels (50 nm by default) about the same centre,

by keeping the grains whose centre of mass lies inside the shell. The particle
is the union of the kept grains, so its surface follows grain boundaries.

How the centre of mass is computed
----------------------------------
The centre of mass of a grain is that of its whole cell, not of the part
inside the shell. GBPD cells have curved (quadric) faces, so there is no
closed form; :func:`assemble` labels the cells exactly on a grid of spacing
``h`` (``com_spacing_px``, default 2 px = 100 nm) and takes each cell's mean
voxel centre (midpoint rule).

The seeds' region is the shell grown radially by a padding of 3.5 mean
grain spacings ``mu^(-1/3)`` (:data:`PAD_SPACINGS`; half a spacing more per
doubling of the grain count beyond 4,000, :func:`padding_spacings`), in
blocks of 4 grid steps, within a box that bounds the shell rigorously
(:func:`shell_extent`) plus the padding. Seeds are drawn in the ball of the
shell's radius bound (:func:`shell_radius_range`) plus the padding and the
grain model's neighbour margin; only those in the padded region are kept
and given markers. Radial grains near the surface reach up to about two
spacings beyond it (measured on the default model), so labelling starts
1.5 spacings inside the padding (:data:`GROW_SPACINGS`, 2 spacings for a
typical particle) and grows, in blocks, around every kept cell that
touches the edge of what is labelled, until none does (about one particle
in five grows once). Other cells cut by that edge are decided on the part
labelled so far: the missing part lies farther out, beyond the starting
padding, and moves their centre outward (not provable for every shell
shape; no decision changed in the measurement below). Measured on 40
particles (10 um and paper-model shells), this labels about 30 % fewer voxels than the whole
padded region and gives the same particles, except where a kept cell has a
detached fragment (GBPD cells can be disconnected) beyond what is labelled:
such a fragment is not part of the grain's centre and volume (one of the 40:
a 1-voxel fragment of a 280-voxel cell, 3.5 spacings out, which used to
force a redraw). A kept cell that still touches the edge
of the seeds' region would be cut: then the grains are redrawn (from the
next child stream) with twice the padding. Labelling the padded shell
rather than its whole box keeps spiky shells, whose box is mostly empty,
from costing several times more.
Measured against a 0.5 px grid on the default model, the midpoint rule's
error on a cell is 0.045 px mean / 0.15 px max at ``h = 1``, 0.2 / 0.6 px at
``h = 2`` (10 / 30 nm, a quarter of a CT voxel at most) and 0.45 / 1.8 px at
``h = 3``; it shrinks like ``h^2``. Only grains whose centre lies within that
distance of the shell surface can change side.

What is stored (``particle.json``)
----------------------------------
The shell coefficients, every seed of the assembly (kept grains first, then
the others; seeds, noise, spins, markers: about 2.5 times as many seeds as
grains), the kept grains' centres of mass and volumes, and the particle's
box. The particle is *defined* as the kept cells of the GBPD of the stored
seeds, so :meth:`Particle.label_volume` re-voxelises it at any resolution
with nothing redrawn, and gives exactly the cells the assembly saw. The
grain arrays are rounded to 5 decimals (1e-5 px) before anything is
computed; JSON writes the shortest decimal of each value, so a re-read
particle is bit for bit the one that was assembled.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

from . import __version__, sphere
from ._scratch import scratch
from ._threads import default_workers, run_workers
from .errors import StereograinError
from .grains.model import GrainArchitecture, GrainModel
from .io import read_json, write_json
from .shell import ShellModel

__all__ = [
    "PARTICLE_FORMAT",
    "Particle",
    "assemble",
    "make_particle",
    "shell_radius_range",
    "inside_shell",
    "shell_extent",
    "shell_radius",
    "cell_moments",
]

PARTICLE_FORMAT = "stereograin.particle"
PARTICLE_FORMAT_VERSION = 1
#: Padding of the assembly region beyond the shell, in mean grain spacings ``mu^(-1/3)`` (module notes).
PAD_SPACINGS = 3.5
#: The labelled region starts this many spacings inside the seeds' padding and grows where needed (module notes).
GROW_SPACINGS = 1.5
#: Largest labelling cube (voxels) assembly will use before asking for a coarser grid.
_MAX_COARSE_VOXELS = 150_000_000
#: Grid steps per side of the blocks the assembly region is made of (whole labelling leaves).
_MASK_BLOCK = 4
#: Icosphere level of the radius bound's grid (10242 directions).
_BOUND_LEVEL = 5
#: Largest assembly grid whose labels a thread keeps in its scratch buffer for the next particle (512 MiB: the
#: paper model's large particles, one in seven of a library, need 64-270 MB, and a fresh buffer's page faults cost
#: more than clearing a kept one; a library worker holds at most this much).
_KEEP_LABELS_BYTES = 1 << 29


def _label_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """An int32 array of ``shape`` for the assembly's labels, on this thread's reused buffer.

    Fresh memory is slow to write the first time (:mod:`stereograin._scratch`;
    a 10 um particle's labels alone are 20 MB), so the next particle writes
    into the last one's buffer, up to :data:`_KEEP_LABELS_BYTES`. It is not
    cleared: outside the blocks a masked labelling labels it holds stale
    values, which :func:`cell_moments` with the mask does not read.
    """
    return scratch("particle.labels", shape, np.int32, keep_bytes=_KEEP_LABELS_BYTES)


@lru_cache(maxsize=4)
def _bound_grid(L: int) -> tuple[np.ndarray, float]:
    """SH basis on the level-5 icosphere and the grid's covering radius (radians)."""
    v, f = sphere.icosphere(_BOUND_LEVEL)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    # every direction lies in a face, within the face's circumradius of a vertex
    delta = float(np.arccos(np.clip(np.einsum("ij,ij->i", n, a), -1.0, 1.0)).max())
    return sphere.basis(L, _BOUND_LEVEL), delta


def shell_radius_range(coefficients: np.ndarray) -> tuple[float, float]:
    """Bounds ``lo <= r(u) <= hi`` of the shell's radius over all directions, not only sampled ones (CT voxels).

    Write ``r = c + q`` with ``c`` the degree-0 term. Two rigorous bounds of
    ``|q|``-type terms are combined, the tighter one kept. (1) Cauchy-Schwarz
    with the addition theorem ``sum_m Y_lm(u)^2 = (2l+1)/(4 pi)`` gives
    ``|sum_m a_lm Y_lm(u)| <= |a_l| sqrt((2l+1)/(4 pi))`` per degree. (2) On a
    great circle ``q`` is a trigonometric polynomial of degree ``L``, so by
    Bernstein's inequality ``|q(u) - q(g)| <= L delta max|q|`` for the grid
    point ``g`` nearest ``u`` (``delta``: the level-5 icosphere's covering
    radius); hence ``max r <= c + max_grid q + e`` and
    ``min r >= c + min_grid q - e`` with ``e = L delta / (1 - L delta) max_grid |q|``.

    Parameters
    ----------
    coefficients : ((L+1)^2,) array
        SH coefficients (CT voxels).

    Returns
    -------
    lo, hi : float
    """
    a = np.asarray(coefficients, dtype=np.float64)
    L = sphere.degree_of(a.size)
    norms = np.array([np.linalg.norm(a[l * l : (l + 1) ** 2]) for l in range(1, L + 1)])
    B, delta = _bound_grid(L)
    c = a[0] * B[0, 0]
    e = float(np.sum(norms * np.sqrt((2 * np.arange(1, L + 1) + 1) / (4 * math.pi))))
    lo, hi = c - e, c + e
    q = B[:, 1:] @ a[1:]
    t = L * delta
    if t < 1.0:
        e = t / (1.0 - t) * np.abs(q).max()
        lo, hi = max(lo, c + q.min() - e), min(hi, c + q.max() + e)
    return float(lo), float(hi)


def inside_shell(
    coefficients: np.ndarray, points: np.ndarray, radius_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Whether ``points`` (n, 3, CT voxels about the shell centre) lie strictly inside the shell.

    Points closer than the radius's lower bound or farther than its upper
    bound (:func:`shell_radius_range`, or ``radius_range`` when the caller
    has it) are decided without evaluating the SH expansion; only the band
    between needs it.
    """
    x = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    rho = np.linalg.norm(x, axis=1)
    lo, hi = shell_radius_range(coefficients) if radius_range is None else radius_range
    out = rho < lo
    band = np.flatnonzero((rho >= lo) & (rho < hi) & (rho > 0))
    if band.size:
        out[band] = rho[band] < shell_radius(coefficients, x[band])
    return out


def shell_radius(coefficients: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The shell's radius ``r(u)`` (CT voxels) in ``directions`` (n, 3), any length but 0."""
    return sphere.evaluate(np.asarray(coefficients, dtype=np.float64), directions)


def shell_extent(coefficients: np.ndarray) -> np.ndarray:
    """A box holding the whole shell, bounded rigorously like :func:`shell_radius_range` (CT voxels).

    The shell reaches ``max_u r(u) u_i`` along axis ``i``. Write
    ``r u_i = c u_i + q u_i`` (``c``: the degree-0 term). Between a direction
    and its nearest grid point (angle ``delta`` at most), ``c u_i`` changes by
    at most ``|c| delta`` and ``q u_i``, a spherical polynomial of degree
    ``L + 1``, by at most ``(L+1) delta max|q u_i|`` (Bernstein), with
    ``max|q u_i| <= max_grid |q u_i| / (1 - (L+1) delta)``.

    Returns
    -------
    (3, 2) float64
        Rows x y z, columns lo hi; always contains the centre.
    """
    a = np.asarray(coefficients, dtype=np.float64)
    L = sphere.degree_of(a.size)
    B, delta = _bound_grid(L)
    u = sphere.icosphere(_BOUND_LEVEL)[0]
    c = a[0] * B[0, 0]
    qu = (B[:, 1:] @ a[1:])[:, None] * u  # (n, 3)
    ru = c * u + qu
    t = (L + 1) * delta
    if t >= 1.0:  # pragma: no cover - the level-5 grid covers L < 41
        hi = shell_radius_range(a)[1]
        return np.array([[-hi, hi]] * 3)
    e = delta * (abs(c) + (L + 1) * np.abs(qu).max(axis=0) / (1.0 - t))
    return np.stack([np.minimum(ru.min(axis=0) - e, 0.0), np.maximum(ru.max(axis=0) + e, 0.0)], axis=1)


@numba.njit(cache=True, nogil=True)
def _lookup(a, lut, out, w, nw):  # pragma: no cover - compiled
    # out = lut[a] on chunk w of nw (numpy's take is one thread and an indexed gather)
    n = a.shape[0]
    for i in range(w * n // nw, (w + 1) * n // nw):
        out[i] = lut[a[i]]


@numba.njit(cache=True, nogil=True)
def _moments(labels, mask, b, k0, dk, cnt, sums, lo, hi, open_, check_open):  # pragma: no cover - compiled
    # One pass over runs of equal labels along x, in the z planes k0, k0 + dk, ...: count,
    # coordinate sums, bounding box and the "open" flag per label (scipy.ndimage needs a pass
    # per statistic, and has no neighbour test). Label 0 is background: counted, nothing else.
    # Row (k, j) is scanned over the runs of set blocks of mask[k // b, j // b] (b voxels each;
    # voxels of unset blocks count as background, unread). Returns False at a label outside
    # 0..n (the caller's one-line error), True otherwise. ``check_open`` False: the open flags
    # are left to _open_faces (a masked grid, labelled wherever the mask is set).
    Z, Y, X = labels.shape
    n = cnt.shape[0] - 1
    nbx = mask.shape[2]
    for k in range(k0, Z, dk):
        for j in range(Y):
            mrow = mask[k // b, j // b]
            covered = 0
            ib = 0
            while ib < nbx:
                if not mrow[ib]:
                    ib += 1
                    continue
                ie = ib + 1
                while ie < nbx and mrow[ie]:
                    ie += 1
                i, x_end = ib * b, min(ie * b, X)
                ib = ie
                covered += x_end - i
                while i < x_end:
                    c = labels[k, j, i]
                    e = i + 1
                    while e < x_end and labels[k, j, e] == c:
                        e += 1
                    nr = e - i
                    if c < 0 or c > n:
                        return False
                    cnt[c] += nr
                    if c != 0:
                        sums[c, 0] += (i + e - 1) * nr // 2  # i + ... + (e - 1), exact: (i + e - 1) nr is even
                        sums[c, 1] += j * nr
                        sums[c, 2] += k * nr
                        lo[c, 0] = min(lo[c, 0], i)
                        hi[c, 0] = max(hi[c, 0], e - 1)
                        lo[c, 1] = min(lo[c, 1], j)
                        hi[c, 1] = max(hi[c, 1], j)
                        lo[c, 2] = min(lo[c, 2], k)
                        hi[c, 2] = max(hi[c, 2], k)
                        if check_open and not open_[c]:
                            if i == 0 or e == X or j == 0 or k == 0 or j == Y - 1 or k == Z - 1:
                                open_[c] = True
                            elif labels[k, j, i - 1] == 0 or labels[k, j, e] == 0:
                                open_[c] = True
                            else:
                                for t in range(i, e):
                                    if (
                                        labels[k, j - 1, t] == 0 or labels[k, j + 1, t] == 0
                                        or labels[k - 1, j, t] == 0 or labels[k + 1, j, t] == 0
                                    ):
                                        open_[c] = True
                                        break
                    i = e
            cnt[0] += X - covered
    return True


@numba.njit(cache=True, nogil=True)
def _open_faces(labels, mask, b, open_):  # pragma: no cover - compiled
    # The open flags of a grid labelled (non-zero) exactly on the mask's blocks: a voxel has a
    # 0 neighbour or lies on the grid's faces only on a face of its block that borders an
    # unmasked block or the grid's edge, so only those faces are read (the blocks' surface,
    # instead of 4 neighbours of every voxel in the row scan).
    Z, Y, X = labels.shape
    nz, ny, nx = mask.shape
    for kb in range(nz):
        for jb in range(ny):
            for ib in range(nx):
                if not mask[kb, jb, ib]:
                    continue
                z0, z1 = kb * b, min((kb + 1) * b, Z)
                y0, y1 = jb * b, min((jb + 1) * b, Y)
                x0, x1 = ib * b, min((ib + 1) * b, X)
                for side in range(6):  # -z +z -y +y -x +x
                    ax, step = side >> 1, 2 * (side & 1) - 1
                    nk, nj, ni = kb + step * (ax == 0), jb + step * (ax == 1), ib + step * (ax == 2)
                    if 0 <= nk < nz and 0 <= nj < ny and 0 <= ni < nx and mask[nk, nj, ni]:
                        continue  # a masked neighbour block: no 0 voxel across this face
                    ka, ke = (z1 - 1, z1) if ax == 0 and step > 0 else ((z0, z0 + 1) if ax == 0 else (z0, z1))
                    ja, je = (y1 - 1, y1) if ax == 1 and step > 0 else ((y0, y0 + 1) if ax == 1 else (y0, y1))
                    ia, ie = (x1 - 1, x1) if ax == 2 and step > 0 else ((x0, x0 + 1) if ax == 2 else (x0, x1))
                    for k in range(ka, ke):
                        for j in range(ja, je):
                            for i in range(ia, ie):
                                open_[labels[k, j, i]] = True
    open_[0] = False


#: Voxels per thread of :meth:`Particle.label_volume`'s relabelling pass.
_LOOKUP_VOXELS = 1_000_000
#: Below this many voxels :func:`cell_moments` runs on one thread (the per-thread tables cost more).
_MOMENTS_PARALLEL_VOXELS = 1_000_000


def cell_moments(
    labels: np.ndarray, n: int, mask: np.ndarray | None = None, mask_block: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts, mean voxel index, index bounding boxes and openness of labels ``1..n``.

    Large volumes are scanned on numba's threads, each taking every
    ``threads``-th z plane into its own tables (summed after: the integer
    sums are exact, so the result does not depend on the thread count).

    Parameters
    ----------
    labels : (Z, Y, X) int array
        Values in ``0..n``; 0 is background.
    n : int
        Largest label.
    mask : bool array, optional
        The labelled blocks of ``mask_block`` voxels (shape
        ``ceil(labels.shape / mask_block)``, as
        :meth:`~stereograin.tessellation.GBPD.label_grid` takes it): only
        they are read, every voxel outside them counts as background (0)
        whatever it holds, and every voxel inside must be non-zero (label_grid
        labels exactly the mask's blocks). ``open_`` is then read off the faces
        of the masked blocks that border unmasked ones or the grid's edge.
    mask_block : int
        Voxels per mask entry along each axis.

    Returns
    -------
    counts : (n+1,) int64
        Voxels per label (``counts[0]``: background voxels).
    mean : (n+1, 3) float64
        Mean voxel index ``(i, j, k)`` (x, y, z order); NaN for absent labels and for 0.
    lo, hi : (n+1, 3) int64
        Smallest and largest index per axis (x, y, z order); -1 for absent labels and for 0.
    open_ : (n+1,) bool
        Label ``c`` has a voxel on the grid's faces or next to (6-neighbour) a
        0 voxel: the grid may not hold its whole cell. ``open_[0]`` is False.
    """
    lab = np.ascontiguousarray(labels)
    if lab.ndim != 3:
        raise StereograinError(f"labels must be a 3D (Z, Y, X) array, got shape {lab.shape}")
    Z, Y, X = lab.shape
    if mask is None:
        b = max(Z, Y, X, 1)  # one block: the whole grid
        m = np.ones((1, 1, 1), np.bool_)
    else:
        b = int(mask_block)
        m = np.ascontiguousarray(mask, dtype=bool)
        if b < 1 or m.shape != tuple(-(-v // b) for v in lab.shape):
            raise StereograinError(f"mask of shape {m.shape} in blocks of {mask_block} does not fit labels of shape {lab.shape}")
    nw = min(default_workers(), lab.shape[0]) if lab.size >= _MOMENTS_PARALLEL_VOXELS else 1
    cnt = np.zeros((nw, n + 1), np.int64)
    sums = np.zeros((nw, n + 1, 3), np.int64)
    lo = np.full((nw, n + 1, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((nw, n + 1, 3), -1, np.int64)
    open_ = np.zeros((nw, n + 1), np.bool_)
    ok = np.ones(nw, np.bool_)
    if lab.size:

        def job(w: int, k: int) -> None:
            ok[w] = _moments(lab, m, b, w, k, cnt[w], sums[w], lo[w], hi[w], open_[w], mask is None)

        run_workers(job, nw)
        if not ok.all():
            raise StereograinError(f"labels must lie in 0..{n}, got {lab.min()}..{lab.max()}")
        if mask is not None:
            _open_faces(lab, m, b, open_[0])
    cnt, sums, lo, hi, open_ = cnt.sum(0), sums.sum(0), lo.min(0), hi.max(0), open_.any(0)  # over the threads' tables
    cells = cnt > 0
    cells[0] = False
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cells[:, None], sums / np.maximum(cnt, 1)[:, None], np.nan)
    lo[~cells] = -1
    hi[~cells] = -1
    return cnt, mean, lo, hi, open_


def _renumbered(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-label array ``a`` with row ``rows[k]`` taking row ``k`` (a permutation of the labels)."""
    out = np.empty_like(a)
    out[rows] = a
    return out


#: Decimals kept of every stored grain array (module notes): 1e-5 px is 0.5 pm.
DECIMALS = 5


def _rounded(a: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), DECIMALS)


def _quantised(arch: GrainArchitecture) -> GrainArchitecture:
    return GrainArchitecture(
        _rounded(arch.positions), _rounded(arch.noise), _rounded(arch.gamma), _rounded(arch.D), _rounded(arch.r),
        arch.px_nm, arch.radius_px,
    )


def _subset(arch: GrainArchitecture, idx: np.ndarray) -> GrainArchitecture:
    return GrainArchitecture(
        arch.positions[idx], arch.noise[idx], arch.gamma[idx], arch.D[idx], arch.r[idx], arch.px_nm, arch.radius_px
    )


class _CellCut(Exception):
    """A kept cell reaches the labelling cube's faces: the cube must grow."""


@dataclass(frozen=True)
class Particle:
    """One virtual particle: a shell and the grains kept inside it.

    Attributes
    ----------
    coefficients : ((L+1)^2,) float64
        Shell SH coefficients in CT voxels, about the particle centre.
    ct_voxel_nm : float
        CT voxel size (nm).
    grains : GrainArchitecture
        Seeds and markers in px about the particle centre (``grains.px_nm``):
        the first ``n_grains`` are the particle's grains (grain ``g`` is seed
        ``g - 1``), the rest the neighbours that bound them.
    n_grains : int
        Number of grains in the particle.
    centres_px : (n_grains, 3) float64
        Centre of mass of each grain's whole cell (px, x y z).
    volumes_px3 : (n_grains,) float64
        Volume of each grain's cell (px^3) on the assembly grid.
    box_px : (3, 2) float64
        A box (px, rows x y z, columns lo hi) holding every grain.
    com_spacing_px : float
        Grid spacing the centres of mass were computed on (px).
    provenance : dict
        Where the particle came from (library index, seed, models).
    """

    coefficients: np.ndarray
    ct_voxel_nm: float
    grains: GrainArchitecture
    n_grains: int
    centres_px: np.ndarray
    volumes_px3: np.ndarray
    box_px: np.ndarray
    com_spacing_px: float
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = int(self.n_grains)
        if not 1 <= k <= self.grains.n:
            raise StereograinError(f"particle: n_grains must be in 1..{self.grains.n}, got {self.n_grains}")
        for name, shape in (("centres_px", (k, 3)), ("volumes_px3", (k,)), ("box_px", (3, 2))):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.shape != shape or not np.all(np.isfinite(a)):
                raise StereograinError(f"particle: {name} must be finite with shape {shape}, got {a.shape}")
            object.__setattr__(self, name, a)
        object.__setattr__(self, "coefficients", np.asarray(self.coefficients, dtype=np.float64))
        sphere.degree_of(self.coefficients.size)
        if not (self.ct_voxel_nm > 0 and math.isfinite(self.ct_voxel_nm)):
            raise StereograinError(f"particle: CT voxel size must be positive, got {self.ct_voxel_nm!r} nm")

    @property
    def px_um(self) -> float:
        """Grain-model pixel size in micrometres."""
        return self.grains.px_nm / 1000.0

    def label_volume(self, voxel_size_um: float, max_voxels: int = 2_000_000_000) -> tuple[np.ndarray, np.ndarray]:
        """Voxelise the particle: exact grain labels on a grid of the given voxel size.

        The grid is aligned so that the particle centre is a voxel centre and
        covers :attr:`box_px`. A voxel is grain ``g`` (1..n_grains) if the
        GBPD of the stored seeds gives it to cell ``g``, and 0 otherwise.

        Parameters
        ----------
        voxel_size_um : float
            Edge of a voxel (um).
        max_voxels : int
            Refuse grids larger than this (a 10 um particle at 50 nm is about 8e6 voxels).

        Returns
        -------
        labels : (Z, Y, X) uint32
        origin_um : (3,) float64
            Centre of voxel ``[0, 0, 0]`` (um, x y z) relative to the particle centre.
        """
        v = float(voxel_size_um)
        if not (v > 0 and math.isfinite(v)):
            raise StereograinError(f"voxel size must be positive, got {voxel_size_um!r} um")
        vp = v / self.px_um
        i0 = np.floor(self.box_px[:, 0] / vp).astype(np.int64)
        i1 = np.ceil(self.box_px[:, 1] / vp).astype(np.int64)
        shape_xyz = i1 - i0 + 1
        total = float(np.prod(shape_xyz.astype(np.float64)))
        if total > max_voxels:
            raise StereograinError(
                f"a {v:g} um grid of this particle has {total:.3g} voxels (more than {max_voxels:.3g}); choose a larger voxel size"
            )
        grid = {"origin": i0 * vp, "spacing": vp}
        gbpd, perm = self.grains.gbpd().in_grid_order(**grid)  # labelled in the engine's order, mapped back below
        lab = gbpd.label_grid(tuple(int(s) for s in shape_xyz[::-1]), **grid)
        # label k of the ordered diagram is grain perm[k - 1] + 1, or 0 if that cell is not kept
        lut = np.concatenate([[0], np.where(perm < self.n_grains, perm + 1, 0)]).astype(np.uint32)
        out = np.empty(lab.shape, np.uint32)
        nw = min(default_workers(), max(1, lab.size // _LOOKUP_VOXELS))
        run_workers(lambda w, k: _lookup(lab.reshape(-1), lut, out.reshape(-1), w, k), nw)
        return out, i0 * v

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The particle as a dict of plain values and NumPy arrays (:meth:`save` writes it with orjson)."""
        g = self.grains.to_dict(lists=False)
        return {
            "format": PARTICLE_FORMAT,
            "format_version": PARTICLE_FORMAT_VERSION,
            "stereograin_version": __version__,
            "units": {
                "shell": "CT voxels", "ct_voxel_nm": float(self.ct_voxel_nm),
                "grains": "px", "px_nm": float(self.grains.px_nm),
            },
            "shell": {"L": sphere.degree_of(self.coefficients.size), "coefficients": self.coefficients},
            "n_grains": int(self.n_grains),
            "grains": g,
            "centres_px": self.centres_px,
            "volumes_px3": self.volumes_px3,
            "box_px": self.box_px,
            "com_spacing_px": float(self.com_spacing_px),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "particle") -> "Particle":
        if not isinstance(d, dict) or d.get("format") != PARTICLE_FORMAT:
            raise StereograinError(f"{source} is not a stereograin particle; make one with `stereograin generate`")
        if not isinstance(d.get("format_version"), int) or d["format_version"] > PARTICLE_FORMAT_VERSION:
            raise StereograinError(f"{source} has format version {d.get('format_version')!r}; this stereograin reads up to {PARTICLE_FORMAT_VERSION}")
        try:
            return cls(
                np.asarray(d["shell"]["coefficients"], dtype=np.float64),
                float(d["units"]["ct_voxel_nm"]),
                GrainArchitecture.from_dict(d["grains"], source),
                int(d["n_grains"]),
                np.asarray(d["centres_px"], dtype=np.float64).reshape(-1, 3),
                np.asarray(d["volumes_px3"], dtype=np.float64),
                np.asarray(d["box_px"], dtype=np.float64),
                float(d["com_spacing_px"]),
                dict(d.get("provenance") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StereograinError(f"{source} has a missing or malformed field ({exc}); re-create it") from None

    def save(self, path: str | Path) -> None:
        """Write ``particle.json`` (atomically, compact: about 100 bytes per stored seed)."""
        write_json(path, self.to_dict(), compact=True)

    @classmethod
    def load(cls, path: str | Path) -> "Particle":
        """Read a particle written by :meth:`save`; a library folder's ``particle_NNNNNN`` works too."""
        p = Path(path)
        if p.is_dir():
            p = p / "particle.json"
        return cls.from_dict(read_json(p, "particle"), f"particle {p}")


def _shell_gap(
    coefficients: np.ndarray, scale: float, points_px: np.ndarray, radius_range: tuple[float, float],
    reach_lo: float, reach_hi: float,
) -> np.ndarray:
    """Radial gap ``|x| - r(x / |x|) scale`` (px) at ``points_px`` (n, 3), exact where a reach in ``[reach_lo, reach_hi]`` could matter.

    ``scale`` converts the shell's CT voxels to px; ``radius_range`` is
    :func:`shell_radius_range` of the coefficients (CT voxels). A point is
    within ``reach`` px, radially, of the shell's inside when its gap is
    ``<= reach``. Points within ``reach_lo`` of the radius's lower bound get
    ``-inf`` and points beyond ``reach_hi`` of its upper bound ``+inf``
    (decided for every reach in the range) without evaluating the SH
    expansion; so does the centre (inside: a star-shaped shell's radius is
    positive).
    """
    x = np.asarray(points_px, dtype=np.float64).reshape(-1, 3)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    lo, hi = (v * scale for v in radius_range)
    gap = np.where(norm - reach_lo <= lo, -np.inf, np.inf)
    gap[norm == 0] = -np.inf
    band = np.flatnonzero((norm - reach_lo > lo) & (norm - reach_hi <= hi) & (norm > 0))
    if band.size:
        gap[band] = norm[band] - shell_radius(coefficients, x[band]) * scale
    return gap


def _region_masks(
    coefficients: np.ndarray, scale: float, i0: np.ndarray, shape: np.ndarray, h: float, pads: tuple[float, ...],
    radius_range: tuple[float, float],
) -> list[np.ndarray]:
    """Assembly regions on the grid, one per padding: blocks of ``_MASK_BLOCK`` steps whose centre is within the padding plus the block's half-diagonal of the shell.

    ``i0`` and ``shape`` (x y z) place the grid (``h`` px steps); ``scale``
    converts CT voxels to px. Returns (Z', Y', X') bool masks for
    :meth:`~stereograin.tessellation.GBPD.label_grid`; the shell's radius is
    evaluated once for all of them.
    """
    b = _MASK_BLOCK
    nb = -(-shape // b)  # x y z
    axes = [h * (i0[a] + np.minimum(b * np.arange(nb[a]) + 0.5 * (b - 1), shape[a] - 1)) for a in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    c = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    half = 0.5 * math.sqrt(3.0) * (b - 1) * h
    gap = _shell_gap(coefficients, scale, c, radius_range, min(pads) + half, max(pads) + half)
    return [(gap <= p + half).reshape(nb[2], nb[1], nb[0]) for p in pads]


def _kept(
    coefficients: np.ndarray, to_ct: float, radius_range: tuple[float, float], i0: np.ndarray, h: float,
    counts: np.ndarray, mean: np.ndarray,
) -> np.ndarray:
    """Cells (0-based) present on the grid whose centre of mass (grid ``i0``, step ``h`` px) is inside the shell."""
    present = np.flatnonzero(counts[1:] > 0)
    return present[inside_shell(coefficients, h * (i0 + mean[1:][present]) * to_ct, radius_range)]


def _blocks_around(lo: np.ndarray, hi: np.ndarray, nb: tuple[int, int, int]) -> np.ndarray:
    """Mask blocks ``(Z', Y', X')`` covering the grid index boxes ``lo..hi`` ((k, 3), x y z) grown by one block.

    One pass for all boxes: +-1 at each box's 8 corners of a difference array
    (inclusion-exclusion), then a cumulative sum along each axis.
    """
    b = _MASK_BLOCK
    dims = np.array(nb[::-1])  # x y z
    b0 = np.clip(lo // b - 1, 0, dims - 1)
    b1 = np.clip(hi // b + 1, 0, dims - 1) + 1
    diff = np.zeros((nb[0] + 1, nb[1] + 1, nb[2] + 1), np.int64)
    for cz in (0, 1):
        for cy in (0, 1):
            for cx in (0, 1):
                sign = (-1) ** (cx + cy + cz)
                np.add.at(diff, ((b1 if cz else b0)[:, 2], (b1 if cy else b0)[:, 1], (b1 if cx else b0)[:, 0]), sign)
    return diff.cumsum(0).cumsum(1).cumsum(2)[:-1, :-1, :-1] > 0


def assemble(
    coefficients: np.ndarray,
    ct_voxel_nm: float,
    architecture: GrainArchitecture,
    window_px: float | np.ndarray,
    com_spacing_px: float = 2.0,
    provenance: dict[str, Any] | None = None,
    pad_px: float | None = None,
    start_pad_px: float | None = None,
) -> Particle:
    """Keep the grains of ``architecture`` whose whole-cell centre of mass is inside the shell.

    Parameters
    ----------
    coefficients : ((L+1)^2,) array
        Shell SH coefficients (CT voxels), centred on the architecture's origin.
    ct_voxel_nm : float
        CT voxel size (nm).
    architecture : GrainArchitecture
        Seeds and markers (px) covering the window. The particle stores all
        of them (module notes): pass only the seeds near the shell.
    window_px : float or (3, 2) array
        The labelling box (px, rows x y z, columns lo hi), or the half-width
        of a cube about the centre: it must hold the shell and every kept
        grain whole (:func:`shell_extent` plus padding).
    com_spacing_px : float
        Grid spacing for the centres of mass (px).
    provenance : dict, optional
    pad_px : float, optional
        Label only the part of the box within about this distance (px,
        radially) of the shell; default: the whole box.
    start_pad_px : float, optional
        Label first within this distance (px, at most ``pad_px``) and grow the
        labelled part, block by block within ``pad_px``, around kept cells
        that are not yet whole (module notes); default: ``pad_px`` (no growth).

    Returns
    -------
    Particle

    Raises
    ------
    StereograinError
        If no grain's centre lies inside the shell, or for bad parameters.
    _CellCut
        (internal) if a kept cell reaches the labelled region's edge; :func:`make_particle` grows the padding.
    """
    h = float(com_spacing_px)
    if not (h > 0 and math.isfinite(h)):
        raise StereograinError(f"centre-of-mass grid spacing must be positive, got {com_spacing_px!r} px")
    box = np.asarray(window_px, dtype=np.float64)
    if box.ndim == 0:
        box = np.array([[-1.0, 1.0]] * 3) * float(box)
    if box.shape != (3, 2) or not np.all(np.isfinite(box)) or np.any(box[:, 1] <= box[:, 0]):
        raise StereograinError(f"assembly window must be a half-width or a (3, 2) box of lo < hi, got {window_px!r}")
    if pad_px is not None and not (pad_px >= 0 and math.isfinite(pad_px)):
        raise StereograinError(f"assembly padding must be >= 0 px, got {pad_px!r}")
    if start_pad_px is not None and not (pad_px is not None and 0 <= start_pad_px <= pad_px):
        raise StereograinError(f"the starting padding must lie in [0, pad_px], got {start_pad_px!r} px with pad_px = {pad_px!r}")
    h, i0, shape = _assembly_grid(box, h)
    arch = architecture
    n = arch.n
    to_ct = arch.px_nm / ct_voxel_nm  # px -> CT voxels
    radius_range = shell_radius_range(coefficients)  # once: the region mask and the inside test both use it
    grid: dict[str, Any] = {"origin": i0 * h, "spacing": h}
    zyx = tuple(int(v) for v in shape[::-1])
    if pad_px is None:  # the whole box, in one round
        region = mask = np.ones(tuple(-(-v // _MASK_BLOCK) for v in zyx), bool)
    else:
        start = float(pad_px if start_pad_px is None else start_pad_px)
        region, mask = _region_masks(coefficients, 1.0 / to_ct, i0, shape, h, (float(pad_px), start), radius_range)
    # cells in the labelling engine's order (its tables are read in order, the labels need no
    # mapping back); the moments are mapped to the architecture's numbering
    gbpd, perm = arch.gbpd().in_grid_order(**grid)
    rows = np.concatenate([[0], perm + 1])
    lab = gbpd.label_grid(zyx, mask=mask, mask_block=_MASK_BLOCK, out=_label_buffer(zyx), **grid)  # stale outside the mask
    while True:
        counts, mean, lo, hi, open_ = (_renumbered(a, rows) for a in cell_moments(lab, n, mask, _MASK_BLOCK))
        kept = _kept(coefficients, to_ct, radius_range, i0, h, counts, mean)
        grow = kept[open_[kept + 1]]  # kept cells not yet whole get the region's blocks around them
        add = _blocks_around(lo[grow + 1], hi[grow + 1], mask.shape) & region & ~mask if grow.size else None
        if add is None or not add.any():
            break
        gbpd.label_grid(zyx, mask=add, mask_block=_MASK_BLOCK, out=lab, **grid)  # the rest of ``lab`` is kept
        mask |= add
    if kept.size == 0:
        raise StereograinError("no grain's centre of mass lies inside the shell; the shell is smaller than one grain")
    if np.any(open_[kept + 1]):
        raise _CellCut
    centres = h * (i0 + mean[kept + 1])
    blo, bhi = lo[kept + 1].min(axis=0), hi[kept + 1].max(axis=0)
    pbox = np.stack([h * (i0 + blo - 0.5), h * (i0 + bhi + 0.5)], axis=1)
    order = np.concatenate([kept, np.setdiff1d(np.arange(n), kept, assume_unique=True)])
    return Particle(
        coefficients=np.asarray(coefficients, dtype=np.float64),
        ct_voxel_nm=float(ct_voxel_nm),
        grains=_subset(arch, order),
        n_grains=int(kept.size),
        centres_px=_rounded(centres),  # as particle.json stores them: a loaded particle is this one
        volumes_px3=counts[kept + 1] * h**3,
        box_px=pbox,
        com_spacing_px=h,
        provenance=dict(provenance or {}),
    )


def _assembly_grid(box: np.ndarray, h: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The centre-of-mass grid over ``box`` (px, (3, 2)): ``(spacing, first index (x y z), shape (x y z))``.

    The grid is aligned so that the centre is a grid point. A particle whose
    grid at spacing ``h`` would exceed :data:`_MAX_COARSE_VOXELS` points (the
    paper model's size law draws one of about 50 um in a thousand) gets a
    spacing scaled by the cube root of the excess (rounded up to 0.01 px;
    coarser again if that does not fit yet), with a warning: its
    centres are then a little less precise (the error grows like ``h^2``; the
    particle stores its spacing as ``com_spacing_px``). The rule depends on the
    box alone, so the particle is the same however it is made.
    """
    h0, first = h, None
    while True:
        i0 = np.floor(box[:, 0] / h).astype(np.int64)
        shape = np.ceil(box[:, 1] / h).astype(np.int64) - i0 + 1  # x y z
        points = float(np.prod(shape.astype(np.float64)))
        first = points if first is None else first
        if points <= _MAX_COARSE_VOXELS:
            break
        h = math.ceil(100.0 * h * (points / _MAX_COARSE_VOXELS) ** (1.0 / 3.0)) / 100.0
    if h != h0:
        warnings.warn(
            f"this particle's centre-of-mass grid would hold {first:.3g} points at {h0:g} px, more than "
            f"{_MAX_COARSE_VOXELS:.3g}; it uses {h:g} px instead (stored as com_spacing_px in particle.json)",
            stacklevel=3,
        )
    return h, i0, shape


def padding_spacings(coefficients: np.ndarray, scale: float, mu: float) -> float:
    """The assembly padding in mean seed spacings: :data:`PAD_SPACINGS`, plus half a spacing per doubling of the grains beyond 4,000.

    The farthest a kept grain reaches beyond the shell is the largest of many
    (one per surface grain), so it grows with the particle: measured on the
    default model, about 2 spacings for 4,000 grains and 3.9 for 150,000.
    ``scale`` converts the coefficients' CT voxels to px; ``mu`` is the
    seed intensity (per px^3). The grain count is estimated from the
    degree-0 coefficient (the radius's mean over the sphere).
    """
    r_mean = max(float(coefficients[0]), 0.0) / math.sqrt(4.0 * math.pi) * scale
    n = mu * 4.0 / 3.0 * math.pi * r_mean**3
    return PAD_SPACINGS + 0.5 * max(0.0, math.log2(max(n, 1.0) / 4000.0))


def make_particle(
    shell_model: ShellModel,
    grain_model: GrainModel,
    rng: np.random.Generator,
    com_spacing_px: float = 2.0,
    provenance: dict[str, Any] | None = None,
    coefficients: np.ndarray | None = None,
) -> Particle:
    """Draw a shell and an independent grain architecture and assemble them.

    The shell comes from the first and the grains from the second child
    stream of ``rng``; a redraw after a cut cell (module notes) uses the next
    children, so the result depends on ``rng`` alone.

    Parameters
    ----------
    shell_model : ShellModel
    grain_model : GrainModel
    rng : numpy Generator
        The particle's own stream (:func:`stereograin.library.particle_rng`).
    com_spacing_px : float
        Grid spacing for the centres of mass (px).
    provenance : dict, optional
    coefficients : ((L+1)^2,) array, optional
        A given shell (CT voxels of ``shell_model.voxel_size_nm``) instead of a drawn one.

    Returns
    -------
    Particle
    """
    shell_rng, *grain_rngs = rng.spawn(5)
    if coefficients is None:
        coefs = shell_model.sample(1, shell_rng, workers=1)[0]
    else:
        coefs = np.asarray(coefficients, dtype=np.float64)
        if coefs.ndim != 1 or not np.all(np.isfinite(coefs)):
            raise StereograinError(f"shell coefficients must be a finite 1D array, got shape {coefs.shape}")
        sphere.degree_of(coefs.size)
    ct_nm = float(shell_model.voxel_size_nm)
    scale = ct_nm / grain_model.px_nm  # CT voxels -> px
    extent = shell_extent(coefs) * scale
    radius_range = shell_radius_range(coefs)
    r_hi = radius_range[1] * scale
    spacing = grain_model.mu ** (-1.0 / 3.0)
    pad_sp = padding_spacings(coefs, scale, grain_model.mu)
    pad = pad_sp * spacing
    start = max(0.0, pad_sp - GROW_SPACINGS) * spacing  # labelling starts here and grows (module notes)
    for g in grain_rngs:
        R = r_hi + pad
        box = np.clip(extent + np.array([-pad, pad]), -R, R)

        def region(x: np.ndarray, box=box, pad=pad) -> np.ndarray:
            return np.all((x >= box[:, 0]) & (x <= box[:, 1]), axis=1) & (_shell_gap(coefs, scale, x, radius_range, pad, pad) <= pad)

        # Seeds are drawn in the ball of radius R plus the model's margin, so every seed
        # within R has its true neighbourhood and markers; only those within the padding
        # of the shell stay and get markers (module notes).
        arch = _quantised(grain_model.sample(R, g, select=region))
        try:
            return assemble(coefs, ct_nm, arch, box, com_spacing_px, provenance, pad_px=pad, start_pad_px=start)
        except _CellCut:
            pad *= 2.0
    raise StereograinError(
        "grains keep reaching the edge of the assembly window even with 8x the padding; "
        "the grain model makes grains far larger than its seed spacing suggests"
    )
