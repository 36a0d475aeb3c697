"""Particle libraries: many particles, one derived random stream each, resumable, parallel.

Particle ``i`` of a library with master seed ``s`` is drawn from the stream
``SeedSequence(s, spawn_key=(i,))``, and nothing it computes depends on the
number of threads or workers (:func:`~stereograin.grains.generator.sample_markers`
cuts its batches for a fixed thread count; labelling is exact), so particle
``i`` is the same made alone, serially, or on any number of local or dask
workers.

Layout of ``OUT``::

    manifest.json            what the library is: seed, formats, voxel size, models (SHA-256)
    models/shell_model.json  the models it was made with (workers load them from here)
    models/grain_model/
    particle_000000/         one folder per particle, renamed into place when complete
        particle.json        the analytic particle (stereograin.particle)
        particle.csv         one row: the particle's summary (the row of particles.csv)
        grains.csv           one row per grain
        labels.tif           the label volume (uint32, 0 = outside), unless --format analytic
        ...                  whatever --format adds (labels.zarr/.h5/.vti, grains.vtp/.stl/.ply, mesh.msh/.inp/.vtu,
                             tets.msh/.inp/.vtu)
    particles.csv            all finished particles' rows, written at the end of a run
    preview.png              renderings of the first particles (optional)

Resuming. A particle folder appears only complete (it is built under a
temporary name and renamed), so a rerun skips every ``particle_NNNNNN`` it
finds and makes the rest (and removes the half-built ``.particle_*.tmp``
folders a killed run leaves); a rerun with another seed, other formats, voxel
size or models is refused (the number of particles may change). Two runs
must not write into one library at the same time. A dask cluster
(``scheduler``) must see ``OUT`` on a shared file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .errors import StereograinError
from .io import read_json, read_table, write_json, write_table

__all__ = [
    "FORMATS",
    "PARTICLE_COLUMNS",
    "LibraryConfig",
    "parse_formats",
    "particle_rng",
    "particle_folder",
    "make_library_particle",
    "model_digest",
    "generate_library",
    "read_library_particle",
    "finished_particles",
    "LAYOUTS",
]

MANIFEST = "manifest.json"
LIBRARY_FORMAT = "stereograin.library"
LIBRARY_FORMAT_VERSION = 2

#: ``--format`` names and the file each adds to a particle folder (``tif`` is always written
#: unless the library is ``analytic``).
FORMATS: dict[str, str | None] = {
    "analytic": None,
    "tif": "labels.tif",
    "zarr": "labels.zarr",
    "h5": "labels.h5",
    "vti": "labels.vti",
    "vtp": "grains.vtp",
    "stl": "grains.stl",
    "ply": "grains.ply",
    "msh": "mesh.msh",
    "inp": "mesh.inp",
    "vtu": "mesh.vtu",
    "tet-msh": "tets.msh",
    "tet-inp": "tets.inp",
    "tet-vtu": "tets.vtu",
}
_ALIASES = {"tiff": "tif", "hdf5": "h5", "vtk": "vti", "gmsh": "msh", "abaqus": "inp"}

#: Library layouts: a folder per particle, or one chunked Zarr store (:mod:`stereograin.library_store`).
LAYOUTS = ("folders", "zarr")

#: Columns of ``particle.csv`` / ``particles.csv`` (lengths um, areas um^2, volumes um^3).
#: Voxel-based columns are NaN in an ``analytic`` library (no voxels are made).
PARTICLE_COLUMNS = (
    "particle",
    "grain_count",
    "volume_um3",
    "surface_area_um2",
    "sphericity",
    "grain_boundary_area_per_volume_um_inv",
    "mean_grain_volume_um3",
    "mean_grain_diameter_um",
    "shell_volume_um3",
    "shell_surface_area_um2",
    "shell_sphericity",
    "shell_d_max_um",
    "shell_d_min_um",
)


def particle_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of particle ``index`` in a library with master ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def particle_folder(out: str | Path, index: int) -> Path:
    """``OUT/particle_NNNNNN`` of particle ``index``."""
    return Path(out) / f"particle_{int(index):06d}"


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical format names from ``"zarr,vtk,msh"`` (or a list); ``tif`` is added unless analytic.

    Raises
    ------
    StereograinError
        For an unknown name, or ``analytic`` mixed with voxel formats.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = []
    for raw in items:
        name = str(raw).strip().lower().lstrip(".")
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name not in FORMATS:
            raise StereograinError(f"unknown format {raw.strip()!r}; choose from {', '.join(FORMATS)} (comma-separated)")
        if name not in names:
            names.append(name)
    if not names:
        raise StereograinError("no format given; e.g. --format tif or --format analytic")
    if "analytic" in names:
        if len(names) > 1:
            raise StereograinError("--format analytic writes parameters only; drop it or drop the voxel and mesh formats")
        return ("analytic",)
    return tuple(["tif"] + [n for n in names if n != "tif"])


@dataclass(frozen=True)
class LibraryConfig:
    """What every particle of a library is made with (recorded in the manifest).

    Attributes
    ----------
    seed : int
        Master seed.
    formats : tuple of str
        Canonical names (:func:`parse_formats`).
    voxel_size_um : float
        Voxel edge of the label volumes and meshes (um).
    com_spacing_px : float
        Grid spacing of the grains' centres of mass (px; :mod:`stereograin.particle`).
    layout : str
        ``folders`` (a folder per particle) or ``zarr`` (one chunked Zarr store,
        :mod:`stereograin.library_store`; formats ``analytic``, or label volumes
        in the store: ``tif``/``zarr``, recorded as ``zarr``).
    """

    seed: int
    formats: tuple[str, ...] = ("tif",)
    voxel_size_um: float = 0.05
    com_spacing_px: float = 2.0
    layout: str = "folders"

    def __post_init__(self) -> None:
        v = float(self.voxel_size_um)
        if not (v > 0 and math.isfinite(v)):
            raise StereograinError(f"voxel size must be positive, got {self.voxel_size_um!r} um")
        if v < 0.005:
            raise StereograinError(f"voxel size {v:g} um is below 5 nm: a 10 um particle would hold 8e9 voxels; use e.g. 0.05um")
        h = float(self.com_spacing_px)
        if not (0 < h <= 10 and math.isfinite(h)):
            raise StereograinError(f"centre-of-mass spacing must be in (0, 10] px, got {self.com_spacing_px!r}")
        formats = parse_formats(self.formats)
        if self.layout not in LAYOUTS:
            raise StereograinError(f"unknown layout {self.layout!r}; choose {' or '.join(LAYOUTS)}")
        if self.layout == "zarr" and formats != ("analytic",):
            other = [f for f in formats if f not in ("tif", "zarr")]
            if other:
                raise StereograinError(
                    f"--layout zarr stores analytic particles and label volumes only, not {', '.join(other)}; "
                    "use --layout folders for meshes and other volume formats"
                )
            formats = ("zarr",)
        object.__setattr__(self, "formats", formats)

    @property
    def voxelised(self) -> bool:
        return self.formats != ("analytic",)


# ------------------------------------------------------------------ one particle
_MODELS: dict[str, tuple[Any, Any]] = {}


def _models(models_dir: Path) -> tuple[Any, Any]:
    """The library's shell and grain models, loaded once per process."""
    from .grains.model import GrainModel
    from .shell import ShellModel

    key = str(models_dir)
    if key not in _MODELS:
        _MODELS[key] = (ShellModel.load(models_dir / "shell_model.json"), GrainModel.load(models_dir / "grain_model"))
    return _MODELS[key]


