"""The atomic writers of data/io.py."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from scaletot_features.data.io import append_part_atomic, read_table, write_parquet_atomic
from scaletot_features.dataset import part_file


def test_append_part_takes_the_next_free_name_and_never_replaces_a_part(tmp_path):
    folder = tmp_path / "table"
    first = append_part_atomic(pa.table({"x": [1]}), folder)
    assert first == part_file(folder, 0)
    # Another writer published part 2 (part 1 still absent): the count says 2, which is taken.
    write_parquet_atomic(pa.table({"x": [2]}), part_file(folder, 2))
    third = append_part_atomic(pa.table({"x": [3]}), folder)
    assert third == part_file(folder, 3)
    assert pq.read_table(part_file(folder, 2)).column("x").to_pylist() == [2]
    assert sorted(read_table(folder).column("x").to_pylist()) == [1, 2, 3]
    assert sorted(p.name for p in folder.iterdir()) == [
        "part-00000.parquet", "part-00002.parquet", "part-00003.parquet"]  # no temporary left
