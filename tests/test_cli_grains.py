"""`stereograin grains fit | sample | report` end to end at a tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stereograin.cli import app
from stereograin.fit2d import write_sections
from stereograin.grains.model import GrainArchitecture, GrainModel
from toy_sections import toy_section

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grains")
    sections = folder / "sections.json"
    write_sections(sections, [toy_section(k, radius=50.0) for k in range(2)])
    model = folder / "model"
    args = ("grains", "fit", sections, "-o", model, "--epochs", 1, "--steps", 1, "--batch-g", 2, "--batch-d", 2,
            "--cutouts-per-realisation", 2, "--no-progress")
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "grain model ->" in r.output and "epoch 1" in r.output
    return sections, model, args


def test_fit_writes_model_and_rerun_resumes(trained):
    sections, model, args = trained
    for name in ("grain_model.json", "grain_model.safetensors", "log.csv", "training.png"):
        assert (model / name).is_file()
    assert GrainModel.load(model).provenance["epochs"] == 1
    r = run(*args[:-1])  # with the progress bar: nothing left to do, says so
    assert r.exit_code == 0 and "resuming after epoch 1" in r.output


def test_sample_from_trained_and_default(trained, tmp_path):
    _, model, _ = trained
    for m in (model, "default"):
        out = tmp_path / f"{'d' if m == 'default' else 't'}.json"
        r = run("grains", "sample", m, "--radius", "1.5um", "--seed", 3, "-o", out, "--plot", tmp_path / "c.png")
        assert r.exit_code == 0, r.output
        arch = GrainArchitecture.load(out)
        assert arch.radius_px == pytest.approx(30.0) and arch.n > 50
        assert np.all(np.linalg.norm(arch.positions, axis=1) <= 46.0)
        again = run("grains", "sample", m, "--radius", "1.5um", "--seed", 3, "-o", tmp_path / "again.json")
        assert again.exit_code == 0
        assert json.loads(out.read_text())["positions"] == json.loads((tmp_path / "again.json").read_text())["positions"]
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_report(trained, tmp_path):
    sections, model, _ = trained
    r = run("grains", "report", model, "--sections", sections, "-o", tmp_path / "rep", "--per-section", 1)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(rep["comparison"]) == {"area", "eta", "alpha", "chord"}
    for d in rep["comparison"].values():
        assert 0.0 <= d["ks"] <= 1.0 and d["wasserstein"] >= 0 and d["n_generated"] > 0 and d["n_truth"] > 0
    assert rep["alpha_by_height"]["heights"] == [0.0, 0.2, 0.4, 0.6, 0.8]
    for f in rep["files"]:
        assert (tmp_path / "rep" / f).stat().st_size > 1000
    assert "KS" in r.output


def test_errors_are_one_line(trained, tmp_path):
    sections, model, _ = trained
    off = tmp_path / "off.json"
    write_sections(off, [toy_section(0, central=False)])
    cases = [
        (("grains", "fit", off, "-o", tmp_path / "x"), "no central section"),
        (("grains", "fit", tmp_path / "missing.json", "-o", tmp_path / "x"), "does not exist"),
        (("grains", "fit", sections, "-o", tmp_path / "x", "--objective", "hinge"), "objective"),
        (("grains", "sample", tmp_path, "-o", tmp_path / "g.json"), "grain_model.json"),
        (("grains", "sample", model, "--radius", "-3um", "-o", tmp_path / "g.json"), "length"),
        (("grains", "sample", model, "--radius", "5km", "-o", tmp_path / "g.json"), "unit"),
        (("grains", "report", model, "--sections", off, "-o", tmp_path / "r"), "no central section"),
    ]
    for args, match in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], (args, r.output)
