"""The ``stereograin`` command: a thin layer over the library functions.

Every user-facing error is a :class:`StereograinError`, printed as one line
(``error: ...``) with exit status 2; no traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import __version__
from .errors import StereograinError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="stereograin",
    help="Virtual 3D NMC811 cathode particles with radial grain architectures (Fuchs et al. 2025).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
shell_app = typer.Typer(
    help="Outer shells: CT volume -> labelled particles -> SH shell model -> new shells.",
    no_args_is_help=True,
)
app.add_typer(shell_app, name="shell")


def _friendly(func: F) -> F:
    """Turn expected errors into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StereograinError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except MemoryError:
            typer.echo("error: out of memory; process a smaller volume or fewer shells at once", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; finished files are kept", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stereograin {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """stereograin: virtual NMC811 particles from nano-CT shells and 2D EBSD grains."""


def _load_shell_model(spec: str) -> Any:
    from .shell import ShellModel

    return ShellModel.load(spec)


@shell_app.command("segment")
@_friendly
def shell_segment(
    ct: Annotated[Path, typer.Argument(help="CT grey volume: .tif/.tiff (multi-page), a folder of TIFF slices, .zarr, .h5/.hdf5 or .npy.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Label volume to write (.tif, .npy, .zarr or .h5), uint32, 0 = background.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside a .zarr/.h5 file.")] = None,
    sigma: Annotated[float, typer.Option(help="Gaussian smoothing sigma in voxels (paper: 1.8).")] = 1.8,
    threshold: Annotated[float | None, typer.Option(help="Grey-value threshold; default Otsu's.")] = None,
    min_distance: Annotated[int, typer.Option(help="Minimum distance in voxels between watershed markers (distance-map peaks); raise it if round particles are split.")] = 5,
    min_volume: Annotated[int, typer.Option(help="Components below this many voxels are merged or dropped (paper: 10).")] = 10,
    min_sphericity: Annotated[float, typer.Option(help="Components below this sphericity (0-1) are merged or dropped (paper: 0.5).")] = 0.5,
    keep_border: Annotated[bool, typer.Option("--keep-border", help="Keep particles touching the volume border.")] = False,
) -> None:
    """Segment a CT grey volume into labelled particles (smooth, Otsu, watershed, merge, drop border)."""
    from .io import read_volume, write_labels
    from .segmentation import segment

    volume = read_volume(ct, dataset=dataset)
    labels = segment(
        volume, sigma=sigma, threshold=threshold, min_distance=min_distance, min_volume=min_volume,
        min_sphericity=min_sphericity,
        drop_border=not keep_border, progress=True,
    )
    write_labels(output, labels)
    typer.echo(f"{int(labels.max())} particles in a {'x'.join(map(str, volume.shape))} volume -> {output}")


@shell_app.command("fit")
@_friendly
def shell_fit(
    labels: Annotated[Path, typer.Argument(help="Label volume from `shell segment` (any volume format), or a coefficient table (.csv).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Shell model to write (.json).")],
    report: Annotated[Path | None, typer.Option(help="Folder for the fit report: coefficient table, plots (Fig. 3a, 4, 10a), report.json.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside a .zarr/.h5 file.")] = None,
    voxel_size: Annotated[str, typer.Option(help="CT voxel size, e.g. 128nm or 0.128um.")] = "128nm",
    degree: Annotated[int, typer.Option(help="Maximum spherical-harmonic degree L (paper: 9).")] = 9,
    level: Annotated[int, typer.Option(help="Icosphere level of the radius directions (3: 642, paper).")] = 3,
    mode: Annotated[str, typer.Option(help="Radius function: 'first-exit' (star shape inside the particle) or 'last' (Eq. 1 literally).")] = "first-exit",
    seed: Annotated[int, typer.Option(help="Seed of the random rotations (and of the report's model draws).")] = 0,
    n_model: Annotated[int, typer.Option(help="Shells drawn from the fitted model for the report's comparison.")] = 10_000,
) -> None:
    """Fit the SH shell model (coefficient laws by maximum likelihood) to segmented particles."""
    import numpy as np

    from .coefficients import coefficients_from_labels, read_coefficients
    from .io import read_volume
    from .report import shell_report
    from .shell import ShellModel
    from .units import parse_length

    voxel_nm = parse_length(voxel_size)
    rng = np.random.default_rng(seed)
    star = None
    if labels.suffix.lower() == ".csv":
        table = read_coefficients(labels)
        source = "coefficient table"
    else:
        vol = read_volume(labels, dataset=dataset)
        with _steps("radius functions + SH fit"):
            table, star = coefficients_from_labels(vol, L=degree, level=level, rng=rng, mode=mode)
        source = "label volume"
    line = f"{table.coefficients.shape[0]} particles"
    if star is not None:
        line += f"; the star shape captures {np.mean(star.captured) * 100:.1f} % of particle volume on average"
    typer.echo(line)
    with _steps("maximum-likelihood fit of the coefficient laws"):
        model = ShellModel.fit(
            table.coefficients, voxel_size_nm=voxel_nm,
            provenance={"data": str(labels), "input": source, "seed": seed, "icosphere_level": level,
                        "radius_mode": mode, "L": table.L},
        )
    model.save(output)
    typer.echo(f"a00 ~ {model.a00.family} {_fmt(model.a00.params)}")
    for l, law in enumerate(model.degrees, start=1):
        typer.echo(f"l={l}: {law.family} {_fmt(law.params)}")
    typer.echo(f"model -> {output}")
    if report is not None:
        with _steps("report"):
            shell_report(report, model, table, data_radii=None if star is None else star.radii,
                         level=level, n_model=n_model, rng=rng)
        typer.echo(f"report -> {report}/")


@shell_app.command("sample")
@_friendly
def shell_sample(
    model: Annotated[str, typer.Argument(help="Shell model .json from `shell fit`, or 'paper' for the built-in default (Table 1).")],
    n: Annotated[int, typer.Option("-n", help="Number of shells.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write: d_max, d_min, aspect_ratio, compactness, sphericity, volume, surface_area (CT voxel units), then a_0_0...")] = Path("shells.csv"),
    level: Annotated[int, typer.Option(help="Icosphere level of the descriptors (3: the paper's 642 directions; 4: 2562, finer but 4x slower).")] = 3,
    compactness: Annotated[bool, typer.Option(help="Compute compactness (convex hull per shell; the slowest descriptor).")] = True,
    negative_radius: Annotated[str | None, typer.Option(help="Override the model's policy for negative radii: 'reject' (redraw) or 'clip' (to 0).")] = None,
    min_volume: Annotated[float | None, typer.Option(help="Override the model's minimum volume in voxels (paper: 10).")] = None,
) -> None:
    """Draw new shells from a shell model and write their descriptors and coefficients."""
    import numpy as np

    from . import sphere
    from .descriptors import SHELL_DESCRIPTORS, describe_coefficients
    from .io import write_table
    from .shell import ShellModel

    m: ShellModel = _load_shell_model(model)
    if negative_radius is not None:
        m = dataclasses.replace(m, negative_radius=negative_radius)
    if min_volume is not None:
        m = dataclasses.replace(m, min_volume=min_volume)
    coefs = m.sample(n, np.random.default_rng(seed))
    desc = describe_coefficients(coefs, level=level, compactness=compactness, progress=True)
    cols = list(SHELL_DESCRIPTORS) + sphere.coefficient_names(m.L)
    write_table(output, cols, np.column_stack([desc[k] for k in SHELL_DESCRIPTORS] + [coefs]))
    typer.echo(f"{n} shells (CT voxels of {m.voxel_size_nm:g} nm) -> {output}")


@app.command("generate")
@_friendly
def generate(
    n: Annotated[int, typer.Option("-n", help="Number of particles.")] = 20,
    seed: Annotated[int, typer.Option(help="Master seed; particle i uses its own derived stream.")] = 0,
    output: Annotated[Path, typer.Option("-o", "--output", help="Library folder.")] = Path("library"),
    shell_model: Annotated[str, typer.Option(help="Shell model .json, or 'paper' (built-in, Table 1).")] = "paper",
    preview: Annotated[int, typer.Option(help="Shells rendered in preview.png (0: none).")] = 8,
) -> None:
    """Generate a library of virtual particles (for now: outer shells only, in micrometres)."""
    from .library import generate_library

    m = _load_shell_model(shell_model)
    generate_library(output, n, seed, m, shell_model_name=shell_model, preview=preview)
    typer.echo(f"{n} particle shells -> {output}/shells.csv (grain architectures come with the grain model)")


class _steps:
    """Print a step's name and its duration (for single long calls without a loop to count)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        import time

        self.t = time.perf_counter()
        typer.echo(f"{self.name} ...", err=True)

    def __exit__(self, *exc: Any) -> None:
        import time

        if exc[0] is None:
            typer.echo(f"{self.name}: {time.perf_counter() - self.t:.1f} s", err=True)


def _fmt(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
