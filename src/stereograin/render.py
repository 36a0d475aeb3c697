"""3D renderings of grain-resolved particles: one particle cut open, or a contact sheet of several.

A particle is a label volume ``labels`` of shape (Z, Y, X): 0 outside, grains
1..k. :func:`render_particle` meshes the grains with VTK's SurfaceNets3D
(:meth:`pyvista.ImageData.contour_labels`: the outer surface of the labelled
region, unsmoothed and voxel-exact, so the cut faces stay flat), colours each
surface patch by its grain (label ``l`` gets ``palette[(l - 1) % n]`` of a
Matplotlib colormap, see :func:`grain_palette`), draws the grain boundaries on the surface as thin dark
lines and renders offscreen. By default the octant ``x > cx, y > cy, z > cz``
around the particle's centroid is removed before meshing, so the three cut
faces show the grain architecture inside; the camera looks into that octant.

Rendering is always offscreen (no window opens) and the plotter is closed
afterwards. PNGs are written atomically (:func:`stereograin.io.atomic_path`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .errors import StereograinError
from .export import _check_voxel_size
from .plots import _check_path
from .io import _check_labels as _io_check_labels
from .io import atomic_path

__all__ = ["grain_palette", "render_particle", "contact_sheet"]

# qualitative colormaps have a handful of colours and are cycled as they are; continuous
# ones (viridis, ...) are sampled at this many evenly spaced colours, so neighbouring
# labels do not get near-identical shades
_N_SAMPLED = 16
_MAX_LISTED = 64
_MIN_SIZE, _MAX_SIZE = 16, 8192
_BOUNDARY_COLOUR = (0.12, 0.12, 0.12)
_VIEW = np.array([1.0, 0.8, 0.7])  # camera direction from the focal point, (x, y, z): into the cut octant
_KEY_LIGHT = np.array([0.35, 0.6, 1.0])  # direction towards the key light, (x, y, z): from above
_DPI = 100


# --------------------------------------------------------------------------- checks


def _check_labels(labels: Any) -> np.ndarray:
    lab = _io_check_labels(labels)
    if not lab.any():
        raise StereograinError("particle is empty: nothing to render")
    return lab


def _check_size(size: Any) -> tuple[int, int]:
    try:
        w, h = size
    except (TypeError, ValueError):
        raise StereograinError(f"size must be (width, height) in pixels, got {size!r}") from None
    for v in (w, h):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or not _MIN_SIZE <= v <= _MAX_SIZE:
            raise StereograinError(
                f"size must be two integers in {_MIN_SIZE}..{_MAX_SIZE} pixels (width, height), got {size!r}"
            )
    return int(w), int(h)


def _write_png(img: np.ndarray, path: Path) -> None:
    from matplotlib.image import imsave

    # the temporary name ends in .tmp, so the format is given explicitly
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        imsave(fh, img, format="png")


def _pyvista() -> Any:
    try:
        import pyvista
    except ImportError as exc:  # pragma: no cover - pyvista is a dependency
        raise StereograinError(f"3D rendering needs pyvista and vtk ({exc}); pip install pyvista") from None
    from vtkmodules.vtkCommonCore import vtkLogger

    # With no X display VTK warns "bad X server connection" before it falls back to an
    # offscreen context; that is the expected path here, so only errors are shown.
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
    return pyvista


# --------------------------------------------------------------------------- colours


def grain_palette(colormap: str = "tab20") -> np.ndarray:
    """The colours grains are drawn in: label ``l >= 1`` gets ``palette[(l - 1) % n]``.

    Parameters
    ----------
    colormap : str
        A Matplotlib colormap name. Qualitative colormaps (at most 64 listed
        colours, e.g. ``"tab20"``, ``"Set3"``) are used as they are; others
        (``"viridis"``, ...) are sampled at 16 evenly spaced colours.

    Returns
    -------
    numpy.ndarray of uint8, shape (n, 3)
        RGB colours, 0-255.
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    if not isinstance(colormap, str) or colormap not in colormaps:
        raise StereograinError(f"unknown colormap {colormap!r}; use a Matplotlib name such as 'tab20'")
    cmap = colormaps[colormap]
    if isinstance(cmap, ListedColormap) and cmap.N <= _MAX_LISTED:
        rgba = cmap(np.arange(cmap.N))
    else:
        rgba = cmap(np.linspace(0.0, 1.0, _N_SAMPLED))
    return np.round(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)


