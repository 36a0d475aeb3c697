"""``stereograin validate``: data against models in one report (Fig. 3a, 4, 10a, 10b, 11, 3D grains).

:func:`validate` compares whatever the inputs allow and writes one folder:

Shells (needs a shell model and a "data" side)
    The data side is a CT volume (grey values are segmented with
    :func:`stereograin.segmentation.segment`, a label volume is used as it is;
    then :func:`stereograin.coefficients.coefficients_from_labels`) or a
    particle library (the shell coefficients stored in each
    ``particle_NNNNNN/particle.json``). The model side is ``n_model`` shells
    drawn from the shell model. Compared: the shell descriptors (Fig. 10a,
    KS statistic and Wasserstein distance per descriptor), the data's SH
    coefficients per degree against the model's laws (Fig. 4, one-sample KS
    per degree) and the distance correlation of ``a_00`` with the other
    coefficients (Fig. 3a; the model's value at the data's sample size is the
    level that independent coefficients reach by chance).

Grain sections (needs a grain model and sections)
    Fitted sections (``sections fit`` JSON) or EBSD maps / label images
    (read at the model's pixel size, central ones fitted here) are the ground
    truth of :func:`stereograin.grains.report.grain_report`: area, eta,
    alpha and chord lengths of model sections against the data (Fig. 10b),
    and alpha against the cut height (Fig. 11).

3D grains (needs a grain model or a library)
    Grain volume, 3D elongation and angle of the long axis to the radius
    (:func:`stereograin.grains.validation.grain_statistics_3d`) of the
    grains wholly inside one ball drawn from the grain model, and, for a
    library, of the grains of its particles (:func:`particle_grain_statistics`).

A library must have been made with the given models: each is compared with
the SHA-256 its manifest records (a model that differs only in the
stereograin version that wrote it is accepted); without ``shell_model`` /
``grain_model`` the library's own models are used.

Files in ``out``: ``report.json`` (every number; non-finite values as
``null``), ``index.html`` (self-contained: the figures are embedded),
``shell/`` (``descriptors.png``, ``coefficient_laws.png``,
``distance_correlation.png``, ``coefficients.csv``: the data's coefficients
in the model's voxels), ``grains/`` (the files
of :func:`~stereograin.grains.report.grain_report`) and ``grains3d.png``.
Every file is written atomically.

Units: shells in the shell model's CT voxels (data of another voxel size are
rescaled to it), grains in the grain model's EBSD pixels (px).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from . import __version__, sphere
from .errors import StereograinError
from .fit2d import FittedSection
from .grains.model import GrainModel
from .io import json_ready, read_json, write_json
from .library import model_digest
from .shell import ShellModel

__all__ = [
    "FIG10A_DESCRIPTORS",
    "SHELL_UNITS",
    "validate",
    "load_sections",
    "read_library_particles",
    "particle_grain_statistics",
    "check_library_models",
]

#: The four shell descriptors of Fig. 10a, in panel order.
FIG10A_DESCRIPTORS = ("d_max", "compactness", "aspect_ratio", "sphericity")

#: Units of the shell descriptors (the shell model's CT voxels).
SHELL_UNITS = {
    "d_max": "voxel", "d_min": "voxel", "aspect_ratio": "1", "compactness": "1", "sphericity": "1",
    "volume": "voxel^3", "surface_area": "voxel^2",
}

MAP_SUFFIXES = (".ang", ".ctf", ".tif", ".tiff", ".png")
#: Largest ball radius (px) of the model's 3D grain statistics: about 40 bytes per voxel of (2 R)^3.
MAX_BALL_RADIUS_PX = 80.0
#: Ball radius (px, 3.2 um at 50 nm) when neither sections nor a library give a particle size.
DEFAULT_BALL_RADIUS_PX = 64.0
_LABEL_DTYPES = ("int32", "uint32", "int64", "uint64")


# --------------------------------------------------------------------------- small helpers


def _say(progress: bool, text: str) -> None:
    """A stage line on stderr (stdout stays for results)."""
    if progress:
        print(text, file=sys.stderr, flush=True)


def _median(x: np.ndarray) -> float | None:
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def _existing(path: str | Path | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise StereograinError(f"{what} {p} does not exist; check the path")
    return p


def _distances(raw: Mapping[str, Mapping[str, Any]], units: Mapping[str, str], a_is_data: bool = True) -> dict[str, dict[str, Any]]:
    """:func:`compare_samples` output with the sample sizes named ``n_data`` / ``n_model`` and a unit."""
    out = {}
    for name, d in raw.items():
        n_data, n_model = (d["n_a"], d["n_b"]) if a_is_data else (d["n_b"], d["n_a"])
        out[name] = {
            "ks": d["ks"], "ks_pvalue": d["ks_pvalue"], "wasserstein": d["wasserstein"],
            "n_data": int(n_data), "n_model": int(n_model), "unit": units.get(name, ""),
        }
    return out


# --------------------------------------------------------------------------- models and libraries


def _load_shell_model(spec: ShellModel | str | Path) -> tuple[ShellModel, str]:
    if isinstance(spec, ShellModel):
        return spec, "shell model (given object)"
    return ShellModel.load(spec), str(spec)


def _load_grain_model(spec: GrainModel | str | Path) -> tuple[GrainModel, str]:
    if isinstance(spec, GrainModel):
        return spec, "grain model (given object)"
    return GrainModel.load(spec), str(spec)


def _same_model(kind: str, a: Any, b: Any) -> bool:
    """Whether two models are equal in everything but the stereograin version that wrote them."""
    if kind == "shell_model":
        da, db = a.to_dict(), b.to_dict()
        da.pop("stereograin_version", None)
        db.pop("stereograin_version", None)
        return json.dumps(da, sort_keys=True, default=str) == json.dumps(db, sort_keys=True, default=str)
    if (a.mu, a.px_nm, a.net_config()) != (b.mu, b.px_nm, b.net_config()):
        return False
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return sa.keys() == sb.keys() and all(bool((sa[k] == sb[k]).all()) for k in sa)


def _open_library(path: Path) -> dict[str, Any]:
    from .library import LIBRARY_FORMAT, MANIFEST

    if not path.is_dir():
        raise StereograinError(f"library {path} is not a folder; give a folder made by `stereograin generate`")
    if not (path / MANIFEST).is_file():
        raise StereograinError(f"{path} has no {MANIFEST}; it is not a library made by `stereograin generate`")
    manifest = read_json(path / MANIFEST, "library manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != LIBRARY_FORMAT:
        raise StereograinError(f"{path / MANIFEST} is not a stereograin library manifest")
    return manifest


def check_library_models(
    library: str | Path,
    manifest: Mapping[str, Any],
    shell_model: tuple[ShellModel, str] | None,
    grain_model: tuple[GrainModel, str] | None,
) -> None:
    """Refuse models other than those the library was made with (one-line error naming both SHA-256).

    Parameters
    ----------
    library : path
        The library folder.
    manifest : mapping
        Its ``manifest.json``.
    shell_model, grain_model : (model, name) or None
        The models given for the comparison; ``None`` is not checked.
    """
    lib = Path(library)
    recorded = manifest.get("model_sha256") or {}
    for kind, given, installed in (
        ("shell_model", shell_model, lib / "models" / "shell_model.json"),
        ("grain_model", grain_model, lib / "models" / "grain_model"),
    ):
        if given is None:
            continue
        model, name = given
        digest = model_digest(kind, model)
        expected = recorded.get(kind)
        if digest == expected:
            continue
        if installed.exists():
            loader = ShellModel.load if kind == "shell_model" else GrainModel.load
            if _same_model(kind, model, loader(installed)):
                continue  # written by another stereograin version, same parameters
        what = kind.replace("_", " ")
        raise StereograinError(
            f"library {lib} was made with another {what} (sha256 {str(expected)[:12]} in its manifest, "
            f"{digest[:12]} for {name}); give the {what} it was made with ({installed}) or leave the option out"
        )


def read_library_particles(library: str | Path, progress: bool = True, limit: int | None = None) -> list[Any]:
    """The finished particles of a library, in index order (all, or ``limit`` spread evenly).

    Parameters
    ----------
    library : path
        Library folder, either layout (:mod:`stereograin.library`).
    progress : bool
        Show a progress bar.
    limit : int, optional
        Read at most this many: evenly spaced over the finished ones (a
        particle file is about 1 MB, so a 100,000-particle library would
        take hours to read whole).

    Returns
    -------
    list of stereograin.particle.Particle
    """
    from tqdm.auto import tqdm

    from .library import finished_particles, read_library_particle

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 2):
        raise StereograinError(f"the number of library particles read must be an integer >= 2, got {limit!r}")
    index = finished_particles(library)
    if not index:
        raise StereograinError(f"library {library} holds no finished particle; run `stereograin generate` first")
    if limit is not None and len(index) > limit:
        index = [index[i] for i in np.unique(np.linspace(0, len(index) - 1, int(limit)).round().astype(int))]
    with tqdm(index, desc="reading particles", unit="particle", disable=not progress or len(index) < 2) as bar:
        return [read_library_particle(library, i) for i in bar]


def particle_grain_statistics(particle: Any, spacing_px: float = 1.0, min_voxels: int = 8) -> dict[str, np.ndarray]:
    """Volume, elongation and radial alignment of a particle's grains, like :func:`grain_statistics_3d`.

    A particle's grains are whole cells (it keeps a cell by its centre of
    mass, see :mod:`stereograin.particle`), so none is cut: every grain of at
    least ``min_voxels`` voxels is kept. The radial direction is taken from
    the particle centre (the shell's centre).

    Parameters
    ----------
    particle : stereograin.particle.Particle
    spacing_px : float
        Voxel size of the labelling grid, px of the grain model (> 0).
    min_voxels : int
        Smallest grain used, voxels.

    Returns
    -------
    dict of (n,) arrays
        ``volume`` (px^3), ``elongation`` (``sqrt(l1 / l3)``), ``radial_angle``
        (deg in [0, 90]), ``distance`` (px, centroid to the particle centre),
        one entry per kept grain, as :func:`grain_statistics_3d` gives them.
    """
    from .grains.validation import grain_shapes
    from .tessellation import cell_geometry

    sp = float(spacing_px)
    if not (math.isfinite(sp) and sp > 0):
        raise StereograinError(f"spacing_px must be a positive number of px, got {spacing_px!r}")
    labels, origin_um = particle.label_volume(sp * particle.px_um)
    geo = cell_geometry(labels, n=particle.n_grains, spacing=sp)
    keep = np.flatnonzero(np.rint(geo.size / sp**3) >= int(min_voxels))
    return grain_shapes(geo, keep, np.asarray(origin_um) / particle.px_um)


# --------------------------------------------------------------------------- sections


def _map_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(q for q in path.iterdir() if q.suffix.lower() in MAP_SUFFIXES)
        if not files:
            jsons = sorted(q.name for q in path.glob("*.json"))
            hint = f"; to use fitted sections, give the file itself ({jsons[0]})" if jsons else ""
            raise StereograinError(f"sections folder {path} holds no .ang, .ctf, .tif or .png maps{hint}")
        return files
    if path.suffix.lower() not in MAP_SUFFIXES:
        raise StereograinError(
            f"sections {path} is neither a fitted sections .json (from `stereograin sections fit`) nor a map "
            f"({', '.join(MAP_SUFFIXES)}); give one of them or a folder of maps"
        )
    return [path]


def load_sections(
    path: str | Path,
    px_nm: float = 50.0,
    step_nm: float | None = None,
    iterations: int = 400,
    seed: int = 0,
    progress: bool = True,
) -> list[FittedSection]:
    """Fitted sections from a ``sections fit`` JSON, or fitted here from EBSD maps / label images.

    Maps are read at the grain model's pixel size ``px_nm`` (resampled as
    ``sections fit`` does), tested with the central-section test, and the
    central ones fitted with :func:`stereograin.fit2d.fit_section`, as
    ``stereograin sections fit`` does with its defaults.

    Parameters
    ----------
    path : path
        ``.json`` file of fitted sections, a map file, or a folder of maps.
    px_nm : float
        The grain model's pixel size, nm.
    step_nm : float, optional
        Pixel size of the maps, nm: required for label images, overrides the
        headers of ``.ang`` / ``.ctf`` files.
    iterations : int
        Gradient steps per fitted map.
    seed : int
        Seed of the fits.
    progress : bool
        Show a progress bar over maps.

    Returns
    -------
    list of FittedSection
        A JSON file's sections as stored (their pixel size is checked by the
        caller); fitted maps in ``px_nm`` pixels, marked central.
    """
    from tqdm.auto import tqdm

    from .fit2d import fit_section, read_sections
    from .sections import central_section_test, read_section

    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return read_sections(p)
    files = _map_files(p)
    fitted = []
    skipped = []
    with tqdm(files, desc="fitting maps", unit="map", disable=not progress) as bar:
        for f in bar:
            g = read_section(f, step_nm, target_step_nm=px_nm)
            verdict = central_section_test(g)
            if not verdict.central:
                skipped.append(f.name)
                continue
            fs = fit_section(g.labels, g.centre, step_nm=g.step_nm, iterations=iterations, seed=seed, file=str(f))
            fitted.append(dataclasses.replace(fs, central=True))
    if not fitted:
        raise StereograinError(
            f"none of the {len(files)} maps passes the central-section test ({', '.join(skipped[:3])}"
            f"{', ...' if len(skipped) > 3 else ''}); give central maps or fitted sections from `sections fit --all`"
        )
    return fitted


# --------------------------------------------------------------------------- shell part


def _ct_coefficients(
    path: Path, model: ShellModel, voxel_nm: float | None, kind: str, level: int,
    rng: np.random.Generator, progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """SH coefficients and raw radius functions of the CT's particles, in the model's voxels."""
    from .coefficients import coefficients_from_labels
    from .io import read_volume
    from .segmentation import segment

    if kind not in ("auto", "grey", "labels"):
        raise StereograinError(f"ct_kind must be 'auto', 'grey' or 'labels', got {kind!r}")
    volume = read_volume(path)
    if kind == "auto":
        kind = "labels" if volume.dtype.name in _LABEL_DTYPES else "grey"
    if kind == "grey":
        _say(progress, f"segmenting the {'x'.join(map(str, volume.shape))} CT volume ...")
        labels = segment(volume, progress=progress)
    else:
        if volume.dtype.kind not in "iu" or int(volume.min()) < 0:
            raise StereograinError(f"CT {path} is not a label volume (non-negative integers); use ct_kind='grey'")
        labels = volume
    if int(labels.max()) == 0:
        raise StereograinError(f"CT {path} holds no particle after segmentation; check the volume or its contrast")
    _say(progress, "radius functions + SH fit of the CT particles ...")
    table, star = coefficients_from_labels(labels, L=model.L, level=level, rng=rng)
    n = table.coefficients.shape[0]
    if n < 2:
        raise StereograinError(f"CT {path} holds {n} particle; a distribution comparison needs at least 2")
    ct_nm = model.voxel_size_nm if voxel_nm is None else float(voxel_nm)
    if not (math.isfinite(ct_nm) and ct_nm > 0):
        raise StereograinError(f"CT voxel size must be a positive number of nm, got {voxel_nm!r}")
    scale = ct_nm / model.voxel_size_nm  # SH coefficients and radii are lengths: exact rescaling
    info = {
        "source": "CT", "path": str(path), "input": kind, "voxel_size_nm": ct_nm, "rescaled_by": scale,
        "n_particles": n, "star_shape_captured_fraction_mean": float(np.mean(table.captured)),
    }
    return table.coefficients * scale, star.radii * scale, info


def _library_coefficients(particles: Sequence[Any], model: ShellModel, library: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Shell coefficients of a library's particles, in the model's voxels."""
    k = (model.L + 1) ** 2
    rows = []
    for p in particles:
        c = np.asarray(p.coefficients, dtype=np.float64)
        if c.size != k:
            raise StereograinError(
                f"library {library} has shells of degree L = {sphere.degree_of(c.size)} but the shell model has "
                f"L = {model.L}; give the model the library was made with"
            )
        rows.append(c * (p.ct_voxel_nm / model.voxel_size_nm))
    if len(rows) < 2:
        raise StereograinError(f"library {library} holds {len(rows)} particle; a distribution comparison needs at least 2")
    return np.array(rows), {"source": "library", "path": str(library), "n_particles": len(rows)}


