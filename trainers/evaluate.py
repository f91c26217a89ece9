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
3. **Feature sets**, each the same :class:`trainers.ltv.LTVModel` fitted once per seed:
   (A) profile only; (B) A + the all-MiniLM-L6-v2 embedding of the profile text; (C) A + the
   encoder's embedding and typed-state distributions from Feast; (D) A + the student LLM's own
   reasoning (its chain's typed states and its representation, through the encoder's fixed
   projection) for every user; and, on synthetic data, a reference row with the true latent
   states (headroom, not a method).
4. **The coverage sweep.** The student LLM reasons about more (or fewer) users; the encoder is
   distilled on them and embeds everyone; C is refitted. Users are taken in one order (covered
   users first, then a hashed order of the rest), so every point's users include the smaller
   points' and the student runs once, on the largest set, in checkpointed chunks.
   The teacher's coverage, which the student learned from, stays at the default.
5. **Costs** of each row: LLM users, calls and prompt tokens; encoder and sentence-model seconds.

Everything lands in ``DIR/eval`` (results.json, predictions.parquet, report.md, PNG plots);
``trainers/report.py`` writes the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from scaletot_features.config import Settings
from scaletot_features.data.io import (
    atomic_dir,
    is_current,
    parquet_files,
    read_json,
    read_table,
    write_json_atomic,
    write_parquet_atomic,
)
from scaletot_features.dataset import (
    DatasetLayout,
    ReasoningChunk,
    STUDENT_MODELS,
    hash_mask,
    hash_order,
    probs_column,
    run_summary_path,
    student_manifest,
)
from scaletot_features.encoder.embed import data_profile_schema, encoder_dir, features_dir
from scaletot_features.ltv.metrics import summarize
from scaletot_features.profile import ID_COLUMN, ProfileSchema
from scaletot_features.taxonomy import Taxonomy
from trainers.ltv import LTVModel

SLICES = ("all", "low_activity")
TARGETS = ("revenue", "active")


class EvaluationError(ValueError):
    """The data cannot be evaluated as asked; the message names what is missing."""


# --------------------------------------------------------------------------- 1. the frame


def has_reasoning(data_dir: Path) -> bool:
    return bool(parquet_files(features_dir(data_dir))) if features_dir(data_dir).exists() else False


def training_frame(data_dir: Path, settings: Settings, console: Console) -> pa.Table:
    """Every labelled user with profile, reasoning features and labels, from Feast; cached."""
    from scaletot_features.store.repo import apply_repo, get_store, historical_features

    layout = DatasetLayout(data_dir)
    out = layout.eval.frame
    registry = layout.feast.registry
    if not is_current(out, layout.labels, layout.profiles, features_dir(data_dir), registry):
        if not registry.exists():
            apply_repo(data_dir, settings)
        service = "ltv_with_reasoning" if has_reasoning(data_dir) else "ltv_profile_only"
        labels = read_table(layout.labels, columns=[ID_COLUMN, "label_timestamp"])
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


def low_activity_mask(table: pa.Table, predicate: str) -> np.ndarray:
    import duckdb

    con = duckdb.connect()
    con.register("profiles", table)
    try:
        mask = con.sql(f"select coalesce(({predicate}), false) as m from profiles").fetchnumpy()
    except duckdb.Error as e:
        raise EvaluationError(f"ltv.low_activity {predicate!r} cannot be evaluated on the "
                              f"profile columns: {e}") from e
    finally:
        con.close()
    return np.asarray(mask["m"], dtype=bool)


def covered_users(data_dir: Path) -> np.ndarray:
    path = DatasetLayout(data_dir).teacher.coverage
    if not path.exists():
        return np.zeros(0, dtype=np.int64)
    return read_table(path, columns=[ID_COLUMN]).column(ID_COLUMN).to_numpy()


# --------------------------------------------------------------------------- 3. feature sets