# --------------------------------------------------------------------------- meshing


def _boundary_lines(pv: Any, mesh: Any, cell_label: np.ndarray) -> Any:
    """Edges of the triangle mesh shared by two triangles of different grains, as a line PolyData."""
    tri = mesh.faces.reshape(-1, 4)[:, 1:].astype(np.int64)  # all triangles (3, a, b, c)
    a = tri.ravel()
    b = np.roll(tri, -1, axis=1).ravel()
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * np.int64(mesh.n_points) + hi
    lab = np.repeat(cell_label, 3)
    order = np.argsort(key, kind="stable")
    key, lab = key[order], lab[order]
    hit = (key[1:] == key[:-1]) & (lab[1:] != lab[:-1])
    k = key[1:][hit]
    if k.size == 0:
        return None
    n = np.int64(mesh.n_points)
    seg = np.column_stack([np.full(k.size, 2, np.int64), k // n, k % n])
    return pv.PolyData(mesh.points, lines=seg.ravel())


def _grain_surface(pv: Any, lab: np.ndarray, voxel_size_um: float, cut: bool) -> tuple[Any, np.ndarray]:
    """Outer surface of ``lab`` (cut open if asked) and the focal point, both in micrometres (x, y, z)."""
    zz, yy, xx = (np.flatnonzero(lab.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    lo = np.array([zz[0], yy[0], xx[0]])
    hi = np.array([zz[-1], yy[-1], xx[-1]]) + 1
    sub = lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]  # a view: copied below only when cut
    idx = np.nonzero(sub)
    centroid = np.array([i.mean() for i in idx])  # (z, y, x) voxels within sub
    if cut:
        c = np.floor(centroid).astype(int) + 1  # first index strictly beyond the centroid
        sub = sub.copy()
        sub[c[0] :, c[1] :, c[2] :] = 0
    img = pv.ImageData(
        dimensions=sub.shape[::-1],
        spacing=(voxel_size_um,) * 3,
        origin=tuple(float(v) * voxel_size_um for v in lo[::-1]),
    )
    img.point_data["labels"] = np.ascontiguousarray(sub).ravel()  # C order of (Z, Y, X): x fastest, as VTK wants
    mesh = img.contour_labels("external", output_mesh_type="triangles", smoothing=False)
    focal = (centroid[::-1] + lo[::-1]) * voxel_size_um
    return mesh, focal


# --------------------------------------------------------------------------- rendering


def render_particle(
    labels: np.ndarray,
    voxel_size_um: float,
    path: str | os.PathLike | None = None,
    cut: bool = True,
    size: tuple[int, int] = (800, 800),
    colormap: str = "tab20",
    background: Any = "white",
) -> np.ndarray:
    """Render one particle offscreen, each grain in its own colour, optionally cut open.

    The labelled region is meshed with SurfaceNets3D (unsmoothed, voxel-exact) and
    each surface patch gets the colour of its grain, ``palette[(l - 1) % n]``
    of :func:`grain_palette`; grain boundaries are drawn as thin dark lines.
    Lighting is a single white headlight without specular highlights, so a
    pixel's colour is its grain colour scaled by the shading. With ``cut``,
    the octant ``x > cx, y > cy, z > cz`` around the centroid ``(cx, cy, cz)``
    of the particle's voxels is set to 0 before meshing, so the three cut
    faces show the grains inside; the camera looks into that octant from an
    oblique direction (parallel projection). A scale bar in the bottom left
    corner gives the length scale in µm.

    Parameters
    ----------
    labels : (Z, Y, X) array of uint32
        Grain ids: 0 outside the particle, grains 1..k (any integer dtype with
        non-negative ids is accepted).
    voxel_size_um : float
        Edge length of a voxel, micrometres (> 0).
    path : path-like, optional
        Write the image as a PNG here (atomically).
    cut : bool
        Remove the octant beyond the centroid to show the inner grains.
    size : (int, int)
        Image width and height in pixels.
    colormap : str
        Matplotlib colormap for the grains (see :func:`grain_palette`).
    background : colour
        Background colour, any colour pyvista accepts (name, hex, RGB tuple).

    Returns
    -------
    numpy.ndarray of uint8, shape (height, width, 3)
        The RGB image.
    """
    lab = _check_labels(labels)
    voxel = _check_voxel_size(voxel_size_um)
    width, height = _check_size(size)
    out = None if path is None else _check_path(path)
    palette = grain_palette(colormap)
    pv = _pyvista()
    try:
        bg = pv.Color(background)
    except (ValueError, TypeError):
        raise StereograinError(
            f"background must be a colour name, hex string or RGB tuple, got {background!r}"
        ) from None

    mesh, focal = _grain_surface(pv, lab, voxel, bool(cut))
    if mesh.n_cells == 0:  # pragma: no cover - a non-empty volume always has a surface
        raise StereograinError("particle is empty: nothing to render")
    pair = np.asarray(mesh.cell_data["boundary_labels"])
    # one component (the grain) for external boundaries, or [grain, background 0] pairs
    cell_label = (pair.max(axis=1) if pair.ndim == 2 else pair).astype(np.int64)
    mesh.cell_data["rgb"] = palette[(cell_label - 1) % len(palette)]
    lines = _boundary_lines(pv, mesh, cell_label)

    plotter = pv.Plotter(off_screen=True, window_size=(width, height), lighting="none")
    try:
        plotter.set_background(bg)
        # white lights only, so every pixel is its grain colour scaled by the shading: a key light
        # from above lights the three cut faces differently, a weak headlight fills the shadows
        plotter.add_light(pv.Light(position=tuple(_KEY_LIGHT), focal_point=(0.0, 0.0, 0.0), intensity=0.8))
        plotter.add_light(pv.Light(light_type="headlight", intensity=0.35))
        plotter.add_mesh(
            mesh, scalars="rgb", rgb=True, ambient=0.12, diffuse=0.88, specular=0.0, show_scalar_bar=False
        )
        if lines is not None:
            plotter.add_mesh(lines, color=_BOUNDARY_COLOUR, line_width=1.0, lighting=False)
        direction = _VIEW / np.linalg.norm(_VIEW)
        plotter.enable_parallel_projection()  # one length scale over the whole image: the scale bar holds everywhere
        plotter.camera.focal_point = tuple(focal)
        plotter.camera.position = tuple(focal + direction)
        plotter.camera.up = (0.0, 0.0, 1.0)
        plotter.reset_camera()
        plotter.camera.zoom(1.4)
        text = (0.0, 0.0, 0.0) if np.mean(bg.float_rgb) > 0.5 else (1.0, 1.0, 1.0)
        px_per_um = height / (2.0 * plotter.camera.parallel_scale)
        bar_um = _nice_length(0.25 * width / px_per_um)
        bar_px = max(1, round(bar_um * px_per_um))
        margin, thick = max(4, round(0.04 * width)), max(2, round(0.008 * height))
        font = max(6, round(0.028 * height))
        plotter.add_text(
            f"{bar_um:g} µm",
            position=(margin, margin + thick + max(2, thick)),
            font_size=font,
            color=text,
        )
        img = plotter.screenshot(None, return_img=True)
    finally:
        plotter.close()
    img = np.array(np.asarray(img)[:, :, :3], dtype=np.uint8)
    # the scale bar, bottom left, painted in pixels (its label was rendered with the scene)
    img[height - margin - thick : height - margin, margin : margin + bar_px] = np.round(np.array(text) * 255)
    if out is not None:
        _write_png(img, out)
    return img


def _nice_length(x: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is <= ``x`` (``x > 0``)."""
    p = 10.0 ** math.floor(math.log10(x))
    return max(m * p for m in (1.0, 2.0, 5.0) if m * p <= x * (1 + 1e-9))


def _title_band(tile: int) -> int:
    return max(18, round(0.1 * tile))


def contact_sheet(
    volumes: Sequence[np.ndarray],
    voxel_size_um: float | Sequence[float],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    tile: int = 300,
) -> None:
    """Render several particles with :func:`render_particle` and tile them into one PNG.

    Each particle is cut open and fitted to its own tile (sizes do not compare
    between tiles; the ruler in each gives its scale). With ``n`` particles
    and ``c = min(columns, n)`` columns the sheet is ``c * tile`` pixels wide
    and ``ceil(n / c) * (tile + band)`` pixels tall, ``band = max(18,
    round(0.1 * tile))`` being the strip under each tile that holds its title.

    Parameters
    ----------
    volumes : sequence of (Z, Y, X) uint32 arrays
        Label volumes (0 outside, grains 1..k), one per particle.
    voxel_size_um : float or sequence of float
        Voxel edge length in micrometres (> 0): one for all, or one per volume.
    path : path-like
        Output PNG (written atomically).
    titles : sequence of str, optional
        One title per particle, drawn under its tile. Default: ``"particle i"``.
    columns : int
        Tiles per row.
    tile : int
        Edge length of each (square) tile, pixels.
    """
    out = _check_path(path)
    if isinstance(volumes, np.ndarray) or not isinstance(volumes, Sequence) or len(volumes) == 0:
        raise StereograinError("volumes must be a non-empty list of 3D label volumes (wrap a single one in a list)")
    n = len(volumes)
    if isinstance(voxel_size_um, numbers.Real) and not isinstance(voxel_size_um, (bool, np.bool_)):
        sizes = [_check_voxel_size(voxel_size_um)] * n
    else:
        try:
            sizes = list(voxel_size_um)  # type: ignore[arg-type]
        except TypeError:
            raise StereograinError(
                f"voxel_size_um must be a positive number or one per volume, got {voxel_size_um!r}"
            ) from None
        if len(sizes) != n:
            raise StereograinError(f"voxel_size_um has {len(sizes)} values for {n} volumes; give one or one per volume")
        sizes = [_check_voxel_size(v) for v in sizes]
    if titles is None:
        titles = [f"particle {i}" for i in range(n)]
    elif isinstance(titles, str) or len(titles) != n:
        raise StereograinError(f"titles must be a list of {n} strings, one per volume")
    for name, v, lo in (("columns", columns, 1), ("tile", tile, _MIN_SIZE)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or not lo <= v <= _MAX_SIZE:
            raise StereograinError(f"{name} must be an integer in {lo}..{_MAX_SIZE}, got {v!r}")
    checked = []
    for i, vol in enumerate(volumes):
        try:
            checked.append(_check_labels(vol))
        except StereograinError as exc:
            raise StereograinError(f"volume {i}: {exc}") from None

    tile, band = int(tile), _title_band(int(tile))
    nrows, ncols = math.ceil(n / min(int(columns), n)), min(int(columns), n)
    width, height = ncols * tile, nrows * (tile + band)
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    for i, (lab, voxel, title) in enumerate(zip(checked, sizes, titles)):
        img = render_particle(lab, voxel, cut=True, size=(tile, tile))
        r, c = divmod(i, ncols)
        left = c * tile / width
        bottom = 1.0 - (r * (tile + band) + tile) / height
        ax = fig.add_axes((left, bottom, tile / width, tile / height))
        ax.imshow(img, interpolation="none")
        ax.set_axis_off()
        fig.text(
            left + 0.5 * tile / width,
            bottom - 0.5 * band / height,
            str(title),
            ha="center",
            va="center",
            fontsize=0.55 * band * 72 / _DPI,
        )
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_DPI)
