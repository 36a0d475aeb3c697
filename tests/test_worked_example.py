"""`scripts/worked_example.py --small`: the whole data flow, end to end, through the real CLI.

One run (about a minute on 2 cores) makes synthetic CT and EBSD-like data, runs every
command of the data flow as a subprocess and is checked here output by output.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tifffile

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "worked_example.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("worked_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["worked_example"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def work(script: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("worked-example")
    assert script.main(["--small", "--work", str(folder)]) == 0
    return folder


def test_synthetic_inputs_and_segmentation(work: Path, script: ModuleType) -> None:
    truth = json.loads((work / "truth.json").read_text())
    small = script.SMALL
    ct = tifffile.imread(work / "ct.tif")
    assert ct.shape == small.ct_shape and ct.dtype == np.uint8
    labels = tifffile.imread(work / "labels.tif")
    assert labels.shape == ct.shape
    # well-separated particles: segmentation finds nearly all (border particles may be dropped)
    n = int(labels.max())
    assert 0.8 * truth["ct"]["particles"] <= n <= truth["ct"]["particles"]
    assert len(np.unique(labels)) == n + 1
    maps = sorted((work / "maps").glob("*.tif"))
    assert len(maps) == small.central_maps + small.off_maps
    for m in maps:
        lab = tifffile.imread(m)
        assert lab.ndim == 2 and lab.max() > 50 and (lab == 0).any()


def test_shell_model(work: Path, script: ModuleType) -> None:
    from stereograin.shell import ShellModel

    model = ShellModel.load(work / "shell.json")
    assert model.voxel_size_nm == pytest.approx(script.SMALL.ct_voxel_nm)
    assert model.L == 9
    # not a degenerate size law: draws stay near the data's mean radii of 5-7 voxels
    a00 = model.sample(1000, np.random.default_rng(0))[:, 0]
    radius = a00 / (2 * np.sqrt(np.pi))
    assert 4.0 < np.median(radius) < 8.0 and np.percentile(radius, 99) < 12.0
    assert script.check_shell_model(work).startswith("a00 law")  # the script's own check passes
    for f in ("coefficients.csv", "coefficient_laws.png", "descriptors.png", "report.json"):
        assert (work / "shell-report" / f).stat().st_size > 500, f


def test_sections_verdicts_and_fit(work: Path) -> None:
    from stereograin.fit2d import read_sections

    verdicts = json.loads((work / "verdicts.json").read_text())["maps"]
    assert verdicts and all(v["central"] == ("_central" in Path(v["file"]).name) for v in verdicts)
    sections = read_sections(work / "sections.json")
    n_central = sum(v["central"] for v in verdicts)
    assert len(sections) == n_central >= 2
    for s in sections:
        assert s.central and s.n > 50 and s.pixel_agreement > 0.95
    assert (work / "inspect" / "alpha_kde.png").is_file()


def test_grain_model(work: Path) -> None:
    from stereograin.grains.model import GrainModel

    model = GrainModel.load(work / "grain-model")
    assert model.provenance["epochs"] == 1 and model.mu > 0
    assert (work / "grain-model" / "log.csv").is_file()


def test_library_and_picture(work: Path, script: ModuleType) -> None:
    lib = work / "library"
    with open(lib / "particles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == script.SMALL.particles == 2
    for k in range(2):
        folder = lib / f"particle_{k:06d}"
        assert (folder / "particle.json").is_file()
        labels = tifffile.imread(folder / "labels.tif")
        assert labels.max() > 100  # grains
    manifest = json.loads((lib / "manifest.json").read_text())
    assert manifest["finished"] == 2
    png = (work / "particle.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_validation_report(work: Path) -> None:
    html = (work / "report" / "index.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "data:image/png;base64," in html
    rep = json.loads((work / "report" / "report.json").read_text())
    shell, grains = rep["shell"]["descriptors"], rep["grains"]["descriptors"]
    assert {"d_max", "sphericity", "aspect_ratio", "compactness"} <= set(shell)
    assert set(grains) == {"area", "eta", "alpha", "chord"}
    for d in [*shell.values(), *grains.values()]:
        assert 0.0 <= d["ks"] <= 1.0 and d["wasserstein"] >= 0 and d["n_data"] > 0 and d["n_model"] > 0
    # the model's shells are the size of the data's (the fitted shell model, not the paper's)
    assert shell["d_max"]["ks"] < 0.6


def test_summary_and_logs(work: Path) -> None:
    summary = (work / "SUMMARY.txt").read_text()
    assert "MISSING" not in summary and summary.count("$ stereograin ") == 8
    logs = sorted(p.name for p in (work / "logs").glob("*.log"))
    assert len(logs) == 8 and logs[0].startswith("04-shell-segment")
    assert all("(exit status 0" in (work / "logs" / n).read_text() for n in logs)


def test_a_failing_step_stops_with_a_clear_message(script: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    with pytest.raises(SystemExit) as err:
        script.run_command(tmp_path, 4, "shell-segment", ["shell", "segment", "missing.tif", "-o", "labels.tif"])
    msg = str(err.value)
    assert "step 4 failed (exit status 2): stereograin shell segment missing.tif" in msg
    assert "04-shell-segment.log" in msg
