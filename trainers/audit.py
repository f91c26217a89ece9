"""The teacher audit: does the teacher carry signal about the outcomes, before anyone pays for
coverage and training?

On the covered users that have labels, for every outcome-bearing state type (the taxonomy's
``outcome_types``, keyed by label column: ``revenue_30``, or a labels file's own ``annual_income``;
an event-derived key also matches its kind at the dataset's horizon), how well the teacher's state
ranks the realised outcome:

- ``spearman_expected``: Spearman of the expected value index sum_i i * p_i (the taxonomy lists
  ordered types low to high) with the outcome;
- ``spearman_cv``: Spearman of out-of-fold predictions of a ridge on the state's full
  distribution (works for unordered types too);

beside the same cross-validated ridge on the profile fields over the same users, the cheap
supervised model the teacher has to beat. Written to ``DIR/teacher/audit.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scaletot_features.config import Settings
from scaletot_features.data.io import read_json, read_table, write_json_atomic
from scaletot_features.dataset import DatasetLayout, probs_column
from scaletot_features.data.labels import label_names
from scaletot_features.ltv.metrics import spearman
from scaletot_features.profile import FieldKind, ProfileSchema
from scaletot_features.taxonomy import Taxonomy

MIN_USERS = 10
FOLDS = 5


def audit_path(data_dir: Path) -> Path:
    return DatasetLayout(data_dir).teacher.audit


def outcome_column(outcome: str, horizon_days: int, label_columns: list[str]) -> str | None:
    """The label column an ``outcome_types`` key names: itself, or the same kind at this
    dataset's horizon (``lt30`` -> ``lt90``, ``revenue_30`` -> ``revenue_90``)."""
    if outcome in label_columns:
        return outcome
    active, revenue = label_names(horizon_days)
    guess = active if outcome.startswith("lt") else revenue if outcome.startswith("revenue") else None
    return guess if guess in label_columns else None


def _finite(x: float) -> float | None:
    """NaN (a constant prediction has no rank correlation) is written as null."""
    return None if not np.isfinite(x) else float(x)


def _fmt(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:+.3f}"


def _oof_ridge(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of a ridge (alpha chosen by inner CV) over ``FOLDS`` folds."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    pred = np.zeros_like(y)
    if np.ptp(x, axis=0).max(initial=0.0) == 0:  # nothing to learn from: say so, not fold noise
        return pred
    folds = KFold(n_splits=min(FOLDS, len(y)), shuffle=True, random_state=seed)
    for train, test in folds.split(x):
        model = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
    return pred


def profile_matrix(rows: list[dict], schema: ProfileSchema) -> np.ndarray:
    """One-hot categories, standardised numbers with missing flags, bags of words of text and
    tags: what a practitioner's first ridge on these fields would see."""
    from sklearn.feature_extraction.text import CountVectorizer

    blocks: list[np.ndarray] = []
    for f in schema.fields:
        vals = [r.get(f.name) for r in rows]
        if f.kind == FieldKind.categorical:
            blocks.append(np.array([[v == d for d in f.domain or ()] for v in vals], dtype=float))
        elif f.kind == FieldKind.numeric:
            v = np.array([np.nan if x is None else float(x) for x in vals])
            miss = np.isnan(v)
            z = np.where(miss, 0.0, (v - np.nanmean(v)) / (np.nanstd(v) or 1.0)) if (~miss).any() \
                else np.zeros_like(v)
            blocks.append(np.stack([z, miss.astype(float)], axis=1))
        else:
            docs = [" ".join(x) if isinstance(x, list) else (x or "") for x in vals]
            if any(d.strip() for d in docs):
                bag = CountVectorizer(binary=True, token_pattern=r"(?u)\b\w+\b").fit_transform(docs)
                blocks.append(bag.toarray().astype(float))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 1))


