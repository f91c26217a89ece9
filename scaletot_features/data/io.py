"""Atomic parquet and JSON writing, and reading tables back (the layout: ``dataset.py``).

Nothing is ever written in place: a file goes to a temporary name and is renamed, a directory is
built beside its final name and renamed when complete. A crash leaves the old state or the new
one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from scaletot_features.dataset import PART_GLOB, part_file


def _tmp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` only if the block finishes."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = _tmp_sibling(final)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` that replaces it only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ResumableDir:
    """A table folder built part by part in a scratch folder that survives a killed run.

    ``key`` says what the parts were computed with: a scratch folder left by a run with another
    key is discarded, one with the same key is resumed (:meth:`done_ids` are skipped).
    :meth:`finish` renames the scratch folder to ``final``, replacing it, so readers see the
    whole table or none of it.
    """

    KEY_FILE = "run_key.json"

    def __init__(self, final: Path, scratch: Path, key: str) -> None:
        self.final, self.scratch, self.key = Path(final), Path(scratch), key
        key_file = self.scratch / self.KEY_FILE
        if self.scratch.exists() and (not key_file.exists() or read_json(key_file) != key):
            shutil.rmtree(self.scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        write_json_atomic(key, key_file)
        self.next_part = len(parquet_files(self.scratch))

    def done_ids(self, column: str = "user_id") -> set[int]:
        done: set[int] = set()
        for f in parquet_files(self.scratch):
            done.update(pq.read_table(f, columns=[column]).column(column).to_pylist())
        return done

    def write(self, table: pa.Table) -> None:
        write_parquet_atomic(table, part_file(self.scratch, self.next_part))
        self.next_part += 1

    def finish(self) -> Path:
        (self.scratch / self.KEY_FILE).unlink()
        if self.final.exists():
            old = _tmp_sibling(self.final)
            os.rename(self.final, old)
            os.rename(self.scratch, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.scratch, self.final)
        return self.final


def write_parquet_atomic(table: pa.Table, path: Path, **kwargs: Any) -> Path:
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return Path(path)


def append_part_atomic(table: pa.Table, directory: Path, **kwargs: Any) -> Path:
    """Add ``table`` to a table folder as its next free part, whole or not at all.

    The part is written under a temporary name and hard-linked to the first free part name:
    the link fails rather than replace a part that another writer of the same folder (a cache
    shared by two runs) published meanwhile, and the next name is tried.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = len(list(directory.glob(PART_GLOB)))
    tmp = _tmp_sibling(part_file(directory, index))
    try:
        pq.write_table(table, tmp, **kwargs)
        while True:
            final = part_file(directory, index)
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                index += 1
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: Path) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def write_json_atomic(obj: Any, path: Path) -> Path:
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
                             + "\n", path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class PartWriter:
    """Writes a table as numbered parquet parts (``part-00000.parquet``, ...) in one directory.

    Parts let a stage stream in bounded memory and let readers use any parquet engine
    (pyarrow, DuckDB, Feast) on the directory.
    """

    def __init__(self, directory: Path, schema: pa.Schema, compression: str = "zstd"):
        self.directory = Path(directory)
        self.schema = schema
        self.compression = compression
        self.directory.mkdir(parents=True, exist_ok=True)
        self.parts = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        write_parquet_atomic(table, part_file(self.directory, self.parts),
                             compression=self.compression)
        self.parts += 1
        self.rows += table.num_rows


def is_current(output: Path, *inputs: Path) -> bool:
    """True when ``output`` exists and was written after every existing input (skip-if-current)."""
    output = Path(output)
    if not output.exists():
        return False
    stamp = output.stat().st_mtime
    return all(not Path(i).exists() or Path(i).stat().st_mtime <= stamp for i in inputs)


def parquet_files(path: Path) -> list[Path]:
    """The parquet files of a table: the file itself, or a directory's parts in order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    raise FileNotFoundError(f"no table at {path}")


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"{path} holds no parquet parts")
    return pads.dataset([str(f) for f in files], format="parquet").to_table(columns=columns)


def iter_batches(
    path: Path, batch_size: int = 65_536, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream a table in record batches: memory bounded by ``batch_size``, not the table."""
    files = parquet_files(path)
    ds = pads.dataset([str(f) for f in files], format="parquet")
    yield from ds.to_batches(columns=columns, batch_size=batch_size)


def count_rows(path: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))
