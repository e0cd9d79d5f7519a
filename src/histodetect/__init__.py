"""histodetect: find metastatic cancer in 96x96 H&E lymph-node patches."""

__version__ = "0.1.0"

__all__ = ["__version__"]