@dataclass
class FeatureSet:
    """One row of the comparison: a name, dense columns (None = profile only) and its cost."""

    key: str
    label: str
    dense: np.ndarray | None
    cost: dict[str, Any] = field(default_factory=dict)
    rows: np.ndarray | None = None  # users (frame row indices) that have these features


def _list_matrix(col: pa.ChunkedArray) -> np.ndarray:
    col = col.combine_chunks()
    if col.null_count:
        raise EvaluationError(f"{col.null_count} users have no value in a list feature column")
    return np.asarray(pc.list_flatten(col).to_numpy(), dtype=np.float64).reshape(len(col), -1)


def reasoning_matrix(table: pa.Table, taxonomy: Taxonomy) -> np.ndarray:
    """Encoder features: the embedding and, per state type, its value distribution."""
    missing = [c for c in ["embedding"] + [probs_column(t) for t in taxonomy.type_names]
               if c not in table.column_names]
    if missing:
        raise EvaluationError(f"the reasoning features lack columns {missing}")
    return np.concatenate([_list_matrix(table.column("embedding"))]
                          + [_list_matrix(table.column(probs_column(t))) for t in taxonomy.type_names],
                          axis=1)


def one_hot_states(table: pa.Table, taxonomy: Taxonomy) -> np.ndarray:
    """Per state type, a one-hot of the value (all zeros when absent or unknown)."""
    blocks = []
    for t in taxonomy.types:
        idx = pc.index_in(table.column(t.name), value_set=pa.array(t.value_names))
        idx = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False)
        block = np.zeros((table.num_rows, len(t.value_names)))
        ok = idx >= 0
        block[np.flatnonzero(ok), idx[ok]] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def align(table: pa.Table, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame rows, table rows) of the users present in both."""
    pos = pc.index_in(pa.array(user_ids, pa.int64()), value_set=table.column(ID_COLUMN))
    pos = pc.fill_null(pos, -1).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(pos >= 0)
    return rows, pos[rows].astype(np.int64)


def profile_text_matrix(data_dir: Path, table: pa.Table, schema: ProfileSchema,
                        console: Console, progress: bool = True) -> tuple[np.ndarray, float]:
    """(B) all-MiniLM-L6-v2 over the profile text, cached in DIR/eval; (matrix, seconds)."""
    from scaletot_features.encoder.featurizer import TextEmbedder

    out = DatasetLayout(data_dir).eval.profile_text_embedding
    meta = run_summary_path(out)
    if is_current(out, DatasetLayout(data_dir).profiles) and meta.exists():
        cached = read_table(out)
        if np.array_equal(cached.column(ID_COLUMN).to_numpy(), table.column(ID_COLUMN).to_numpy()):
            return _list_matrix(cached.column("embedding")), float(read_json(meta)["seconds"])
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rows = table.select(schema.names).to_pylist()
    texts = pa.array(["; ".join(schema.to_text(r).splitlines()) for r in rows], pa.string())
    embedder = TextEmbedder(cache_size=0)
    t0 = time.perf_counter()
    parts = []
    with Progress(TextColumn("B: MiniLM"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not progress) as bar:
        task = bar.add_task("B", total=len(texts))
        for start in range(0, len(texts), 2048):
            chunk = texts.slice(start, 2048)
            parts.append(embedder.embed(chunk))
            bar.update(task, advance=len(chunk))
    vectors = np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)
    seconds = time.perf_counter() - t0
    console.print(f"  B: sentence embedding of {len(texts):,} profile texts in {seconds:.1f} s")
    write_parquet_atomic(pa.table({ID_COLUMN: table.column(ID_COLUMN),
                                   "embedding": pa.array(list(vectors), pa.list_(pa.float32()))}),
                         out)
    write_json_atomic({"seconds": seconds, "users": len(texts)}, meta)
    return vectors.astype(np.float64), seconds


def oracle_matrix(data_dir: Path, table: pa.Table, taxonomy: Taxonomy) -> np.ndarray | None:
    latent = DatasetLayout(data_dir).latent
    if not latent.exists():
        return None
    truth = read_table(latent)
    if any(t not in truth.column_names for t in taxonomy.type_names):
        return None
    rows, theirs = align(truth, table.column(ID_COLUMN).to_numpy())
    if len(rows) != table.num_rows:
        return None
    return one_hot_states(truth.take(pa.array(theirs)), taxonomy)


# --------------------------------------------------------------------------- 4. LLM reasoning


def reasoning_order(user_ids: np.ndarray, covered: np.ndarray, seed: int) -> np.ndarray:
    """Who the LLM reasons about first: the covered users, then the rest in a hashed order."""
    is_cov = np.isin(user_ids, covered)
    cov = user_ids[is_cov]
    rest = user_ids[~is_cov]
    cov = cov[hash_order(cov, seed, "eval_order")]
    rest = rest[hash_order(rest, seed, "eval_order")]
    return np.concatenate([cov, rest])


def student_reasoning(data_dir: Path, settings: Settings, user_ids: np.ndarray,
                      console: Console, progress: bool) -> tuple[pa.Table, dict[str, Any]]:
    """Student chains + representations for ``user_ids``: the covered users' from the student
    stage, the others by inference in checkpointed chunks under DIR/eval/reasoning (a rerun
    skips finished chunks; chunks older than the student are redone)."""
    from trainers.student_stage import final_student_dir, run_inference, student_paths

    paths = student_paths(data_dir)
    if not paths["chains"].exists():
        raise EvaluationError(f"no student chains at {paths['chains']}: run train-student first")
    model_dir = final_student_dir(data_dir)
    have = read_table(paths["chains"])
    tables = [have.filter(pc.is_in(have.column(ID_COLUMN), value_set=pa.array(user_ids)))]
    todo = user_ids[~np.isin(user_ids, have.column(ID_COLUMN).to_numpy())]
    layout = DatasetLayout(data_dir).eval
    size = settings.ltv.reasoning_chunk
    seconds, ran = 0.0, 0
    for k, start in enumerate(range(0, len(todo), size)):
        chunk = layout.chunk(k)
        ids = todo[start:start + size]
        done = read_table(chunk.chains) if is_current(chunk.root, model_dir) else None
        if done is None or done.column(ID_COLUMN).to_pylist() != ids.tolist():
            console.print(f"  student reasoning: users {start + 1:,}-{start + len(ids):,} "
                          f"of {len(todo):,} new")
            with atomic_dir(chunk.root, overwrite=True) as tmp:
                summary = run_inference(data_dir, settings, user_ids=ids.tolist(),
                                        out_dir=ReasoningChunk(tmp).chains, progress=progress)
                write_json_atomic(summary, ReasoningChunk(tmp).summary)
            done = read_table(chunk.chains)
            ran += len(ids)
        seconds += float(read_json(chunk.summary)["seconds"])
        tables.append(done)
    chains = pa.concat_tables(tables, promote_options="default")
    covered_summary = read_json(paths["chains_summary"]) if paths["chains_summary"].exists() else {}
    return chains, {"new_users": int(len(todo)), "ran_now": ran, "new_seconds": seconds,
                    "covered_users": int(tables[0].num_rows),
                    "covered_seconds": float(covered_summary.get("seconds", 0.0))}


def prompt_tokens(data_dir: Path, settings: Settings, user_ids: np.ndarray) -> np.ndarray:
    """The student's prompt length per user (what one constrained pass reads)."""
    from transformers import AutoTokenizer

    from scaletot_features.llm.packaged import set_offline_env
    from scaletot_features.reasoning.prompts import student_prompt
    from scaletot_features.reasoning.student import encode_prompt, profile_texts
    from trainers.student_stage import final_student_dir

    set_offline_env()
    tok = AutoTokenizer.from_pretrained(final_student_dir(data_dir))
    texts = profile_texts(data_dir, user_ids.tolist(), settings.profile_schema())
    tax = settings.taxonomy()
    return np.array([len(encode_prompt(tok, student_prompt(texts[int(u)], tax)))
                     for u in user_ids])


