"""Distil the student's reasoning into the profile encoder (DESIGN.md 4.7).

Targets: a chain table with ``user_id``, ``representation`` (list<float32>, the LLM's mean-pooled
hidden state over the chain) and, per state type T, ``T`` (the chain's value); optionally
``valid`` (rows with False are dropped), ``provenance`` and ``model_id``. The default is the
student's ``DIR/student/chains``; any table of that shape works, e.g. teacher chains with
representations from :func:`chain_targets` (the manifest's ``targets.provenance`` then says
"teacher").

The regression target is a FIXED affine projection of the representation to ``dim``, fitted once
on the training users before training and stored in the artifact (``target_projection.*``):
standardise each hidden dimension (LLM hidden states have a few huge "massive activation"
dimensions that would otherwise own every principal component), then PCA to ``dim`` components,
then one global scale so that the target's mean squared value per component is 1 (the MSE and
the cross-entropies are of the same order). With fewer training users than ``dim`` + 1, the
missing components are completed by seeded random orthonormal directions (orthogonal to the PCA
ones). PCA rather than a random projection because it keeps the most of the representation's
variance that ``dim`` numbers can keep; either is "fixed" (not trained with the encoder).

Loss: ``regression_weight * MSE(embedding, projected representation) + mean over types of the
cross-entropy against the chain's value``. Users are split by a hash of the id: ``test`` = the
student's held-out users when ``DIR/student/split.parquet`` exists (else ``holdout_fraction``),
``val`` = ``val_fraction`` of the rest (early stopping on its loss, best epoch kept), ``train`` =
the rest; the vocabularies, numeric statistics and projection are fitted on ``train`` only.

**From the teacher** (``source="teacher"``, ``scaletot distill --from teacher``): no student and
no representation. The targets are the teacher's chains (``DIR/teacher/chains``); the loss is the
mean over types of the cross-entropy against the teacher's distribution ``T_probs``
(``encoder.teacher_targets: soft``) or against the chain's committed value ``T``
(``hard``: the node's argmax, except where the search branched and kept another value), with no
regression term. The embedding is then defined after training as the same kind of fixed map,
applied to the encoder's own penultimate features (the trunk's last hidden layer, shaped only
by the typed states): centre, PCA to ``dim`` on the training users, one scale to unit mean
square, written into the embedding head's weights (so the artifact and everything that reads it
are unchanged); components beyond the trunk's width are zero. The manifest says
``provenance: teacher`` and ``embedding.kind: trunk_pca``.

The artifact goes to ``DIR/encoder`` atomically (a failed run leaves the previous one). Its
manifest holds no wall-clock time: the same data, settings and seed give the same manifest.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.nn import functional as F

from scaletot_features.chain import parse_chain_values
from scaletot_features.config import Settings
from scaletot_features.data.io import (
    atomic_dir,
    iter_batches,
    read_json,
    read_table,
    write_json_atomic,
    write_parquet_atomic,
)
from scaletot_features.dataset import (
    STUDENT,
    DatasetLayout,
    distill_target_schema,
    hash_mask,
    part_file,
    prob_column,
    probs_column,
    run_summary_path,
    value_column,
)
from scaletot_features.encoder.artifact import save_encoder
from scaletot_features.encoder.embed import data_profile_schema, encoder_dir
from scaletot_features.encoder.featurizer import Featurizer
from scaletot_features.encoder.model import Encoder, NetworkShape, ProfileEncoderNet
from scaletot_features.profile import ID_COLUMN, ProfileSchema
from scaletot_features.reasoning.prompts import student_prompt
from scaletot_features.runtime import torch_threads
from scaletot_features.taxonomy import Taxonomy
from trainers.early_stopping import EarlyStopping


class TargetsError(ValueError):
    """A target table the distillation cannot use; the message says what is missing."""


def student_chains_dir(data_dir: Path) -> Path:
    return DatasetLayout(data_dir).student.chains


def student_split_path(data_dir: Path) -> Path:
    return DatasetLayout(data_dir).student.split


Source = Literal["student", "teacher"]
SOURCES: tuple[str, ...] = ("student", "teacher")


# --------------------------------------------------------------------------- targets


def target_schema(taxonomy: Taxonomy) -> pa.Schema:
    """The columns :func:`chain_targets` writes (the student chain contract's subset we read)."""
    return distill_target_schema(taxonomy)


def chain_targets(data_dir: Path, chains: pa.Table, backend: Any, out: Path,
                  taxonomy: Taxonomy, schema: ProfileSchema | None = None,
                  batch_users: int = 256) -> Path:
    """Targets from existing chains (e.g. the teacher's) plus ``backend``'s representations.

    The representation is computed as the student's is: the mean of the last hidden layer over
    the chain's tokens, after the student prompt of the user's profile
    (``student_prompt(profile) + chain_text``). Writes ``out/part-00000.parquet`` (replaced
    atomically) with :func:`target_schema`; ``provenance`` keeps the chains' own.
    """
    data_dir, out = Path(data_dir), Path(out)
    schema = schema or ProfileSchema.model_validate(
        read_json(DatasetLayout(data_dir).manifest)["profile_schema"])
    profiles = _profiles_for(DatasetLayout(data_dir).profiles, chains.column(ID_COLUMN), schema)
    by_id = {r[ID_COLUMN]: r for r in profiles.to_pylist()}
    rows = chains.to_pylist()
    reps: list[np.ndarray] = []
    for start in range(0, len(rows), batch_users):
        chunk = rows[start:start + batch_users]
        texts, spans = [], []
        for r in chunk:
            prompt = student_prompt(schema.to_text(by_id[r[ID_COLUMN]]), taxonomy)
            texts.append(prompt + r["chain_text"])
            spans.append((len(prompt), len(prompt) + len(r["chain_text"])))
        reps.append(backend.hidden_states(texts, spans))
    rep = np.concatenate(reps) if reps else np.zeros((0, 1), np.float32)
    table_rows = []
    for r, v in zip(rows, rep):
        rec = {ID_COLUMN: r[ID_COLUMN], "chain_text": r["chain_text"], "valid": True,
               "error": None, "representation": v.astype(np.float32).tolist(),
               "provenance": r.get("provenance") or "teacher",
               "model_id": f"{r.get('model_id', '')}+repr:{getattr(backend, 'model_id', '')}"}
        try:
            values = parse_chain_values(r["chain_text"], taxonomy)
        except ValueError as e:
            rec.update(valid=False, error=str(e))
            values = {}
        for t in taxonomy.type_names:
            rec[value_column(t)] = values.get(t)
            rec[prob_column(t)] = r.get(prob_column(t))
        table_rows.append(rec)
    table = pa.Table.from_pylist(table_rows, schema=target_schema(taxonomy))
    write_parquet_atomic(table, part_file(out, 0))
    return out


def _profiles_for(profiles: Path, user_ids: pa.ChunkedArray | pa.Array,
                  schema: ProfileSchema) -> pa.Table:
    """The profile rows of ``user_ids``, streamed (memory: the selected rows only)."""
    ids = pc.unique(user_ids)
    columns = [ID_COLUMN, "event_timestamp"] + schema.names
    kept = [pa.Table.from_batches([b]).filter(pc.is_in(b.column(ID_COLUMN), value_set=ids))
            for b in iter_batches(profiles, 65_536, columns)]
    kept = [t for t in kept if t.num_rows]
    if not kept:
        return pa.table({c: pa.array([], f.type) for c, f in
                         zip(columns, [pa.field(ID_COLUMN, pa.int64()),
                                       pa.field("event_timestamp", pa.timestamp("us", "UTC"))]
                             + [pa.field(f.name, f.arrow_type) for f in schema.fields])})
    return pa.concat_tables(kept).sort_by(ID_COLUMN)


def _read_targets(path: Path, absent: str) -> pa.Table:
    """The table at ``path``, or :class:`TargetsError` saying ``absent``."""
    try:
        return read_table(path)
    except FileNotFoundError:
        raise TargetsError(absent) from None


def _distinct(table: pa.Table, column: str) -> list[str]:
    """The sorted distinct non-null values of ``column`` (none when the table lacks it)."""
    if column not in table.column_names:
        return []
    return sorted(set(table.column(column).drop_null().to_pylist()))


def load_targets(path: Path, taxonomy: Taxonomy) -> tuple[pa.Table, dict[str, Any]]:
    """The usable target rows (valid, with a representation), sorted by user id, and facts."""
    path = Path(path)
    table = _read_targets(path, f"no target table at {path}: run the student stage first, or "
                          "pass a table of chains with representations")
    need = [ID_COLUMN, "representation"] + taxonomy.type_names
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise TargetsError(f"target table {path} lacks the columns {missing} (needs user_id, "
                           "representation and one column per state type)")
    rows_in = table.num_rows
    keep = pc.is_valid(table.column("representation"))
    if "valid" in table.column_names:
        keep = pc.and_(keep, pc.fill_null(table.column("valid"), False))
    table = table.filter(keep)
    if pc.count_distinct(table.column(ID_COLUMN)).as_py() != table.num_rows:
        raise TargetsError(f"target table {path} has duplicate user ids")
    if table.num_rows == 0:
        raise TargetsError(f"target table {path} has no valid rows with a representation")
    lengths = pc.unique(pc.list_value_length(table.column("representation"))).to_pylist()
    if len(lengths) != 1:
        raise TargetsError(f"representations in {path} have different lengths {lengths}")
    provenance, model_ids = _distinct(table, "provenance"), _distinct(table, "model_id")
    info = {"path": str(path), "rows": rows_in, "usable_rows": table.num_rows,
            "representation_dim": lengths[0],
            "provenance": provenance or ["student" if STUDENT in path.parts else "unknown"],
            "model_ids": model_ids}
    return table.sort_by(ID_COLUMN), info


def load_teacher_targets(path: Path, taxonomy: Taxonomy) -> tuple[pa.Table, dict[str, Any]]:
    """The teacher's chains as targets: per type the committed value and the distribution
    (checked against the taxonomy's value count), sorted by user id, and facts."""
    path = Path(path)
    table = _read_targets(path, f"no teacher chains at {path}: run `scaletot teach` on this "
                          "dataset first")
    need = [ID_COLUMN] + [c for t in taxonomy.type_names
                          for c in (value_column(t), probs_column(t))]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise TargetsError(f"teacher chains {path} lack the columns {missing} (one value and one "
                           "distribution column per state type)")
    if table.num_rows == 0:
        raise TargetsError(f"teacher chains {path} hold no chain")
    if pc.count_distinct(table.column(ID_COLUMN)).as_py() != table.num_rows:
        raise TargetsError(f"teacher chains {path} have duplicate user ids")
    for t in taxonomy.types:
        lengths = pc.drop_null(pc.list_value_length(table.column(probs_column(t.name))))
        bad = set(pc.unique(lengths).to_pylist()) - {len(t.value_names)}
        if bad:
            raise TargetsError(f"{probs_column(t.name)} in {path} has lengths {sorted(bad)}; the "
                               f"taxonomy gives {t.name!r} {len(t.value_names)} values")
    provenance, model_ids = _distinct(table, "provenance"), _distinct(table, "model_id")
    info = {"path": str(path), "rows": table.num_rows, "usable_rows": table.num_rows,
            "representation_dim": None, "provenance": provenance or ["teacher"],
            "model_ids": model_ids}
    return table.sort_by(ID_COLUMN), info


def _soft_targets(table: pa.Table, taxonomy: Taxonomy) -> np.ndarray:
    """[n, sum K] the teacher's distributions in taxonomy order, each renormalised; a row of
    zeros where a type has none (ignored by the loss)."""
    blocks = []
    for t in taxonomy.types:
        k = len(t.value_names)
        col = table.column(probs_column(t.name)).combine_chunks()
        block = np.zeros((table.num_rows, k))
        ok = np.flatnonzero(pc.is_valid(col).to_numpy(zero_copy_only=False))
        if len(ok):
            vals = np.asarray(pc.list_flatten(col.take(pa.array(ok))).to_numpy(),
                              dtype=np.float64).reshape(len(ok), k)
            total = vals.sum(axis=1, keepdims=True)
            block[ok] = np.where(total > 0, vals / np.where(total > 0, total, 1.0), 0.0)
        blocks.append(block)
    return np.concatenate(blocks, axis=1).astype(np.float32)


# --------------------------------------------------------------------------- projection


def fit_projection(reps: np.ndarray, dim: int, seed: int, pad: bool = False,
                   standardise: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """The fixed target map (standardise, PCA to ``dim`` completed at random, one scale) and
    the number of PCA components in it. ``pad``: a ``dim`` wider than the input is allowed, the
    components beyond the input's width are zero (they carry nothing; the encoder's own
    features when the embedding is defined on them). ``standardise`` False: centre only (ReLU
    features: a unit nearly dead on the training users would be blown up by its tiny std)."""
    if pad and dim > reps.shape[1]:
        inner, k = fit_projection(reps, reps.shape[1], seed, standardise=standardise)
        h = reps.shape[1]
        inner["components"] = torch.cat([inner["components"], torch.zeros(h, dim - h)], dim=1)
        inner["scale"] = inner["scale"] * float(np.sqrt(dim / h))  # unit mean square over dim
        return inner, k
    reps = reps.astype(np.float64)
    mean = reps.mean(axis=0)
    std = reps.std(axis=0) if standardise else np.ones(reps.shape[1])
    std = np.where(std > 1e-6, std, 1.0)
    z = (reps - mean) / std
    h = z.shape[1]
    if dim > h:
        raise TargetsError(f"embedding dim {dim} exceeds the representation size {h}")
    k = 0
    comps = np.zeros((h, 0))
    if len(z) > 1:
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        k = int(min(dim, (s > 1e-8 * max(s[0], 1e-12)).sum()))
        comps = vt[:k].T
        # a deterministic sign per component: the largest loading is positive
        signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
        comps = comps * np.where(signs == 0, 1.0, signs)
    if k < dim:
        rng = np.random.default_rng(seed)
        extra = rng.standard_normal((h, dim - k))
        if k:
            extra -= comps @ (comps.T @ extra)
        q, _ = np.linalg.qr(extra)
        comps = np.concatenate([comps, q[:, :dim - k]], axis=1)
    y = z @ comps
    scale = float(np.sqrt((y ** 2).sum(axis=1).mean() / dim)) if len(y) else 1.0
    scale = scale if scale > 1e-8 else 1.0
    return {"mean": torch.tensor(mean, dtype=torch.float32),
            "std": torch.tensor(std, dtype=torch.float32),
            "components": torch.tensor(comps, dtype=torch.float32),
            "scale": torch.tensor([scale], dtype=torch.float32)}, k


def project(reps: np.ndarray, p: dict[str, torch.Tensor]) -> np.ndarray:
    q = {k: v.numpy().astype(np.float64) for k, v in p.items()}
    return (((reps.astype(np.float64) - q["mean"]) / q["std"]) @ q["components"]
            / q["scale"]).astype(np.float32)


@torch.no_grad()
def fit_embedding_head(net: ProfileEncoderNet, featurizer: Featurizer, train: pa.Table,
                       seed: int) -> dict[str, Any]:
    """Make the embedding head the fixed PCA map of the trunk's features on ``train`` (used
    when there is no representation to regress): ``emb = (h - mean) @ C / scale`` written as
    the head's weight and bias. Returns what the manifest records about it."""
    net.eval()
    h = net.trunk(net.field_vector(featurizer.transform(train))).double().numpy()
    p, k = fit_projection(h, net.shape.dim, seed, pad=True, standardise=False)
    q = {name: v.double() for name, v in p.items()}
    weight = (q["components"] / (q["std"][:, None] * q["scale"])).T
    bias = -(q["mean"] / q["std"]) @ q["components"] / q["scale"]
    net.embedding_head.weight.copy_(weight.float())
    net.embedding_head.bias.copy_(bias.float())
    return {"kind": "trunk_pca", "fitted_on": "train split",
            "description": "no representation to regress: the encoder's penultimate features "
                           "(trunk output, width hidden), centred, PCA to dim on the "
                           "training users, scaled to unit mean square; components beyond "
                           "the width are zero",
            "pca_components": k, "width": int(h.shape[1]), "dim": net.shape.dim}


# --------------------------------------------------------------------------- split


def split_users(user_ids: np.ndarray, data_dir: Path, settings: Settings) -> tuple[np.ndarray, str]:
    """'train' / 'val' / 'test' per user, and where the test split came from."""
    cfg = settings.encoder
    split = np.full(len(user_ids), "train", dtype=object)
    source = f"hash(user_id) < {cfg.holdout_fraction}"
    path = student_split_path(data_dir)
    if path.exists():
        st = read_table(path)
        held = set(st.filter(pc.equal(st.column("split"), "holdout")).column(ID_COLUMN).to_pylist())
        test = np.array([u in held for u in user_ids.tolist()], dtype=bool)
        source = f"student holdout ({path})"
    else:
        test = hash_mask(user_ids, cfg.holdout_fraction, cfg.seed, "encoder_test")
    split[test] = "test"
    val = (~test) & hash_mask(user_ids, cfg.val_fraction, cfg.seed, "encoder_val")
    split[val] = "val"
    if not (split == "train").any():
        raise TargetsError("no covered user is left for training after the val/test split")
    return split, source


# --------------------------------------------------------------------------- training


def _labels(table: pa.Table, taxonomy: Taxonomy) -> np.ndarray:
    """[n, types] value index per type, -1 where the chain has none."""
    out = np.full((table.num_rows, len(taxonomy.types)), -1, dtype=np.int64)
    for j, t in enumerate(taxonomy.types):
        idx = pc.index_in(table.column(t.name), value_set=pa.array(t.value_names))
        out[:, j] = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False)
    return out


def _data_hash(profiles: pa.Table, targets: pa.Table, taxonomy: Taxonomy) -> str:
    """sha256 of what the encoder learnt from: the covered users' profiles and targets."""
    h = hashlib.sha256()
    for name in profiles.column_names:
        h.update(name.encode())
        h.update(repr(profiles.column(name).to_pylist()).encode())
    h.update(np.asarray(targets.column(ID_COLUMN).to_numpy(), dtype=np.int64).tobytes())
    if "representation" in targets.column_names:
        rep = pc.list_flatten(targets.column("representation")).to_numpy().astype(np.float32)
        h.update(rep.tobytes())
    for t in taxonomy.type_names:
        h.update(repr(targets.column(t).to_pylist()).encode())
        if probs_column(t) in targets.column_names:
            h.update(repr(targets.column(probs_column(t)).to_pylist()).encode())
    return h.hexdigest()


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor, splits: list[int]) -> torch.Tensor | None:
    """Mean over types of the cross-entropy against soft targets (rows without one ignored)."""
    ces = []
    for part, p in zip(torch.split(logits, splits, dim=1), torch.split(soft, splits, dim=1)):
        known = p.sum(dim=1) > 0
        if known.any():
            ces.append(-(p[known] * F.log_softmax(part[known], dim=1)).sum(dim=1).mean())
    return torch.stack(ces).mean() if ces else None