def _coefficient_fit(coefs: np.ndarray, model: ShellModel) -> dict[str, dict[str, Any]]:
    """One-sample KS of the data's coefficients against the model's law, per degree (``a00`` and ``l = 1..L``)."""
    deg = sphere.degrees(model.L)
    out = {}
    for l, law in enumerate([model.a00, *model.degrees]):
        x = coefs[:, deg == l].ravel()
        ks = scipy.stats.kstest(x, law.frozen().cdf)
        out["a00" if l == 0 else f"l{l}"] = {
            "degree": l, "family": law.family, "params": dict(law.params),
            "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue), "n": int(x.size),
        }
    return out


def _shell_part(
    folder: Path, model: ShellModel, model_name: str, coefs: np.ndarray, radii: np.ndarray | None,
    data_label: str, level: int, n_model: int, rng: np.random.Generator, progress: bool,
) -> dict[str, Any]:
    """Fig. 10a, 4 and 3a of data coefficients against a shell model; figures into ``folder``."""
    from . import plots
    from .descriptors import compare_samples, describe_coefficients, describe_radii
    from .io import write_table
    from .shell import distance_correlations

    folder.mkdir(parents=True, exist_ok=True)
    n = coefs.shape[0]
    _say(progress, f"shell descriptors: {n} data shells, {n_model} model shells ...")
    data = describe_radii(radii, level=level) if radii is not None else describe_coefficients(coefs, level=level)
    sim = describe_coefficients(model.sample(n_model, rng, level=level), level=level, progress=progress)
    raw = compare_samples(data, sim)
    plots.descriptor_histograms(
        data, sim, folder / "descriptors.png", names=FIG10A_DESCRIPTORS, distances=raw,
        labels=(data_label, "model"), units=SHELL_UNITS,
    )
    fits = {0: model.a00.to_dict()} | {l: law.to_dict() for l, law in enumerate(model.degrees, start=1)}
    plots.coefficient_laws(coefs, fits, folder / "coefficient_laws.png", unit="voxel")
    _say(progress, "distance correlations ...")
    dc_data = distance_correlations(coefs)
    # the same statistic for independent coefficients at the data's sample size: its chance level
    dc_model = distance_correlations(model.sample(n, rng, level=level))
    plots.distance_correlations(np.asarray(dc_data["per_degree_mean"]), folder / "distance_correlation.png")
    write_table(folder / "coefficients.csv", sphere.coefficient_names(model.L), coefs)
    return {
        "model": model_name,
        "voxel_size_nm": float(model.voxel_size_nm),
        "L": int(model.L),
        "icosphere_level": int(level),
        "n_data": int(n),
        "n_model": int(n_model),
        "data_label": data_label,
        "descriptors": _distances(raw, SHELL_UNITS),
        "medians": {
            "data": {k: _median(v) for k, v in data.items()},
            "model": {k: _median(v) for k, v in sim.items()},
        },
        "coefficient_fit": _coefficient_fit(coefs, model),
        "distance_correlation": {
            "degrees": list(range(1, model.L + 1)),
            "data_mean": dc_data["per_degree_mean"], "data_max": dc_data["per_degree_max"],
            "model_mean": dc_model["per_degree_mean"], "model_max": dc_model["per_degree_max"],
        },
        "figures": {
            "fig10a": "shell/descriptors.png", "fig4": "shell/coefficient_laws.png",
            "fig3a": "shell/distance_correlation.png",
        },
    }