def teacher_audit(data_dir: Path, settings: Settings, chains: pa.Table) -> dict:
    """The audit report (also written to ``DIR/teacher/audit.json``); ``available`` is False,
    with the reason, when there is nothing to audit."""
    data_dir = Path(data_dir)
    taxonomy: Taxonomy = settings.taxonomy()
    layout = DatasetLayout(data_dir)
    report: dict = {"available": False, "users": 0, "outcomes": {}}
    if not layout.labels.exists() or not taxonomy.outcome_types:
        report["reason"] = "no labels" if not layout.labels.exists() else "no outcome types"
        return report
    labels = read_table(layout.labels)
    ids = chains.column("user_id")
    labels = labels.filter(pc.is_in(labels.column("user_id"), value_set=ids)).sort_by("user_id")
    chains = chains.filter(pc.is_in(ids, value_set=labels.column("user_id"))).sort_by("user_id")
    report["users"] = chains.num_rows
    if chains.num_rows < MIN_USERS:
        report["reason"] = f"only {chains.num_rows} covered users have labels (need {MIN_USERS})"
        write_json_atomic(report, audit_path(data_dir))
        return report

    profiles = read_table(layout.profiles)
    profiles = profiles.filter(pc.is_in(profiles.column("user_id"), value_set=chains.column("user_id")))
    x_profile = profile_matrix(profiles.sort_by("user_id").to_pylist(), settings.profile_schema())
    for outcome, types in taxonomy.outcome_types.items():
        col = outcome_column(outcome, settings.data.horizon_days, labels.column_names)
        if col is None:
            continue
        # a labels file may leave an outcome unknown (an empty cell): audit the users that have it
        raw = labels.column(col).to_numpy(zero_copy_only=False).astype(float)
        known = np.isfinite(raw)
        if known.sum() < MIN_USERS:
            report["outcomes"][outcome] = {"label_column": col, "users": int(known.sum()),
                                           "reason": f"only {int(known.sum())} covered users "
                                           f"have a known {col} (need {MIN_USERS})"}
            continue
        y = np.log1p(np.clip(raw[known], 0, None))
        if np.ptp(y) == 0:
            report["outcomes"][outcome] = {"label_column": col, "reason": "the outcome is the "
                                           f"same ({float(y[0]):g}) for every covered user"}
            continue
        entry: dict = {"label_column": col, "users": int(known.sum()),
                       "profile_ridge_cv": _finite(spearman(y, _oof_ridge(x_profile[known], y))),
                       "states": {}}
        for t in types:
            if probs_column(t) not in chains.column_names or chains.column(probs_column(t)).null_count:
                entry["states"][t] = {"reason": "chains without distributions (written before "
                                      "T_probs existed): rerun `scaletot teach --overwrite`"}
                continue
            probs = np.array(chains.column(probs_column(t)).to_pylist(), dtype=float)[known]
            expected = probs @ np.arange(probs.shape[1])
            entry["states"][t] = {"spearman_expected": _finite(spearman(y, expected)),
                                  "spearman_cv": _finite(spearman(y, _oof_ridge(probs, y)))}
        report["outcomes"][outcome] = entry
    report["available"] = any("reason" not in e for e in report["outcomes"].values())
    if not report["available"]:
        names = list(read_json(layout.manifest).get("label_names") or ()) \
            if layout.manifest.exists() else []
        report["reason"] = (f"no label column matches the taxonomy's outcome_types "
                            f"{sorted(taxonomy.outcome_types)}; this dataset's labels are {names}: "
                            "name a label column in outcome_types (your taxonomy, taxonomy_path) "
                            "to audit the states against it")
    write_json_atomic(report, audit_path(data_dir))
    return report


def audit_lines(report: dict) -> list[str]:
    """The audit as plain lines for the terminal and the log."""
    if not report.get("available"):
        return [f"teacher audit: skipped ({report.get('reason', 'nothing to audit')})"]
    lines = [f"teacher audit on {report['users']} covered users with labels "
             "(Spearman with the realised outcome; ridge = 5-fold cross-validated):"]
    for outcome, e in report["outcomes"].items():
        if "reason" in e:
            lines.append(f"  {e['label_column']}: {e['reason']}")
            continue
        lines.append(f"  {e['label_column']}: ridge on the profile {_fmt(e['profile_ridge_cv'])}")
        for t, m in e["states"].items():
            if "reason" in m:
                lines.append(f"    {t:<24} {m['reason']}")
                continue
            lines.append(f"    {t:<24} expected value {_fmt(m['spearman_expected'])}   "
                         f"ridge on its distribution {_fmt(m['spearman_cv'])}")
    return lines
