"""Builds the C++ tiler `mcgenref_fast._tiler` (pybind11, C++17, -O3, OpenMP).

Packages and metadata live in pyproject.toml; this file only adds the extension. `-ffp-contract=off`
keeps float sums bit-identical to the numpy twin (no fused multiply-add).
"""
from __future__ import annotations

import sys

from setuptools import setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # e.g. a GPU box without pybind11: the numpy twin takes over (mcgenref_fast.tiling says so)
    sys.stderr.write("mcgenref_fast: pybind11 not found, building without the C++ tiler\n")
    ext_modules, cmdclass = [], {}
else:
    extra = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
             "-fno-trapping-math"]
    ext_modules = [
        Pybind11Extension(
            "mcgenref_fast._tiler",
            ["csrc/tiler.cpp", "csrc/update.cpp"],
            cxx_std=17,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]
    cmdclass = {"build_ext": build_ext}

setup(
    packages=["mcgenref_fast", "mcgenref_fast.io", "mcgenref_fast.models", "mcgenref_fast.synth",
              "mcgenref_fast.commands", "mcgenref_fast.kernels"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
