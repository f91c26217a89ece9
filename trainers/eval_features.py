"""The feature sets the LTV comparison fits, and what each cost (``trainers/evaluate.py`` fits
them): B's sentence embedding of the text and tag fields, C's encoder features from Feast, the
LLM reasoning behind C's coverage sweep and D (the student run on users in one nested order, in
checkpointed chunks), and the synthetic data's reference row of true latent states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from scaletot_features.config import Settings
from scaletot_features.data.io import (
    atomic_dir,
    is_current,
    read_json,
    read_table,
    write_json_atomic,
    write_parquet_atomic,
)
from scaletot_features.dataset import (
    DatasetLayout,
    ReasoningChunk,
    STUDENT_MODELS,
    hash_order,
    probs_column,
    run_summary_path,
    student_manifest,
)
from scaletot_features.encoder.embed import encoder_dir, features_dir
from scaletot_features.profile import ID_COLUMN, FieldKind, ProfileSchema
from scaletot_features.taxonomy import Taxonomy


class EvaluationError(ValueError):
    """The data cannot be evaluated as asked; the message names what is missing."""


def covered_users(data_dir: Path) -> np.ndarray:
    path = DatasetLayout(data_dir).teacher.coverage
    if not path.exists():
        return np.zeros(0, dtype=np.int64)
    return read_table(path, columns=[ID_COLUMN]).column(ID_COLUMN).to_numpy()


def stage_cost(data_dir: Path) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- 3. feature sets


@dataclass
class FeatureSet:
    """One row of the comparison: a name, dense columns (None = profile only) and its cost."""

    key: str
    label: str
    dense: np.ndarray | None
    cost: dict[str, Any] = field(default_factory=dict)
    rows: np.ndarray | None = None  # users (frame row indices) that have these features
    model: str = "mlp"  # "mlp": trainers.ltv.LTVModel; "gbdt": trainers.ltv_gbdt.GBDTLTVModel


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


def text_fields(schema: ProfileSchema) -> list[str]:
    """The fields B embeds: free text and tags (numbers and categories are already A's)."""
    return [f.name for f in schema.of_kind(FieldKind.text, FieldKind.tags)]


def profile_text_matrix(data_dir: Path, table: pa.Table, schema: ProfileSchema,
                        console: Console, progress: bool = True
                        ) -> tuple[np.ndarray | None, float, int]:
    """(B) all-MiniLM-L6-v2 of each text and tag field, concatenated (missing: zeros), cached in
    DIR/eval; each distinct string is embedded once. (matrix or None without such fields,
    seconds, distinct strings)."""
    from scaletot_features.encoder.featurizer import TextEmbedder, field_strings

    fields = text_fields(schema)
    if not fields:
        return None, 0.0, 0
    out = DatasetLayout(data_dir).eval.profile_text_embedding
    meta = run_summary_path(out)
    if is_current(out, DatasetLayout(data_dir).profiles) and meta.exists():
        info = read_json(meta)
        cached = read_table(out)
        if info.get("fields") == fields and np.array_equal(
                cached.column(ID_COLUMN).to_numpy(), table.column(ID_COLUMN).to_numpy()):
            return (_list_matrix(cached.column("embedding")), float(info["seconds"]),
                    int(info.get("distinct_strings", 0)))
    embedder = TextEmbedder()  # the encoder's text channel embedded these strings already
    t0 = time.perf_counter()
    blocks, distinct = [], 0
    for name in fields:
        strings = field_strings(table.column(name), schema.field(name).kind.value)
        n_distinct = len(pc.unique(strings.drop_null()))
        t_field = time.perf_counter()
        blocks.append(embedder.embed(strings))
        distinct += n_distinct
        if progress:
            console.print(f"  B: {name}: {n_distinct:,} distinct strings for {len(strings):,} "
                          f"users in {time.perf_counter() - t_field:.1f} s")
    vectors = np.concatenate(blocks, axis=1)
    seconds = time.perf_counter() - t0
    console.print(f"  B: MiniLM of {', '.join(fields)} ({distinct:,} distinct strings) in "
                  f"{seconds:.1f} s")
    write_parquet_atomic(pa.table({ID_COLUMN: table.column(ID_COLUMN),
                                   "embedding": pa.array(list(vectors), pa.list_(pa.float32()))}),
                         out)
    write_json_atomic({"seconds": seconds, "users": table.num_rows, "fields": fields,
                       "distinct_strings": distinct}, meta)
    return vectors.astype(np.float64), seconds, distinct


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
    from scaletot_features.reasoning.chain_tokens import encode_prompt
    from scaletot_features.reasoning.student_inference import profile_texts
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
    default = stage_cost(data_dir)
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
