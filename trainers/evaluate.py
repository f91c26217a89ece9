"""The LTV comparison (DESIGN.md 4.10): does reasoning pay, at what coverage, for what cost?

Read top to bottom:

1. **The frame.** One point-in-time pull through Feast: the entity table is every labelled user
   stamped at its ``label_timestamp`` (when the label becomes known), the features are the
   ``ltv_with_reasoning`` service (or ``ltv_profile_only`` when no reasoning features exist yet)
   plus the labels. Feature set A's columns are exactly the ``ltv_profile_only`` service's.
2. **One split.** Test users by a hash of the id (``ltv.test_fraction``); users whose outcomes the
   student saw in training (the covered users: OSIPO rewards them on their realised outcomes)
   always go to train, so no reasoning feature of a test user was fitted on that user's label.
   The low-activity slice is ``ltv.low_activity``, a SQL predicate over the profile columns.
   The targets are ``ltv.targets`` (null: revenue_H as ZILN, lt_H as a hurdle count), checked
   against the dataset's labels before any work; every model, metric and report column follows
   them (:mod:`scaletot_features.ltv.targets`).
3. **Feature sets**, each the same :class:`trainers.ltv.LTVModel` fitted once per seed:
   (A) profile only, and beside it (A-gbdt) boosted trees on the same profile fields
   (:class:`trainers.ltv_gbdt.GBDTLTVModel`, the practitioner's tabular baseline); (B) A + the
   all-MiniLM-L6-v2 embedding of the profile text; (C) A + the encoder's embedding and
   typed-state distributions from Feast; (D) A + the student LLM's own reasoning (its chain's
   typed states and its representation, through the encoder's fixed projection) for every user;
   the stage ablations C-teacher (encoder from the teacher's chains, no student) and C-SFT (from
   the SFT student, no OSIPO), ``trainers/stage_rows.py``; and, on synthetic data, a reference
   row with the true latent states (headroom, not a method).
4. **The coverage sweep.** The student LLM reasons about more (or fewer) users; the encoder is
   distilled on them and embeds everyone; C is refitted. Users are taken in one order (covered
   users first, then a hashed order of the rest), so every point's users include the smaller
   points' and the student runs once, on the largest set, in checkpointed chunks.
   The teacher's coverage, which the student learned from, stays at the default.
5. **Uplifts** are paired by seed and read against the best profile-only row (A or A-gbdt), per
   target, chosen by the mean Gini on the models' validation users (the early-stopping slice of
   the training users), never on the test users that the uplift itself is measured on.
6. **Costs** of each row: LLM users, calls and prompt tokens; encoder and sentence-model seconds;
   the LTV model's fit seconds.

The feature sets (B, C, the sweep's and D's LLM reasoning, the reference row) are built in
``trainers/eval_features.py``, the stage ablations in ``trainers/stage_rows.py``; this module
fits and compares them. Everything lands in ``DIR/eval`` (results.json, predictions.parquet,
report.md, PNG plots); ``trainers/report.py`` writes the report.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import reduce
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from scaletot_features.config import DEFAULT_LOW_ACTIVITY, LTVTarget, Settings
from scaletot_features.data.io import (
    is_current,
    parquet_files,
    read_json,
    read_table,
    write_json_atomic,
    write_parquet_atomic,
)
from scaletot_features.dataset import (
    DatasetLayout,
    LABEL_TIMESTAMP,
    auc_score_column,
    hash_mask,
    prediction_column,
    truth_column,
)
from scaletot_features.encoder.embed import data_profile_schema, features_dir
from scaletot_features.ltv.metrics import summarize
from scaletot_features.ltv.targets import (
    AUC_OF_KIND,
    TargetsError,
    dataset_targets,
    retained_threshold,
    value_problem,
)
from scaletot_features.profile import ID_COLUMN, ProfileSchema
from trainers.eval_features import (
    EvaluationError,
    FeatureSet,
    covered_users,
    oracle_matrix,
    profile_text_matrix,
    reasoning_sets,
)
from trainers.ltv import LTVModel
from trainers.ltv_gbdt import GBDTLTVModel

SLICES = ("all", "low_activity")
PROFILE_ONLY = ("A", "A-gbdt")  # the rows uplifts are read against (the best one, per target)
METRICS = ("gini", "spearman", "auc", "decile_mape")  # per target and slice ("auc": if its kind has one)





# --------------------------------------------------------------------------- 1. the frame


def has_reasoning(data_dir: Path) -> bool:
    return bool(parquet_files(features_dir(data_dir))) if features_dir(data_dir).exists() else False


def training_frame(data_dir: Path, settings: Settings, console: Console) -> pa.Table:
    """Every labelled user with profile, reasoning features and labels, from Feast; cached."""
    from scaletot_features.store.repo import apply_repo, get_store
    from scaletot_features.store.retrieval import historical_features

    layout = DatasetLayout(data_dir)
    out = layout.eval.frame
    registry = layout.feast.registry
    if not is_current(out, layout.labels, layout.profiles, features_dir(data_dir), registry):
        if not registry.exists():
            apply_repo(data_dir, settings)
        service = "ltv_with_reasoning" if has_reasoning(data_dir) else "ltv_profile_only"
        labels = read_table(layout.labels, columns=[ID_COLUMN, LABEL_TIMESTAMP])
        entities = labels.rename_columns([ID_COLUMN, "event_timestamp"]).to_pandas()
        t0 = time.perf_counter()
        historical_features(data_dir, entities, service, out, with_labels=True)
        console.print(f"  frame: {len(entities):,} users through Feast service {service!r} "
                      f"+ labels ({time.perf_counter() - t0:.1f} s)")
        profile_only = get_store(data_dir).get_feature_service("ltv_profile_only")
        names = [f.name for p in profile_only.feature_view_projections for f in p.features]
        write_json_atomic({"service": service, "profile_only_features": names},
                          layout.eval.frame_info)
    table = read_table(out)
    return table.take(pc.sort_indices(table, [(ID_COLUMN, "ascending")]))


# --------------------------------------------------------------------------- 2. the split


def split_test(user_ids: np.ndarray, covered: np.ndarray, test_fraction: float,
               seed: int) -> np.ndarray:
    """True for test users: a hash of the id, never a user the student was trained on."""
    test = hash_mask(user_ids, test_fraction, seed, "eval_test")
    return test & ~np.isin(user_ids, covered)


def low_activity_mask(table: pa.Table, predicate: str | None) -> np.ndarray:
    """True for the users in the low-activity slice (none when ``predicate`` is None)."""
    if predicate is None:
        return np.zeros(table.num_rows, dtype=bool)
    import duckdb

    con = duckdb.connect()
    con.register("profiles", table)
    try:
        mask = con.sql(f"select coalesce(({predicate}), false) as m from profiles").fetchnumpy()
    except duckdb.Error as e:
        raise EvaluationError(f"ltv.low_activity {predicate!r} cannot be evaluated on the "
                              f"profile columns {table.column_names}: {e}") from e
    finally:
        con.close()
    return np.asarray(mask["m"], dtype=bool)


def low_activity_predicate(schema: ProfileSchema, predicate: str | None,
                           console: Console) -> str | None:
    """The slice's predicate, checked against the profile columns before any work starts.

    The default names a column of the synthetic schema (``first_day_sessions``): on a dataset
    without it the slice is left out, and said so; a predicate you set that does not evaluate
    on your columns is an error naming ``ltv.low_activity`` and the columns there are.
    """
    if predicate is None:
        console.print("  no low-activity slice (ltv.low_activity is null)")
        return None
    empty = schema.arrow_schema().empty_table().select([ID_COLUMN] + schema.names)
    try:
        low_activity_mask(empty, predicate)
    except EvaluationError:
        if predicate == DEFAULT_LOW_ACTIVITY:
            console.print(f"  [yellow]no low-activity slice: the default ltv.low_activity "
                          f"{predicate!r} names a column this dataset does not have (it has "
                          f"{schema.names}); set ltv.low_activity to a predicate over them[/]")
            return None
        raise
    return predicate


def evaluation_targets(data_dir: Path, settings: Settings) -> list[LTVTarget]:
    """``ltv.targets`` checked against the dataset's labels (or their defaults), before any work."""
    try:
        return dataset_targets(read_json(DatasetLayout(data_dir).manifest), settings.ltv.targets)
    except TargetsError as e:
        raise EvaluationError(str(e)) from e


