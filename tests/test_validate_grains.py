"""The GAN's 3D validation (scripts/validate_grains.py): slow, run with `pytest -m slow`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "validate_grains.py"


@pytest.mark.slow
def test_trained_generator_recovers_radial_alignment(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("validate_grains", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(tmp_path, maps=4, epochs=6, steps=20, radius=70.0, particles=2, seed=0)
    # training must bring the 3D radial alignment closer to the truth than the untrained generator
    assert res["trained_radial_angle_ks"] < res["untrained_radial_angle_ks"]
    assert (tmp_path / "grains3d.png").stat().st_size > 1000