def _summary_row(
    index: int, particle: Any, labels: np.ndarray | None, origin_um: np.ndarray | None, config: LibraryConfig
) -> tuple[np.ndarray, tuple[list[str], np.ndarray]]:
    """The particle's row of ``particles.csv`` and its grain table (from the voxels if any, else analytic)."""
    from .descriptors import describe_coefficients
    from .export import GRAIN_TABLE_COLUMNS, grain_table, summary_from_grain_table

    um = particle.ct_voxel_nm / 1000.0
    shell = describe_coefficients(particle.coefficients[None], level=3)
    shell_cols = [
        shell["volume"][0] * um**3, shell["surface_area"][0] * um**2, shell["sphericity"][0],
        shell["d_max"][0] * um, shell["d_min"][0] * um,
    ]
    if labels is not None:
        table = grain_table(labels, config.voxel_size_um, origin_um)
        s = summary_from_grain_table(table[1])  # outer voxel faces x 2/3 v^2 for the surface area
        row = [s["grain_count"], s["volume_um3"], s["surface_area_um2"], s["sphericity"],
               s["grain_boundary_area_per_volume_um_inv"], s["mean_grain_volume_um3"], s["mean_grain_diameter_um"]]
    else:
        # analytic: grain volumes and centres from the assembly grid, no surfaces
        px = particle.px_um
        vol = particle.volumes_px3 * px**3
        diam = np.cbrt(6.0 * vol / math.pi)
        nan = float("nan")
        row = [particle.n_grains, vol.sum(), nan, nan, nan, vol.mean(), diam.mean()]
        data = np.column_stack([
            np.arange(1, particle.n_grains + 1), vol, particle.centres_px * px, diam,
            np.full(particle.n_grains, nan), np.full(particle.n_grains, nan),
        ])
        table = (list(GRAIN_TABLE_COLUMNS), data)
    return np.array([index, *row, *shell_cols], dtype=np.float64), table


