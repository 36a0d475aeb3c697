"""Stochastic outer-shell model (Eq. 5-7, Table 1).

A shell is a random radius function ``X(u) = sum_lm Z_lm Y_lm(u)`` with
independent coefficients: ``Z_00`` follows a law chosen among normal,
three-parameter log-normal and Student-t; for each degree ``l >= 1`` the
``Z_lm`` are identically distributed, a scaled Student-t ``tau_l T_nu_l``
(or a centred normal where that fits better). Lengths are in CT voxels
(128 nm by default).

Laws are stored as a SciPy distribution name and its keyword parameters, so
``getattr(scipy.stats, family)(**params)`` is the law; fitting uses SciPy's
maximum-likelihood ``fit``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numba
import numpy as np
import scipy.stats
from threadpoolctl import threadpool_limits

from . import __version__, sphere
from ._threads import run_all
from .errors import StereograinError
from .io import read_json, write_json

__all__ = ["Law", "ShellModel", "paper_model", "FORMAT"]

FORMAT = "stereograin.shell-model"
FORMAT_VERSION = 1
A00_FAMILIES = ("norm", "lognorm", "t")
DEGREE_FAMILIES = ("t", "norm")
NEGATIVE_POLICIES = ("reject", "clip")

# Table 1 of Fuchs et al. (2025): nu_l and tau_l for l = 1..9 (CT voxels).
# tau_7 reads 0.021 in the text; the reading notes take 0.21 (monotone trend).
PAPER_NU = (2.22, 4.64, 2.84, 2.43, 2.28, 2.26, 2.20, 2.17, 2.22)
PAPER_TAU = (3.51, 2.79, 0.98, 0.56, 0.37, 0.28, 0.21, 0.17, 0.15)
# Eq. 5 as a three-parameter log-normal: shape 0.4, loc -29.83 voxels; the
# scale was lost from the text (see `paper_model`).
PAPER_A00_SHAPE = 0.4
PAPER_A00_LOC = -29.83
PAPER_A00_SCALE = 168.0
_BATCH = 8192


@dataclass(frozen=True)
class Law:
    """A univariate law: SciPy distribution ``family`` with keyword ``params``."""

    family: str
    params: dict[str, float]

    @functools.cached_property
    def _frozen(self) -> Any:
        return getattr(scipy.stats, self.family)(**self.params)

    def frozen(self) -> Any:
        """The frozen SciPy distribution (made once per law: SciPy takes ~0.6 ms to freeze one)."""
        return self._frozen

    def rvs(self, size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return self.frozen().rvs(size=size, random_state=rng)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": dict(self.params)}

    @staticmethod
    def from_dict(d: Any, allowed: tuple[str, ...], where: str) -> "Law":
        if not isinstance(d, dict) or "family" not in d or "params" not in d:
            raise StereograinError(f"shell model: {where} must be an object with 'family' and 'params'")
        fam, params = d["family"], d["params"]
        if fam not in allowed:
            raise StereograinError(f"shell model: {where} family {fam!r} is not one of {allowed}")
        if not isinstance(params, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in params.values()
        ):
            raise StereograinError(f"shell model: {where} params must be finite numbers, got {params!r}")
        law = Law(fam, {k: float(v) for k, v in params.items()})
        try:
            law.frozen().pdf(0.0)
        except TypeError as exc:
            raise StereograinError(f"shell model: {where} params {params!r} do not fit {fam}: {exc}") from None
        scale = law.params.get("scale", 1.0)
        if scale <= 0 or law.params.get("df", 1.0) <= 0 or law.params.get("s", 1.0) <= 0:
            raise StereograinError(f"shell model: {where} params {params!r} must have positive scale/shape")
        return law


def _fit_family(family: str, x: np.ndarray, centred: bool) -> tuple[Law, float]:
    """Maximum-likelihood fit of one family; returns the law and its log-likelihood."""
    dist = getattr(scipy.stats, family)
    kw = {"floc": 0.0} if centred else {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if family == "lognorm" and not centred:
            # scipy's default start for loc can sit above min(x); start below the data.
            spread = float(np.std(x)) or 1.0
            guess = dist.fit(x, loc=float(np.min(x)) - spread)
            params = dist.fit(x, guess[0], loc=guess[1], scale=guess[2])
        else:
            params = dist.fit(x, **kw)
    names = (["s"] if family == "lognorm" else ["df"] if family == "t" else []) + ["loc", "scale"]
    law = Law(family, dict(zip(names, map(float, params))))
    ll = float(np.sum(law.frozen().logpdf(x)))
    return law, ll


def _implausible_tail(law: Law, x: np.ndarray) -> bool:
    """Whether the law's 99.9 % quantile lies beyond the data's maximum plus 10 data ranges.

    A three-parameter log-normal fitted to few values can degenerate (``loc``
    at the sample minimum, ``s`` of 10 or more): its likelihood is high, its
    draws reach 1e9 voxels. Such a law describes no particle size.
    """
    q = float(law.frozen().ppf(0.999))
    return not math.isfinite(q) or q > x.max() + 10.0 * max(float(np.ptp(x)), 1e-12)


def _select(x: np.ndarray, families: tuple[str, ...], centred: bool) -> tuple[Law, dict[str, dict[str, float]]]:
    """Fit every family by maximum likelihood; pick the smallest AIC (a size law with an absurd tail is not picked)."""
    report: dict[str, dict[str, float]] = {}
    best: tuple[float, Law] | None = None
    for fam in families:
        law, ll = _fit_family(fam, x, centred)
        k = len(law.params) - (1 if centred else 0)
        aic = 2 * k - 2 * ll
        report[fam] = {"loglik": ll if math.isfinite(ll) else None, "aic": aic if math.isfinite(aic) else None, **law.params}
        if not centred and _implausible_tail(law, x):
            report[fam]["rejected"] = "99.9% quantile beyond the data maximum plus 10 data ranges"
            continue
        if math.isfinite(aic) and (best is None or aic < best[0]):
            best = (aic, law)
    if best is None:
        raise StereograinError("no distribution family could be fitted to the coefficients; are they all equal?")
    return best[1], report


@dataclass
class ShellModel:
    """Independent-coefficient random field on the sphere (Eq. 7).

    Attributes
    ----------
    a00 : Law
        Law of ``a_00`` (CT voxels).
    degrees : list of Law
        Law of ``a_lm`` for ``l = 1..L`` (index ``l - 1``), centred at 0.
    voxel_size_nm : float
        Physical size of the model's length unit (one CT voxel).
    negative_radius : {"reject", "clip"}
        What to do with a realisation whose radius is negative in some
        direction (the shell passes behind its star point): redraw it, or
        clip the radius to 0 there.
    min_volume : float
        Realisations with less volume (voxels^3) are redrawn (paper: 10).
    provenance : dict
        Where the parameters come from (data file, date, assumptions).
    report : dict
        Fit diagnostics: log-likelihood and AIC of each family, distance correlations.
    """

    a00: Law
    degrees: list[Law]
    voxel_size_nm: float = 128.0
    negative_radius: str = "reject"
    min_volume: float = 10.0
    provenance: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.negative_radius not in NEGATIVE_POLICIES:
            raise StereograinError(
                f"negative_radius must be one of {NEGATIVE_POLICIES}, got {self.negative_radius!r}"
            )
        if not (self.voxel_size_nm > 0 and math.isfinite(self.voxel_size_nm)):
            raise StereograinError(f"voxel size must be a positive number of nm, got {self.voxel_size_nm}")
        if not (self.min_volume >= 0 and math.isfinite(self.min_volume)):
            raise StereograinError(f"min_volume must be >= 0 voxels, got {self.min_volume}")
        if len(self.degrees) < 1:
            raise StereograinError("a shell model needs at least degree L = 1")

    @property
    def L(self) -> int:
        """Maximum SH degree."""
        return len(self.degrees)

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        coefficients: np.ndarray,
        voxel_size_nm: float = 128.0,
        provenance: dict[str, Any] | None = None,
        distance_correlation: bool = True,
        **policy: Any,
    ) -> "ShellModel":
        """Fit the coefficient laws by maximum likelihood.

        Parameters
        ----------
        coefficients : (n_particles, (L+1)**2) array
            SH coefficients in CT voxels (flat order, see :mod:`stereograin.sphere`).
        voxel_size_nm : float
            CT voxel size the coefficients are measured in.
        provenance : dict, optional
            Stored with the model (data source, settings).
        distance_correlation : bool
            Compute the distance correlation of ``a_00`` with every ``a_lm``.
        **policy
            ``negative_radius``, ``min_volume`` (see class attributes).

        Returns
        -------
        ShellModel
        """
        a = np.asarray(coefficients, dtype=np.float64)
        if a.ndim != 2:
            raise StereograinError(f"coefficients must be a (n_particles, (L+1)**2) table, got shape {a.shape}")
        L = sphere.degree_of(a.shape[1])
        if L < 1:
            raise StereograinError("coefficients must go up to at least degree 1 (4 columns)")
        if a.shape[0] < 10:
            raise StereograinError(f"need at least 10 particles to fit the shell model, got {a.shape[0]}")
        if not np.all(np.isfinite(a)):
            raise StereograinError("coefficient table holds NaN or infinite values")
        a00_law, a00_report = _select(a[:, 0], A00_FAMILIES, centred=False)
        deg = sphere.degrees(L)
        laws, deg_report = [], {}
        for l in range(1, L + 1):
            law, rep = _select(a[:, deg == l].ravel(), DEGREE_FAMILIES, centred=True)
            laws.append(law)
            deg_report[str(l)] = rep
        report: dict[str, Any] = {
            "n_particles": int(a.shape[0]),
            "a00": {"chosen": a00_law.family, "families": a00_report},
            "degrees": {
                str(l): {"chosen": laws[l - 1].family, "families": deg_report[str(l)]} for l in range(1, L + 1)
            },
        }
        if distance_correlation:
            report["distance_correlation"] = distance_correlations(a)
        prov = {
            "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "method": "maximum likelihood (scipy.stats fit); family by AIC",
            **(provenance or {}),
        }
        return cls(a00_law, laws, voxel_size_nm=voxel_size_nm, provenance=prov, report=report, **policy)

    # --------------------------------------------------------------- sample
    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` raw coefficient vectors, no rejection: shape ``(n, (L+1)**2)``."""
        L = self.L
        out = np.empty((n, (L + 1) ** 2))
        out[:, 0] = self.a00.rvs(n, rng)
        for l, law in enumerate(self.degrees, start=1):
            out[:, l * l : (l + 1) ** 2] = law.rvs((n, 2 * l + 1), rng)
        return out

    def sample(
        self,
        n: int,
        rng: np.random.Generator | int | None = None,
        level: int = 3,
        max_rounds: int = 1000,
        workers: int | None = None,
    ) -> np.ndarray:
        """Draw ``n`` shells, applying the negative-radius and minimum-volume policies.

        Rejected realisations are redrawn, so the result follows the model
        conditioned on a valid shell. The validity check uses the radius on
        the icosphere of ``level``; the volume is the quadrature
        ``(1/3) sum_i w_i P(u_i)^3``.

        Shells are made in batches of 8192, batch ``b`` from the ``b``-th
        child stream spawned from ``rng``; batches run on ``workers`` threads,
        and the result does not depend on the number of workers.

        Parameters
        ----------
        n : int
            Number of shells.
        rng : Generator or int
            Random source (seeded for reproducibility).
        level : int
            Icosphere level of the validity check.
        max_rounds : int
            Give up (with an error naming the policy) after this many draws in
            a row without a valid shell.
        workers : int, optional
            Threads (default: CPU count).

        Returns
        -------
        (n, (L+1)**2) float64
            Coefficients in CT voxels; with ``negative_radius="clip"`` some
            shells have negative radii, which descriptors clip to 0.
        """
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise StereograinError(f"number of shells must be a non-negative integer, got {n!r}")
        if n > 100_000_000:
            raise StereograinError(f"{n} shells is more than 1e8; sample in batches")
        rng = np.random.default_rng(rng)
        # float32 radii: 1e-7 relative error, half the time of float64 here.
        Bt = np.ascontiguousarray(sphere.basis(self.L, level).T, dtype=np.float32)
        w = sphere.quadrature_weights(level).astype(np.float32)
        out = np.empty((n, Bt.shape[0]))
        starts = range(0, n, _BATCH)
        children = rng.spawn(len(starts))

        def run(b: int) -> None:
            s = starts[b]
            e = min(s + _BATCH, n)
            out[s:e] = self._valid_batch(e - s, children[b], Bt, w, max_rounds)

        workers = min(workers or os.cpu_count() or 1, len(starts))
        # Batches in parallel threads (NumPy's generators and BLAS release the GIL);
        # one BLAS thread each so that threads and BLAS do not oversubscribe the cores.
        with threadpool_limits(1) if workers > 1 else contextlib.nullcontext():
            run_all(run, range(len(starts)), workers)
        return out

    def _valid_batch(
        self, need: int, rng: np.random.Generator, Bt: np.ndarray, w: np.ndarray, max_rounds: int
    ) -> np.ndarray:
        coefs = np.empty((need, Bt.shape[0]))
        filled, idle = 0, 0
        while filled < need:
            k = need - filled
            batch = self.draw(k + k // 10 + 16, rng)
            r = batch.astype(np.float32) @ Bt
            rmin, vol = _min_and_volume(r, w)
            ok = vol >= self.min_volume
            if self.negative_radius == "reject":
                ok &= rmin >= 0
            idx = np.flatnonzero(ok)[:k]
            coefs[filled : filled + idx.size] = batch[idx]
            filled += idx.size
            idle = 0 if idx.size else idle + 1
            if idle >= max_rounds:
                raise StereograinError(
                    f"the shell model drew {max_rounds} batches in a row without a valid shell "
                    f"(negative_radius={self.negative_radius!r}, min_volume={self.min_volume}); "
                    "check a00's law or use negative_radius='clip'"
                )
        return coefs

    # ------------------------------------------------------------ save/load
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "stereograin_version": __version__,
            "units": {"length": "CT voxel", "voxel_size_nm": self.voxel_size_nm},
            "L": self.L,
            "a00": self.a00.to_dict(),
            "degrees": [law.to_dict() for law in self.degrees],
            "policy": {"negative_radius": self.negative_radius, "min_volume_voxels": self.min_volume},
            "provenance": self.provenance,
            "report": self.report,
        }

    def save(self, path: str | Path) -> None:
        """Write the model as JSON (atomically)."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, source: str = "shell model") -> "ShellModel":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise StereograinError(
                f"{source} is not a stereograin shell model (format {got!r}); "
                "make one with `stereograin shell fit` or use 'paper'"
            )
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise StereograinError(
                f"{source} has format version {d.get('format_version')}, newer than this stereograin reads "
                f"({FORMAT_VERSION}); upgrade stereograin"
            )
        try:
            degrees = d["degrees"]
            if not isinstance(degrees, list) or len(degrees) != d["L"]:
                raise StereograinError(f"{source}: 'degrees' must list one law per degree 1..L")
            policy = d.get("policy", {})
            return cls(
                a00=Law.from_dict(d["a00"], A00_FAMILIES, "a00"),
                degrees=[Law.from_dict(x, DEGREE_FAMILIES, f"degree {i + 1}") for i, x in enumerate(degrees)],
                voxel_size_nm=float(d["units"]["voxel_size_nm"]),
                negative_radius=policy.get("negative_radius", "reject"),
                min_volume=float(policy.get("min_volume_voxels", 10.0)),
                provenance=d.get("provenance", {}),
                report=d.get("report", {}),
            )
        except (KeyError, TypeError) as exc:
            raise StereograinError(f"{source} is missing or has a malformed field {exc}; re-create it") from None

    @classmethod
    def load(cls, path: str | Path) -> "ShellModel":
        """Read a model written by :meth:`save`, or ``"paper"`` for the built-in default."""
        if str(path) == "paper":
            return paper_model()
        return cls.from_dict(read_json(path, "shell model"), source=f"shell model {path}")


# Hand-written: one pass over the radii for both checks instead of four NumPy passes
# (min, clip, cube, product), which made the checks cost as much as the draws.
@numba.njit(nogil=True, fastmath=True, cache=True)
def _min_and_volume(r, w):  # pragma: no cover - compiled
    """Per shell: minimum radius and quadrature volume (1/3) sum_i w_i max(r_i, 0)^3 (float32)."""
    n, k = r.shape
    rmin = np.empty(n, dtype=np.float32)
    vol = np.empty(n, dtype=np.float32)
    zero = np.float32(0.0)
    for i in range(n):
        m = np.float32(np.inf)
        v = zero
        for j in range(k):
            x = r[i, j]
            m = min(m, x)
            x = max(x, zero)
            v += w[j] * x * x * x
        rmin[i] = m
        vol[i] = v / np.float32(3.0)
    return rmin, vol


def distance_correlations(coefficients: np.ndarray) -> dict[str, Any]:
    """Empirical distance correlation (EDCC) of ``a_00`` with every ``a_lm``, ``l >= 1``.

    Returns
    -------
    dict
        ``"per_coefficient"``: ``{"a_l_m": value}``; ``"per_degree_mean"`` and
        ``"per_degree_max"``: lists over ``l = 1..L``.
    """
    import dcor

    a = np.asarray(coefficients, dtype=np.float64)
    L = sphere.degree_of(a.shape[1])
    names = sphere.coefficient_names(L)
    x = a[:, 0]
    vals = np.array([dcor.distance_correlation(x, a[:, j], method="mergesort") for j in range(1, a.shape[1])])
    deg = sphere.degrees(L)[1:]
    return {
        "per_coefficient": {names[j + 1]: float(v) for j, v in enumerate(vals)},
        "per_degree_mean": [float(vals[deg == l].mean()) for l in range(1, L + 1)],
        "per_degree_max": [float(vals[deg == l].max()) for l in range(1, L + 1)],
    }


def paper_model(
    a00_scale: float = PAPER_A00_SCALE,
    a00_shape: float = PAPER_A00_SHAPE,
    a00_loc: float = PAPER_A00_LOC,
    tau: tuple[float, ...] = PAPER_TAU,
    nu: tuple[float, ...] = PAPER_NU,
    **policy: Any,
) -> ShellModel:
    """The built-in default shell model: Table 1 and Eq. 5 of Fuchs et al. (2025).

    Assumptions (reading notes), each an argument:

    - ``a_00 ~ loc + scale * LogNormal(0, shape)`` with shape 0.4 and loc
      -29.83 voxels (Eq. 5's "mu = 0.4, sigma = -29.83" read as SciPy's
      three-parameter log-normal). The scale was lost from the text; 168
      voxels puts the median ``a_00`` at 138 voxels, a mean radius of
      ``138 / (2 sqrt(pi)) = 39`` voxels = 5.0 um at 128 nm: a median NMC811
      secondary particle of 10 um diameter.
    - ``tau_7 = 0.21`` (the text's 0.021 breaks the monotone trend).
    - ``a_lm = tau_l T``, ``T ~ Student-t(nu_l)``, centred.
    """
    if len(tau) != len(nu) or len(tau) < 1:
        raise StereograinError("tau and nu must list one value per degree 1..L")
    model = ShellModel(
        a00=Law("lognorm", {"s": float(a00_shape), "loc": float(a00_loc), "scale": float(a00_scale)}),
        degrees=[Law("t", {"df": float(n_), "loc": 0.0, "scale": float(t_)}) for n_, t_ in zip(nu, tau)],
        voxel_size_nm=128.0,
        provenance={
            "source": "Fuchs et al. (2025), Communications Materials 6, Table 1 and Eq. 5",
            "assumptions": {
                "a00_scale_voxels": float(a00_scale),
                "a00_scale_reason": "lost from the text; median mean radius 5 um (10 um particle) at 128 nm voxels",
                "tau_7": float(tau[6]) if len(tau) > 6 else None,
                "tau_7_reason": "text reads 0.021, which breaks the monotone trend of tau_l; taken as 0.21",
            },
        },
        **policy,
    )
    for law in [model.a00, *model.degrees]:
        if any(v <= 0 for k, v in law.params.items() if k != "loc"):
            raise StereograinError(f"paper model parameters must be positive, got {law.params}")
    return model
