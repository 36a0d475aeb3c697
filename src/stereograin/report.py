"""The shell-fit report: coefficient laws, distance correlations, data vs model descriptors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .coefficients import CoefficientTable, write_coefficients
from .descriptors import SHELL_DESCRIPTORS, compare_samples, describe_coefficients, describe_radii
from .io import json_ready, write_json
from .shell import ShellModel

__all__ = ["shell_report"]


def _summary(values: np.ndarray) -> dict[str, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {}
    return {"mean": float(v.mean()), "min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def shell_report(
    out: str | Path,
    model: ShellModel,
    table: CoefficientTable,
    data_radii: np.ndarray | None = None,
    level: int = 3,
    n_model: int = 10_000,
    rng: np.random.Generator | int | None = None,
) -> dict[str, Any]:
    """Write the report of a shell-model fit into folder ``out``.

    Files: ``coefficients.csv`` (the fitted table), ``coefficient_laws.png``
    (Fig. 4), ``distance_correlation.png`` (Fig. 3a), ``descriptors.png``
    (data vs model, Fig. 10a), ``report.json`` (all numbers).

    Parameters
    ----------
    out : path
        Report folder (created).
    model : ShellModel
        The fitted model.
    table : CoefficientTable
        The data's coefficients.
    data_radii : (n, k) array, optional
        The data's raw radius functions on icosphere ``level`` (Eq. 1). The
        paper's ground-truth descriptors use these; without them the SH
        representation of the data is used.
    level : int
        Icosphere level for all descriptors (data and model alike).
    n_model : int
        Shells drawn from the model for the comparison.
    rng : Generator or int
        Random source of the model draws.

    Returns
    -------
    dict
        The contents of ``report.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rng)
    write_coefficients(out / "coefficients.csv", table)
    fits = {0: model.a00.to_dict()} | {l: law.to_dict() for l, law in enumerate(model.degrees, start=1)}
    plots.coefficient_laws(table.coefficients, fits, out / "coefficient_laws.png")
    dc = model.report.get("distance_correlation")
    if dc:
        plots.distance_correlations(np.asarray(dc["per_degree_mean"]), out / "distance_correlation.png")
    if data_radii is None:
        data = describe_coefficients(table.coefficients, level=level)
    else:
        data = describe_radii(np.asarray(data_radii), level=level)
    sim = describe_coefficients(model.sample(n_model, rng, level=level), level=level)
    distances = compare_samples(data, sim, SHELL_DESCRIPTORS)
    plots.descriptor_histograms(
        data, sim, out / "descriptors.png", names=("d_max", "compactness", "aspect_ratio", "sphericity"),
        distances=distances, labels=("CT data", "model"),
    )
    report = {
        "n_particles": int(table.coefficients.shape[0]),
        "n_model_shells": int(n_model),
        "icosphere_level": int(level),
        "star_shape_captured_fraction": _summary(table.captured),
        "fit": model.report,
        "laws": {"a00": model.a00.to_dict(), "degrees": [law.to_dict() for law in model.degrees]},
        "descriptor_distances": distances,
        "descriptors_data": {k: _summary(v) for k, v in data.items()},
        "descriptors_model": {k: _summary(v) for k, v in sim.items()},
    }
    write_json(out / "report.json", json_ready(report))
    return report
