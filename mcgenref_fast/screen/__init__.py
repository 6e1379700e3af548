"""`mcgenref screen`: many mammograms through one Engine, resumable, with summary tables and a report.

- `inputs.discover_inputs(INPUT)`: a folder, a .txt file list or a .csv manifest → `ScreenInput`s;
- `runner.run_screen(items, engine_factory, out_dir, ScreenOptions(...), ray_address=None)`: the local
  streaming runner (decode processes + the model in this process) or, with `ray_address`, the Ray actor
  pool (`ray_runner`, imported only then); returns a `ScreenResult` (`exit_status` 0 or 2);
- `journal`: the append-only journal a restart resumes from; `summary`: summary.csv, exams.csv,
  errors.csv; `report`: report.html with overlay thumbnails.

`engine_factory` is a picklable callable returning an `Engine` (optionally taking `device=`), so tests
and the Ray actors build their own engines.
"""
from __future__ import annotations

from mcgenref_fast.screen.inputs import ScreenInput, discover_inputs
from mcgenref_fast.screen.runner import LocalRunner, ScreenOptions, ScreenResult, run_screen

__all__ = ["LocalRunner", "ScreenInput", "ScreenOptions", "ScreenResult", "discover_inputs", "run_screen"]
