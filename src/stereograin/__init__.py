"""stereograin: virtual 3D NMC811 cathode particles with radial grain architectures.

Implements the stereological GAN of Fuchs et al. (2025): a spherical-harmonics
model of the particle outer shell calibrated from nano-CT, and a grain model
calibrated from 2D EBSD sections.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import StereograinError

try:
    __version__ = version("stereograin")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["StereograinError", "__version__"]