def teacher_cost(data_dir: Path) -> dict[str, Any]:
    from trainers.teach import load_chains

    if not DatasetLayout(data_dir).teacher.chains.exists():
        return {"teacher_users": 0, "teacher_calls": 0, "teacher_tokens": 0, "teacher_seconds": 0.0}
    chains = load_chains(data_dir)
    total = lambda c: pc.sum(chains.column(c)).as_py() or 0  # noqa: E731
    return {"teacher_users": chains.num_rows, "teacher_calls": int(total("scoring_calls")),
            "teacher_tokens": int(total("prompt_tokens")),
            "teacher_seconds": round(float(total("seconds")), 1)}


def sweep_point(data_dir: Path, settings: Settings, chains: pa.Table, users: np.ndarray,
                console: Console, progress: bool) -> tuple[Path, dict[str, float]]:
    """Distil an encoder on ``users``' student reasoning and embed everyone; cached.

    Returns the features folder and the seconds each stage took (from its run summary)."""
    from scaletot_features.encoder import embed_population
    from trainers.distill_encoder import distill_encoder

    point = DatasetLayout(data_dir).eval.sweep_point(len(users))
    targets, enc, feats = point.targets, point.encoder, point.features
    same = targets.exists() and \
        sorted(read_table(targets, columns=[ID_COLUMN]).column(ID_COLUMN).to_pylist()) == \
        sorted(users.tolist())
    if not same or not is_current(feats, targets) or \
            not is_current(targets, *chains_sources(data_dir)):
        sub = chains.filter(pc.is_in(chains.column(ID_COLUMN), value_set=pa.array(users)))
        write_parquet_atomic(sub, targets)
        distill_encoder(data_dir, settings, targets=targets, out=enc, progress=False)
        embed_population(data_dir, settings, encoder_folder=enc, out=feats, progress=False)
    seconds = {name: float(read_json(run_summary_path(path))["seconds"])
               for name, path in (("distill", enc), ("embed", feats))}
    console.print(f"  sweep: encoder on {len(users):,} users' reasoning "
                  f"(distil {seconds['distill']:.1f} s, embed {seconds['embed']:.1f} s)")
    return feats, seconds


