"""Evaluation of segmentation methods on annotated datasets (`mcgenref eval`, docs/evaluation.md).

`load_dataset(kind, path, ...) -> [EvalItem]` (datasets), `run_eval(items, {name: Engine}, out_dir,
EvalSettings) -> EvalRun` (runner: cached probability maps, resumable per-image records),
`build_results` / `write_results` (report: results.json and results.md).
"""
from mcgenref_fast.evaluation.datasets import (DATASET_KINDS, EvalItem, Truth, find_splits, load_dataset,
                                               read_splits)
from mcgenref_fast.evaluation.report import build_results, results_markdown, summarise_method, write_results
from mcgenref_fast.evaluation.runner import (METHODS, EvalRun, EvalSettings, MethodRun, ProbCache, make_engine,
                                             operating_threshold, prob_cache_key, run_eval, score_image)

__all__ = [
    "DATASET_KINDS", "EvalItem", "Truth", "find_splits", "load_dataset", "read_splits", "build_results",
    "results_markdown", "summarise_method", "write_results", "METHODS", "EvalRun", "EvalSettings", "MethodRun",
    "ProbCache", "make_engine", "operating_threshold", "prob_cache_key", "run_eval", "score_image",
]
