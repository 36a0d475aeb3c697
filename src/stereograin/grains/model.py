"""GrainModel: a trained marker generator and its intensity; sampling 3D grain architectures.

A grain architecture is analytic: seeds ``s_i`` (px, EBSD pixels of 50 nm,
about the particle centre), spins ``gamma_i``, noise ``n_i`` and the markers
``D_i`` (radial, tangential, tangential) and ``r_i`` (px) that the generator
assigns from each seed's 12 nearest neighbours (Algorithm 1). The restricted
GBPD ``M_i = Q_i^T diag(D_i) Q_i`` that they define can be labelled exactly at
any resolution by :class:`stereograin.tessellation.GBPD`.

Files. A model is a folder with ``grain_model.json`` (format, version, units,
intensity ``mu``, network shape, training provenance and the SHA-256 of the
weights) and ``grain_model.safetensors`` (the generator's weights). No pickle
is involved in loading either. ``"default"`` names the built-in model shipped
in ``stereograin/data`` (see :mod:`stereograin.grains.default`).

Sampling window. Training cutouts lie within ``sqrt(112^2 + 16^2) = 113`` px
of the centre of a ball of radius 128 px, so seeds near the cutouts have
their neighbourhoods cut by the window edge only beyond 15 px. :meth:`GrainModel.sample`
keeps that geometry: it draws seeds in the requested ball (or box) dilated by
``margin`` (default 16 px), so grains at the particle rim see the same kind of
neighbourhood as those the model was trained on.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import StereograinError
from ..io import atomic_path, read_json, write_json
from ..tessellation import GBPD, restricted_metrics
from .generator import MarkerNet, sample_markers
from .seeds import Seeds, poisson_seeds

__all__ = ["GrainModel", "GrainArchitecture", "MODEL_FORMAT", "ARCHITECTURE_FORMAT", "SAMPLE_MARGIN"]

MODEL_FORMAT = "stereograin.grain-model"
MODEL_FORMAT_VERSION = 1
ARCHITECTURE_FORMAT = "stereograin.grain-architecture"
ARCHITECTURE_FORMAT_VERSION = 1
#: Extra seeds drawn around the requested window (px); see the module notes.
SAMPLE_MARGIN = 16.0
_JSON = "grain_model.json"
_WEIGHTS = "grain_model.safetensors"


@dataclass(frozen=True)
class GrainArchitecture:
    """Seeds and markers of one 3D grain architecture (a restricted GBPD), in px.

    Attributes
    ----------
    positions : (n, 3) float64
        Seeds in px relative to the particle centre.
    noise : (n, 2) float64
    gamma : (n,) float64
        Spins (radians) of the radial frames (Eq. 12).
    D : (n, 3) float64
        Diagonal of ``D_i`` (radial, tangential, tangential), positive.
    r : (n,) float64
        Offsets in px.
    px_nm : float
        Pixel size in nm (50 for the paper's EBSD maps).
    radius_px : float or None
        Radius of the ball the architecture was drawn for (px), if a ball.
    """

    positions: np.ndarray
    noise: np.ndarray
    gamma: np.ndarray
    D: np.ndarray
    r: np.ndarray
    px_nm: float = 50.0
    radius_px: float | None = None

    def __post_init__(self) -> None:
        s = np.asarray(self.positions, dtype=np.float64)
        n = len(s)
        arrays = {
            "positions": (s, (n, 3)),
            "noise": (np.asarray(self.noise, dtype=np.float64), (n, 2)),
            "gamma": (np.asarray(self.gamma, dtype=np.float64), (n,)),
            "D": (np.asarray(self.D, dtype=np.float64), (n, 3)),
            "r": (np.asarray(self.r, dtype=np.float64), (n,)),
        }
        for name, (a, shape) in arrays.items():
            if a.shape != shape or s.ndim != 2:
                raise StereograinError(f"grain architecture: {name} must have shape {shape}, got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise StereograinError(f"grain architecture: {name} has NaN or infinite values")
            object.__setattr__(self, name, a)
        if np.any(arrays["D"][0] <= 0):
            raise StereograinError("grain architecture: every entry of D must be positive")
        if not (self.px_nm > 0 and math.isfinite(self.px_nm)):
            raise StereograinError(f"grain architecture: px_nm must be positive, got {self.px_nm!r}")

    @property
    def n(self) -> int:
        """Number of grains (cells)."""
        return len(self.positions)

    def metrics(self) -> np.ndarray:
        """``M_i = Q_i^T diag(D_i) Q_i``, (n, 3, 3) float64."""
        return restricted_metrics(self.positions, self.D, self.gamma)

    def gbpd(self) -> GBPD:
        """The architecture as an exact-labelling :class:`~stereograin.tessellation.GBPD` (px)."""
        return GBPD(self.positions, self.metrics(), self.r)

    def to_dict(self, lists: bool = True) -> dict[str, Any]:
        """The architecture as a JSON-ready dict; ``lists=False`` keeps the arrays (for orjson)."""
        conv = (lambda a: a.tolist()) if lists else np.ascontiguousarray
        return {
            "format": ARCHITECTURE_FORMAT,
            "format_version": ARCHITECTURE_FORMAT_VERSION,
            "stereograin_version": __version__,
            "units": {"length": "px", "px_nm": float(self.px_nm)},
            "radius_px": None if self.radius_px is None else float(self.radius_px),
            "n": self.n,
            "positions": conv(self.positions),
            "noise": conv(self.noise),
            "gamma": conv(self.gamma),
            "D": conv(self.D),
            "r": conv(self.r),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "grain architecture") -> "GrainArchitecture":
        if not isinstance(d, dict) or d.get("format") != ARCHITECTURE_FORMAT:
            raise StereograinError(f"{source} is not a stereograin grain architecture; make one with `stereograin grains sample`")
        try:
            return cls(
                np.asarray(d["positions"], dtype=np.float64).reshape(-1, 3),
                np.asarray(d["noise"], dtype=np.float64).reshape(-1, 2),
                np.asarray(d["gamma"], dtype=np.float64),
                np.asarray(d["D"], dtype=np.float64).reshape(-1, 3),
                np.asarray(d["r"], dtype=np.float64),
                float(d["units"]["px_nm"]),
                None if d.get("radius_px") is None else float(d["radius_px"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StereograinError(f"{source} has a missing or malformed field ({exc}); re-create it") from None

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "GrainArchitecture":
        return cls.from_dict(read_json(path, "grain architecture"), f"grain architecture {path}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_window(window: Any) -> tuple[float | None, np.ndarray | None]:
    """A ball radius (px) or a (3, 2) box; absurd values raise one-line errors."""
    if np.ndim(window) == 0:
        try:
            R = float(window)
        except (TypeError, ValueError):
            raise StereograinError(f"window must be a ball radius in px or a (3, 2) box, got {window!r}") from None
        if not (math.isfinite(R) and R > 0):
            raise StereograinError(f"the ball radius must be positive and finite (px), got {window!r}")
        if R > 20000:
            raise StereograinError(f"a ball radius of {R:g} px ({R * 0.05:g} um at 50 nm) is absurd for one particle")
        return R, None
    b = np.asarray(window, dtype=np.float64)
    if b.shape != (3, 2) or not np.all(np.isfinite(b)) or np.any(b[:, 1] <= b[:, 0]):
        raise StereograinError(f"window must be a ball radius in px or (lo, hi) per axis with lo < hi, got {window!r}")
    return None, b


@dataclass
class GrainModel:
    """A trained grain architecture model: the marker network ``G_net`` and the intensity ``mu``.

    Attributes
    ----------
    net : MarkerNet
    mu : float
        Seed intensity in seeds / px^3.
    px_nm : float
        Pixel size in nm of the sections the model was fitted to.
    provenance : dict
        How the model was made (training data, configuration, epochs, version).
    """

    net: MarkerNet
    mu: float
    px_nm: float = 50.0
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(float(self.mu)) and self.mu > 0):
            raise StereograinError(f"the model intensity mu must be positive, got {self.mu!r}")

    # ---------------------------------------------------------------- sampling
    def sample(
        self,
        window: float | np.ndarray,
        rng: np.random.Generator | int | None = None,
        margin: float = SAMPLE_MARGIN,
        select: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> GrainArchitecture:
        """Draw one 3D grain architecture covering a ball or a box.

        Parameters
        ----------
        window : float or (3, 2) array
            Ball radius in px (centred at the particle centre), or a box
            ``(lo, hi)`` per axis in px.
        rng : numpy Generator, int seed or None
        margin : float
            Seeds are also drawn within ``margin`` px outside the window (module notes).
        select : callable, optional
            ``select(positions)`` -> (n,) bool for the drawn seeds (px, (n, 3)):
            only those are returned, and only their markers are computed (all
            drawn seeds still serve as neighbours). The random draws do not
            depend on it.

        Returns
        -------
        GrainArchitecture
        """
        R, box = _check_window(window)
        if not (margin >= 0 and math.isfinite(margin)):
            raise StereograinError(f"margin must be >= 0 px, got {margin!r}")
        g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        region: float | np.ndarray = R + margin if R is not None else box + np.array([-margin, margin])
        expected = self.mu * (4.0 / 3.0 * math.pi * region**3 if R is not None else float(np.prod(np.diff(region, axis=1))))
        if expected > 5e7:
            raise StereograinError(f"the window holds about {expected:.3g} seeds; sample a smaller window (at most 5e7 seeds)")
        seeds = poisson_seeds(region, self.mu, g)
        if len(seeds) <= self.net.kappa:
            raise StereograinError(
                f"the window holds only {len(seeds)} seeds at mu = {self.mu:.3g} per px^3; "
                f"a grain architecture needs more than {self.net.kappa}: enlarge the window"
            )
        if select is None:
            D, r = self.markers(seeds)
            return GrainArchitecture(seeds.positions, seeds.noise, seeds.gamma, D, r, self.px_nm, R)
        keep = np.asarray(select(seeds.positions))
        if keep.dtype != np.bool_ or keep.shape != (len(seeds),):
            raise StereograinError(f"select must return a boolean array of shape ({len(seeds)},), got {keep.dtype} {keep.shape}")
        D, r, _ = sample_markers(self.net, seeds, need=keep)
        idx = np.flatnonzero(keep)
        return GrainArchitecture(seeds.positions[idx], seeds.noise[idx], seeds.gamma[idx], D[idx], r[idx], self.px_nm, R)

    def markers(self, seeds: Seeds, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Markers ``D`` (n, 3) and ``r`` (n,) px of every seed, no gradient (float64 arrays).

        The batched inference path :func:`~stereograin.grains.generator.sample_markers`:
        the result does not depend on ``workers`` (threads; default: all cores).
        """
        D, r, _ = sample_markers(self.net, seeds, workers=workers)
        return D, r

    # ---------------------------------------------------------------- files
    def net_config(self) -> dict[str, Any]:
        n = self.net
        hidden = [m.out_features for m in n.mlp if isinstance(m, torch.nn.Linear)][:-1]
        return {
            "kappa": n.kappa, "hidden": hidden, "eps": n.eps, "d_max": n.d_max,
            "r_range": list(n.r_range), "length_scale": float(1.0 / n.in_scale[0].item()),
        }

    def save(self, folder: str | Path) -> None:
        """Write ``grain_model.safetensors`` then ``grain_model.json`` into ``folder`` (each atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise StereograinError(f"{folder} is a file; a grain model is a folder")
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(folder / _WEIGHTS) as tmp:
            save_file(state, str(tmp))
            digest = _sha256(tmp)
        write_json(
            folder / _JSON,
            {
                "format": MODEL_FORMAT,
                "format_version": MODEL_FORMAT_VERSION,
                "stereograin_version": __version__,
                "units": {"length": "px", "px_nm": float(self.px_nm), "mu": "seeds per px^3"},
                "mu": float(self.mu),
                "net": self.net_config(),
                "weights": {"file": _WEIGHTS, "sha256": digest},
                "provenance": self.provenance,
            },
        )

    @classmethod
    def load(cls, folder: str | Path) -> "GrainModel":
        """Read a model folder written by :meth:`save`, or ``"default"`` for the built-in model."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if str(folder) == "default":
            folder = Path(str(resources.files("stereograin") / "data" / "default_grain_model"))
            if not (folder / _JSON).is_file():
                raise StereograinError("the built-in default grain model is missing from this installation; reinstall stereograin")
        folder = Path(folder)
        if folder.is_file() and folder.name == _JSON:
            folder = folder.parent
        if not folder.is_dir():
            raise StereograinError(f"grain model {folder} does not exist; give a folder made by `stereograin grains fit` or 'default'")
        meta = read_json(folder / _JSON, "grain model")
        where = f"grain model {folder}"
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise StereograinError(f"{where} is not a stereograin grain model (format {got!r}); make one with `stereograin grains fit`")
        if not isinstance(meta.get("format_version"), int) or meta["format_version"] > MODEL_FORMAT_VERSION:
            raise StereograinError(f"{where} has format version {meta.get('format_version')!r}; this stereograin reads up to {MODEL_FORMAT_VERSION}")
        try:
            cfg, weights = meta["net"], meta["weights"]
            net = MarkerNet(
                kappa=int(cfg["kappa"]), hidden=tuple(int(h) for h in cfg["hidden"]), eps=float(cfg["eps"]),
                d_max=float(cfg["d_max"]), r_range=tuple(float(v) for v in cfg["r_range"]),
                length_scale=float(cfg["length_scale"]),
            )
            path = folder / str(weights["file"])
            mu, px_nm = float(meta["mu"]), float(meta["units"]["px_nm"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StereograinError(f"{where} has a missing or malformed field ({exc}); re-create it") from None
        if not path.is_file():
            raise StereograinError(f"{where}: weights file {path.name} is missing")
        if _sha256(path) != weights.get("sha256"):
            raise StereograinError(f"{where}: {path.name} does not match the SHA-256 in {_JSON} (corrupt or replaced); re-create the model")
        try:
            state = load_file(str(path))
            net.load_state_dict(state)
        except (SafetensorError, RuntimeError, OSError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StereograinError(f"{where}: cannot read the weights ({msg[:200]})") from None
        net.eval()
        return cls(net, mu, px_nm, meta.get("provenance", {}))