# --------------------------------------------------------------------------- grain parts


def _grain_part(
    out: Path, model: GrainModel, model_name: str, sections: Sequence[FittedSection], per_section: int,
    seed: int, progress: bool,
) -> dict[str, Any]:
    """Fig. 10b and 11 by :func:`grain_report` into ``out/grains``, in this report's schema."""
    from .grains.report import grain_report, truth_maps
    from .grains.training import usable_sections
    from .grains.validation import SECTION_UNITS, aligned_fraction, section_statistics

    _say(progress, f"grain sections: {len(sections)} data sections against the grain model ...")
    rep = grain_report(model, sections, out / "grains", per_section=per_section, seed=seed, progress=progress)
    truth_alpha = section_statistics(truth_maps(usable_sections(sections, model.px_nm)))["alpha"]
    descriptors = {
        name: {
            "ks": d["ks"], "ks_pvalue": d["ks_pvalue"], "wasserstein": d["wasserstein"],
            "n_data": d["n_truth"], "n_model": d["n_generated"], "unit": SECTION_UNITS.get(name, d.get("unit", "")),
        }
        for name, d in rep["comparison"].items()
    }
    return {
        "model": model_name,
        "px_nm": float(model.px_nm),
        "n_sections": rep["sections"]["count"],
        "particle_radius_px": rep["sections"]["particle_radius_px"],
        "n_model_sections": rep["generated_sections"],
        "descriptors": descriptors,
        "medians": rep["medians"],
        "alpha_by_height": {**rep["alpha_by_height"], "data_aligned_fraction": aligned_fraction(truth_alpha)},
        "figures": {"fig10b": "grains/sections.png", "fig11": "grains/alpha_height.png"},
    }