def target_labels(frame: pa.Table, targets: list[LTVTarget]) -> dict[str, np.ndarray]:
    """Each target's labels from the frame (users with every label known), refused naming the
    target when its kind cannot model them (a negative revenue, a count above max, ...)."""
    y = {t.name: frame.column(t.name).to_numpy().astype(np.float64) for t in targets}
    for t in targets:
        problem = value_problem(t, y[t.name])
        if problem:
            raise EvaluationError(f"ltv.targets: {problem}")
    return y





# --------------------------------------------------------------------------- fitting


def _metrics(y: dict[str, np.ndarray], pred: Any, idx: np.ndarray, targets: list[LTVTarget],
             threshold: int) -> dict[str, dict[str, Any]]:
    """Per target: Gini, Spearman, decile MAPE, and the AUC its kind has (payer: value > 0 scored
    by p(value > 0); retained: count >= threshold scored by p(count >= threshold))."""
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        p = pred[t.name]
        auc = AUC_OF_KIND.get(t.kind)
        if not len(idx):  # an empty slice (no low-activity slice, or none of its users in test)
            out[t.name] = {"n": 0, "positive_rate": float("nan"),
                           **{k: float("nan") for k in METRICS if k != "auc" or auc}}
            continue
        out[t.name] = summarize(
            y[t.name][idx], p.value[idx], with_auc=auc is not None,
            auc_threshold=retained_threshold(t, threshold) if auc == "retained" else None,
            auc_scores=p.score[idx] if p.score is not None else None)
    return out