def make_library_particle(out: str | Path, index: int, config: LibraryConfig) -> np.ndarray:
    """Make particle ``index`` of the library in ``out`` (models from ``out/models``) and return its row.

    Idempotent: a particle whose folder exists is not remade; its row is read back.
    The folder is written under a temporary name and renamed when complete, so an
    interruption (or a full disk) leaves nothing under ``particle_NNNNNN``.

    Returns
    -------
    (len(PARTICLE_COLUMNS),) float64
    """
    from .export import write_hex_mesh, write_surface_mesh, write_volume
    from .particle import make_particle
    from .tetmesh import write_tet_mesh

    out = Path(out)
    final = particle_folder(out, index)
    if final.is_dir():
        return read_table(final / "particle.csv")[1][0]
    shell_model, grain_model = _models(out / "models")
    particle = make_particle(
        shell_model, grain_model, particle_rng(config.seed, index), config.com_spacing_px,
        provenance={"library_seed": int(config.seed), "index": int(index), "stereograin_version": __version__},
    )
    with built_folder(final, f"particle {index} into {out}") as tmp:
        tmp.mkdir()
        particle.save(tmp / "particle.json")
        labels = origin = None
        if config.voxelised:
            labels, origin = particle.label_volume(config.voxel_size_um)
            for fmt in config.formats:
                name = FORMATS[fmt]
                v = config.voxel_size_um
                if name.startswith("labels."):
                    write_volume(tmp / name, labels, v, origin)
                elif name.startswith("grains."):
                    write_surface_mesh(tmp / name, labels, v, origin)
                elif name.startswith("tets."):
                    write_tet_mesh(tmp / name, labels, v, origin)
                else:
                    write_hex_mesh(tmp / name, labels, v, origin)
        row, (cols, data) = _summary_row(index, particle, labels, origin, config)
        write_table(tmp / "grains.csv", cols, data)
        write_table(tmp / "particle.csv", list(PARTICLE_COLUMNS), row[None])
    return row