def _grains_3d_part(
    out: Path, model: GrainModel | None, particles: Sequence[Any] | None, radius_px: float,
    n_particles: int, rng: np.random.Generator, progress: bool,
) -> dict[str, Any]:
    """3D grain statistics of a model ball and/or library particles, ``grains3d.png``."""
    from tqdm.auto import tqdm

    from .grains.validation import GRAIN_DESCRIPTORS, GRAIN_UNITS, compare_grains_3d, grain_statistics_3d
    from .plots_grains import plot_grain_statistics_3d

    result: dict[str, Any] = {"units": dict(GRAIN_UNITS), "sources": {}}
    stats: dict[str, dict[str, np.ndarray]] = {}
    if model is not None:
        R = float(min(radius_px, MAX_BALL_RADIUS_PX))
        _say(progress, f"3D grains of a model ball of radius {R:.1f} px ...")
        s = grain_statistics_3d(model.sample(R, rng).gbpd(), R)
        stats["model"] = s
        result["sources"]["model"] = {"what": "grains wholly inside one ball drawn from the grain model",
                                      "radius_px": R}
    if particles:
        chosen = list(particles)[:n_particles]
        parts = [particle_grain_statistics(p) for p in tqdm(chosen, desc="3D grains of particles", unit="particle",
                                                             disable=not progress or len(chosen) < 2)]
        stats["library"] = {k: np.concatenate([p[k] for p in parts]) for k in GRAIN_DESCRIPTORS}
        result["sources"]["library"] = {"what": "grains of the library's particles", "particles": len(chosen)}
    for name, s in stats.items():
        result["sources"][name]["n_grains"] = int(len(s["volume"]))
        result["sources"][name]["median"] = {k: _median(s[k]) for k in GRAIN_DESCRIPTORS}
    if "library" in stats and "model" in stats:
        comp = compare_grains_3d(stats["library"], stats["model"])
        result["comparison"] = _distances(comp, GRAIN_UNITS)
        plot_grain_statistics_3d(stats["library"], stats["model"], ("library particles", "model ball"),
                                 out / "grains3d.png", comparison=comp)
    else:
        (name, s), = stats.items()
        plot_grain_statistics_3d(s, None, (f"{name}", ""), out / "grains3d.png")
    result["figures"] = {"grains3d": "grains3d.png"}
    return result


