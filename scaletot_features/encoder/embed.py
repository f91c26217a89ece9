"""Batch embedding of every user: profiles -> reasoning features, locally or with Ray Data.

Output: ``DIR/features/reasoning_features/part-*.parquet`` with
``dataset.reasoning_feature_schema`` (one row per profile row, so every user exactly once:
profile ids are unique, the sparse-profile gate checks it). Provenance is ``"encoder"`` for
every row, covered users included: the batch table is then one function of the profile, the same
one the on-demand feature view computes for a request-time profile, so offline and online
features agree and a covered user's features do not change in kind when the LLM stages are
re-run. The teacher's and student's chains stay in their own tables.

Local engine: the profiles are read in record batches (``data.io.iter_batches``), encoded and
written one part per batch, so peak memory follows ``embed_batch_size``, not the population.
Reading the next batch and writing the previous part run in background threads (Arrow and torch
release the GIL), overlapping IO with compute.

Ray engine: Ray Data ``read_parquet -> map_batches(callable class) -> write_parquet``, actors
with ``ray_num_cpus`` CPUs each (0.5 by default: 1 CPU x 2 actors deadlocked on 2 cores, the
write stage had no CPU left), one GPU each when torch sees one. Ray's files are renamed to
``part-*.parquet`` and any type Ray changed (its tensor extension type) is cast back to the
schema, so both engines write the same table. Local Ray (no ``ray_address``) keeps its
session files under ``ray_tmpdir``.

Both run inside ``data.io.atomic_dir``: a failed run leaves the previous table untouched.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from scaletot_features.config import Settings
from scaletot_features.data.io import (
    atomic_dir,
    count_rows,
    iter_batches,
    parquet_files,
    read_json,
    write_json_atomic,
    write_parquet_atomic,
)
from scaletot_features.dataset import (
    DatasetLayout,
    part_file,
    reasoning_feature_schema,
    run_summary_path,
)
from scaletot_features.encoder.artifact import load_encoder
from scaletot_features.encoder.model import Encoder
from scaletot_features.profile import ID_COLUMN, ProfileSchema
from scaletot_features.ray_engine import ModelActor, actor_gpus, cast_to_schema, init_ray
from scaletot_features.runtime import torch_threads

# Float lists barely compress, and writing is the slowest step of the pipeline: snappy without
# dictionary pages on the float columns wrote a 65k-user part in 0.51 s vs 1.67 s for zstd-1 with
# the default dictionaries (34 MB vs 28 MB); snappy is read by every parquet engine (DuckDB, Feast).
COMPRESSION = "snappy"


def encoder_dir(data_dir: Path) -> Path:
    return DatasetLayout(data_dir).encoder


def features_dir(data_dir: Path) -> Path:
    return DatasetLayout(data_dir).features.reasoning


def data_profile_schema(data_dir: Path, settings: Settings) -> ProfileSchema:
    """The dataset's own profile schema (its manifest), else the configured one."""
    manifest = DatasetLayout(Path(data_dir)).manifest
    if manifest.exists():
        raw = read_json(manifest).get("profile_schema")
        if raw:
            return ProfileSchema.model_validate(raw)
    return settings.profile_schema()


def _write_part(table: pa.Table, directory: Path, index: int, schema: pa.Schema) -> None:
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    write_parquet_atomic(table.select(schema.names).cast(schema), part_file(directory, index),
                         compression=COMPRESSION, use_dictionary=strings)


def _prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run an iterator in a background thread, ``depth`` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for item in it:
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            errors.append(e)
        finally:
            q.put(done)

    threading.Thread(target=work, daemon=True, name="embed-read").start()
    while True:
        item = q.get()
        if item is done:
            if errors:
                raise errors[0]
            return
        yield item


class _BackgroundWriter:
    """Writes parts in one background thread, at most ``depth`` parts waiting (bounded memory)."""

    def __init__(self, directory: Path, schema: pa.Schema, depth: int = 2) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.errors: list[BaseException] = []
        self.directory, self.schema = directory, schema
        self.thread = threading.Thread(target=self._run, daemon=True, name="embed-write")
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.errors:
                continue
            try:
                _write_part(item[1], self.directory, item[0], self.schema)
            except BaseException as e:  # noqa: BLE001 - re-raised by put/close
                self.errors.append(e)

    def put(self, index: int, table: pa.Table) -> None:
        if self.errors:
            raise self.errors[0]
        self.q.put((index, table))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.errors:
            raise self.errors[0]


def embed_local(encoder: Encoder, profiles: Path, out: Path, batch_size: int,
                schema: pa.Schema, progress: bool = False) -> int:
    """Stream ``profiles`` through the encoder into ``out/part-*.parquet``; returns the row count."""
    total = count_rows(profiles)
    columns = [ID_COLUMN, "event_timestamp"] + encoder.featurizer.schema.names
    writer = _BackgroundWriter(out, schema)
    rows = 0
    with _progress(progress, total) as advance:
        try:
            for i, batch in enumerate(_prefetch(iter_batches(profiles, batch_size, columns))):
                writer.put(i, encoder.feature_table(batch))
                rows += batch.num_rows
                advance(batch.num_rows)
        finally:
            writer.close()
    return rows


