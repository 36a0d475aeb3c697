"""3D renderings: offscreen images of a tiny grain-resolved ball; bad input gives a one-line error."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from stereograin.errors import StereograinError

render = pytest.importorskip("stereograin.render")
SIZE = (200, 200)


@pytest.fixture(scope="module", autouse=True)
def _offscreen():
    """Skip the module where VTK cannot render offscreen (no pyvista, or no render window)."""
    try:
        import pyvista as pv
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"pyvista/vtk not importable, cannot render: {exc}")
    try:
        plotter = pv.Plotter(off_screen=True, window_size=(32, 32))
        try:
            plotter.add_mesh(pv.Sphere())
            img = plotter.screenshot(None, return_img=True)
        finally:
            plotter.close()
        assert img is not None and img.shape[:2] == (32, 32)
    except Exception as exc:  # pragma: no cover - depends on the machine's OpenGL
        pytest.skip(f"offscreen rendering is not available on this machine: {exc!r}")


def _particle(n=32, radius=12.0, k=6, seed=0):
    """A ball of ``radius`` voxels in an ``n``^3 box, split into ``k`` grains by the nearest of ``k`` seeds."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n]
    c = (n - 1) / 2
    ball = (x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 <= radius**2
    pts = np.argwhere(ball)
    seeds = pts[rng.choice(len(pts), k, replace=False)].astype(float)
    d2 = ((pts[:, None, :] - seeds[None, :, :]) ** 2).sum(axis=2)
    labels = np.zeros((n, n, n), np.uint32)
    labels[ball] = np.argmin(d2, axis=1) + 1
    assert len(np.unique(labels)) == k + 1
    return labels


@pytest.fixture(scope="module")
def particle():
    return _particle()


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(StereograinError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def _palette_hits(img, palette, max_angle_deg=2.0):
    """Pixels per palette colour, up to shading (the white lights only scale a colour).

    Near-black (boundary lines) and near-white (background) pixels are left out.
    """
    px = img.reshape(-1, 3).astype(float)
    px = px[(px.sum(axis=1) > 60) & (px.min(axis=1) < 245)]
    u = px / np.linalg.norm(px, axis=1, keepdims=True)
    p = palette.astype(float)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    cos = u @ p.T  # (n_pixels, n_palette)
    best = np.argmax(cos, axis=1)
    ok = cos[np.arange(len(best)), best] >= np.cos(np.radians(max_angle_deg))
    return np.bincount(best[ok], minlength=len(palette))


def test_render_particle(tmp_path, particle):
    path = tmp_path / "p.png"
    img = render.render_particle(particle, 0.5, path=path, size=SIZE)
    assert img.shape == (SIZE[1], SIZE[0], 3) and img.dtype == np.uint8
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # not a single colour
    palette = render.grain_palette("tab20")
    expected = {(l - 1) % len(palette) for l in range(1, int(particle.max()) + 1)}
    hits = _palette_hits(img, palette)
    seen = set(np.flatnonzero(hits >= 30).tolist())
    # the cut-open ball shows most of its 6 grains in their own colours ...
    assert len(seen & expected) >= 4, (seen, expected)
    # ... and almost every coloured pixel is one of them (the rest: blends at edges and text)
    assert hits[sorted(expected)].sum() >= 0.95 * hits.sum(), hits
    png = matplotlib.image.imread(path)
    assert png.shape[:2] == img.shape[:2]
    assert np.array_equal(np.round(png[:, :, :3] * 255).astype(np.uint8), img)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_cut_shows_the_inside(particle):
    cut = render.render_particle(particle, 0.5, size=SIZE, cut=True)
    whole = render.render_particle(particle, 0.5, size=SIZE, cut=False)
    assert cut.shape == whole.shape
    assert np.mean(np.any(cut != whole, axis=2)) > 0.02  # a visible part of the image changed


def test_contact_sheet(tmp_path, particle):
    vols = [particle, _particle(k=4, seed=1), _particle(n=28, radius=10, k=5, seed=2)]
    path = tmp_path / "sheet.png"
    tile = 120
    render.contact_sheet(vols, [0.5, 0.5, 1.0], path, columns=2, tile=tile)
    png = matplotlib.image.imread(path)
    band = max(18, round(0.1 * tile))
    assert png.shape[:2] == (2 * (tile + band), 2 * tile)  # 3 tiles on a 2 x 2 grid
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_input(tmp_path, particle):
    rp = render.render_particle
    _one_line_error("3D", rp, particle[0], 0.5)
    _one_line_error("3D", rp, particle[None], 0.5)
    _one_line_error("integer", rp, particle.astype(np.float32), 0.5)
    _one_line_error("particle is empty: nothing to render", rp, np.zeros((8, 8, 8), np.uint32), 0.5)
    _one_line_error("positive", rp, particle, 0.0)
    _one_line_error("positive", rp, particle, -1.0)
    _one_line_error("positive", rp, particle, float("nan"))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _one_line_error("is a file", rp, particle, 0.5, path=blocker / "out.png")
    _one_line_error("ending in .png", rp, particle, 0.5, path=tmp_path / "out.jpg")
    _one_line_error("colormap", rp, particle, 0.5, colormap="no-such-map")
    _one_line_error("size", rp, particle, 0.5, size=(0, 10))
    cs = render.contact_sheet
    out = tmp_path / "s.png"
    _one_line_error("non-empty list", cs, [], 0.5, out)
    _one_line_error("non-empty list", cs, particle, 0.5, out)
    _one_line_error("volume 1: particle is empty", cs, [particle, np.zeros_like(particle)], 0.5, out)
    _one_line_error("one per volume", cs, [particle, particle], [0.5], out)
    _one_line_error("voxel size must be positive", cs, [particle, particle], [0.5, 0.0], out)
    _one_line_error("titles", cs, [particle], 0.5, out, titles=["a", "b"])
    _one_line_error("is a file", cs, [particle], 0.5, blocker / "s.png")
    assert not out.exists()