# --------------------------------------------------------------------------- the report


def _check_request(ct: Any, sections: Any, library: Any, shell_model: Any, grain_model: Any) -> None:
    if ct is None and sections is None and library is None:
        raise StereograinError(
            "nothing to validate: give a CT volume (--ct) or a library (--library) with a shell model, "
            "and/or sections (--sections) with a grain model"
        )
    if ct is not None and library is not None:
        raise StereograinError("give --ct or --library as the shells' data, not both (run validate twice)")
    if ct is not None and shell_model is None:
        raise StereograinError("--ct needs --shell-model (a .json from `stereograin shell fit`, or 'paper') to compare with")
    if sections is not None and grain_model is None and library is None:
        raise StereograinError(
            "--sections needs --grain-model (a folder from `stereograin grains fit`, or 'default') to compare with"
        )


def _check_output(out: str | Path) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise StereograinError(f"report output {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StereograinError(f"cannot create report folder {folder} ({exc.strerror or exc})") from None
    return folder


def validate(
    out: str | Path,
    *,
    ct: str | Path | None = None,
    sections: str | Path | None = None,
    library: str | Path | None = None,
    shell_model: ShellModel | str | Path | None = None,
    grain_model: GrainModel | str | Path | None = None,
    ct_voxel_nm: float | None = None,
    ct_kind: str = "auto",
    section_step_nm: float | None = None,
    fit_iterations: int = 400,
    n_model: int = 2000,
    per_section: int = 2,
    level: int = 3,
    grain_particles: int = 10,
    max_particles: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare data with the shell and grain models and write ``report.json`` and ``index.html``.

    See the module notes for what is compared with what.

    Parameters
    ----------
    out : path
        Report folder (created; must not be a file).
    ct : path, optional
        CT volume (any format of :func:`stereograin.io.read_volume`): grey
        values, or a label volume from ``shell segment``.
    sections : path, optional
        Fitted sections (``.json`` from ``sections fit``), an EBSD map / label
        image, or a folder of them.
    library : path, optional
        Particle library from ``stereograin generate``.
    shell_model : ShellModel, path or "paper", optional
        Default with a library: the library's own.
    grain_model : GrainModel, folder or "default", optional
        Default with a library: the library's own.
    ct_voxel_nm : float, optional
        CT voxel size, nm (default: the shell model's); the data are rescaled
        to the model's voxels.
    ct_kind : {"auto", "grey", "labels"}
        How to read ``ct``; "auto": 32/64-bit integers are labels, anything
        else grey values.
    section_step_nm : float, optional
        Pixel size of section maps, nm (required for label images).
    fit_iterations : int
        Gradient steps per section map fitted here.
    n_model : int
        Shells drawn from the shell model (>= 2).
    per_section : int
        Model sections per data section (Fig. 10b).
    level : int
        Icosphere level of the shell descriptors (3: 642 directions).
    grain_particles : int
        Library particles whose 3D grains are measured (the first ones).
    max_particles : int
        Library particles read for the shell comparison at most, evenly
        spaced over the library (>= 2).
    seed : int
        Seed of every random draw.
    progress : bool
        Stage lines and progress bars on stderr.

    Returns
    -------
    dict
        The content of ``report.json``: ``inputs``, ``shell`` (or ``None``),
        ``grains`` (or ``None``), ``grains_3d`` (or ``None``), ``files``.
    """
    from .html_report import write_html

    _check_request(ct, sections, library, shell_model, grain_model)
    if isinstance(n_model, bool) or not isinstance(n_model, (int, np.integer)) or not 2 <= n_model <= 10_000_000:
        raise StereograinError(f"n_model must be an integer in [2, 1e7], got {n_model!r}")
    ct_path = _existing(ct, "CT volume")
    sections_path = _existing(sections, "sections")
    library_path = _existing(library, "library")
    folder = _check_output(out)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))

    manifest = _open_library(library_path) if library_path is not None else None
    if library_path is not None:
        shell = _load_shell_model(shell_model if shell_model is not None else library_path / "models" / "shell_model.json")
        grain = _load_grain_model(grain_model if grain_model is not None else library_path / "models" / "grain_model")
        check_library_models(library_path, manifest, shell if shell_model is not None else None,
                             grain if grain_model is not None else None)
    else:
        shell = _load_shell_model(shell_model) if shell_model is not None else None
        grain = _load_grain_model(grain_model) if grain_model is not None else None

    fitted = None
    if sections_path is not None:
        from .grains.training import usable_sections

        fitted = load_sections(sections_path, grain[0].px_nm, section_step_nm, fit_iterations, int(seed), progress)
        usable_sections(fitted, grain[0].px_nm)  # pixel sizes and central sections, before the long parts

    particles = read_library_particles(library_path, progress, max_particles) if library_path is not None else None

    shell_part = None
    if shell is not None and (ct_path is not None or particles is not None):
        if ct_path is not None:
            coefs, radii, data_info = _ct_coefficients(ct_path, shell[0], ct_voxel_nm, ct_kind, level, rng, progress)
            label = "CT data"
        else:
            coefs, data_info = _library_coefficients(particles, shell[0], library_path)
            radii, label = None, "library"
        shell_part = _shell_part(folder / "shell", shell[0], shell[1], coefs, radii, label, level, int(n_model),
                                 rng, progress)
        shell_part["data"] = data_info

    grains_part = None
    if fitted is not None:
        grains_part = _grain_part(folder, grain[0], grain[1], fitted, per_section, int(seed), progress)

    grains_3d = None
    if grain is not None or particles:
        if grains_part is not None:
            radius = float(np.median(grains_part["particle_radius_px"]))
        elif particles:
            radius = float(np.median([np.cbrt(3.0 * p.volumes_px3.sum() / (4.0 * math.pi)) for p in particles]))
        else:
            radius = DEFAULT_BALL_RADIUS_PX
        grains_3d = _grains_3d_part(folder, grain[0] if grain is not None else None, particles, radius,
                                    int(grain_particles), rng, progress)

    report = {
        "stereograin_version": __version__,
        "inputs": {
            "ct": None if ct_path is None else str(ct_path),
            "sections": None if sections_path is None else str(sections_path),
            "library": None if library_path is None else str(library_path),
            "shell_model": None if shell is None else shell[1],
            "grain_model": None if grain is None else grain[1],
            "seed": int(seed), "n_model": int(n_model), "per_section": int(per_section),
        },
        "shell": shell_part,
        "grains": grains_part,
        "grains_3d": grains_3d,
        "files": ["report.json", "index.html"],
    }
    for part in (shell_part, grains_part, grains_3d):
        if part is not None:
            report["files"] += list(part["figures"].values())
    report = json_ready(report)
    write_json(folder / "report.json", report)
    write_html(folder / "index.html", report, folder)
    return report