def chains_sources(data_dir: Path) -> list[Path]:
    from trainers.student_stage import student_paths

    return [student_paths(data_dir)["chains"], DatasetLayout(data_dir).eval.reasoning]


@dataclass
class ReasoningSets:
    c: FeatureSet  # the default pipeline's encoder features, from Feast
    sweep: list[FeatureSet]  # C refitted at each coverage
    d: FeatureSet  # the student's own reasoning; ``rows`` = the users it covers


def reasoning_sets(data_dir: Path, settings: Settings, frame: pa.Table, ids: np.ndarray,
                   covered: np.ndarray, console: Console, progress: bool) -> ReasoningSets:
    """C, the coverage sweep and D, with the cost of each; runs the student where needed."""
    cfg = settings.ltv
    taxonomy = settings.taxonomy()
    teacher = teacher_cost(data_dir)
    default = _stage_cost(data_dir)
    order = reasoning_order(ids, covered, cfg.split_seed)
    points = sorted({max(1, round(f * len(ids))) for f in cfg.coverage_sweep})
    n_upper = max(1, round(cfg.upper_bound_fraction * len(ids)))
    n_llm = max(points + [n_upper])
    chains, llm = student_reasoning(data_dir, settings, order[:n_llm], console, progress)
    chains = chains.filter(pc.equal(chains.column("valid"), True))
    tokens = prompt_tokens(data_dir, settings, order[:max(n_llm, len(covered))])
    per_user_s = (llm["new_seconds"] / llm["new_users"]) if llm["new_users"] else \
        (llm["covered_seconds"] / max(llm["covered_users"], 1))

    def llm_cost(n: int, seconds: float | None = None) -> dict[str, Any]:
        """Teacher + student training (shared by every C and D row) + inference on n users."""
        return {**teacher, "student_training_seconds": default["student_training_seconds"],
                "student_users": n, "student_calls": n * (1 + len(taxonomy.types)),
                "student_tokens": int(tokens[:n].sum()),
                "student_seconds": round(n * per_user_s if seconds is None else seconds, 1)}

    c = FeatureSet("C", f"C: + ScaleToT encoder ({len(covered):,} LLM users)",
                   reasoning_matrix(frame, taxonomy),
                   {**llm_cost(len(covered), default.get("student_seconds")),
                    "encoder_seconds": default.get("encoder_seconds", 0.0),
                    "coverage": len(covered) / len(ids)})
    sweep = []
    for n in points:
        users = order[:n]
        if n == len(covered) and np.isin(users, covered).all():  # the default: C itself
            sweep.append(FeatureSet(f"C@{n}", f"C @ {n:,} LLM users", c.dense, c.cost))
            continue
        feats, spent = sweep_point(data_dir, settings, chains, users, console, progress)
        table = read_table(feats)
        rows, theirs = align(table, ids)
        if len(rows) != len(ids):
            raise EvaluationError(f"{feats} lacks {len(ids) - len(rows)} users")
        sweep.append(FeatureSet(
            f"C@{n}", f"C @ {n:,} LLM users",
            reasoning_matrix(table.take(pa.array(theirs)), taxonomy),
            {**llm_cost(n), "coverage": n / len(ids),
             "encoder_seconds": round(sum(spent.values()), 1)}))

    # (D) the student's typed states and its representation, mapped to the encoder's target
    # space by the default encoder's fixed projection (so C is D's distilled approximation)
    from scaletot_features.encoder.artifact import load_encoder

    encoder, _ = load_encoder(encoder_dir(data_dir), device="cpu")
    sub = chains.filter(pc.is_in(chains.column(ID_COLUMN), value_set=pa.array(order[:n_upper])))
    rows, theirs = align(sub, ids)
    sub = sub.take(pa.array(theirs))
    dense = np.zeros((len(ids), encoder.dim + sum(len(t.value_names) for t in taxonomy.types)))
    dense[rows] = np.concatenate([encoder.project(_list_matrix(sub.column("representation"))),
                                  one_hot_states(sub, taxonomy)], axis=1)
    rows = np.sort(rows)
    label = "D: + LLM reasoning, every user" if len(rows) == len(ids) else \
        f"D: + LLM reasoning ({len(rows):,} users)"
    d = FeatureSet("D", label, dense, {**llm_cost(len(rows)),
                                       "all_users_estimate_seconds": round(len(ids) * per_user_s, 1)},
                   rows=rows)
    return ReasoningSets(c, sweep, d)


