"""mcgenref_fast: annotation-free microcalcification segmentation (MC-GenRef with TT-GPR)."""
from __future__ import annotations

__version__ = "0.1.0"