def ltv_model(kind: str, settings: Settings, schema: ProfileSchema, seed: int,
              targets: list[LTVTarget]) -> LTVModel | GBDTLTVModel:
    """The LTV model of a feature set (``FeatureSet.model``), configured from ``settings.ltv``."""
    cfg = settings.ltv
    common = {"targets": targets, "retained_threshold": cfg.retained_threshold, "seed": seed}
    if kind == "gbdt":
        g = cfg.gbdt
        return GBDTLTVModel(schema, max_iter=g.max_iter, learning_rate=g.learning_rate,
                            max_leaf_nodes=g.max_leaf_nodes, min_samples_leaf=g.min_samples_leaf,
                            l2_regularization=g.l2_regularization,
                            n_iter_no_change=g.n_iter_no_change, max_tokens=g.max_tokens,
                            **common)
    return LTVModel(schema, epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                    batch_size=cfg.batch_size, hidden=cfg.hidden, patience=cfg.patience, **common)


def prediction_table(block: str, key: str, seed: int, user_ids: pa.Array,
                     y: dict[str, np.ndarray], pred: Any, targets: list[LTVTarget],
                     low: np.ndarray) -> pa.Table:
    """One fit's test predictions: per target its prediction, its truth and its AUC's score."""
    n = len(user_ids)
    cols: dict[str, Any] = {"block": [block] * n, "set": [key] * n,
                            "seed": pa.array([seed] * n, pa.int32()), ID_COLUMN: user_ids}
    for t in targets:
        cols[prediction_column(t.name)] = pred[t.name].value
        cols[truth_column(t.name)] = y[t.name]
        if pred[t.name].score is not None:
            cols[auc_score_column(t.name, AUC_OF_KIND[t.kind])] = pred[t.name].score
    cols["low_activity"] = low
    return pa.table(cols)