# --------------------------------------------------------------------------- fitting


def _metrics(y: dict[str, np.ndarray], pred: Any, idx: np.ndarray, threshold: int) -> dict:
    return {"revenue": summarize(y["revenue"][idx], pred.revenue[idx],
                                 auc_scores=pred.payer_prob[idx]),
            "active": summarize(y["active"][idx], pred.active[idx], auc_threshold=threshold,
                                auc_scores=pred.retained_prob[idx])}


def fit_block(block: str, sets: list[FeatureSet], profiles: pa.Table, y: dict[str, np.ndarray],
              test: np.ndarray, low: np.ndarray, rows: np.ndarray, settings: Settings,
              schema: ProfileSchema, predictions: list[pa.Table],
              tick: Callable[[str, int], None]) -> list[dict[str, Any]]:
    """Fit every set once per seed on ``rows``' train users; score its test users per slice.

    ``tick(message, fits_done)`` reports progress: (what starts, 0), then (it, 1) when done.
    """
    cfg = settings.ltv
    train_rows, test_rows = rows[~test[rows]], rows[test[rows]]
    out = []
    for fs in sets:
        for seed in cfg.seeds:
            tick(f"{block}: {fs.label}, seed {seed}", 0)
            model = LTVModel(schema, horizon_days=settings.data.horizon_days,
                             retained_threshold=cfg.retained_threshold, epochs=cfg.epochs,
                             learning_rate=cfg.learning_rate, batch_size=cfg.batch_size,
                             hidden=cfg.hidden, patience=cfg.patience, seed=seed)
            dense = (lambda r: None) if fs.dense is None else (lambda r: fs.dense[r])
            model.fit(profiles.take(pa.array(train_rows)), y["revenue"][train_rows],
                      y["active"][train_rows], dense(train_rows))
            pred = model.predict(profiles.take(pa.array(test_rows)), dense(test_rows))
            local = np.arange(len(test_rows))
            slices = {"all": local, "low_activity": local[low[test_rows]]}
            out.append({"block": block, "set": fs.key, "label": fs.label, "seed": seed,
                        "train_users": int(len(train_rows)), "model": model.summary(),
                        "metrics": {s: _metrics({k: v[test_rows] for k, v in y.items()}, pred,
                                                i, cfg.retained_threshold)
                                    for s, i in slices.items()}})
            predictions.append(pa.table({
                "block": [block] * len(test_rows), "set": [fs.key] * len(test_rows),
                "seed": pa.array([seed] * len(test_rows), pa.int32()),
                ID_COLUMN: profiles.column(ID_COLUMN).take(pa.array(test_rows)),
                "revenue_pred": pred.revenue, "payer_prob": pred.payer_prob,
                "active_pred": pred.active, "retained_prob": pred.retained_prob,
                "revenue_true": y["revenue"][test_rows], "active_true": y["active"][test_rows],
                "low_activity": low[test_rows]}))
            tick(f"{block}: {fs.label}, seed {seed}", 1)
    return out


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, and the paired uplift over A, per block/set."""
    keys = ("gini", "spearman", "auc", "decile_mape")
    by: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        by.setdefault((r["block"], r["set"]), []).append(r)
    out = []
    for (block, key), rs in by.items():
        # uplift is paired with A of the same block and seed; the sweep shares the main A
        base = {r["seed"]: r for r in by.get((block, "A")) or by.get(("main", "A"), [])}
        row: dict[str, Any] = {"block": block, "set": key, "label": rs[0]["label"],
                               "seeds": len(rs), "train_users": rs[0]["train_users"]}
        for s in SLICES:
            for t in TARGETS:
                row[f"{s}.{t}.n"] = rs[0]["metrics"][s][t]["n"]
                row[f"{s}.{t}.positive_rate"] = rs[0]["metrics"][s][t]["positive_rate"]
                for k in keys:
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

    frame = training_frame(data_dir, settings, console)
    active_name, revenue_name = json.loads(layout.manifest.read_text())["label_names"]
    known = pc.and_(pc.is_valid(frame.column(active_name)), pc.is_valid(frame.column(revenue_name)))
    dropped = frame.num_rows - (pc.sum(known).as_py() or 0)
    frame = frame.filter(known)
    if frame.num_rows < 50:
        raise EvaluationError(f"only {frame.num_rows} labelled users in {data_dir}: too few")
    ids = frame.column(ID_COLUMN).to_numpy()
    y = {"revenue": frame.column(revenue_name).to_numpy().astype(np.float64),
         "active": frame.column(active_name).to_numpy().astype(np.float64)}
    service_fields = read_json(layout.eval.frame_info)["profile_only_features"]
    if sorted(service_fields) != sorted(schema.names):
        raise EvaluationError(f"the ltv_profile_only service serves {sorted(service_fields)}, "
                              f"the profile schema declares {sorted(schema.names)}: apply the "
                              "feature repository again")
    profiles = frame.select([ID_COLUMN] + schema.names)  # (A): the ltv_profile_only service
    covered = covered_users(data_dir)
    test = split_test(ids, covered, cfg.test_fraction, cfg.split_seed)
    low = low_activity_mask(profiles, cfg.low_activity)
    everyone = np.arange(len(ids))

    sets: list[FeatureSet] = [FeatureSet("A", "A: profile only", None)]
    text, text_seconds = profile_text_matrix(data_dir, frame, schema, console, progress)
    sets.append(FeatureSet("B", "B: + MiniLM profile text", text,
                           {"sentence_model_seconds": round(text_seconds, 1)}))
    reasoning = reasoning_sets(data_dir, settings, frame, ids, covered, console, progress) \
        if has_reasoning(data_dir) else None
    if reasoning is None:
        console.print("  [yellow]no reasoning features in this dataset: only A and B are "
                      "compared (run teach, train-student, distill and embed for C and D)[/]")
    else:
        sets.append(reasoning.c)
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
            blocks.append(("upper_bound", [sets[0], reasoning.c, reasoning.d], upper_rows))
    total = sum(len(s) for _, s, _ in blocks) * len(cfg.seeds)
    runs: list[dict[str, Any]] = []
    predictions: list[pa.Table] = []
    t_fit = time.perf_counter()
    with torch_threads(cfg.torch_threads), Progress(
            TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[msg]}"), console=console, disable=not progress) as bar:
        task = bar.add_task("fit", total=total, msg="")
        for block, block_sets, rows in blocks:
            runs += fit_block(block, block_sets, profiles, y, test, low, rows, settings, schema,
                              predictions,
                              lambda msg, done: bar.update(task, advance=done, msg=msg))
    summary = aggregate(runs)
    costs = {s.key: s.cost for _, bs, _ in blocks for s in bs}
    results = {
        "data_dir": str(data_dir), "preset": settings.preset, "users": int(len(ids)),
        "dropped_unlabelled": int(dropped), "test_users": int(test.sum()),
        "low_activity": {"predicate": cfg.low_activity, "users": int(low.sum()),
                         "test_users": int((low & test).sum())},
        "covered_users": int(len(covered)), "seeds": cfg.seeds,
        "split": {"test_fraction": cfg.test_fraction, "seed": cfg.split_seed,
                  "covered_users_forced_to_train": True},
        "upper_bound_users": int(len(upper_rows)) if reasoning is not None else 0,
        "settings": cfg.model_dump(mode="json"), "costs": costs, "summary": summary,
        "runs": runs, "fit_seconds": round(time.perf_counter() - t_fit, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_parquet_atomic(pa.concat_tables(predictions), layout.eval.predictions)
    results["report"] = str(write_report(results, layout.eval.predictions, out))
    write_json_atomic(results, layout.eval.results)
    return results


def _stage_cost(data_dir: Path) -> dict[str, Any]:
    """What the default pipeline spent besides the teacher: student training and inference,
    encoder distillation and embedding (each stage leaves a run summary beside its output)."""
    from trainers.student_stage import student_paths

    paths = student_paths(data_dir)
    training = sum(float(read_json(student_manifest(paths[k])).get("wall_seconds") or 0.0)
                   for k in STUDENT_MODELS if student_manifest(paths[k]).exists())
    cost: dict[str, Any] = {"student_training_seconds": round(training, 1)}
    if paths["chains_summary"].exists():
        cost["student_seconds"] = round(float(read_json(paths["chains_summary"])["seconds"]), 1)
    runs = [run_summary_path(encoder_dir(data_dir)), run_summary_path(features_dir(data_dir))]
    if all(p.exists() for p in runs):
        cost["encoder_seconds"] = round(sum(float(read_json(p)["seconds"]) for p in runs), 1)
    return cost
