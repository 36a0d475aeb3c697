"""A worked example: synthetic CT + synthetic EBSD maps -> models -> virtual particles -> report.

The whole stereograin data flow, end to end, on data made here with a known truth
(no measured NMC811 data is public). Everything is seeded, so every run in a clean
work folder gives the same outputs. Usage::

    python scripts/worked_example.py                  # default size: a few minutes on 2 cores
    python scripts/worked_example.py --small          # CI size: well under 2 minutes
    python scripts/worked_example.py --work /tmp/we   # another work folder

All paths below are relative to the work folder (``--work``, default
``build/worked-example`` in the repository). Outputs of an earlier run there are
deleted first (only the names listed in ``OUTPUTS``; anything else is left alone).

Data made in Python (the only steps that do not use the command line):

1. ``ct.tif``: a grey CT-like volume (uint8) of separated star-shaped particles,
   :func:`stereograin.synthetic.synthetic_ct`. The shapes are drawn from the paper's
   shell model and rescaled to a mean radius in ``ct_radius`` voxels, then blurred
   and made noisy. To keep the volume small its voxels are coarse (``ct_voxel_nm``,
   0.4-0.6 um rather than a nano-CT's 0.128 um), chosen so that the particles have
   the size of real NMC811 secondary particles (radius about 3-5 um).
2. ``maps/*.tif``: EBSD-like grain maps, written as label images (uint16, 0 =
   unindexed or outside the particle, 1..n = grains, 50 nm pixels). The central
   ones are :func:`stereograin.sections_synth.nmc_like_sections` (radial restricted
   3D GBPD in a ball, cut through its centre, with unindexed boundary pixels,
   speckles and pores as in a real scan); one (two by default) is cut off the
   centre (:func:`~stereograin.sections_synth.nmc_like_particle` +
   :func:`~stereograin.sections_synth.cut_section` at height ``off_height`` x R,
   with the same kind of unindexed pixels), which the central-section test
   should reject.
3. ``truth.json``: what was made (number of CT particles, each map's particle
   radius, aspect and cut height), to compare the results with.

Then the data flow, each step a real ``stereograin`` command (run as
``python -m stereograin.cli``, the same program as the ``stereograin`` entry
point; the command is printed before it runs, its output is printed and kept in
``logs/NN-<step>.log``, a progress bar as its final state only; a failing command stops
the script with its exit status):

4. ``stereograin shell segment ct.tif -o labels.tif``: grey CT -> labelled particles
   (smoothing, Otsu, watershed, border particles dropped).
5. ``stereograin shell fit labels.tif -o shell.json --report shell-report/ --voxel-size ...``:
   spherical-harmonic radius functions and the shell model's coefficient laws. The script
   then checks that the fitted size law is not degenerate (:func:`check_shell_model`).
6. ``stereograin sections inspect maps/ --step 50nm --json verdicts.json --plot inspect/``:
   grains per map and the central-section verdict (p-value) of each.
7. ``stereograin sections fit maps/ --step 50nm -o sections.json``: a 2D GBPD fitted
   to every central map (the off-centre map is skipped).
8. ``stereograin grains fit sections.json -o grain-model/ --epochs E --steps S ...``:
   the stereological GAN. The schedule is far shorter than the paper's 200 x 100
   steps (``--small``: 1 x 2 steps with tiny batches, only to exercise the code),
   so the model is a demonstration, not a converged model.
9. ``stereograin generate -n N --shell-model shell.json --grain-model grain-model/ -o library/ ...``:
   virtual particles from the two fitted models.
10. ``stereograin view library/particle_000000 -o particle.png``: one particle, cut open.
11. ``stereograin validate --ct ct.tif --sections sections.json --shell-model shell.json
    --grain-model grain-model/ -o report/``: data against models, ``report/index.html``
    and ``report/report.json``.

Finally ``SUMMARY.txt`` lists the commands, the last line each printed and the
outputs with their sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OUTPUTS = (
    "ct.tif", "truth.json", "maps", "labels.tif", "shell.json", "shell-report", "verdicts.json", "inspect",
    "sections.json", "grain-model", "library", "particle.png", "report", "logs", "SUMMARY.txt",
)
"""Everything the script writes in the work folder (deleted at the start of a run)."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of one run of the example.

    Attributes
    ----------
    ct_shape : (Z, Y, X)
        Synthetic CT volume, voxels.
    ct_particles : int
        Particles placed in it.
    ct_radius : (min, max)
        Their mean radii, voxels.
    ct_voxel_nm : float
        CT voxel edge, nm (given to ``shell fit --voxel-size``).
    central_maps, off_maps : int
        Central and off-centre EBSD-like maps.
    map_radius : (min, max)
        Particle radius of the maps, px of 50 nm.
    off_height : float
        Cut height of the off-centre maps, fraction of the radius.
    fit_iterations : int
        ``sections fit --iterations``.
    epochs, steps, batch_g, batch_d, cutouts : int
        ``grains fit`` schedule and batch sizes.
    particles : int
        ``generate -n``.
    voxel_um : float
        ``generate --voxel-size``, um.
    preview : int
        ``generate --preview``.
    n_model : int
        ``validate --n-model``.
    per_section : int
        ``validate --per-section``.
    """

    ct_shape: tuple[int, int, int]
    ct_particles: int
    ct_radius: tuple[float, float]
    ct_voxel_nm: float
    central_maps: int
    off_maps: int
    map_radius: tuple[float, float]
    off_height: float
    fit_iterations: int
    epochs: int
    steps: int
    batch_g: int
    batch_d: int
    cutouts: int
    particles: int
    voxel_um: float
    preview: int
    n_model: int
    per_section: int


DEFAULT = Sizes(
    ct_shape=(128, 128, 128), ct_particles=25, ct_radius=(8.0, 13.0), ct_voxel_nm=400.0,
    central_maps=6, off_maps=2, map_radius=(80.0, 110.0), off_height=0.6, fit_iterations=400,
    epochs=10, steps=20, batch_g=32, batch_d=64, cutouts=32,
    particles=8, voxel_um=0.1, preview=4, n_model=2000, per_section=2,
)
SMALL = Sizes(
    ct_shape=(80, 80, 80), ct_particles=18, ct_radius=(5.0, 7.0), ct_voxel_nm=600.0,
    central_maps=2, off_maps=1, map_radius=(60.0, 75.0), off_height=0.6, fit_iterations=150,
    epochs=1, steps=2, batch_g=4, batch_d=4, cutouts=4,
    particles=2, voxel_um=0.2, preview=0, n_model=300, per_section=1,
)


def make_data(work: Path, sizes: Sizes, seed: int) -> dict:
    """Write ``ct.tif``, ``maps/*.tif`` and ``truth.json`` (steps 1-3 of the module notes).

    Parameters
    ----------
    work : Path
        Work folder (exists).
    sizes : Sizes
    seed : int
        Master seed: the CT uses ``seed``, the maps ``seed + 1`` (central) and
        ``seed + 2`` (off-centre).

    Returns
    -------
    dict
        The truth written to ``truth.json``.
    """
    import numpy as np
    import tifffile

    from stereograin.sections_synth import (
        cut_section,
        ebsd_gaps,
        nmc_like_particle,
        nmc_like_sections,
    )
    from stereograin.synthetic import synthetic_ct

    ct = synthetic_ct(shape=sizes.ct_shape, n_particles=sizes.ct_particles, radius_range=sizes.ct_radius,
                      rng=seed, gap=2.0)
    tifffile.imwrite(work / "ct.tif", ct.volume, compression="zlib")
    print(f"ct.tif: {'x'.join(map(str, sizes.ct_shape))} voxels of {sizes.ct_voxel_nm:g} nm, "
          f"{sizes.ct_particles} particles of mean radius {sizes.ct_radius[0]:g}-{sizes.ct_radius[1]:g} voxels")

    maps = work / "maps"
    maps.mkdir()
    truth_maps = []
    central = nmc_like_sections(sizes.central_maps, rng=seed + 1, radius_px=sizes.map_radius)
    for k, g in enumerate(central):
        name = f"p{k}_central.tif"
        tifffile.imwrite(maps / name, g.labels.astype(np.uint16), compression="zlib")
        truth_maps.append({"file": name, "height": 0.0, "source": g.source, "grains": int(g.labels.max())})
    rng = np.random.default_rng(seed + 2)
    for j in range(sizes.off_maps):
        k = sizes.central_maps + j
        R = float(rng.uniform(*sizes.map_radius))
        aspect = float(rng.uniform(2.5, 4.0))
        gbpd = nmc_like_particle(R, aspect, rng=rng)
        section = cut_section(gbpd, R, sizes.off_height * R, rng=rng)
        lab = ebsd_gaps(section.labels, rng, pores=4)
        name = f"p{k}_off-centre.tif"
        tifffile.imwrite(maps / name, lab.astype(np.uint16), compression="zlib")
        truth_maps.append({"file": name, "height": sizes.off_height,
                           "source": f"synthetic NMC811-like section, cut at h = {sizes.off_height:.2f} R: "
                                     f"R = {R:.0f} px, aspect {aspect:.2f}"})
    for m in truth_maps:
        print(f"maps/{m['file']}: {m['source']}")
    truth = {
        "seed": seed,
        "ct": {"shape": list(sizes.ct_shape), "particles": sizes.ct_particles, "voxel_nm": sizes.ct_voxel_nm,
               "radius_voxels": list(sizes.ct_radius)},
        "maps": truth_maps, "map_step_nm": 50.0, "sizes": dataclasses.asdict(sizes),
    }
    (work / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def commands(sizes: Sizes, seed: int) -> list[tuple[str, list[str]]]:
    """The data flow as ``stereograin`` argument lists (steps 4-11), paths relative to the work folder.

    Parameters
    ----------
    sizes : Sizes
    seed : int
        Seed of every command that draws random numbers.

    Returns
    -------
    list of (step name, arguments after ``stereograin``)
    """
    s = str(seed)
    return [
        ("shell-segment", ["shell", "segment", "ct.tif", "-o", "labels.tif"]),
        ("shell-fit", ["shell", "fit", "labels.tif", "-o", "shell.json", "--report", "shell-report/",
                       "--voxel-size", f"{sizes.ct_voxel_nm:g}nm", "--n-model", str(sizes.n_model), "--seed", s]),
        ("sections-inspect", ["sections", "inspect", "maps/", "--step", "50nm", "--json", "verdicts.json",
                              "--plot", "inspect/"]),
        ("sections-fit", ["sections", "fit", "maps/", "--step", "50nm", "-o", "sections.json",
                          "--iterations", str(sizes.fit_iterations), "--seed", s]),
        ("grains-fit", ["grains", "fit", "sections.json", "-o", "grain-model/", "--epochs", str(sizes.epochs),
                        "--steps", str(sizes.steps), "--batch-g", str(sizes.batch_g), "--batch-d", str(sizes.batch_d),
                        "--cutouts-per-realisation", str(sizes.cutouts), "--seed", s, "--no-progress"]),
        ("generate", ["generate", "-n", str(sizes.particles), "--seed", s, "--shell-model", "shell.json",
                      "--grain-model", "grain-model/", "-o", "library/", "--voxel-size", f"{sizes.voxel_um:g}um",
                      "--workers", "1", "--preview", str(sizes.preview), "--no-progress"]),
        ("view", ["view", "library/particle_000000", "-o", "particle.png", "--size", "600"]),
        ("validate", ["validate", "--ct", "ct.tif", "--sections", "sections.json", "--shell-model", "shell.json",
                      "--grain-model", "grain-model/", "-o", "report/", "--n-model", str(sizes.n_model),
                      "--per-section", str(sizes.per_section), "--seed", s, "--no-progress"]),
    ]


def run_command(work: Path, index: int, name: str, args: list[str]) -> tuple[str, float]:
    """Run ``stereograin ARGS`` in ``work``, print and log its output, stop on failure.

    Parameters
    ----------
    work : Path
        Working directory of the command.
    index : int
        Step number (names the log file).
    name : str
        Step name.
    args : list of str
        Arguments after ``stereograin``.

    Returns
    -------
    (output, seconds)

    Raises
    ------
    SystemExit
        If the command exits with a non-zero status.
    """
    shown = "stereograin " + shlex.join(args)
    print(f"\n$ {shown}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stereograin.cli", *args], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        # a progress bar redraws its line after "\r": keep what a terminal would show last
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n").split("\r")[-1].rstrip()
        if not line.strip():
            continue
        print(line, flush=True)
        lines.append(line)
    status = proc.wait()
    seconds = time.perf_counter() - t0
    output = "\n".join(lines)
    log = work / "logs" / f"{index:02d}-{name}.log"
    log.write_text(f"$ {shown}\n{output}\n(exit status {status}, {seconds:.1f} s)\n", encoding="utf-8")
    if status != 0:
        raise SystemExit(f"worked example: step {index} failed (exit status {status}): {shown}\n"
                         f"  run in {work}; its output is above and in {log}")
    return output, seconds


def check_shell_model(work: Path) -> str:
    """Stop if ``shell.json``'s size law is degenerate (samples far beyond the data).

    With few particles the maximum-likelihood fit of ``a_00`` can choose a
    three-parameter log-normal with ``loc`` at the smallest data value and a huge
    shape ``s``: an unbounded likelihood, not a model. Its draws reach absurd
    sizes and ``generate`` would then fail ("a ball radius of ... is absurd").
    The example's sizes avoid it; this check names the problem if they do not.

    Parameters
    ----------
    work : Path
        Work folder holding ``shell.json`` and ``shell-report/coefficients.csv``.

    Returns
    -------
    str
        One line: the ``a_00`` law and the model's 1-99 % range against the data's.

    Raises
    ------
    SystemExit
        If the model's 99th percentile of ``a_00`` exceeds twice the data's largest.
    """
    import numpy as np

    from stereograin.coefficients import read_coefficients
    from stereograin.shell import ShellModel

    model = ShellModel.load(work / "shell.json")
    data = read_coefficients(work / "shell-report" / "coefficients.csv").coefficients[:, 0]
    lo, hi = np.percentile(model.sample(2000, np.random.default_rng(0))[:, 0], [1, 99])
    line = (f"a00 law {model.a00.family}: model 1-99 % {lo:.1f}-{hi:.1f}, data {data.min():.1f}-{data.max():.1f} "
            f"(CT voxels)")
    if not hi <= 2.0 * data.max():
        raise SystemExit(f"worked example: the fitted shell model is degenerate ({line}); fit more particles "
                         "(a larger synthetic CT) or another --seed")
    return line


def _size(path: Path) -> str:
    n = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def write_summary(work: Path, mode: str, seed: int, steps: list[tuple[str, str, float]], total: float) -> None:
    """Write ``SUMMARY.txt``: the commands, the last line each printed, the outputs and their sizes."""
    describe = [
        ("ct.tif", "synthetic grey CT volume (input)"),
        ("maps/", "synthetic EBSD-like label images, 50 nm pixels (input)"),
        ("truth.json", "what the synthetic data hold"),
        ("labels.tif", "segmented particles (shell segment)"),
        ("shell.json", "fitted shell model (shell fit)"),
        ("shell-report/", "coefficient table, Fig. 3a/4/10a plots, report.json (shell fit --report)"),
        ("verdicts.json", "central-section verdicts (sections inspect)"),
        ("inspect/", "alpha KDE and grain map plots (sections inspect --plot)"),
        ("sections.json", "2D GBPDs fitted to the central maps (sections fit)"),
        ("grain-model/", "trained grain model, log.csv, training.png (grains fit)"),
        ("library/", "virtual particles: particle_NNNNNN/, particles.csv, manifest.json (generate)"),
        ("particle.png", "particle 0, cut open (view)"),
        ("report/", "index.html + report.json: data vs models (validate)"),
        ("logs/", "every command's full output"),
    ]
    out = [f"stereograin worked example ({mode}, seed {seed}) in {work}", f"total {total:.0f} s", "", "commands:"]
    for shown, last, seconds in steps:
        out += [f"  $ {shown}", f"    {last}   [{seconds:.1f} s]"]
    out += ["", "outputs:"]
    for name, what in describe:
        path = work / name.rstrip("/")
        out.append(f"  {name:<15} {_size(path) if path.exists() else 'MISSING':>9}  {what}")
    (work / "SUMMARY.txt").write_text("\n".join(out) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the worked example; see the module notes.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success (a failing step raises SystemExit with a message).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "worked-example",
                    help="work folder (default: build/worked-example in the repository)")
    ap.add_argument("--small", action="store_true", help="tiny sizes for CI: well under 2 minutes on 2 cores")
    ap.add_argument("--seed", type=int, default=0, help="master seed of the data and every command")
    args = ap.parse_args(argv)
    sizes = SMALL if args.small else DEFAULT
    mode = "small" if args.small else "default"
    work = args.work.resolve()
    if work.exists() and not work.is_dir():
        raise SystemExit(f"worked example: --work {work} is a file; give a folder")
    work.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # a clean start: the same outputs every run
        p = work / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (work / "logs").mkdir()

    t0 = time.perf_counter()
    print(f"stereograin worked example ({mode} size, seed {args.seed}) in {work}")
    print("\n# synthetic data (Python)")
    make_data(work, sizes, args.seed)
    done = []
    for index, (name, cmd) in enumerate(commands(sizes, args.seed), start=4):
        output, seconds = run_command(work, index, name, cmd)
        last = output.splitlines()[-1] if output else ""
        if name == "shell-fit":
            print(f"(check) {check_shell_model(work)}")
        done.append(("stereograin " + shlex.join(cmd), last, seconds))
    total = time.perf_counter() - t0
    write_summary(work, mode, args.seed, done, total)
    print(f"\ndone in {total:.0f} s; open {work / 'report' / 'index.html'}; summary: {work / 'SUMMARY.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
