"""Test-only writers of small synthetic EBSD maps (.ang, TSL/EDAX; .ctf, Oxford) that orix reads.

Not part of the package: real maps come from acquisition software. The
headers carry what the readers need (phase with symmetry and lattice, grid,
step, shape) and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NMC811_LATTICE = (2.875, 2.875, 14.248, 90.0, 90.0, 120.0)


def grain_orientations(
    labels: np.ndarray,
    rng: np.random.Generator,
    noise_deg: float = 0.3,
    symmetric_variants: bool = True,
    grain_rotations: np.ndarray | None = None,
) -> np.ndarray:
    """Bunge Euler angles (rad) per pixel: one random orientation per grain plus small noise.

    Parameters
    ----------
    labels : (H, W) int, grains 1..n (0 gets an arbitrary orientation)
    rng : Generator
    noise_deg : float
        Each pixel is turned by a random rotation of this angle (deg) about a random axis.
    symmetric_variants : bool
        Write each pixel as a randomly chosen symmetrically equivalent orientation
        (under the trigonal group 32), so only a symmetry-aware misorientation keeps
        a grain together.
    grain_rotations : (n + 1, 4) quaternions, optional
        Orientation of each label (row 0 unused); default uniformly random.

    Returns
    -------
    (H, W, 3) float64, radians
    """
    from orix.quaternion import Rotation, symmetry

    n = int(labels.max())
    if grain_rotations is None:
        # from ``rng``: orix's Rotation.random is not seeded, so two neighbouring grains could
        # come out less than 5 degrees apart (a few runs in a thousand) and merge, failing the
        # reader tests by chance. Uniform on SO(3): normalised 4D Gaussians
        q = rng.normal(size=(n + 1, 4))
        grain_rotations = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = Rotation(np.asarray(grain_rotations)[labels.ravel()])
    axes = rng.normal(size=(labels.size, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    noise = Rotation.from_axes_angles(axes, np.full(labels.size, np.deg2rad(noise_deg)))
    r = noise * g
    if symmetric_variants:
        ops = symmetry.D3.data  # the 6 rotations of 32 (the proper part of -3m)
        s = Rotation(ops[rng.integers(0, len(ops), labels.size)])
        r = s * r  # crystal symmetry acts from the left in orix
    eul = r.to_euler()
    return eul.reshape(labels.shape + (3,))


def write_ang(
    path: str | Path,
    euler: np.ndarray,
    ci: np.ndarray,
    *,
    step_um: float = 0.05,
    header_step: bool = True,
    symmetry: str = "32",
) -> Path:
    """Write a TSL/EDAX-style ``.ang`` (square grid, 10 columns, Euler angles in rad).

    Parameters
    ----------
    euler : (H, W, 3) float, Bunge Euler angles, rad (NaN allowed)
    ci : (H, W) float, confidence index; -1 marks unindexed pixels
    step_um : float, pixel size in um (XSTEP = YSTEP)
    header_step : bool, False leaves out the XSTEP / YSTEP lines
    symmetry : str, TSL symmetry code (32 = trigonal, Laue -3m)
    """
    path = Path(path)
    H, W = ci.shape
    head = [
        "# TEM_PIXperUM          1.000000",
        "# x-star                0.500000",
        "# y-star                0.500000",
        "# z-star                0.600000",
        "# WorkingDistance       15.000000",
        "#",
        "# Phase 1",
        "# MaterialName  \tNMC811",
        "# Formula     \tLiNiO2",
        "# Info \t\t",
        f"# Symmetry              {symmetry}",
        "# LatticeConstants      " + " ".join(f"{v:.3f}" for v in NMC811_LATTICE),
        "# NumberFamilies        0",
        "#",
        "# GRID: SqrGrid",
    ]
    if header_step:
        head += [f"# XSTEP: {step_um:.6f}", f"# YSTEP: {step_um:.6f}"]
    head += [f"# NCOLS_ODD: {W}", f"# NCOLS_EVEN: {W}", f"# NROWS: {H}", "#", "# OPERATOR: \tstereograin-tests", "#"]
    y, x = np.mgrid[0:H, 0:W]
    eul = euler.reshape(-1, 3)
    c = ci.ravel()
    bad = c < 0
    cols = np.column_stack(
        [
            np.where(bad[:, None], 4 * np.pi, eul),
            x.ravel() * step_um,
            y.ravel() * step_um,
            np.where(bad, 0.0, 120.0),  # IQ
            c,
            np.ones(H * W),  # phase id
            np.zeros(H * W),  # detector signal
            np.where(bad, 180.0, 0.8),  # fit
        ]
    )
    rows = [
        f"{r[0]:9.5f} {r[1]:9.5f} {r[2]:9.5f} {r[3]:12.5f} {r[4]:12.5f} {r[5]:8.1f} {r[6]:6.3f} {int(r[7]):2d} "
        f"{r[8]:6.1f} {r[9]:6.3f}"
        for r in cols
    ]
    path.write_text("\n".join(head + rows) + "\n")
    return path


def write_ctf(
    path: str | Path,
    euler: np.ndarray,
    indexed: np.ndarray,
    *,
    step_um: float = 0.05,
    header_step: bool = True,
) -> Path:
    """Write an Oxford-style ``.ctf`` (Euler angles in degrees; ``Phase 0`` = unindexed).

    Parameters
    ----------
    euler : (H, W, 3) float, Bunge Euler angles, rad
    indexed : (H, W) bool
    step_um : float
    header_step : bool, False leaves out the XStep / YStep lines
    """
    path = Path(path)
    H, W = indexed.shape
    a, b, c, al, be, ga = NMC811_LATTICE
    head = ["Channel Text File", "Prj\tsynthetic", "Author\tstereograin-tests", "JobMode\tGrid"]
    head += [f"XCells\t{W}", f"YCells\t{H}"]
    if header_step:
        head += [f"XStep\t{step_um:.4f}", f"YStep\t{step_um:.4f}"]
    head += [
        "AcqE1\t0.0000",
        "AcqE2\t0.0000",
        "AcqE3\t0.0000",
        "Euler angles refer to Sample Coordinate system (CS0)!\tMag\t5000.0000\tCoverage\t100\tDevice\t0\tKV\t20.0000"
        "\tTiltAngle\t70.0000\tTiltAxis\t0",
        "Phases\t1",
        f"{a:.3f};{b:.3f};{c:.3f}\t{al:.3f};{be:.3f};{ga:.3f}\tNMC811\t7\t166",
        "Phase\tX\tY\tBands\tError\tEuler1\tEuler2\tEuler3\tMAD\tBC\tBS",
    ]
    y, x = np.mgrid[0:H, 0:W]
    ok = indexed.ravel()
    eul = np.where(ok[:, None], np.rad2deg(euler.reshape(-1, 3)), 0.0)
    rows = [
        f"{int(k)}\t{xx:.4f}\t{yy:.4f}\t{8 if k else 0}\t{0 if k else 3}\t{e[0]:.4f}\t{e[1]:.4f}\t{e[2]:.4f}"
        f"\t{0.4 if k else 0.0:.4f}\t{150 if k else 0}\t{160 if k else 0}"
        for k, xx, yy, e in zip(ok.astype(int), x.ravel() * step_um, y.ravel() * step_um, eul)
    ]
    path.write_text("\n".join(head + rows) + "\n")
    return path


def voronoi_labels(shape: tuple[int, int], n: int, rng: np.random.Generator, disc: bool = True) -> np.ndarray:
    """A small grain label image: Voronoi cells of ``n`` random points, optionally inside a centred disc (0 outside)."""
    H, W = shape
    pts = rng.uniform([0, 0], [W, H], size=(n, 2))
    y, x = np.mgrid[0:H, 0:W]
    d = (x[..., None] - pts[:, 0]) ** 2 + (y[..., None] - pts[:, 1]) ** 2
    lab = np.argmin(d, axis=-1) + 1
    if disc:
        r = 0.45 * min(H, W)
        lab[(x - (W - 1) / 2) ** 2 + (y - (H - 1) / 2) ** 2 > r * r] = 0
    return lab.astype(np.int32)