def fit_block(block: str, sets: list[FeatureSet], profiles: pa.Table, y: dict[str, np.ndarray],
              targets: list[LTVTarget], test: np.ndarray, low: np.ndarray, rows: np.ndarray,
              settings: Settings, schema: ProfileSchema, predictions: list[pa.Table],
              tick: Callable[[str, int], None]) -> list[dict[str, Any]]:
    """Fit every set once per seed on ``rows``' train users; score its test users per slice.

    ``tick(message, fits_done)`` reports progress: (what starts, 0), then (it, 1) when done.
    Each run also keeps its fit seconds and its metrics on the model's validation users (what
    :func:`best_profile_only` chooses by; no test user is among them).
    """
    from threadpoolctl import threadpool_limits

    cfg = settings.ltv
    train_rows, test_rows = rows[~test[rows]], rows[test[rows]]
    out = []
    for fs in sets:
        for seed in cfg.seeds:
            tick(f"{block}: {fs.label}, seed {seed}", 0)
            model = ltv_model(fs.model, settings, schema, seed, targets)
            dense = (lambda r: None) if fs.dense is None else (lambda r: fs.dense[r])
            with threadpool_limits(cfg.gbdt.threads, user_api="openmp") \
                    if fs.model == "gbdt" and cfg.gbdt.threads else nullcontext():
                t0 = time.perf_counter()
                model.fit(profiles.take(pa.array(train_rows)),
                          {k: v[train_rows] for k, v in y.items()}, dense(train_rows))
                fit_seconds = time.perf_counter() - t0
                pred = model.predict(profiles.take(pa.array(test_rows)), dense(test_rows))
                val_rows = train_rows[model.validation_index_]
                val_pred = model.predict(profiles.take(pa.array(val_rows)), dense(val_rows)) \
                    if len(val_rows) else None
            local = np.arange(len(test_rows))
            slices = {"all": local, "low_activity": local[low[test_rows]]}
            out.append({"block": block, "set": fs.key, "label": fs.label, "seed": seed,
                        "train_users": int(len(train_rows)), "model": model.summary(),
                        "fit_seconds": round(fit_seconds, 3),
                        "metrics": {s: _metrics({k: v[test_rows] for k, v in y.items()}, pred,
                                                i, targets, cfg.retained_threshold)
                                    for s, i in slices.items()}})
            if val_pred is not None:
                out[-1]["validation"] = _metrics({k: v[val_rows] for k, v in y.items()}, val_pred,
                                                 np.arange(len(val_rows)), targets,
                                                 cfg.retained_threshold)
            predictions.append(prediction_table(
                block, fs.key, seed, profiles.column(ID_COLUMN).take(pa.array(test_rows)),
                {k: v[test_rows] for k, v in y.items()}, pred, targets, low[test_rows]))
            tick(f"{block}: {fs.label}, seed {seed}", 1)
    return out


def validation_score(runs: list[dict[str, Any]], target: str, metric: str = "gini") -> float:
    """Mean over seeds of ``metric`` for ``target`` on the validation users; NaN when unknown."""
    v = [r["validation"][target][metric] for r in runs if "validation" in r]
    return float(np.mean(v)) if v and len(v) == len(runs) else float("nan")


def best_profile_only(runs: list[dict[str, Any]], target: str) -> str | None:
    """The profile-only set (``PROFILE_ONLY``) of one block with the best mean validation Gini
    on ``target``. Chosen on the validation users, never the test users: picking the best of
    two rows on the very users the uplift is then measured on would flatter the baseline by the
    noise of the test sample. A when no profile-only row has a validation score (None: no A)."""
    scores = {k: validation_score([r for r in runs if r["set"] == k], target)
              for k in PROFILE_ONLY if any(r["set"] == k for r in runs)}
    known = {k: v for k, v in scores.items() if not np.isnan(v)}
    if known:
        return max(known, key=known.__getitem__)  # a tie keeps the first, A
    return "A" if "A" in scores else None


