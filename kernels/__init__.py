"""Triton kernels (installed as mcgenref_fast.kernels): one file per kernel with its launcher."""
