"""Training the stereological GAN (paper, Algorithm 2, with the reading notes' fixes).

One step:

1. **Generator.** Draw realisations of the seed process (Poisson with
   intensity ``mu_e`` in the training window, a ball of radius 128 px), give
   every seed its markers with ``G_net``, cut ``batch_g`` soft 3D cutouts
   (Eq. 11, 16) and take one Adam step on the least-squares generator loss
   ``E[(D(T_3D(G(Z))) - 1)^2]`` (``objective="lsgan"``, the default) or on
   the paper's literal ``-E[D(T_3D(G(Z)))^2]`` (``objective="literal"``,
   unbounded: see the reading notes). The discriminator runs in eval mode
   here (batch-norm running statistics), so the generator is judged by the
   same normalisation the discriminator learnt with.
2. **Discriminator.** ``batch_d`` cutouts of augmented fitted 2D sections
   (Eq. 14-15) and ``batch_d`` fresh generated cutouts, both rounded to
   one-hot (exact labels), in one batch; loss
   ``E[(D(real) - 1)^2] + E[D(fake)^2]``; the Adam step is skipped while
   that loss is below ``d_skip = 0.09``.
3. **Intensity.** Once per epoch, ``mu_{e+1} = mu_e (0.5 + 0.5 NG_gt / NG_gen)``
   (Eq. 13) from the visible grains per px^2 of that epoch's cutouts.

Gradient normalisation (the paper's ref. 61): the global gradient norm of each
network is clipped to ``grad_clip`` before its Adam step.

Several cutouts per realisation. The model's law is invariant under rotations
about the particle centre (see :mod:`stereograin.grains.generator`) and the
training window is a ball, so a cutout in any plane through the centre, at
offset ``p`` along a radial in-plane axis, has the law of Eq. 16's cutout in
``z = 0``. ``cutouts_per_realisation`` cutouts in independent random planes
share one realisation: the batch is then not independent, but each cutout has
the right law; this divides the number of seeds that need markers by the same
factor. With ``cutouts_per_realisation=1`` every cutout has its own realisation,
as in the paper.

Exactness. Every cutout is computed on the full realisation: the exact
labels (the discriminator's one-hot inputs, the visible-grain counts) by
:meth:`~stereograin.tessellation.GBPD.label_points`, and each pixel's soft map
over its ``candidates`` cells of lowest exact cost. Only the markers of
candidate seeds carry gradients.

Files written to the output folder (each atomically):
``checkpoints/epoch_NNNN/`` (``state.safetensors``: both networks and both
optimisers' tensors; ``state.json``: epoch, ``mu``, configuration, log,
optimiser settings; the folder is renamed into place when complete, the two
newest are kept), ``grain_model.json`` + ``grain_model.safetensors`` (the
model after the last finished epoch), ``log.csv`` (one row per epoch) and
``training.png`` (losses and ``mu`` against epoch). Rerunning with the same
folder resumes after the newest complete checkpoint; each epoch draws from
its own stream ``SeedSequence(seed, spawn_key=(epoch,))``, so a resumed run
ends bit for bit where an uninterrupted one does (same machine and threads).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import StereograinError
from ..fit2d import FittedSection
from ..io import atomic_path, read_json, write_table
from ..tessellation import frame_metrics
from .candidates import exact_candidates
from .cutouts import cutout_grid, label_cutouts, onehot_cutouts, rotated_cutout_points, soft_cutouts
from .discriminator import Discriminator
from .generator import MarkerNet, metrics, neighbour_features
from .model import GrainModel
from .seeds import CUTOUT, MU_1, P_MAX, WINDOW_HALF, poisson_seeds

__all__ = ["TrainConfig", "train", "train_step", "usable_sections", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "stereograin.grain-checkpoint"
LOG_COLUMNS = ("epoch", "loss_g", "loss_d", "d_update_fraction", "mu", "ng_gt", "ng_gen", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train` (paper values by default; units px).

    Attributes
    ----------
    epochs, steps : int
        Epochs and steps per epoch (200 x 100).
    batch_g, batch_d : int
        Cutouts per generator step (64) and per discriminator step and class (128).
    lr : float
        Adam learning rate of both networks (1e-4).
    grad_clip : float
        Global gradient-norm bound before each Adam step.
    d_skip : float
        Discriminator steps are skipped while its loss is below this (0.3^2).
    objective : "lsgan" or "literal"
        Generator loss (module notes).
    mu_1 : float
        Initial intensity, seeds / px^3.
    window : float
        Radius of the training window (ball), px.
    cutouts_per_realisation : int
        Cutouts sharing one realisation of the seeds (module notes).
    temperature : float
        Softmax temperature of the soft maps, px.
    candidates : int
        Cells per pixel in the generator's soft cutouts.
    keep : int
        Channels of a cutout (12).
    augment : (float, float)
        Bounds of the uniform factors on the fitted sections' ``r`` and ``D``.
    p_max : float
        Largest cutout offset, px.
    hidden : tuple of int
        Hidden widths of ``G_net``.
    d_widths : tuple of int
        Convolution widths of the discriminator.
    seed : int
        Master seed (weights, every draw).
    """

    epochs: int = 200
    steps: int = 100
    batch_g: int = 64
    batch_d: int = 128
    lr: float = 1e-4
    grad_clip: float = 1.0
    d_skip: float = 0.09
    objective: str = "lsgan"
    mu_1: float = MU_1
    window: float = WINDOW_HALF
    cutouts_per_realisation: int = 32
    temperature: float = 1.0
    candidates: int = 16
    keep: int = 12
    augment: tuple[float, float] = (0.8, 1.2)
    p_max: float = P_MAX
    hidden: tuple[int, ...] = (64, 64)
    d_widths: tuple[int, ...] = (8, 16, 32)
    seed: int = 0

    def __post_init__(self) -> None:
        ints = ("epochs", "steps", "batch_g", "batch_d", "cutouts_per_realisation", "candidates", "keep")
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise StereograinError(f"{name} must be a positive integer, got {v!r}")
        if self.epochs > 100000 or self.steps > 100000 or max(self.batch_g, self.batch_d) > 4096:
            raise StereograinError("epochs, steps (<= 100000) or batch sizes (<= 4096) are absurdly large")
        for name in ("lr", "grad_clip", "mu_1", "window", "temperature", "p_max"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise StereograinError(f"{name} must be a positive number, got {v!r}")
        if not (0 <= self.d_skip < 10):
            raise StereograinError(f"d_skip must lie in [0, 10), got {self.d_skip!r}")
        if self.objective not in ("lsgan", "literal"):
            raise StereograinError(f"objective must be 'lsgan' or 'literal', got {self.objective!r}")
        lo, hi = self.augment
        if not (0 < lo <= hi):
            raise StereograinError(f"augment needs 0 < low <= high, got {self.augment!r}")
        reach = math.hypot(CUTOUT + self.p_max, CUTOUT / 2.0)
        if self.window < reach:
            raise StereograinError(
                f"the training window (radius {self.window:g} px) must contain every cutout "
                f"(up to {reach:.0f} px from the centre for p_max = {self.p_max:g})"
            )
        if self.window > 1000:
            raise StereograinError(f"a training window of radius {self.window:g} px is absurd (the paper uses 128)")
        if self.keep > self.candidates * CUTOUT * CUTOUT:
            raise StereograinError("keep must not exceed the number of candidate cells per cutout")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kw)


