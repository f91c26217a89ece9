"""Ray Data for the stages that hold a model: ``map_batches`` over actors, one model per actor.

The LLM stages (teach, student inference) are per-user and independent once their inputs are
fixed, which is what Ray Data's ``map_batches`` over a pool of callable-class actors is for: each
actor loads its model once and maps batches of users to rows of the stage's table. The driver
consumes finished batches as they stream out (:func:`stream_map`) and writes each as a part, so
a killed job keeps every batch already written and the stage's resume skips those users.

Local Ray (no ``address``) keeps its session files under our own folder. On these 2-core
machines actors take half a CPU each (one whole CPU for each of two actors left no CPU for Ray's
own tasks and deadlocked; STACK.md) and one torch thread. Where the driver sees CUDA an actor
takes one GPU unless told otherwise.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from scaletot_features.config import RayConfig
from scaletot_features.runtime import torch_threads

BatchFn = Callable[[pa.Table], pa.Table]
"""What an actor runs on each batch: the stage's rows for a batch of users."""


class RayUnavailableError(RuntimeError):
    """``engine: ray`` was asked for where ray[data] is not installed."""


def require_ray() -> None:
    """Fail before any work when Ray Data is missing (checked before a model is loaded)."""
    try:
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayUnavailableError(f"the ray engine needs ray[data] ({e}): pip install -e "
                                  "'.[scale]', or use the local engine") from e


def default_tmpdir() -> Path:
    return Path(tempfile.gettempdir()) / f"scaletot-ray-{os.getuid()}"


def init_ray(address: str | None, tmpdir: str | None, object_store_mb: int) -> bool:
    """Start local Ray (or connect to ``address``); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    tmp = Path(tmpdir) if tmpdir else default_tmpdir()
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TMPDIR", str(tmp))
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, _temp_dir=str(tmp),
             object_store_memory=object_store_mb * 1024 * 1024, log_to_driver=False,
             configure_logging=False)
    return True


def actor_gpus(requested: float | None) -> float:
    """GPUs per actor: as configured, else one when the driver sees CUDA."""
    if requested is not None:
        return requested
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


class ModelActor:
    """Ray Data callable class: builds the stage's batch function (its model) once per actor.

    ``threads`` holds for each batch and is given back after it: in Ray's local mode the actor
    shares the driver's process, and its torch setting with it."""

    def __init__(self, make_batch_fn: Callable[[], BatchFn], threads: int | None) -> None:
        self.threads = threads
        self.batch_fn = make_batch_fn()

    def __call__(self, batch: pa.Table) -> pa.Table:
        with torch_threads(self.threads):
            return self.batch_fn(batch)


def stream_map(inputs: pa.Table, make_batch_fn: Callable[[], BatchFn], cfg: RayConfig,
               schema: pa.Schema) -> Iterator[pa.Table]:
    """Map ``inputs`` in batches of ``cfg.batch_users`` rows over ``cfg.actors`` actors.

    ``make_batch_fn`` is pickled to the actors (a module-level function or a
    ``functools.partial`` of one). Yields each finished batch, cast back to ``schema`` (Ray may
    hand list columns back as its tensor type), in completion order.
    """
    require_ray()
    if inputs.num_rows == 0:  # e.g. a resumed run whose texts are all cached: no Ray start-up
        return
    import ray
    import ray.data

    started = init_ray(cfg.address, cfg.tmpdir, cfg.object_store_mb)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the stage prints its own progress
        gpus = actor_gpus(cfg.actor_gpus)
        # One block per batch: a single block would feed one actor only.
        blocks = [inputs.slice(i, cfg.batch_users)
                  for i in range(0, inputs.num_rows, cfg.batch_users)]
        ds = ray.data.from_arrow(blocks).map_batches(
            ModelActor, fn_constructor_args=(make_batch_fn, cfg.actor_threads),
            batch_format="pyarrow", batch_size=cfg.batch_users, concurrency=cfg.actors,
            num_cpus=cfg.actor_cpus, num_gpus=gpus or None, zero_copy_batch=True)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if batch.num_rows:
                yield cast_to_schema(batch, schema)
    finally:
        if started:
            ray.shutdown()


def cast_to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns and types, unwrapping Ray's tensor extension types."""
    return pa.table({name: plain_column(table.column(name), schema.field(name).type)
                     for name in schema.names}, schema=schema)


def plain_column(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Cast a column to ``target``, unwrapping extension (tensor) types to fixed-size lists."""
    chunks = []
    for chunk in col.chunks:
        if isinstance(chunk.type, pa.ExtensionType):
            chunk = chunk.storage
        if pa.types.is_fixed_size_list(chunk.type) and pa.types.is_list(target):
            chunk = pa.ListArray.from_arrays(
                pa.array([i * chunk.type.list_size for i in range(len(chunk) + 1)], pa.int32()),
                chunk.flatten())
        chunks.append(chunk.cast(target))
    return pa.chunked_array(chunks, type=target)
