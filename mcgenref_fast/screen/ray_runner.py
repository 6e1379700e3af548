"""The Ray runner of `mcgenref screen --ray ADDRESS|local` (optional extra: `pip install mcgenref_fast[ray]`).

A pool of Ray actors, each holding one Engine (one actor per GPU when the device is CUDA and the cluster
has GPUs — Ray gives each actor its own GPU as `cuda:0` —, else `workers` CPU actors). The driver sends
batches of paths (at most two batches queued per actor); each actor reads, canonicalises, analyses and
writes the outputs of its inputs into the shared output folder (so the folder must be reachable from
every node: a shared filesystem, or a single machine), and streams back one small record per input. The
driver keeps all the bookkeeping of the local runner (`runner.RunContext`): the same keys (non-DICOM keys
reserved in input order at dispatch), the same journal, index.csv, summary, exams, errors and report.

An actor that dies (a crash, out of memory, a lost node) is replaced; the inputs of its batches are sent
again one per batch to an actor with nothing else to do, so only an input that kills an actor on its own
fails (`WorkerCrashed`).

This module is imported only when `--ray` is given: the rest of the package never imports ray.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mcgenref_fast.errors import ConfigError
from mcgenref_fast.output_layout import OutputLayout
from mcgenref_fast.screen.inputs import ScreenInput
from mcgenref_fast.screen.runner import (
    DecodeFailure, EngineFactory, RunContext, ScreenOptions, ScreenResult, decode_input, engine_fingerprint,
    key_for_decoded, process_decoded,
)


class ScreenActor:
    """One Engine; `process(batch)` screens a batch of inputs and returns one record per input."""

    def __init__(self, engine_factory: EngineFactory, out_dir: str, allow_for_processing: bool,
                 thumbnails: bool, device: str | None, decode_fn: Any = decode_input) -> None:
        self.engine = engine_factory(device=device) if device else engine_factory()
        self.out_dir = out_dir
        self.allow_for_processing = allow_for_processing
        self.thumbnails = thumbnails
        self.decode_fn = decode_fn
        self.canonical_cfg = getattr(getattr(self.engine, "cfg", None), "canonical", None)
        # index.csv as it was when the run began: the keys of earlier runs (the driver reserves the keys
        # of this run's non-DICOM inputs and passes them in; DICOM keys are their SOPInstanceUIDs)
        self.layout = OutputLayout(out_dir)

    def fingerprint(self) -> str:
        return engine_fingerprint(self.engine)

    def process(self, batch: list[tuple[str, float | None, str | None]]) -> list[dict[str, Any]]:
        return [self._one(self.layout, path, spacing, hint) for path, spacing, hint in batch]

    def _one(self, layout: OutputLayout, path: str, spacing: float | None, hint: str | None) -> dict[str, Any]:
        decoded = self.decode_fn(path, spacing, self.allow_for_processing, self.canonical_cfg)
        if isinstance(decoded, DecodeFailure):
            return {"input": path, "status": "failed", "key": hint, "error_type": decoded.error_type,
                    "message": decoded.message}
        key = hint
        try:
            key = key_for_decoded(layout, path, decoded.mammogram.meta, hint)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                row, seconds = process_decoded(self.engine, layout, path, key, decoded, self.thumbnails)
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            return {"input": path, "status": "failed", "key": key, "error_type": type(exc).__name__, "message": str(exc)}
        return {"input": path, "status": "done", "key": key, "row": row, "seconds": seconds,
                "warnings": decoded.warnings + [str(w.message) for w in caught], "stat": decoded.stat}


@dataclass
class _Batch:
    actor: int
    generation: int
    items: list[ScreenInput]
    hints: list[str | None]
    alone: bool


class RayRunner:
    """Screen with a Ray actor pool (see the module doc); same results as `LocalRunner`."""

    def __init__(self, engine_factory: EngineFactory, out_dir: str | Path, options: ScreenOptions = ScreenOptions(),
                 address: str | None = "local", n_actors: int | None = None, batch_size: int = 4,
                 device: str | None = None, batches_per_actor: int = 2) -> None:
        self.engine_factory = engine_factory
        self.out_dir = Path(out_dir).resolve()
        self.options = options
        self.address = address
        self.n_actors = n_actors
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.batches_per_actor = max(1, int(batches_per_actor))

    # ---------------------------------------------------------------------------------- ray set-up
    def _connect(self) -> bool:
        """Connect (or start a local instance); True when this runner started Ray and must shut it down."""
        import ray

        if ray.is_initialized():
            return False
        address = None if self.address in (None, "", "local") else self.address
        try:
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise ConfigError(f"--ray {self.address}: could not connect to a Ray cluster there ({exc}): check the "
                              f"address (host:port of its head node), or use --ray local") from None
        return True

    def _actor_class(self) -> tuple[Any, str | None, int]:
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cuda = bool(self.device) and str(self.device).startswith("cuda")
        if cuda and gpus > 0:
            n = self.n_actors or gpus
            return ray.remote(num_cpus=1, num_gpus=1)(ScreenActor), "cuda:0", n
        if cuda:
            warnings.warn("--device cuda with --ray, but the Ray cluster has no GPU: actors run on the CPU", stacklevel=3)
        n = self.n_actors or self.options.workers or max(1, int(resources.get("CPU", 1)))
        return ray.remote(num_cpus=1)(ScreenActor), ("cpu" if cuda else None), n

    # ---------------------------------------------------------------------------------- the run
    def run(self, items: Sequence[ScreenInput]) -> ScreenResult:
        import ray

        ctx = RunContext(self.out_dir, items, self.options)
        started_ray = False
        actors: list[Any] = []
        pending: dict[Any, _Batch] = {}
        interrupted = False
        try:
            started_ray = self._connect()
            cls, device, n = self._actor_class()

            def new_actor() -> Any:
                return cls.remote(self.engine_factory, str(self.out_dir), self.options.allow_for_processing,
                                  self.options.thumbnails, device, self.options.decode_fn)

            actors = [new_actor() for _ in range(n)]
            todo = ctx.plan(ray.get(actors[0].fingerprint.remote()))
            ctx.start_progress(len(todo))
            self._loop(ctx, todo, actors, new_actor, pending)
        except KeyboardInterrupt:
            interrupted = True
            for batch in pending.values():
                for item, hint in zip(batch.items, batch.hints):
                    with contextlib.suppress(Exception):
                        ctx.journal.interrupted(item.path, hint)
        except BaseException:
            ctx.close()
            self._teardown(actors, started_ray)
            raise
        self._teardown(actors, started_ray)
        result = ctx.finish(interrupted=interrupted)
        if interrupted:
            raise KeyboardInterrupt
        return result

    @staticmethod
    def _teardown(actors: list[Any], started_ray: bool) -> None:
        import ray

        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()

    def _loop(self, ctx: RunContext, todo: Sequence[ScreenInput], actors: list[Any], new_actor: Any,
              pending: dict[Any, _Batch]) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque(todo)
        suspects: deque[ScreenInput] = deque()
        load = [0] * len(actors)
        generation = [0] * len(actors)
        alone_busy: set[int] = set()

        def dispatch(idx: int, batch_items: list[ScreenInput], alone: bool) -> None:
            hints = [ctx.key_hint(it) for it in batch_items]
            for it, hint in zip(batch_items, hints):
                ctx.journal.started(it.path, hint, stage="dispatch")
            args = [(it.path, ctx.spacing_for(it), hint) for it, hint in zip(batch_items, hints)]
            ref = actors[idx].process.remote(args)
            pending[ref] = _Batch(idx, generation[idx], batch_items, hints, alone)
            load[idx] += 1
            if alone:
                alone_busy.add(idx)

        while True:
            for idx in range(len(actors)):
                while idx not in alone_busy and load[idx] < self.batches_per_actor:
                    if suspects:
                        if load[idx] == 0:
                            dispatch(idx, [suspects.popleft()], True)
                        break
                    if not queue:
                        break
                    dispatch(idx, [queue.popleft() for _ in range(min(self.batch_size, len(queue)))], False)
            if not pending:
                if suspects:
                    continue
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            batch = pending.pop(ref)
            if batch.generation == generation[batch.actor]:          # not a batch of a replaced actor
                load[batch.actor] -= 1
                alone_busy.discard(batch.actor)
            try:
                results = ray.get(ref)
            except RayActorError:
                if batch.generation == generation[batch.actor]:      # replace the dead actor once
                    generation[batch.actor] += 1
                    actors[batch.actor] = new_actor()
                    load[batch.actor] = 0
                    alone_busy.discard(batch.actor)
                for item, hint in zip(batch.items, batch.hints):
                    if batch.alone:
                        ctx.record_failed(item, hint, "WorkerCrashed",
                                          f"{item.path}: the Ray actor screening this file died (a crash, or out of memory)")
                    else:
                        suspects.append(item)
                continue
            except RayTaskError as exc:                               # process() itself raised: not expected
                for item, hint in zip(batch.items, batch.hints):
                    ctx.record_failed(item, hint, type(exc.cause).__name__ if exc.cause else "RayTaskError", str(exc))
                continue
            for item, res in zip(batch.items, results):
                if res["status"] == "done":
                    ctx.record_done(item, res["key"], res["row"], res["seconds"], res["warnings"],
                                    tuple(res["stat"]) if res.get("stat") else None)
                else:
                    ctx.record_failed(item, res.get("key"), res["error_type"], res["message"])