# ----------------------------------------------------------------------------- data


def usable_sections(sections: Sequence[FittedSection], px_nm: float = 50.0) -> list[FittedSection]:
    """The fitted sections the GAN trains on: those not known to be off-centre, in px of ``px_nm``.

    Raises a one-line error if none is left or the pixel sizes differ.
    """
    secs = list(sections)
    if not secs:
        raise StereograinError("the sections file holds no fitted section; run `stereograin sections fit` first")
    steps = {round(float(s.step_nm), 6) for s in secs}
    if steps != {round(float(px_nm), 6)}:
        raise StereograinError(
            f"the sections have pixel sizes {sorted(steps)} nm but the grain model works in {px_nm:g} nm pixels; "
            f"refit them with `stereograin sections fit`, which resamples every map to {px_nm:g} nm pixels"
        )
    central = [s for s in secs if s.central is not False]
    if not central:
        raise StereograinError(
            "no central section: every fitted section failed the central-section test, and off-centre sections "
            "carry no radial grain shape; fit central maps (see `stereograin sections inspect`)"
        )
    return central


def _sections_digest(sections: Sequence[FittedSection]) -> str:
    text = json.dumps([s.to_dict() for s in sections], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- cutouts


def _random_rotations(m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` uniformly random rotations (unit quaternions from normals), (m, 3, 3)."""
    q = rng.standard_normal((m, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


@dataclass
class _Realisation:
    """One draw of the seed process with its markers (no gradient) and ``m`` cutouts."""

    positions: np.ndarray  # (n, 3)
    features: np.ndarray  # (n, 60)
    Q: np.ndarray  # (n, 3, 3)
    M: np.ndarray  # (n, 3, 3)
    r: np.ndarray  # (n,)
    points: np.ndarray  # (m, P, 3)


def _realisation(net: MarkerNet, cfg: TrainConfig, mu: float, m: int, rng: np.random.Generator) -> _Realisation:
    seeds = poisson_seeds(cfg.window, mu, rng)
    if len(seeds) <= net.kappa:
        raise StereograinError(f"the intensity fell to {mu:.3g} per px^3: too few seeds in the training window")
    feats, Q = neighbour_features(seeds.positions, seeds.noise, seeds.gamma, net.kappa, return_frames=True)
    with torch.inference_mode():
        D, r = net.markers(feats)
    D64 = D.double().numpy()
    M = frame_metrics(Q, D64)
    p = cfg.p_max * (1.0 - rng.random(m))
    pts = rotated_cutout_points(p, _random_rotations(m, rng))
    return _Realisation(seeds.positions, feats, Q, M, r.double().numpy(), pts)


def _pattern_sizes(batch: int, cfg: TrainConfig) -> list[int]:
    """Cutouts cut from each drawn seed pattern: ``cutouts_per_realisation`` each, the rest last."""
    per = cfg.cutouts_per_realisation
    return [per] * (batch // per) + ([batch % per] if batch % per else [])


def _exact_labels(real: _Realisation) -> np.ndarray:
    """Exact 0-based cell of every cutout pixel, (m, P)."""
    m, P, _ = real.points.shape
    return exact_candidates(real.points.reshape(-1, 3), real.positions, real.M, real.r, 1).reshape(m, P)


def _fake_onehot(net: MarkerNet, cfg: TrainConfig, mu: float, batch: int, rng: np.random.Generator):
    """``batch`` generated cutouts rounded to one-hot, with their visible grains per px^2."""
    labels = [_exact_labels(_realisation(net, cfg, mu, m, rng)) for m in _pattern_sizes(batch, cfg)]
    return onehot_cutouts(np.concatenate(labels), cfg.keep)


@dataclass(frozen=True)
class _SectionTable:
    """The fitted sections' cells concatenated: seeds (N, 2), unit radial ``u`` (N, 2), D (N, 2), r (N,), ranges."""

    seeds: np.ndarray
    u: np.ndarray
    D: np.ndarray
    r: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def of(cls, sections: Sequence[FittedSection]) -> "_SectionTable":
        seeds = np.concatenate([s.seeds for s in sections])
        norm = np.linalg.norm(seeds, axis=1, keepdims=True)
        u = np.where(norm > 1e-9, seeds / np.maximum(norm, 1e-300), np.array([1.0, 0.0]))
        counts = np.array([s.n for s in sections])
        end = np.cumsum(counts)
        return cls(seeds, u, np.concatenate([s.D for s in sections]), np.concatenate([s.r for s in sections]),
                   end - counts, end)


def _real_onehot(table: _SectionTable, cfg: TrainConfig, batch: int, rng: np.random.Generator):
    """``batch`` cutouts of augmented fitted sections (Eq. 14-15) rounded to one-hot.

    Each cutout picks a section, multiplies each ``r_i`` and each ``D_i`` entry
    by an independent ``U(low, high)`` factor (the paper's augmentation), and is
    labelled exactly at ``R_beta (x + p, y - 16.5)``. The metric of the 2D
    restricted cell is ``M = D_0 u u^T + D_1 u_perp u_perp^T`` with ``u`` the
    unit radial direction of its seed.
    """
    pick = rng.integers(0, len(table.start), batch)
    p = cfg.p_max * (1.0 - rng.random(batch))
    beta = rng.uniform(0.0, 2.0 * math.pi, batch)
    idx = np.concatenate([np.arange(table.start[i], table.end[i]) for i in pick])
    lo, hi = cfg.augment
    D = table.D[idx] * rng.uniform(lo, hi, (len(idx), 2))
    r = table.r[idx] * rng.uniform(lo, hi, len(idx))
    u = table.u[idx]
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    M = D[:, 0, None, None] * u[:, :, None] * u[:, None, :] + D[:, 1, None, None] * v[:, :, None] * v[:, None, :]
    counts = table.end[pick] - table.start[pick]
    end = np.cumsum(counts)
    pts = cutout_grid(p, beta)
    return onehot_cutouts(label_cutouts(pts, table.seeds[idx], M, r, end - counts, end, lam=D.min(axis=1)), cfg.keep)


def _fake_soft(net: MarkerNet, cfg: TrainConfig, mu: float, batch: int, rng: np.random.Generator):
    """``batch`` soft generated cutouts, differentiable in the net's parameters."""
    seeds, Ms, rs, cands, pts = [], [], [], [], []
    offset = 0
    for m in _pattern_sizes(batch, cfg):
        real = _realisation(net, cfg, mu, m, rng)
        k = min(cfg.candidates, len(real.positions))
        cand = exact_candidates(real.points.reshape(-1, 3), real.positions, real.M, real.r, k).reshape(m, -1, k)
        mark = np.zeros(len(real.positions), bool)
        mark[cand] = True
        used = np.flatnonzero(mark)
        local = (np.cumsum(mark) - 1)[cand]
        D, r = net.markers(real.features[used])
        seeds.append(torch.as_tensor(real.positions[used], dtype=D.dtype))
        Ms.append(metrics(real.Q[used], D))
        rs.append(r)
        cands.append(local.reshape(cand.shape) + offset)
        pts.append(real.points)
        offset += len(used)
    return soft_cutouts(
        np.concatenate(pts), torch.cat(seeds), torch.cat(Ms), torch.cat(rs), np.concatenate(cands),
        cfg.temperature, cfg.keep,
    )


# ----------------------------------------------------------------------------- state


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(epoch),)))


def _flat_state(G: MarkerNet, D: Discriminator, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer):
    tensors: dict[str, torch.Tensor] = {}
    for prefix, mod in (("G.", G), ("D.", D)):
        for k, v in mod.state_dict().items():
            tensors[prefix + k] = v.detach().cpu().contiguous()
    groups = {}
    for name, opt in (("optG", opt_g), ("optD", opt_d)):
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"{name}.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
        groups[name] = sd["param_groups"]
    return tensors, groups


def _load_flat_state(tensors, groups, G, D, opt_g, opt_d) -> None:
    G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")})
    D.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D.")})
    for name, opt in (("optG", opt_g), ("optD", opt_d)):
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith(name + "."):
                _, pid, k = key.split(".", 2)
                state.setdefault(int(pid), {})[k] = v
        opt.load_state_dict({"state": state, "param_groups": groups[name]})


def _write_checkpoint(folder: Path, epoch: int, tensors, meta: dict[str, Any], keep: int = 2) -> None:
    """``folder/checkpoints/epoch_NNNN`` written in a temporary folder, then renamed (atomic)."""
    from safetensors.torch import save_file

    root = folder / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".epoch.", suffix=".tmp", dir=root))
    try:
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = dict(meta, sha256=hashlib.sha256((tmp / "state.safetensors").read_bytes()).hexdigest())
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        tmp.rename(root / f"epoch_{epoch:04d}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = sorted(p for p in root.glob("epoch_[0-9][0-9][0-9][0-9]") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(folder: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest complete checkpoint folder and its metadata (``None`` if there is none)."""
    root = folder / "checkpoints"
    done = sorted(p for p in root.glob("epoch_[0-9][0-9][0-9][0-9]") if p.is_dir()) if root.is_dir() else []
    if not done:
        return None, None
    path = done[-1]
    meta = read_json(path / "state.json", "checkpoint")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise StereograinError(f"checkpoint {path} is not a stereograin GAN checkpoint; remove it to start over")
    return path, meta


def _read_checkpoint_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = path / "state.safetensors"
    if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != meta.get("sha256"):
        raise StereograinError(
            f"checkpoint {path} is corrupt (its weights do not match the recorded SHA-256); "
            f"remove the folder {path.name} to resume from the one before"
        )
    try:
        return load_file(str(f))
    except (SafetensorError, OSError) as exc:
        raise StereograinError(f"checkpoint {path} cannot be read ({str(exc).splitlines()[0][:200]})") from None


# ----------------------------------------------------------------------------- loop


def _clip_and_step(params, opt: torch.optim.Optimizer, clip: float) -> None:
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def train_step(
    G: MarkerNet,
    D: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    sections: "Sequence[FittedSection] | _SectionTable",
    cfg: TrainConfig,
    mu: float,
    rng: np.random.Generator,
) -> tuple[float, float, bool, float, float]:
    """One generator and one discriminator step (module notes).

    ``sections`` are the usable fitted sections (or their precomputed table).

    Returns
    -------
    loss_g, loss_d : float
    d_updated : bool
        Whether the discriminator took its Adam step (loss above ``d_skip``).
    ng_gt, ng_gen : float
        Mean visible grains per px^2 of the data and model cutouts of the discriminator step.
    """
    table = sections if isinstance(sections, _SectionTable) else _SectionTable.of(sections)
    # --- generator step (D in eval mode: its running batch-norm statistics)
    G.train()
    D.eval()
    fake = _fake_soft(G, cfg, mu, cfg.batch_g, rng)
    score = D(fake.images.permute(0, 3, 1, 2))
    loss_g = -(score**2).mean() if cfg.objective == "literal" else ((score - 1.0) ** 2).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    _clip_and_step(G.parameters(), opt_g, cfg.grad_clip)
    # --- discriminator step on one-hot cutouts, real and fresh fakes in one batch
    real = _real_onehot(table, cfg, cfg.batch_d, rng)
    fake_d = _fake_onehot(G, cfg, mu, cfg.batch_d, rng)
    D.train()
    out_d = D(torch.cat([real.images, fake_d.images]).permute(0, 3, 1, 2))
    loss_d = ((out_d[: cfg.batch_d] - 1.0) ** 2).mean() + (out_d[cfg.batch_d :] ** 2).mean()
    updated = float(loss_d.item()) > cfg.d_skip
    opt_d.zero_grad(set_to_none=True)
    if updated:
        loss_d.backward()
        _clip_and_step(D.parameters(), opt_d, cfg.grad_clip)
    return float(loss_g.item()), float(loss_d.item()), updated, float(real.visible.mean()), float(fake_d.visible.mean())


def train(
    sections: Sequence[FittedSection],
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> GrainModel:
    """Train (or resume training) a grain model on fitted 2D sections (Algorithm 2).

    Parameters
    ----------
    sections : sequence of FittedSection
        The 2D ground truth (50 nm px); sections known to be off-centre are left out.
    out : path
        Output folder (module notes). If it holds checkpoints of the same
        data and configuration, training resumes after the newest; a larger
        ``config.epochs`` extends a finished run.
    config : TrainConfig
    progress : bool
        Show a progress bar with epoch, losses and ``mu``.
    on_step : callable ``(epoch, step)``, optional
        Called after every step (0-based), e.g. to stop a run.

    Returns
    -------
    GrainModel
        The model after the last epoch (also written to ``out``).
    """
    from tqdm.auto import tqdm

    secs = usable_sections(sections)
    cfg = config
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise StereograinError(f"output {folder} is a file; give a folder for the grain model")
    folder.mkdir(parents=True, exist_ok=True)
    digest = _sections_digest(secs)

    G = MarkerNet(hidden=cfg.hidden, seed=cfg.seed)
    D = Discriminator(in_channels=cfg.keep, widths=cfg.d_widths, seed=cfg.seed + 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr)
    mu, start, log = float(cfg.mu_1), 0, []

    path, meta = _latest_checkpoint(folder)
    if meta is not None:
        same = {k: v for k, v in cfg.to_dict().items() if k != "epochs"}
        theirs = {k: v for k, v in meta.get("config", {}).items() if k != "epochs"}
        if theirs != same or meta.get("sections_sha256") != digest:
            what = "sections" if meta.get("sections_sha256") != digest else "settings"
            raise StereograinError(
                f"{folder} holds a training run with other {what}; resume with the same ones or use a new output folder"
            )
        _load_flat_state(_read_checkpoint_tensors(path, meta), meta["optimizers"], G, D, opt_g, opt_d)
        mu, start, log = float(meta["mu"]), int(meta["epoch"]), list(meta["log"])
        if progress:
            print(f"resuming after epoch {start} from {path}", flush=True)

    table = _SectionTable.of(secs)
    bar = tqdm(total=cfg.epochs * cfg.steps, initial=start * cfg.steps, unit="step", disable=not progress,
               desc="GAN", dynamic_ncols=True)
    try:
        for epoch in range(start, cfg.epochs):
            rng = _epoch_rng(cfg.seed, epoch)
            t0 = time.perf_counter()
            sums = np.zeros(3)
            ng_gt = ng_gen = 0.0
            for step in range(cfg.steps):
                loss_g, loss_d, updated, real_vis, fake_vis = train_step(G, D, opt_g, opt_d, table, cfg, mu, rng)
                sums += (loss_g, loss_d, float(updated))
                ng_gt += real_vis
                ng_gen += fake_vis
                bar.update(1)
                bar.set_postfix_str(
                    f"epoch {epoch + 1}/{cfg.epochs} G {loss_g:.3f} D {loss_d:.3f} mu {mu:.5f}", refresh=False
                )
                if on_step is not None:
                    on_step(epoch, step)
            # --- intensity update (Eq. 13) from this epoch's visible grains per px^2
            row = [epoch + 1, *(sums / cfg.steps).tolist(), mu, ng_gt / cfg.steps, ng_gen / cfg.steps,
                   time.perf_counter() - t0]
            mu = mu * (0.5 + 0.5 * ng_gt / max(ng_gen, 1e-12))
            log.append(row)
            _finish_epoch(folder, epoch + 1, G, D, opt_g, opt_d, mu, cfg, digest, log, secs)
    finally:
        bar.close()
    return _model(G, mu, cfg, digest, log, secs)


def _model(G: MarkerNet, mu: float, cfg: TrainConfig, digest: str, log: list, secs: Sequence[FittedSection]) -> GrainModel:
    G.eval()
    return GrainModel(
        G, mu, 50.0,
        {
            "trained_by": f"stereograin {__version__} grains fit",
            "epochs": len(log),
            "config": cfg.to_dict(),
            "sections": {"count": len(secs), "files": sorted({s.file for s in secs}), "sha256": digest},
            "final_log": dict(zip(LOG_COLUMNS, log[-1])) if log else {},
        },
    )


def _finish_epoch(folder, epoch, G, D, opt_g, opt_d, mu, cfg, digest, log, secs) -> None:
    """Checkpoint, model, CSV log and plot after a finished epoch (each atomic)."""
    tensors, groups = _flat_state(G, D, opt_g, opt_d)
    meta = {
        "format": CHECKPOINT_FORMAT, "format_version": 1, "stereograin_version": __version__,
        "epoch": epoch, "mu": mu, "config": cfg.to_dict(), "sections_sha256": digest,
        "optimizers": groups, "log": log,
    }
    _write_checkpoint(folder, epoch, tensors, meta)
    _model(G, mu, cfg, digest, log, secs).save(folder)
    G.train()
    write_table(folder / "log.csv", LOG_COLUMNS, np.asarray(log, dtype=np.float64))
    plot_training(np.asarray(log, dtype=np.float64), folder / "training.png")


def plot_training(log: np.ndarray, path: str | Path) -> None:
    """Losses and intensity against epoch (two panels), written atomically as PNG.

    ``log`` is (epochs, 8) with the columns of ``log.csv``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = np.atleast_2d(log)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    e = log[:, 0]
    a.plot(e, log[:, 1], label="generator")
    a.plot(e, log[:, 2], label="discriminator")
    a.axhline(0.09, color="0.6", lw=0.8, ls="--", label="D skip threshold")
    a.set_xlabel("epoch")
    a.set_ylabel("mean loss")
    a.legend(frameon=False)
    b.plot(e, log[:, 4], color="C2", label="intensity mu")
    b.set_xlabel("epoch")
    b.set_ylabel("mu (seeds / px$^3$)")
    b2 = b.twinx()
    b2.plot(e, log[:, 5], color="C3", ls=":", label="visible grains, data")
    b2.plot(e, log[:, 6], color="C4", ls=":", label="visible grains, model")
    b2.set_ylabel("visible grains / px$^2$")
    b.legend(handles=b.get_lines() + b2.get_lines(), frameon=False, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