@contextlib.contextmanager
def built_folder(final: Path, what: str) -> Iterator[Path]:
    """Build folder ``final`` under a temporary name beside it, renamed into place when the block ends.

    Yields the temporary path (not yet created). On any error the temporary
    folder is removed, so ``final`` appears whole or not at all; an
    ``OSError`` (a full disk, a read-only folder) becomes a one-line error
    naming ``what``. If another worker renamed ``final`` into place first,
    its copy is kept.
    """
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # another worker may have finished the same folder first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StereograinError(f"cannot write {what} ({exc.strerror or exc}); is the disk full or the folder read-only?") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------ the library
def _sha256_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of ``folder/shell_model.json`` and of ``folder/grain_model/`` (weights and JSON together)."""
    return {
        "shell_model": _sha256_files([folder / "shell_model.json"]),
        "grain_model": _sha256_files((folder / "grain_model").iterdir()),
    }


def model_digest(kind: str, model: Any) -> str:
    """SHA-256 of a model as a library manifest records it (``kind``: ``shell_model`` or ``grain_model``).

    The hash is of the files the model saves to (parameters, weights, and the
    stereograin version that wrote them).
    """
    if kind not in ("shell_model", "grain_model"):
        raise StereograinError(f"model kind must be 'shell_model' or 'grain_model', got {kind!r}")
    with tempfile.TemporaryDirectory(prefix="stereograin-digest-") as tmp:
        path = Path(tmp) / ("shell_model.json" if kind == "shell_model" else "grain_model")
        model.save(path)
        return _sha256_files([path] if kind == "shell_model" else path.iterdir())


def _install_models(out: Path, shell_model: Any, grain_model: Any) -> dict[str, str]:
    """Write the models into ``out/models`` (first run), or check they are the ones there; return their SHA-256."""
    models = out / "models"
    tmp = Path(tempfile.mkdtemp(prefix=".models.", dir=out))
    try:
        shell_model.save(tmp / "shell_model.json")
        grain_model.save(tmp / "grain_model")
        digests = _digests(tmp)
        if not models.exists():
            os.replace(tmp, models)
        elif _digests(models) != digests:
            raise StereograinError(f"{models} holds other models than the ones given; use the same ones or another folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return digests


def _check_resume(out: Path, manifest: dict[str, Any]) -> None:
    old = read_json(out / MANIFEST, "library manifest")
    if not isinstance(old, dict) or old.get("format") != LIBRARY_FORMAT:
        raise StereograinError(f"{out} holds a {MANIFEST} that is not a stereograin library's; choose another folder")
    if isinstance(old.get("config"), dict):
        old["config"] = {"layout": "folders", **old["config"]}  # libraries made before layouts existed
    for key, what in (("config", "settings"), ("model_sha256", "models")):
        if old.get(key) != manifest[key]:
            raise StereograinError(
                f"{out} is a library made with other {what} ({old.get(key)} there, {manifest[key]} now); "
                "use the same ones to resume, or another output folder"
            )


def _finished(out: Path, n: int) -> set[int]:
    done = set()
    for p in out.glob("particle_*"):
        tail = p.name[len("particle_"):]
        if p.is_dir() and tail.isdigit() and int(tail) < n:
            done.add(int(tail))
    return done


#: Memory a worker process takes (torch, numba, a 10 um particle's grids), bytes.
_WORKER_BYTES = 1.5e9


def _default_workers() -> int:
    """All cores, but no more workers than the available memory holds (about 1.5 GB each)."""
    cores = os.cpu_count() or 1
    try:
        import psutil

        fit = int(psutil.virtual_memory().available // _WORKER_BYTES)
    except ImportError:  # pragma: no cover - psutil comes with dask.distributed
        return cores
    return max(1, min(cores, fit))


def _limit_threads() -> None:
    """Worker processes: one thread each (the pool provides the parallelism)."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    threadpool_limits(1)


def _task(out: Path, task: int, config: LibraryConfig, n: int) -> np.ndarray:
    """One unit of work, its rows (k, C): particle ``task`` (folders) or block ``task`` (zarr layout)."""
    if config.layout == "zarr":
        from .library_store import make_block

        return make_block(out, task, n, config)
    return make_library_particle(out, task, config)[None]


def _run_local(out: Path, todo: list[int], config: LibraryConfig, n: int, workers: int) -> Iterator[np.ndarray]:
    """Rows of the tasks ``todo`` as they finish, made by ``workers`` local processes (1: in this one)."""
    if workers == 1:
        for t in todo:
            yield _task(out, t, config, n)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: torch's and numba's thread pools do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads) as pool:
        yield from _bounded(lambda t: pool.submit(_task, out, t, config, n), todo, 4 * workers,
                            lambda fs: wait(fs, return_when=FIRST_COMPLETED)[0])


