"""`stereograin validate`: data-vs-model report (HTML + JSON) on tiny synthetic inputs."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import tifffile
import typer
from typer.testing import CliRunner

from stereograin.cli_validate import validate_command
from stereograin.fit2d import write_sections
from stereograin.html_report import SECTION_TITLES, lookup
from stereograin.synthetic import synthetic_ct
from toy_sections import toy_section

app = typer.Typer()


@app.callback()
def _root() -> None:
    """Stands in for the `stereograin` app, so that the command is called as `validate`."""


app.command("validate")(validate_command)
runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return runner.invoke(app, ["validate", *(str(a) for a in args)])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    assert "Traceback" not in result.output


class _Page(HTMLParser):
    """Collects headings, images, data-key elements (with their text) and any external references."""

    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.images: list[str] = []
        self.cells: list[tuple[str, str, str]] = []  # key, data-value, shown text
        self.tags: set[str] = set()
        self.external: list[str] = []
        self._stack: list[list] = []  # open data-key elements: [key, value, text]
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        if tag == "img":
            self.images.append(a.get("src", ""))
        for name in ("src", "href"):
            if a.get(name) and not a[name].startswith("data:"):
                self.external.append(a[name])
        if "data-key" in a:
            self._stack.append([a["data-key"], a["data-value"], "", tag])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        if self._stack and self._stack[-1][3] == tag:
            key, value, text, _ = self._stack.pop()
            self.cells.append((key, value, text))

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data
        if self._stack:
            self._stack[-1][2] += data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("validate")
    ct = synthetic_ct(shape=(64, 64, 64), n_particles=8, radius_range=(5, 7), rng=2, gap=2)
    tifffile.imwrite(folder / "ct.tif", ct.volume)
    write_sections(folder / "sections.json", [toy_section(k, radius=40.0) for k in range(2)])
    return folder


@pytest.fixture(scope="module")
def full(inputs):
    out = inputs / "report"
    r = run("--ct", inputs / "ct.tif", "--sections", inputs / "sections.json", "--shell-model", "paper",
            "--grain-model", "default", "-o", out, "--n-model", 300, "--per-section", 1, "--seed", 3)
    assert r.exit_code == 0, r.output
    return out, r


def _small_shell_model(path: Path) -> Path:
    """The paper model with smaller, rounder shells (mean radius ~11 voxels): quick libraries."""
    from stereograin.shell import paper_model

    sm = paper_model()
    a00 = dataclasses.replace(sm.a00, family="lognorm", params={"s": 0.05, "loc": 0.0, "scale": 40.0})
    dataclasses.replace(sm, a00=a00).save(path)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from stereograin.grains.model import GrainModel
    from stereograin.library import LibraryConfig, generate_library
    from stereograin.shell import ShellModel

    folder = tmp_path_factory.mktemp("lib")
    model = _small_shell_model(folder / "small.json")
    generate_library(folder / "lib", 3, LibraryConfig(1, "analytic", 0.1, 2.0), ShellModel.load(model),
                     GrainModel.load("default"), workers=1, progress=False)
    return folder / "lib", model


# --------------------------------------------------------------------------- the report


def test_cli_prints_distances_and_writes_the_report(full):
    out, r = full
    assert "shells:" in r.output and "grain sections:" in r.output and "sphericity: KS" in r.output
    assert f"{out}/index.html" in r.output
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["shell"]["descriptors"]) >= {"d_max", "compactness", "aspect_ratio", "sphericity"}
    assert set(rep["grains"]["descriptors"]) == {"area", "eta", "alpha", "chord"}
    for table in (rep["shell"]["descriptors"], rep["grains"]["descriptors"]):
        for d in table.values():
            assert 0.0 <= d["ks"] <= 1.0 and d["wasserstein"] >= 0 and d["n_data"] > 0 and d["n_model"] > 0
    assert rep["shell"]["n_data"] == 8 and rep["shell"]["data"]["input"] == "grey"
    # the synthetic particles (radius 5-7 voxels) are far smaller than the paper model's (~39): KS sees it
    assert rep["shell"]["descriptors"]["d_max"]["ks"] > 0.9
    assert rep["shell"]["coefficient_fit"]["a00"]["ks"] > 0.9
    assert len(rep["shell"]["distance_correlation"]["data_mean"]) == 9
    assert rep["grains"]["alpha_by_height"]["heights"] == [0.0, 0.2, 0.4, 0.6, 0.8]
    model3d = rep["grains_3d"]["sources"]["model"]
    assert model3d["n_grains"] > 10 and 0 <= model3d["median"]["radial_angle"] <= 90
    for f in rep["files"]:
        assert (out / f).stat().st_size > 1000, f


def test_html_has_every_figure_embedded_and_nothing_external(full):
    out, _ = full
    page = parse(out / "index.html")
    assert page.h2[0] == "What was compared"
    assert page.h2[1:] == list(SECTION_TITLES.values())
    for want in ("Fig. 10a", "Fig. 10b", "Fig. 4", "Fig. 3a", "Fig. 11", "3D grain"):
        assert any(want in h for h in page.h2), want
    assert len(page.images) == 6
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG) and len(data) > 5000
    assert page.external == [] and "script" not in page.tags and "link" not in page.tags
    assert "Not computed" not in (out / "index.html").read_text()


def test_html_numbers_equal_the_json(full):
    out, _ = full
    rep = json.loads((out / "report.json").read_text())
    cells = parse(out / "index.html").cells
    keys = {k for k, _, _ in cells}
    for name in ("d_max", "compactness", "aspect_ratio", "sphericity"):
        assert {f"shell.descriptors.{name}.ks", f"shell.descriptors.{name}.wasserstein"} <= keys
    for name in ("area", "eta", "alpha", "chord"):
        assert {f"grains.descriptors.{name}.ks", f"grains.descriptors.{name}.wasserstein"} <= keys
    assert {"shell.coefficient_fit.a00.params.scale", "grains.alpha_by_height.aligned_fraction.4",
            "grains_3d.sources.model.median.volume", "shell.distance_correlation.data_mean.8"} <= keys
    for key, raw, text in cells:
        value = lookup(rep, key)
        if raw == "null":
            assert value is None, key
            continue
        assert float(raw) == value, key  # full precision
        assert float(text.split("=")[-1]) == pytest.approx(value, rel=1e-3, abs=1e-300), (key, text)


def test_validate_is_reproducible(full, inputs, tmp_path):
    from stereograin.validate import validate

    out, _ = full
    rep = validate(tmp_path / "again", ct=inputs / "ct.tif", sections=inputs / "sections.json", shell_model="paper",
                   grain_model="default", n_model=300, per_section=1, seed=3, progress=False)
    old = json.loads((out / "report.json").read_text())
    assert rep["shell"]["descriptors"] == old["shell"]["descriptors"]
    assert rep["grains"]["descriptors"] == old["grains"]["descriptors"]


def test_library_against_its_model_and_another(library, tmp_path):
    lib, model = library
    out = tmp_path / "rep"
    r = run("--library", lib, "--shell-model", model, "-o", out, "--n-model", 200, "--no-progress")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["shell"]["data"]["source"] == "library" and rep["shell"]["n_data"] == 3
    assert rep["grains"] is None
    g3 = rep["grains_3d"]
    assert g3["sources"]["library"]["particles"] == 3 and g3["sources"]["library"]["n_grains"] > 10
    assert set(g3["comparison"]) == {"volume", "elongation", "radial_angle"}
    page = parse(out / "index.html")
    assert len(page.images) == 4  # Fig. 10a, 4, 3a and 3D grains; no sections given
    assert (out / "index.html").read_text().count("Not computed") == 2
    for key, raw, _ in page.cells:
        value = lookup(rep, key)
        assert (value is None) if raw == "null" else float(raw) == value, key
    # the library's own models without --shell-model; at most 2 of its 3 particles read
    assert run("--library", lib, "-o", tmp_path / "own", "--n-model", 50, "--max-particles", 2, "--no-progress").exit_code == 0
    assert json.loads((tmp_path / "own" / "report.json").read_text())["shell"]["n_data"] == 2
    assert_one_line_error(run("--library", lib, "--shell-model", "paper", "-o", tmp_path / "x"),
                          "made with another shell model", "sha256", "paper")


def test_sections_from_maps_are_fitted_at_the_model_pixel_size(tmp_path):
    from stereograin.validate import load_sections

    lab = toy_section(0, radius=40.0).label_image().astype(np.uint16)
    maps = tmp_path / "maps"
    maps.mkdir()
    tifffile.imwrite(maps / "a.tif", lab)
    secs = load_sections(maps, px_nm=50.0, step_nm=50.0, iterations=20, progress=False)
    assert len(secs) == 1 and secs[0].step_nm == 50.0 and secs[0].central
    # 25 nm pixels are resampled to the model's 50 nm
    secs = load_sections(maps / "a.tif", px_nm=50.0, step_nm=25.0, iterations=20, progress=False)
    assert secs[0].step_nm == 50.0 and secs[0].shape[0] == pytest.approx(lab.shape[0] / 2, abs=1)
    r = run("--sections", maps, "--grain-model", "default", "-o", tmp_path / "rep", "--step", "50nm",
            "--fit-iterations", 20, "--no-progress")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["shell"] is None and rep["grains"]["n_sections"] == 1
    assert_one_line_error(run("--sections", maps, "--grain-model", "default", "-o", tmp_path / "x"), "step")


def test_mismatched_and_bad_inputs_give_one_line_errors(inputs, tmp_path):
    ct, sec = inputs / "ct.tif", inputs / "sections.json"
    other = tmp_path / "sections100.json"
    write_sections(other, [dataclasses.replace(toy_section(0, radius=40.0), step_nm=100.0)])
    assert_one_line_error(run("--sections", other, "--grain-model", "default", "-o", tmp_path / "r"),
                          "[100.0] nm", "50 nm")
    assert_one_line_error(run("-o", tmp_path / "r"), "nothing to validate")
    assert_one_line_error(run("--ct", ct, "-o", tmp_path / "r"), "--ct needs --shell-model")
    assert_one_line_error(run("--sections", sec, "-o", tmp_path / "r"), "--sections needs --grain-model")
    assert_one_line_error(run("--ct", tmp_path / "no.tif", "--shell-model", "paper", "-o", tmp_path / "r"),
                          "does not exist")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run("--ct", ct, "--shell-model", "paper", "-o", tmp_path / "afile"), "is a file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("--library", tmp_path / "empty", "-o", tmp_path / "r"), "manifest.json")
    assert_one_line_error(run("--sections", tmp_path / "empty", "--grain-model", "default", "-o", tmp_path / "r"),
                          "no .ang, .ctf")
    assert_one_line_error(run("--ct", ct, "--shell-model", "paper", "--ct-kind", "x", "-o", tmp_path / "r"),
                          "ct_kind")
    assert_one_line_error(run("--ct", ct, "--shell-model", "paper", "--n-model", 1, "-o", tmp_path / "r"),
                          "n_model")
    assert not list(tmp_path.rglob("*.tmp")), "a failed command left a temporary file"


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: no headless screenshot of the page")
def test_headless_screenshot(full, tmp_path):
    import matplotlib.image

    out, _ = full
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", (out / "index.html").resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 1000 and img[..., :3].std() > 0.05