class _progress:  # noqa: N801 - a small context manager
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):  # noqa: ANN204
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("embed"), BarColumn(), MofNCompleteColumn())
        self.bar.__enter__()
        task = self.bar.add_task("embed", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


# --------------------------------------------------------------------------- Ray


def encoder_batch_fn(folder: str, device: str | None = None) -> Callable[[pa.Table], pa.Table]:
    """One loaded encoder mapping profile batches to feature rows: a Ray actor's work."""
    encoder, _ = load_encoder(folder, device=device)
    return encoder.feature_table


def _init_ray(settings: Settings) -> bool:
    cfg = settings.encoder
    return init_ray(cfg.ray_address, cfg.ray_tmpdir, cfg.ray_object_store_mb)


def embed_ray(folder: Path, profiles: Path, out: Path, batch_size: int, schema: pa.Schema,
              settings: Settings, progress: bool = False) -> int:
    """Ray Data: read_parquet -> map_batches(ModelActor: one encoder each) -> write_parquet,
    then normalise."""
    import ray
    import ray.data

    cfg = settings.encoder
    started = _init_ray(settings)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = progress
        gpus = actor_gpus(cfg.ray_num_gpus)
        columns = [ID_COLUMN, "event_timestamp"] + [
            f.name for f in data_schema_from_encoder_dir(folder).fields]
        # One directory, not a list of files: Ray resolves each listed path in its own thread,
        # and with fsspec installed without aiohttp two threads importing fsspec's http module at
        # once raised "cannot import name 'HTTPFileSystem'" (ray 2.58, seen here).
        ds = ray.data.read_parquet(str(profiles), columns=columns, file_extensions=["parquet"])
        make = functools.partial(encoder_batch_fn, str(folder), "cuda" if gpus else "cpu")
        ds = ds.map_batches(
            ModelActor, fn_constructor_args=(make, cfg.embed_threads),
            batch_format="pyarrow", batch_size=batch_size, concurrency=cfg.ray_concurrency,
            num_cpus=cfg.ray_num_cpus, num_gpus=gpus or None, zero_copy_batch=True)
        scratch = out / ".ray"
        ds.write_parquet(str(scratch), compression=COMPRESSION)
    finally:
        if started:
            ray.shutdown()
    return normalise_parts(scratch, out, schema)


def data_schema_from_encoder_dir(folder: Path) -> ProfileSchema:
    from scaletot_features.encoder.artifact import read_manifest

    return ProfileSchema.model_validate(read_manifest(folder)["profile_schema"])


def normalise_parts(scratch: Path, out: Path, schema: pa.Schema) -> int:
    """Rename another writer's parquet files to ``part-*.parquet``; cast types it changed."""
    rows = 0
    index = 0
    for f in parquet_files(scratch):
        pf = pq.ParquetFile(f)
        if pf.metadata.num_rows == 0:
            continue
        if pf.schema_arrow.remove_metadata() == schema:
            os.rename(f, part_file(out, index))
        else:  # e.g. Ray's tensor extension type instead of list<float>
            table = pf.read()
            fixed = cast_to_schema(table, schema)
            _write_part(fixed, out, index, schema)
        rows += pf.metadata.num_rows
        index += 1
    for f in sorted(scratch.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    scratch.rmdir()
    return rows


# --------------------------------------------------------------------------- entry point


def embed_population(data_dir: Path | str, settings: Settings, engine: str | None = None,
                     progress: bool = True, batch_size: int | None = None,
                     encoder_folder: Path | None = None, out: Path | None = None
                     ) -> dict[str, Any]:
    """Write reasoning features for every user of ``DIR/profiles``; returns a summary.

    The encoder (``DIR/encoder`` unless ``encoder_folder``) must match the data's profile schema
    and the configured taxonomy, else :class:`~scaletot_features.encoder.artifact.EncoderManifestError`.
    """
    data_dir = Path(data_dir)
    engine = engine or settings.encoder.engine
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    folder = Path(encoder_folder) if encoder_folder else encoder_dir(data_dir)
    profiles = DatasetLayout(data_dir).profiles
    taxonomy = settings.taxonomy()
    encoder, manifest = load_encoder(folder, schema=data_profile_schema(data_dir, settings),
                                     taxonomy=taxonomy)
    schema = reasoning_feature_schema(taxonomy)  # its embedding length: the suite checks it
    batch_size = batch_size or (settings.encoder.embed_batch_size if engine == "local"
                                else settings.encoder.ray_batch_size)
    target = Path(out) if out else features_dir(data_dir)
    t0 = time.perf_counter()
    with atomic_dir(target, overwrite=True) as tmp:
        if engine == "local":
            # one torch thread by default: the reader and writer threads need the second core,
            # and on two shared cores OpenMP's fork/join made 2 threads slower (36k vs 85k
            # users/s measured)
            with torch_threads(settings.encoder.embed_threads):
                rows = embed_local(encoder, profiles, tmp, batch_size, schema, progress)
        else:
            del encoder  # each Ray actor loads its own
            rows = embed_ray(folder, profiles, tmp, batch_size, schema, settings, progress)
        parts = len(parquet_files(tmp))
    seconds = time.perf_counter() - t0
    summary = {"engine": engine, "users": rows, "parts": parts, "seconds": seconds,
               "users_per_s": rows / seconds if seconds > 0 else float("inf"),
               "model_version": manifest["model_version"], "dim": manifest["dim"],
               "path": str(target), "encoder": str(folder)}
    write_json_atomic(summary, run_summary_path(target))
    return summary