def run_targets(runs: list[dict[str, Any]]) -> list[str]:
    """The target names the runs were scored on, in order (every run has the same)."""
    return list(runs[0]["metrics"]["all"]) if runs else []


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, and the paired uplift over the best profile-only
    row (:func:`best_profile_only`, per target), per block/set. Every row carries
    ``uplift_base`` (target -> set) and its own mean validation Gini (``validation.T.gini``)."""
    targets = run_targets(runs)
    by: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        by.setdefault((r["block"], r["set"]), []).append(r)
    # a block with its own profile-only rows reads uplifts against them; the sweep, the main ones
    bases: dict[str, tuple[str, dict[str, str | None]]] = {}
    for block in dict.fromkeys(b for b, _ in by):
        own = any((block, k) in by for k in PROFILE_ONLY)
        source = block if own else "main"
        pool = [r for (b, _), rs in by.items() if b == source for r in rs]
        bases[block] = (source, {t: best_profile_only(pool, t) for t in targets})
    out = []
    for (block, key), rs in by.items():
        source, chosen = bases[block]
        row: dict[str, Any] = {"block": block, "set": key, "label": rs[0]["label"],
                               "seeds": len(rs), "train_users": rs[0]["train_users"],
                               "profile_only": key in PROFILE_ONLY, "uplift_base": chosen}
        if all("fit_seconds" in r for r in rs):
            row["fit_seconds"] = float(np.mean([r["fit_seconds"] for r in rs]))
        for t in targets:
            row[f"validation.{t}.gini"] = validation_score(rs, t)
        for s in SLICES:
            for t in targets:
                # paired by seed with the chosen profile-only row
                base = {r["seed"]: r for r in by.get((source, chosen[t] or ""), [])}
                row[f"{s}.{t}.n"] = rs[0]["metrics"][s][t]["n"]
                row[f"{s}.{t}.positive_rate"] = rs[0]["metrics"][s][t]["positive_rate"]
                for k in (k for k in METRICS if k in rs[0]["metrics"][s][t]):
                    v = np.array([r["metrics"][s][t][k] for r in rs], dtype=float)
                    row[f"{s}.{t}.{k}"] = float(np.mean(v))
                    row[f"{s}.{t}.{k}.std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                    if base:
                        d = np.array([r["metrics"][s][t][k] - base[r["seed"]]["metrics"][s][t][k]
                                      for r in rs if r["seed"] in base], dtype=float)
                        row[f"{s}.{t}.{k}.uplift"] = float(np.mean(d))
                        row[f"{s}.{t}.{k}.uplift_std"] = float(np.std(d, ddof=1)) \
                            if len(d) > 1 else 0.0
        out.append(row)
    return out


# --------------------------------------------------------------------------- the stage


def evaluate(data_dir: Path | str, settings: Settings, console: Console | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the comparison; write DIR/eval/results.json, predictions and the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainers.report import write_report
    from scaletot_features.runtime import torch_threads

    console = console or Console()
    data_dir = Path(data_dir).resolve()
    cfg = settings.ltv
    t_start = time.perf_counter()
    layout = DatasetLayout(data_dir)
    out = layout.eval.root
    out.mkdir(parents=True, exist_ok=True)
    schema = data_profile_schema(data_dir, settings)
    taxonomy = settings.taxonomy()
    low_predicate = low_activity_predicate(schema, cfg.low_activity, console)  # before any work
    targets = evaluation_targets(data_dir, settings)  # before any work too
    console.print("  targets: " + ", ".join(f"{t.name} ({t.kind}"
                                            + (f", max {t.max})" if t.max else ")")
                                            for t in targets))

    frame = training_frame(data_dir, settings, console)
    known = reduce(pc.and_, [pc.is_valid(frame.column(t.name)) for t in targets])
    dropped = frame.num_rows - (pc.sum(known).as_py() or 0)
    frame = frame.filter(known)
    if frame.num_rows < 50:
        raise EvaluationError(f"only {frame.num_rows} labelled users in {data_dir}: too few")
    ids = frame.column(ID_COLUMN).to_numpy()
    y = target_labels(frame, targets)
    service_fields = read_json(layout.eval.frame_info)["profile_only_features"]
    if sorted(service_fields) != sorted(schema.names):
        raise EvaluationError(f"the ltv_profile_only service serves {sorted(service_fields)}, "
                              f"the profile schema declares {sorted(schema.names)}: apply the "
                              "feature repository again")
    profiles = frame.select([ID_COLUMN] + schema.names)  # (A): the ltv_profile_only service
    covered = covered_users(data_dir)
    test = split_test(ids, covered, cfg.test_fraction, cfg.split_seed)
    low = low_activity_mask(profiles, low_predicate)
    everyone = np.arange(len(ids))

    sets: list[FeatureSet] = [FeatureSet("A", "A: profile only", None)]
    if cfg.gbdt.enabled:
        sets.append(FeatureSet("A-gbdt", "A-gbdt: profile only, boosted trees", None,
                               model="gbdt"))
    profile_only = list(sets)
    text, text_seconds, distinct = profile_text_matrix(data_dir, frame, schema, console, progress)
    if text is None:
        console.print("  no text or tag fields: row B (their sentence embedding) is left out")
    else:
        sets.append(FeatureSet("B", "B: + MiniLM of text fields", text,
                               {"sentence_model_seconds": round(text_seconds, 1),
                                "distinct_strings": distinct}))
    from trainers.stage_rows import encoder_from_teacher

    from_teacher = encoder_from_teacher(data_dir)  # no student behind DIR/encoder: no C, D
    reasoning = reasoning_sets(data_dir, settings, frame, ids, covered, console, progress) \
        if has_reasoning(data_dir) and not from_teacher else None
    if from_teacher:
        console.print("  [yellow]DIR/encoder was distilled from the teacher: C, the sweep and D "
                      "need the student's (scaletot distill DIR); C-teacher is its row[/]")
    elif reasoning is None:
        console.print("  [yellow]no reasoning features in this dataset: only A and B are "
                      "compared (run teach, train-student, distill and embed for C and D)[/]")
    else:
        sets.append(reasoning.c)
    if cfg.stage_rows:  # C-teacher, C-SFT before C: what each LLM stage adds
        from trainers.stage_rows import stage_sets

        at = sets.index(reasoning.c) if reasoning is not None else len(sets)
        sets[at:at] = stage_sets(data_dir, settings, ids, covered, console, progress)
    if cfg.oracle:
        oracle = oracle_matrix(data_dir, frame, taxonomy)
        if oracle is not None:
            sets.append(FeatureSet("oracle", "ref.: + true latent states", oracle))

    # the main table; the sweep; D beside A and C on its own sample when it is not every user
    blocks: list[tuple[str, list[FeatureSet], np.ndarray]] = [("main", sets, everyone)]
    upper_rows = everyone
    if reasoning is not None:
        blocks.append(("sweep", reasoning.sweep, everyone))
        upper_rows = reasoning.d.rows if reasoning.d.rows is not None else everyone
        if len(upper_rows) == len(ids):
            sets.insert(sets.index(reasoning.c) + 1, reasoning.d)
        else:
            blocks.append(("upper_bound", profile_only + [reasoning.c, reasoning.d], upper_rows))
    total = sum(len(s) for _, s, _ in blocks) * len(cfg.seeds)
    runs: list[dict[str, Any]] = []
    predictions: list[pa.Table] = []
    t_fit = time.perf_counter()
    with torch_threads(cfg.torch_threads), Progress(
            TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[msg]}"), console=console, disable=not progress) as bar:
        task = bar.add_task("fit", total=total, msg="")
        for block, block_sets, rows in blocks:
            runs += fit_block(block, block_sets, profiles, y, targets, test, low, rows, settings,
                              schema, predictions,
                              lambda msg, done: bar.update(task, advance=done, msg=msg))
    summary = aggregate(runs)
    costs = {s.key: s.cost for _, bs, _ in blocks for s in bs}
    results = {
        "data_dir": str(data_dir), "preset": settings.preset, "users": int(len(ids)),
        "dropped_unlabelled": int(dropped), "test_users": int(test.sum()),
        "low_activity": {"predicate": low_predicate, "users": int(low.sum()),
                         "test_users": int((low & test).sum())},
        "covered_users": int(len(covered)), "seeds": cfg.seeds,
        "targets": [{**t.model_dump(mode="json"), "auc": AUC_OF_KIND.get(t.kind),
                     "retained_threshold": retained_threshold(t, cfg.retained_threshold)
                     if t.kind == "hurdle_count" else None} for t in targets],
        "split": {"test_fraction": cfg.test_fraction, "seed": cfg.split_seed,
                  "covered_users_forced_to_train": True},
        "upper_bound_users": int(len(upper_rows)) if reasoning is not None else 0,
        "settings": cfg.model_dump(mode="json"), "costs": costs,
        "uplift_base": {r["block"]: r["uplift_base"] for r in summary}, "summary": summary,
        "runs": runs, "fit_seconds": round(time.perf_counter() - t_fit, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_parquet_atomic(pa.concat_tables(predictions), layout.eval.predictions)
    results["report"] = str(write_report(results, layout.eval.predictions, out))
    write_json_atomic(results, layout.eval.results)
    return results