def _dask_task(out: Path, task: int, config: LibraryConfig, n: int) -> np.ndarray:
    """:func:`_task` in a dask worker thread: one numba thread (numba's count is per thread)."""
    import numba

    numba.set_num_threads(1)
    return _task(out, task, config, n)


def _run_dask(out: Path, todo: list[int], config: LibraryConfig, n: int, scheduler: str) -> Iterator[np.ndarray]:
    """Rows of the tasks ``todo`` made on the dask.distributed cluster at ``scheduler``."""
    from distributed import Client, wait

    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise StereograinError(f"cannot reach the dask scheduler at {scheduler} ({exc}); start it or check the address") from None
    with client:
        width = 4 * max(1, sum(client.nthreads().values()))
        yield from _bounded(lambda t: client.submit(_dask_task, out, t, config, n, pure=False), todo, width,
                            lambda fs: wait(list(fs), return_when="FIRST_COMPLETED").done)


def _bounded(submit: Callable[[int], Any], todo: list[int], width: int, wait_some: Callable[[set], set]) -> Iterator[np.ndarray]:
    """Keep at most ``width`` tasks in flight (a million futures at once would not fit in memory)."""
    it = iter(todo)
    running: set = set()
    try:
        for i in it:
            running.add(submit(i))
            if len(running) >= width:
                done = wait_some(running)
                running -= done
                for f in done:
                    yield f.result()
        while running:
            done = wait_some(running)
            running -= done
            for f in done:
                yield f.result()
    finally:
        for f in running:
            f.cancel()


