"""``stereograin grains fit | sample | report``: the stereological GAN from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._cli_util import _friendly, _length_nm

grains_app = typer.Typer(
    help="Grain architectures: train the stereological GAN on fitted 2D sections, sample 3D grains, report.",
    no_args_is_help=True,
)

_Model = Annotated[str, typer.Argument(help="Grain model folder (from `grains fit`), or 'default' (built-in).")]


@grains_app.command("fit")
@_friendly
def grains_fit(
    sections: Annotated[Path, typer.Argument(help="Fitted 2D tessellations from `stereograin sections fit` (.json).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder (checkpoints, log, plots); rerun to resume.")],
    epochs: Annotated[int, typer.Option(help="Epochs (the paper: 200).")] = 200,
    steps: Annotated[int, typer.Option(help="Steps per epoch (the paper: 100).")] = 100,
    batch_g: Annotated[int, typer.Option(help="Cutouts per generator step (the paper: 64).")] = 64,
    batch_d: Annotated[int, typer.Option(help="Cutouts per discriminator step and class (the paper: 128).")] = 128,
    objective: Annotated[str, typer.Option(help="Generator loss: 'lsgan' (minimise (D-1)^2) or 'literal' (the paper's text, maximise D^2).")] = "lsgan",
    cutouts_per_realisation: Annotated[int, typer.Option(help="Cutouts cut from one drawn seed pattern, in random planes (1: the paper).")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Master seed (weights and every draw).")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a 3D grain model on 2D sections (Algorithm 2); a rerun resumes after the last finished epoch."""
    from .fit2d import read_sections
    from .grains.training import TrainConfig, train

    cfg = TrainConfig(epochs=epochs, steps=steps, batch_g=batch_g, batch_d=batch_d, objective=objective,
                      cutouts_per_realisation=cutouts_per_realisation, lr=lr, seed=seed)
    model = train(read_sections(sections), output, cfg, progress=progress)
    log = model.provenance.get("final_log", {})
    typer.echo(
        f"grain model -> {output}/ (epoch {model.provenance['epochs']}, mu = {model.mu:.5f} per px^3, "
        f"visible grains per px^2 data {log.get('ng_gt', float('nan')):.4f} / model {log.get('ng_gen', float('nan')):.4f})"
    )


@grains_app.command("sample")
@_friendly
def grains_sample(
    model: _Model,
    output: Annotated[Path, typer.Option("-o", "--output", help="Grain architecture (.json: seeds, spins, noise, D, r in px).")],
    radius: Annotated[str, typer.Option(help="Radius of the ball to fill, e.g. 5um or 2500nm.")] = "5um",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of the central section (exact labels).")] = None,
) -> None:
    """Draw the seeds and markers of one 3D grain architecture (analytic: label it at any resolution)."""
    from .grains.model import GrainModel

    m = GrainModel.load(model)
    radius_px = _length_nm(radius) / m.px_nm
    arch = m.sample(radius_px, seed)
    arch.save(output)
    typer.echo(f"{arch.n} grains in a ball of {radius_px:.1f} px ({radius}) -> {output}")
    if plot is not None:
        from .plots_sections import plot_grain_map
        from .sections_synth import cut_section

        section = cut_section(arch.gbpd(), radius_px, 0.0, normal=[0.0, 0.0, 1.0], rng=seed)
        plot_grain_map(section, None, plot)
        typer.echo(f"central section -> {plot}")


@grains_app.command("report")
@_friendly
def grains_report(
    model: _Model,
    sections: Annotated[Path, typer.Option(help="The ground truth: fitted 2D sections (.json from `sections fit`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder: report.json, sections.png (Fig. 10b), alpha_height.png (Fig. 11), grains3d.png.")],
    per_section: Annotated[int, typer.Option(help="Model sections drawn per ground-truth section.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Compare sections of the model's 3D architectures with the ground-truth sections (KS, Wasserstein, plots)."""
    from .fit2d import read_sections
    from .grains.model import GrainModel
    from .grains.report import grain_report

    rep = grain_report(GrainModel.load(model), read_sections(sections), output, per_section=per_section, seed=seed)
    for name, d in rep["comparison"].items():
        typer.echo(f"{name:>6}: KS {d['ks']:.3f}  W {d['wasserstein']:.4g} {d.get('unit', '')}  "
                   f"(model n={d['n_generated']}, data n={d['n_truth']})")
    typer.echo(f"report -> {output}/report.json and 3 figures")
