"""Reproduce the built-in default grain model (``stereograin grains sample default``).

There is no public NMC811 EBSD data to ship, so the default model is trained on
synthetic data: central sections of synthetic NMC811-like particles
(:func:`stereograin.sections_synth.nmc_like_sections`: radial restricted 3D GBPDs
at the paper's intensity, grains 2.5-4 times longer radially than across,
particle radii 4-5.5 um, with unindexed boundary pixels, speckles and pores as
in an EBSD scan). The script

1. draws ``--maps`` such sections (seed ``--seed``) and keeps those that pass the
   central-section test,
2. fits a restricted 2D GBPD to each (``stereograin sections fit``'s defaults),
3. trains the GAN (``stereograin grains fit``) for ``--epochs`` x ``--steps``,
4. copies ``grain_model.json`` and ``grain_model.safetensors`` into
   ``src/stereograin/data/default_grain_model/``.

Everything is seeded; torch and numba run on ``--threads`` threads, so on the
same machine and software the weights come out bit for bit the same (float
reductions may differ across CPUs or thread counts). Usage::

    python scripts/train_default_grain_model.py            # 40 x 25 steps at lr 1e-3: about 20 min on 2 cores
    python scripts/train_default_grain_model.py --work build/default-grains --epochs 200 --steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "stereograin" / "data" / "default_grain_model"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "default-grain-model", help="working folder (resumable)")
    ap.add_argument("--maps", type=int, default=8, help="synthetic central sections")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the paper: 1e-4 over 20,000 steps)")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-install", action="store_true", help="do not copy the model into the package")
    args = ap.parse_args(argv)

    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    from stereograin.fit2d import fit_section, read_sections, write_sections
    from stereograin.grains.training import TrainConfig, train
    from stereograin.sections import central_section_test
    from stereograin.sections_synth import nmc_like_sections

    args.work.mkdir(parents=True, exist_ok=True)
    sections_file = args.work / "sections.json"
    if not sections_file.is_file():
        t = time.perf_counter()
        maps = nmc_like_sections(args.maps, args.seed)
        fitted = []
        for k, g in enumerate(maps):
            verdict = central_section_test(g)
            fs = fit_section(g.labels, g.centre, step_nm=g.step_nm, seed=0, file=g.source)
            fitted.append(dataclasses.replace(fs, central=bool(verdict.central)))
            print(f"map {k}: {g.n_grains} grains, central={verdict.central} (p = {verdict.p_value:.2g}), "
                  f"fit agreement {fs.pixel_agreement:.3f}", flush=True)
        write_sections(sections_file, fitted)
        print(f"sections: {time.perf_counter() - t:.0f} s -> {sections_file}", flush=True)
    sections = read_sections(sections_file)
    cfg = TrainConfig(epochs=args.epochs, steps=args.steps, lr=args.lr, seed=args.seed)
    t = time.perf_counter()
    model = train(sections, args.work / "model", cfg)
    print(f"training: {time.perf_counter() - t:.0f} s, mu = {model.mu:.5f} per px^3", flush=True)
    if not args.no_install:
        TARGET.mkdir(parents=True, exist_ok=True)
        src = args.work / "model"
        meta = json.loads((src / "grain_model.json").read_text())
        meta["provenance"]["default_model"] = {
            "script": "scripts/train_default_grain_model.py",
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "work"},
            "training_data": "synthetic NMC811-like central sections (stereograin.sections_synth.nmc_like_sections); "
            "no measured EBSD data",
        }
        shutil.copyfile(src / "grain_model.safetensors", TARGET / "grain_model.safetensors")
        (TARGET / "grain_model.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"installed -> {TARGET}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
