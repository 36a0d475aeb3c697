"""The ``stereograin`` command: a thin layer over the library functions.

Every user-facing error is a :class:`StereograinError`, printed as one line
(``error: ...``) with exit status 2; no traceback.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from ._cli_util import _friendly, _length_nm, _steps
from .errors import StereograinError

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
sections_app = typer.Typer(
    help="EBSD sections: grain maps, central-section test, 2D tessellations fitted to each map.",
    no_args_is_help=True,
)
app.add_typer(sections_app, name="sections")

SECTION_SUFFIXES = (".ang", ".ctf", ".tif", ".tiff", ".png")


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
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Segment a CT grey volume into labelled particles (smooth, Otsu, watershed, merge, drop border)."""
    from .io import read_volume, write_labels
    from .segmentation import segment

    volume = read_volume(ct, dataset=dataset)
    labels = segment(
        volume, sigma=sigma, threshold=threshold, min_distance=min_distance, min_volume=min_volume,
        min_sphericity=min_sphericity,
        drop_border=not keep_border, progress=not no_progress,
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
    output: Annotated[Path, typer.Option("-o", "--output", help="Library folder (rerun to resume: finished particles are kept).")] = Path("library"),
    shell_model: Annotated[str, typer.Option(help="Shell model .json, or 'paper' (built-in, Table 1).")] = "paper",
    grain_model: Annotated[str, typer.Option(help="Grain model folder from `grains fit`, or 'default' (built-in).")] = "default",
    voxel_size: Annotated[str, typer.Option(help="Voxel edge of label volumes and meshes, e.g. 0.05um or 50nm.")] = "0.05um",
    fmt: Annotated[str, typer.Option("--format", help="Comma-separated outputs besides labels.tif: zarr, h5, vtk (.vti), vtp, stl, ply (grain surfaces), msh, inp, vtu (hexahedral FEM meshes), tet-msh, tet-inp, tet-vtu (conforming tetrahedral FEM meshes, smoothed grain boundaries); or 'analytic' (parameters only, no voxels).")] = "tif",
    workers: Annotated[int | None, typer.Option(help="Local worker processes (default: all cores, at most one per 1.5 GB of free memory).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running dask.distributed scheduler, e.g. tcp://host:8786 (OUT must be on a shared file system).")] = None,
    preview: Annotated[int, typer.Option(help="Render the first N particles, cut open, into preview.png (0: none).")] = 4,
    com_spacing: Annotated[float, typer.Option(help="Grid spacing (px of 50 nm) for the grains' centres of mass.")] = 2.0,
    layout: Annotated[str, typer.Option(help="'folders': a folder per particle; 'zarr': one chunked Zarr store OUT/library.zarr, 64 particles per block (for very large libraries; analytic or label volumes only).")] = "folders",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Generate a library of virtual particles: shell + grains, label volumes, meshes, tables."""
    from .grains.model import GrainModel
    from .library import LibraryConfig, generate_library

    config = LibraryConfig(seed, fmt, _length_nm(voxel_size) / 1000.0, com_spacing, layout.strip().lower())
    m = _load_shell_model(shell_model)
    g = GrainModel.load(grain_model)
    info = generate_library(output, n, config, m, g, shell_model_name=shell_model, grain_model_name=grain_model,
                            workers=workers, scheduler=scheduler, preview=preview, progress=not no_progress)
    made, kept = info["made"], info["n_particles"] - info["made"]
    rate = f" ({made / info['seconds']:.2f}/s)" if made and info["seconds"] > 0 else ""
    typer.echo(
        f"{made} particles made{rate}" + (f", {kept} already there" if kept else "")
        + f" -> {output}/particles.csv, "
        + (f"{output}/library.zarr" if config.layout == "zarr" else f"{output}/particle_NNNNNN/")
        + f" ({', '.join(config.formats)})"
    )


@app.command("view")
@_friendly
def view(
    particle: Annotated[Path, typer.Argument(help="A particle folder of a library (particle_NNNNNN/) or its particle.json; or a library folder with --index.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")],
    index: Annotated[int | None, typer.Option(help="With a library folder (either layout): the particle's index.")] = None,
    voxel_size: Annotated[str | None, typer.Option(help="Re-voxelise at this size (e.g. 0.1um); default: the folder's labels.tif, else 0.1um.")] = None,
    cut: Annotated[bool, typer.Option("--cut/--no-cut", help="Cut away the octant beyond the particle's centroid (towards the viewer) to show the grains inside.")] = True,
    size: Annotated[int, typer.Option(help="Image width and height in pixels.")] = 800,
) -> None:
    """Render a particle to PNG (offscreen), grains coloured, cut open."""
    from .render import render_particle

    labels, v = _particle_labels(particle, voxel_size, index)
    render_particle(labels, v, output, cut=cut, size=(size, size))
    typer.echo(f"{int(labels.max())} grains, {labels.shape[2]}x{labels.shape[1]}x{labels.shape[0]} voxels of {v * 1000:g} nm -> {output}")


def _particle_labels(path: Path, voxel_size: str | None, index: int | None = None) -> tuple[Any, float]:
    """A particle's label volume (uint32) and voxel size (um): its stored labels, or voxelised from the analytic particle."""
    from .library import MANIFEST, read_library_particle
    from .library_store import STORE, read_labels
    from .particle import Particle

    if index is not None or (path / MANIFEST).is_file():
        if index is None:
            raise StereograinError(f"{path} is a library; give the particle with --index N")
        if (path / STORE).is_dir():
            if voxel_size is None:
                try:
                    labels, _, v = read_labels(path, index)
                    return labels, v
                except StereograinError:  # an analytic library: voxelise below
                    pass
            v = 0.1 if voxel_size is None else _length_nm(voxel_size) / 1000.0
            return read_library_particle(path, index).label_volume(v)[0], v
        from .library import particle_folder

        path = particle_folder(path, index)
    folder = path if path.is_dir() else path.parent
    tif = folder / "labels.tif"
    if voxel_size is None and tif.is_file():
        import tifffile

        from .io import read_volume

        with tifffile.TiffFile(tif) as fh:
            meta = (fh.shaped_metadata or ({},))[0]  # written by export.write_volume
        if "voxel_size_um" in meta:
            return read_volume(tif).astype("uint32"), float(meta["voxel_size_um"])
    v = 0.1 if voxel_size is None else _length_nm(voxel_size) / 1000.0
    return Particle.load(path).label_volume(v)[0], v


def _section_files(paths: list[Path]) -> list[Path]:
    """Expand folders into their EBSD maps / label images (sorted); keep files as given."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in SECTION_SUFFIXES)
            if not found:
                raise StereograinError(f"folder {p} holds no .ang, .ctf, .tif or .png maps")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise StereograinError(f"{p} does not exist; check the path")
    return files


def _read_maps(files: list[Path], step_nm: float | None, ci_threshold: float, misorientation: float, min_grain_px: int):
    from tqdm.auto import tqdm

    from .sections import read_section

    out = []
    # the context manager ends the bar's line before an error message is printed
    with tqdm(files, desc="reading maps", unit="map", disable=len(files) < 2) as bar:
        for f in bar:
            out.append(read_section(f, step_nm, ci_threshold=ci_threshold, misorientation_deg=misorientation,
                                    min_grain_px=min_grain_px))
    return out


# Options shared by `sections inspect` and `sections fit` (how maps are read and judged).
_Maps = Annotated[list[Path], typer.Argument(help="EBSD maps (.ang TSL/EDAX, .ctf Oxford) or label images (.tif/.png, 0 = unindexed), or folders of them.")]
_Step = Annotated[str | None, typer.Option(help="Pixel size, e.g. 50nm: required for label images, overrides the header of .ang/.ctf. Maps are resampled to 50 nm pixels.")]
_CiThreshold = Annotated[float, typer.Option(help=".ang only: pixels with confidence index below this are unindexed.")]
_Misorientation = Annotated[float, typer.Option(help="Grain boundary misorientation in degrees (crystal symmetry from the file).")]
_MinGrainPx = Annotated[int, typer.Option(help="Grains with fewer pixels become unindexed.")]
_Threshold = Annotated[float, typer.Option(help="Significance level of the central-section test.")]


@sections_app.command("inspect")
@_friendly
def sections_inspect(
    maps: _Maps,
    plot: Annotated[Path | None, typer.Option(help="Folder for PNGs: alpha KDE of all maps (Fig. 2d) and each grain map.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write per map: file, grains, unindexed_fraction, central, p_value (and the test's details).")] = None,
    step: _Step = None,
    ci_threshold: _CiThreshold = 0.1,
    misorientation: _Misorientation = 5.0,
    min_grain_px: _MinGrainPx = 5,
    threshold: _Threshold = 0.01,
) -> None:
    """Grains, orientation statistics and the central-or-not verdict of each EBSD section."""
    from .io import write_json
    from .sections import central_section_test, section_descriptors

    files = _section_files(maps)
    step_nm = None if step is None else _length_nm(step)
    grain_maps = _read_maps(files, step_nm, ci_threshold, misorientation, min_grain_px)
    verdicts = [central_section_test(g, threshold=threshold) for g in grain_maps]
    rows = []
    for f, g, v in zip(files, grain_maps, verdicts):
        typer.echo(f"{f.name}: {g.n_grains} grains, {g.unindexed_fraction * 100:.1f} % unindexed; {v.summary()}")
        rows.append({
            "file": str(f), "grains": int(g.n_grains), "unindexed_fraction": float(g.unindexed_fraction),
            "central": bool(v.central), "p_value": float(v.p_value), "step_nm": float(g.step_nm),
            "statistic": _finite_or_none(v.statistic), "q_inner": _finite_or_none(v.q_inner),
            "q_outer": _finite_or_none(v.q_outer), "reason": v.reason,
        })
    n_central = sum(v.central for v in verdicts)
    typer.echo(f"{n_central} of {len(files)} sections pass the central-section test (p < {threshold:g})")
    if json_out is not None:
        write_json(json_out, {"maps": rows, "threshold": threshold})
        typer.echo(f"verdicts -> {json_out}")
    if plot is not None:
        from .plots_sections import plot_alpha_kde, plot_grain_map

        plot.mkdir(parents=True, exist_ok=True)
        desc = [section_descriptors(g) for g in grain_maps]
        plot_alpha_kde(desc, verdicts, plot / "alpha_kde.png", names=[f.name for f in files])
        for f, g, v in zip(files, grain_maps, verdicts):
            plot_grain_map(g, v, plot / f"{f.stem}.png")
        typer.echo(f"plots -> {plot}/")


@sections_app.command("fit")
@_friendly
def sections_fit(
    maps: _Maps,
    output: Annotated[Path, typer.Option("-o", "--output", help="Fitted 2D tessellations (.json, top-level key 'sections').")],
    plot: Annotated[Path | None, typer.Option(help="Folder for one PNG per map: measured vs fitted grains.")] = None,
    all_maps: Annotated[bool, typer.Option("--all", help="Fit every map, not only those passing the central-section test.")] = False,
    step: _Step = None,
    ci_threshold: _CiThreshold = 0.1,
    misorientation: _Misorientation = 5.0,
    min_grain_px: _MinGrainPx = 5,
    threshold: _Threshold = 0.01,
    iterations: Annotated[int, typer.Option(help="Gradient-descent steps per map.")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed of the fit.")] = 0,
) -> None:
    """Fit a restricted 2D GBPD (seeds, D, r in 50 nm pixels about the particle centre) to each central map."""
    from tqdm.auto import tqdm

    from .fit2d import fit_section, plot_fit, write_sections
    from .sections import central_section_test

    files = _section_files(maps)
    step_nm = None if step is None else _length_nm(step)
    grain_maps = _read_maps(files, step_nm, ci_threshold, misorientation, min_grain_px)
    chosen = []
    for f, g in zip(files, grain_maps):
        v = central_section_test(g, threshold=threshold)
        if all_maps or v.central:
            chosen.append((f, g, v.central))
        else:
            typer.echo(f"{f.name}: skipped, not a central section ({v.reason}); --all fits it anyway")
    if not chosen:
        raise StereograinError("no map passes the central-section test; check the maps or use --all")
    fitted = []
    with tqdm(chosen, desc="fitting", unit="map", disable=len(chosen) < 2) as bar:
        for f, g, central in bar:
            fs = fit_section(g.labels, g.centre, step_nm=g.step_nm, iterations=iterations, seed=seed, file=str(f),
                             progress=len(chosen) < 2)
            fs = dataclasses.replace(fs, central=bool(central))
            fitted.append(fs)
            bar.write(f"{f.name}: {fs.n} cells, pixel agreement {fs.pixel_agreement * 100:.1f} %")
            if plot is not None:
                plot.mkdir(parents=True, exist_ok=True)
                plot_fit(g.labels, fs, plot / f"{f.stem}.png")
    write_sections(output, fitted)
    typer.echo(f"{len(fitted)} fitted sections -> {output}")


def _finite_or_none(x: float) -> float | None:
    import math

    return float(x) if math.isfinite(x) else None


def _fmt(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


from .cli_grains import grains_app  # noqa: E402  (registers after the shared options above)
from .cli_validate import validate_command  # noqa: E402

app.add_typer(grains_app, name="grains")
app.command("validate")(validate_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
