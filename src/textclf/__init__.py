"""textclf: an orchestrated MLOps workflow for transformer text classification."""

__version__ = "0.1.0"
