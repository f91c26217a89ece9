"""The teacher's labelled demonstrations (``teacher.few_shot``), drawn from the dataset's labels.

The pool is every labelled user that is neither covered (a covered user must never see its own
outcome in its prompt) nor in ``evaluate``'s test split (the evaluation's users stay unseen by
every stage). From it, ``few_shot`` users are taken in a seeded user-hash order, stratified over
the first outcome-bearing type's outcome bins; each shows the values of every outcome-bearing
type (reasoning/demonstrations.py). The selection is a pure function of the dataset and the
settings, so a resumed run and every Ray actor see the same block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scaletot_features.config import Settings
from scaletot_features.data.io import read_table
from scaletot_features.dataset import DatasetLayout, hash_order
from scaletot_features.reasoning.demonstrations import (
    Demonstration,
    demonstration_block,
    outcome_bins,
    stratified_pick,
)
from trainers.audit import outcome_column


class FewShotError(ValueError):
    """``teacher.few_shot`` cannot be served by this dataset (said before any model loads)."""


def outcome_label_columns(settings: Settings, label_columns: list[str]) -> dict[str, str]:
    """State type -> the label column its outcome is read from (the first outcome naming it)."""
    found: dict[str, str] = {}
    for outcome, types in settings.taxonomy().outcome_types.items():
        col = outcome_column(outcome, settings.data.horizon_days, label_columns)
        for t in types:
            if col is not None and t not in found:
                found[t] = col
    return found


def select_demonstrations(data_dir: Path, settings: Settings,
                          covered: np.ndarray) -> list[Demonstration]:
    """``teacher.few_shot`` labelled users outside the covered users and the test split."""
    from trainers.evaluate import split_test

    k = settings.teacher.few_shot
    if k == 0:
        return []
    layout = DatasetLayout(data_dir)
    if settings.teacher.scoring == "channel":
        raise FewShotError("teacher.few_shot: channel scoring takes no demonstrations; "
                           "set teacher.few_shot: 0 or another teacher.scoring")
    if not layout.labels.exists():
        raise FewShotError(f"teacher.few_shot: {k} needs labels, and {data_dir} has none "
                           "(ingest events or --labels first)")
    labels = read_table(layout.labels)
    columns = outcome_label_columns(settings, labels.column_names)
    if not columns:
        raise FewShotError(
            f"teacher.few_shot: no label column of {labels.column_names} matches the taxonomy's "
            f"outcome_types {sorted(settings.taxonomy().outcome_types)}")
    for col in set(columns.values()):
        labels = labels.filter(pc.is_valid(labels.column(col)))
    ids = labels.column("user_id").to_numpy()
    cfg = settings.ltv
    pool = ~np.isin(ids, covered) & ~split_test(ids, np.asarray(covered, dtype=np.int64),
                                               cfg.test_fraction, cfg.split_seed)
    if pool.sum() < k:
        raise FewShotError(f"teacher.few_shot: {k} demonstrations asked for, and only "
                           f"{int(pool.sum())} labelled users are outside the coverage and the "
                           "test split")
    labels = labels.filter(pa.array(pool))
    ids = labels.column("user_id").to_numpy()
    taxonomy = settings.taxonomy()
    bins = {t: outcome_bins(labels.column(col).to_numpy(), len(taxonomy.by_name[t].values))
            for t, col in columns.items()}
    first = next(t for t in taxonomy.type_names if t in bins)
    picked = stratified_pick(bins[first], hash_order(ids, settings.coverage.seed, "few_shot"), k)
    profiles = read_table(layout.profiles)
    wanted = pa.array(ids[picked], pa.int64())
    rows = {r["user_id"]: r for r in profiles.filter(
        pc.is_in(profiles.column("user_id"), value_set=wanted)).to_pylist()}
    schema = settings.profile_schema()
    return [Demonstration(schema.to_text(rows[int(ids[i])], settings.teacher.profile_style),
                          {t: taxonomy.by_name[t].value_names[int(b[i])] for t, b in bins.items()})
            for i in picked]


def demonstrations_text(data_dir: Path, settings: Settings, covered: np.ndarray) -> str:
    """The block every teacher prompt starts with ("" when ``teacher.few_shot`` is 0)."""
    return demonstration_block(select_demonstrations(data_dir, settings, covered),
                               settings.taxonomy())