def generate_library(
    out: str | Path,
    n: int,
    config: LibraryConfig,
    shell_model: Any,
    grain_model: Any,
    shell_model_name: str = "paper",
    grain_model_name: str = "default",
    workers: int | None = None,
    scheduler: str | None = None,
    preview: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Make (or complete) a library of ``n`` particles in folder ``out``.

    Parameters
    ----------
    out : path
        Library folder (created; must not be a file). See the module notes for its layout.
    n : int
        Number of particles (indices ``0..n-1``).
    config : LibraryConfig
        Seed, formats, voxel size, centre-of-mass spacing.
    shell_model : ShellModel
    grain_model : GrainModel
    shell_model_name, grain_model_name : str
        Where the models came from (recorded in the manifest).
    workers : int, optional
        Local worker processes (default: all cores, as many as the available
        memory holds at about 1.5 GB each; 1 runs in this process).
    scheduler : str, optional
        Address of a running dask.distributed scheduler (``tcp://host:8786``);
        overrides ``workers``.
    preview : int
        Render the first ``preview`` particles into ``preview.png`` (0: none).
    progress : bool
        Show a progress bar (particles per second and ETA).

    Returns
    -------
    dict
        The manifest, with ``made`` (particles made by this call) and ``seconds``.
    """
    out = Path(out).absolute()  # workers (dask) may run in another working directory
    if out.exists() and not out.is_dir():
        raise StereograinError(f"output {out} is a file; give a folder for the library")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 100_000_000:
        raise StereograinError(f"number of particles must be in 1..1e8, got {n!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise StereograinError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(preview, (int, np.integer)) or preview < 0:
        raise StereograinError(f"preview must be a number of particles >= 0, got {preview!r}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StereograinError(f"cannot create library folder {out} ({exc.strerror or exc})") from None
    digests = _install_models(out, shell_model, grain_model)
    cfg = asdict(config)
    cfg["formats"] = list(config.formats)
    manifest: dict[str, Any] = {
        "format": LIBRARY_FORMAT,
        "format_version": LIBRARY_FORMAT_VERSION,
        "stereograin_version": __version__,
        "n_particles": int(n),
        "config": cfg,
        "model_sha256": digests,
        "models": {"shell_model": shell_model_name, "grain_model": grain_model_name, "folder": "models/"},
        "random_streams": "particle i uses numpy SeedSequence(seed, spawn_key=(i,)); shell, then grains, from its children",
        "units": {"tables": "micrometres", "label_volume": "uint32, 0 = outside, grains 1..k",
                  "voxel_size_um": config.voxel_size_um, "particle_json": "shell in CT voxels, grains in px"},
        "layout": (
            "library.zarr/blocks/NNNNNN/ (64 particles per block, stereograin.library_store)" if config.layout == "zarr"
            else "particle_NNNNNN/{particle.json, particle.csv, grains.csv, labels.tif, ...}"
        ),
    }
    if (out / MANIFEST).exists():
        _check_resume(out, manifest)
    elif any(p.name.startswith("particle_") or p.name == "library.zarr" for p in out.iterdir()):
        raise StereograinError(f"{out} holds particles but no {MANIFEST}; choose an empty folder")
    write_json(out / MANIFEST, {**manifest, "finished": None})

    if config.layout == "zarr":
        from .library_store import BLOCK, block_range, create_store, finished_blocks, read_rows

        create_store(out, {"manifest": "../manifest.json"})
        done_tasks = finished_blocks(out, n)
        todo = [b for b in range(-(-n // BLOCK)) if b not in done_tasks]
        n_done = sum(len(block_range(b, n)) for b in done_tasks)
    else:
        for stale in out.glob(".particle_*.tmp"):  # left by a killed run; particles are remade whole
            shutil.rmtree(stale, ignore_errors=True)
        done_tasks = _finished(out, n)
        todo = [i for i in range(n) if i not in done_tasks]
        n_done = len(done_tasks)
    rows: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    nw = _default_workers() if workers is None else int(workers)
    nw = max(1, min(nw, len(todo)))
    runner = _run_dask(out, todo, config, n, scheduler) if scheduler else _run_local(out, todo, config, n, nw)
    made = 0
    with tqdm(total=n, initial=n_done, desc="particles", unit="particle", disable=not progress, smoothing=0.1) as bar:
        for block_rows in runner:
            for row in block_rows:
                rows[int(row[0])] = row
            made += len(block_rows)
            bar.update(len(block_rows))
    seconds = time.perf_counter() - t0
    for t in sorted(done_tasks):
        old_rows = read_rows(out, t) if config.layout == "zarr" else read_table(particle_folder(out, t) / "particle.csv")[1]
        for row in old_rows:
            rows[int(row[0])] = row
    table = np.array([rows[i] for i in sorted(rows)])
    write_table(out / "particles.csv", list(PARTICLE_COLUMNS), table)
    manifest["finished"] = len(rows)
    write_json(out / MANIFEST, manifest)
    if preview:
        _preview(out, min(preview, n), config)
    return {**manifest, "made": made, "seconds": seconds}


def finished_particles(out: str | Path) -> list[int]:
    """Indices of the finished particles of a library in either layout, increasing."""
    from .library_store import STORE, block_range, finished_blocks

    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise StereograinError(f"{out} has no {MANIFEST}; it is not a library made by `stereograin generate`")
    manifest = read_json(out / MANIFEST, "library manifest")
    n = manifest.get("n_particles") if isinstance(manifest, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise StereograinError(f"{out / MANIFEST} has no valid n_particles; is it a stereograin library manifest?")
    if (out / STORE).is_dir():
        return sorted(i for b in finished_blocks(out, n) for i in block_range(b, n))
    return sorted(_finished(out, n))


def read_library_particle(out: str | Path, index: int) -> Any:
    """Particle ``index`` of a library in either layout (a :class:`~stereograin.particle.Particle`)."""
    from .library_store import STORE, read_particle
    from .particle import Particle

    if (Path(out) / STORE).is_dir():
        return read_particle(out, index)
    folder = particle_folder(out, index)
    if not folder.is_dir():
        raise StereograinError(f"library {out} has no particle {index} ({folder.name}); is it finished?")
    return Particle.load(folder)


def _preview(out: Path, k: int, config: LibraryConfig) -> None:
    """``preview.png``: the first ``k`` particles rendered (cut open), voxelised at >= 0.1 um."""
    from .render import contact_sheet

    v = max(config.voxel_size_um, 0.1)
    vols = [read_library_particle(out, i).label_volume(v)[0] for i in range(k)]
    contact_sheet(vols, v, out / "preview.png", titles=[f"particle {i}" for i in range(k)])
