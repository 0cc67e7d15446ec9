"""xnb: notebook-native model inference on a Dask cluster."""

from __future__ import annotations

__version__ = "0.1.0"