def _loss(net: ProfileEncoderNet, featurizer: Featurizer, table: pa.Table,
          y: torch.Tensor | None, labels: torch.Tensor, splits: list[int], w: float,
          device: torch.device, soft: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w * MSE(embedding, y)`` (none without ``y``) + the typed-state cross-entropy: against
    ``soft`` distributions when given, else against the ``labels`` (-1: none)."""
    feats = featurizer.transform(table).to(device)
    emb, logits = net(feats)
    ce = _soft_ce(logits, soft, splits) if soft is not None else None
    if soft is None:
        ces = []
        for j, part in enumerate(torch.split(logits, splits, dim=1)):
            if (labels[:, j] >= 0).any():
                ces.append(F.cross_entropy(part, labels[:, j], ignore_index=-1))
        ce = torch.stack(ces).mean() if ces else None
    if ce is None:
        ce = torch.zeros((), device=device)
    return (ce if y is None else w * F.mse_loss(emb, y) + ce), emb, logits


def _metrics(encoder: Encoder, table: pa.Table, y: np.ndarray | None, labels: np.ndarray,
             majority: np.ndarray, taxonomy: Taxonomy, soft: np.ndarray | None = None,
             prior: np.ndarray | None = None) -> dict[str, Any]:
    """Typed agreement with the targets (and the majority-class baseline); cosine and R^2 of the
    embedding when there is a regression target ``y``; with ``soft`` teacher distributions, the
    KL divergence from them (mean over types) of the encoder's and of the constant ``prior``
    (the train users' mean distribution: the best profile-blind guess)."""
    if table.num_rows == 0:
        return {"users": 0}
    emb, probs = encoder.predict(table)
    out = _agreement(probs, labels, majority, taxonomy)
    out["users"] = int(table.num_rows)
    if soft is not None and prior is not None:
        splits = [len(t.value_names) for t in taxonomy.types]
        pred = torch.log(torch.from_numpy(np.concatenate(probs, axis=1)).clamp_min(1e-12))
        const = torch.log(torch.from_numpy(np.tile(prior, (len(soft), 1))).double().clamp_min(1e-12))
        target = torch.from_numpy(soft).double()
        entropy = _soft_ce(torch.log(target.clamp_min(1e-12)), target, splits)
        out["teacher_kl"] = float(_soft_ce(pred, target, splits) - entropy)
        out["prior_kl"] = float(_soft_ce(const, target, splits) - entropy)
    if y is None:
        return out
    return {**out, **_fidelity(emb, y)}


def _agreement(probs: list[np.ndarray], labels: np.ndarray, majority: np.ndarray,
               taxonomy: Taxonomy) -> dict[str, Any]:
    per_type, base = {}, {}
    for j, (t, p) in enumerate(zip(taxonomy.types, probs)):
        known = labels[:, j] >= 0
        if known.any():
            per_type[t.name] = float((p.argmax(axis=1)[known] == labels[known, j]).mean())
            base[t.name] = float((labels[known, j] == majority[j]).mean())
    return {
        "typed_agreement": float(np.mean(list(per_type.values()))) if per_type else None,
        "majority_agreement": float(np.mean(list(base.values()))) if base else None,
        "typed_agreement_by_type": per_type,
        "majority_agreement_by_type": base,
    }


def _fidelity(emb: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """How close the embedding is to its regression target: cosine, MSE, R^2."""
    num = (emb * y).sum(axis=1)
    den = np.linalg.norm(emb, axis=1) * np.linalg.norm(y, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)
    sst = float((y ** 2).sum())
    return {
        "cosine": float(cos.mean()),
        "mse": float(((emb - y) ** 2).mean()),
        "r2": float(1 - ((emb - y) ** 2).sum() / sst) if sst > 0 else None,
    }


def distill_encoder(data_dir: Path | str, settings: Settings, targets: Path | None = None,
                    progress: bool = True, out: Path | None = None,
                    device: str | None = None, source: Source = "student") -> dict[str, Any]:
    """Train the encoder on the covered users' targets; write ``DIR/encoder``; return a summary.

    ``source`` "student": targets with representations, ``targets`` defaulting to
    ``DIR/student/chains``; "teacher": the teacher's chains (default ``DIR/teacher/chains``),
    typed states only (see the module docstring). ``out`` defaults to ``DIR/encoder``.
    """
    t0 = time.perf_counter()
    if source not in SOURCES:
        raise TargetsError(f"distillation source must be one of {SOURCES}, got {source!r}")
    data_dir = Path(data_dir)
    cfg = settings.encoder
    taxonomy = settings.taxonomy()
    schema = data_profile_schema(data_dir, settings)
    if source == "teacher":
        target_path = Path(targets) if targets is not None else DatasetLayout(data_dir).teacher.chains
        tgt, info = load_teacher_targets(target_path, taxonomy)
    else:
        target_path = Path(targets) if targets is not None else student_chains_dir(data_dir)
        tgt, info = load_targets(target_path, taxonomy)
    profiles_dir = DatasetLayout(data_dir).profiles
    profiles = _profiles_for(profiles_dir, tgt.column(ID_COLUMN), schema)
    have = pc.is_in(tgt.column(ID_COLUMN), value_set=profiles.column(ID_COLUMN))
    info["without_profile"] = int(tgt.num_rows - (pc.sum(have).as_py() or 0))
    tgt = tgt.filter(have)
    if tgt.num_rows == 0:
        raise TargetsError(f"none of the target users of {target_path} is in {profiles_dir}")
    if not tgt.column(ID_COLUMN).equals(profiles.column(ID_COLUMN)):
        raise TargetsError(f"{profiles_dir} has duplicate user ids among the target users "
                           "(run the sparse-profile gate)")

    # Minibatches of a few hundred rows: OpenMP's fork/join costs more than it saves (on two
    # shared cores a 67x128 matmul took 9 ms with 2 threads, 0.03 ms with 1).
    with torch_threads(cfg.train_threads):
        return _distill(data_dir, settings, tgt, info, profiles, target_path, progress, out,
                        device, t0, source)


def _distill(data_dir: Path, settings: Settings, tgt: pa.Table, info: dict[str, Any],
             profiles: pa.Table, target_path: Path, progress: bool, out: Path | None,
             device: str | None, t0: float, source: Source = "student") -> dict[str, Any]:
    cfg = settings.encoder
    taxonomy = settings.taxonomy()
    schema = data_profile_schema(data_dir, settings)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ids = tgt.column(ID_COLUMN).to_numpy()
    split, split_source = split_users(ids, data_dir, settings)
    regress = source == "student"  # the teacher's chains carry no representation
    labels_all = _labels(tgt, taxonomy)
    soft_all = _soft_targets(tgt, taxonomy) if source == "teacher" else None
    train_soft = soft_all if cfg.teacher_targets == "soft" else None
    sel = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    part = {s: profiles.take(pa.array(idx)) for s, idx in sel.items()}

    featurizer = Featurizer.fit(part["train"], schema, min_count=cfg.min_token_count,
                                use_text_embedding=cfg.use_text_embedding)
    projection, n_pca, y_all = None, 0, None
    if regress:
        reps = np.asarray(pc.list_flatten(tgt.column("representation")).to_numpy(),
                          dtype=np.float32).reshape(tgt.num_rows, -1)
        projection, n_pca = fit_projection(reps[sel["train"]], cfg.dim, cfg.seed)
        y_all = project(reps, projection)
    shape = NetworkShape.for_featurizer(featurizer, taxonomy, dim=cfg.dim, hidden=cfg.hidden,
                                        dropout=cfg.dropout)
    net = ProfileEncoderNet(shape).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    splits = [len(t.value_names) for t in taxonomy.types]
    y_t = {s: None if y_all is None else torch.from_numpy(y_all[idx]).to(dev)
           for s, idx in sel.items()}
    lab_t = {s: torch.from_numpy(labels_all[idx]).to(dev) for s, idx in sel.items()}
    soft_t = {s: None if train_soft is None else torch.from_numpy(train_soft[idx]).to(dev)
              for s, idx in sel.items()}
    take = lambda t, idx: None if t is None else t[idx]  # noqa: E731
    watch = "val" if len(sel["val"]) else "train"

    stopper, history = EarlyStopping(cfg.patience, min_delta=1e-6), []
    n_train = len(sel["train"])
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[msg]}"), disable=not progress) as bar:
        task = bar.add_task("distill", total=cfg.epochs, msg="")
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            order = rng.permutation(n_train)
            total = 0.0
            for start in range(0, n_train, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                loss, _, _ = _loss(net, featurizer, part["train"].take(pa.array(idx)),
                                   take(y_t["train"], idx), lab_t["train"][idx], splits,
                                   cfg.regression_weight, dev, take(soft_t["train"], idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            net.eval()
            with torch.no_grad():
                watched, _, _ = _loss(net, featurizer, part[watch], y_t[watch], lab_t[watch],
                                      splits, cfg.regression_weight, dev, soft_t[watch])
            watched_f = float(watched)
            history.append({"epoch": epoch, "train_loss": round(total / n_train, 6),
                            f"{watch}_loss": round(watched_f, 6)})
            stop = stopper.step(watched_f, lambda: copy.deepcopy(net.state_dict()))
            bar.update(task, advance=1,
                       msg=f"{watch} loss {watched_f:.4f} (best {stopper.best_loss:.4f})")
            if stop:
                break
    assert stopper.best_state is not None
    net.load_state_dict(stopper.best_state)
    best_epoch = stopper.best_epoch
    net = net.cpu().eval()
    if regress:
        embedding = {"kind": "student_representation",
                     "description": "regresses the fixed projection (target_projection) of the "
                                    "LLM's mean-pooled hidden state over the chain"}
    else:
        embedding = fit_embedding_head(net, featurizer, part["train"], cfg.seed)

    encoder = Encoder(net, featurizer, taxonomy, "pending", device=dev)
    labels_train = labels_all[sel["train"]]
    majority = np.array([np.bincount(labels_train[:, j][labels_train[:, j] >= 0],
                                     minlength=len(t.value_names)).argmax()
                         if (labels_train[:, j] >= 0).any() else -1
                         for j, t in enumerate(taxonomy.types)])
    prior = soft_all[sel["train"]].mean(axis=0) if soft_all is not None else None
    metrics = {s: _metrics(encoder, part[s], take(y_all, idx), labels_all[idx], majority,
                           taxonomy, take(soft_all, idx), prior)
               for s, idx in sel.items()}
    training = {
        "targets": {**info, "loss": ("mse + cross-entropy" if regress else
                                     f"cross-entropy ({cfg.teacher_targets} teacher targets)")},
        "data_hash": _data_hash(profiles, tgt, taxonomy),
        "split": {"source": split_source, **{s: int(len(v)) for s, v in sel.items()}},
        "projection": ({"kind": "standardise+pca", "dim": cfg.dim,
                        "fitted_on": "train split representations",
                        "pca_components": n_pca,
                        "scale": float(projection["scale"][0])} if projection is not None
                       else {"kind": "none", "reason": "no representation in the targets"}),
        "epochs_run": len(history), "best_epoch": best_epoch,
        "early_stopping_on": f"{watch} loss", "history": history,
        "metrics": metrics,
        "settings": cfg.model_dump(mode="json"),
    }
    folder = Path(out) if out else encoder_dir(data_dir)
    with atomic_dir(folder, overwrite=True) as tmp:
        manifest = save_encoder(tmp, net, featurizer, taxonomy, projection,
                                extra={"provenance": source, "embedding": embedding,
                                       "training": training})
    summary = {"encoder": str(folder), "model_version": manifest["model_version"],
               "users": int(tgt.num_rows), "seconds": time.perf_counter() - t0,
               "provenance": info["provenance"], "source": source, "split": training["split"],
               "best_epoch": best_epoch, "epochs_run": len(history), "metrics": metrics}
    # Wall time stays out of the manifest (reproducible); the evaluation's cost table reads it here.
    write_json_atomic(summary, run_summary_path(folder))
    return summary
