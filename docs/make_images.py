"""Regenerate the pictures in the README and the docs from synthetic data.

    python docs/make_images.py        # writes docs/images/*.png (about a minute)

Everything is seeded, so the pictures are reproducible.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from stereograin.coefficients import coefficients_from_labels
from stereograin.io import atomic_path
from stereograin.grains.model import GrainModel
from stereograin.library import LibraryConfig, generate_library
from stereograin.plots import shell_gallery
from stereograin.report import shell_report
from stereograin.segmentation import segment
from stereograin.shell import ShellModel, paper_model
from stereograin.synthetic import synthetic_ct

IMAGES = Path(__file__).parent / "images"


def ct_and_labels(ct: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """A CT slice beside its segmentation (the README's tour)."""
    z = ct.shape[0] // 2
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(ct[z], cmap="gray")
    ax.set_title(f"synthetic CT, slice z = {z}")
    ax.set_axis_off()
    ax = fig.add_subplot(1, 2, 2)
    lab = labels[z].astype(float)
    lab[lab == 0] = np.nan
    ax.imshow(np.mod(lab * 7919, 20), cmap="tab20", interpolation="nearest")
    ax.set_title(f"`shell segment`: {int(labels.max())} particles")
    ax.set_axis_off()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    ct = synthetic_ct(shape=(128, 128, 128), n_particles=25, radius_range=(6, 12), rng=1, gap=1)
    labels = segment(ct.volume)
    ct_and_labels(ct.volume, labels, IMAGES / "ct-segmentation.png")
    table, star = coefficients_from_labels(labels, rng=0)
    model = ShellModel.fit(table.coefficients, provenance={"data": "docs/make_images.py synthetic CT"})
    with tempfile.TemporaryDirectory() as tmp:
        shell_report(tmp, model, table, data_radii=star.radii, n_model=5000, rng=0)
        (IMAGES / "fit-descriptors.png").write_bytes((Path(tmp) / "descriptors.png").read_bytes())
        (IMAGES / "coefficient-laws.png").write_bytes((Path(tmp) / "coefficient_laws.png").read_bytes())
        shells = paper_model()
        coefs = shells.sample(8, np.random.default_rng(1), workers=1)
        # SH expansions are linear: scaling the coefficients renders the shells in micrometres
        shell_gallery(coefs * shells.voxel_size_nm / 1000.0, IMAGES / "shells.png", unit="µm")
        config = LibraryConfig(seed=1, formats=("analytic",))
        generate_library(Path(tmp) / "lib", 4, config, shells, GrainModel.load("default"), workers=1, preview=4, progress=False)
        (IMAGES / "particles.png").write_bytes((Path(tmp) / "lib" / "preview.png").read_bytes())
    print(f"images -> {IMAGES}")


if __name__ == "__main__":
    main()
