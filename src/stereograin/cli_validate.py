"""``stereograin validate``: data against the shell and grain models, one HTML + JSON report.

Registered on the main app by ``app.command("validate")(validate_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._cli_util import _friendly, _length_nm

__all__ = ["validate_command"]


@_friendly
def validate_command(
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder: index.html (self-contained), report.json (every number), the figures.")],
    ct: Annotated[Path | None, typer.Option(help="CT volume for the shells' data: grey values (segmented here) or a label volume from `shell segment` (.tif, .zarr, .h5, .npy, folder of TIFF slices).")] = None,
    sections: Annotated[Path | None, typer.Option(help="Grain-section data: fitted sections (.json from `sections fit`), or EBSD maps / label images (.ang, .ctf, .tif, .png) or a folder of them (fitted here).")] = None,
    library: Annotated[Path | None, typer.Option(help="Particle library from `stereograin generate`: its shells are the data, its grains add 3D statistics.")] = None,
    shell_model: Annotated[str | None, typer.Option(help="Shell model .json from `shell fit`, or 'paper' (Table 1). Default with --library: the library's own.")] = None,
    grain_model: Annotated[str | None, typer.Option(help="Grain model folder from `grains fit`, or 'default'. Default with --library: the library's own.")] = None,
    voxel_size: Annotated[str | None, typer.Option(help="CT voxel size, e.g. 128nm or 0.128um (default: the shell model's); the data are rescaled to the model's voxels.")] = None,
    ct_kind: Annotated[str, typer.Option(help="How to read --ct: 'auto' (32/64-bit integers are labels), 'grey' (segment it) or 'labels'.")] = "auto",
    step: Annotated[str | None, typer.Option(help="Pixel size of section maps, e.g. 50nm: required for label images, overrides .ang/.ctf headers. Maps are resampled to the grain model's pixels.")] = None,
    fit_iterations: Annotated[int, typer.Option(help="Gradient steps per section map fitted here.")] = 400,
    n_model: Annotated[int, typer.Option(help="Shells drawn from the shell model for the comparison.")] = 2000,
    per_section: Annotated[int, typer.Option(help="Model sections drawn per data section (Fig. 10b).")] = 2,
    grain_particles: Annotated[int, typer.Option(help="Library particles whose 3D grains are measured (the first ones).")] = 10,
    max_particles: Annotated[int, typer.Option(help="Library particles read for the shells at most, evenly spaced (a large library would take hours to read whole).")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed of every model draw.")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No stage lines or progress bars.")] = False,
) -> None:
    """Compare data with the models: shell descriptors (Fig. 10a), section descriptors (Fig. 10b), coefficient laws (Fig. 4), distance correlations (Fig. 3a), orientation vs cut height (Fig. 11), 3D grains."""
    from .validate import validate

    report = validate(
        output, ct=ct, sections=sections, library=library, shell_model=shell_model, grain_model=grain_model,
        ct_voxel_nm=None if voxel_size is None else _length_nm(voxel_size), ct_kind=ct_kind,
        section_step_nm=None if step is None else _length_nm(step), fit_iterations=fit_iterations,
        n_model=n_model, per_section=per_section, grain_particles=grain_particles, max_particles=max_particles, seed=seed,
        progress=not no_progress,
    )
    for part, title in (("shell", "shells"), ("grains", "grain sections"), ("grains_3d", "3D grains (library vs model)")):
        rep = report.get(part)
        table = (rep or {}).get("comparison" if part == "grains_3d" else "descriptors")
        if not table:
            continue
        typer.echo(f"{title}:")
        for name, d in table.items():
            typer.echo(f"  {name:>14}: KS {d['ks']:.3f}  W {d['wasserstein']:.4g} {d['unit']}  "
                       f"(data n={d['n_data']}, model n={d['n_model']})")
    typer.echo(f"report -> {output}/index.html, {output}/report.json")
