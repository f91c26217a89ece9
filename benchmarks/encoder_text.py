"""Does the encoder generalise past the words it saw? Bag-only vs text-channel encoder.

On a dataset with student chains (e.g. ``runs/demo/data`` after ``make demo``), two encoders are
distilled on the same targets (the covered users' student chains), one with bags of words only
and one with the text channel (the sentence embedding of each text and tag field). Users outside
the coverage are sorted by how much of their text the encoder's training users ever wrote:

- ``unseen words``: none of their words occurs in any training user's text or tags;
- ``unseen strings``: some words occur, but none of their whole strings does;
- ``seen``: at least one of their strings occurs verbatim.

The student (the LLM the encoder imitates) is run on a sample of each group, and each encoder's
typed-state argmax is compared with the student's values: agreement per group, beside the rate
of the student's most common value (what an encoder that ignores the profile would get).
Writes benchmarks/results/encoder_text.json and prints a table.

    .venv/bin/python benchmarks/encoder_text.py --data runs/demo/data --per-group 120

``--against teacher``: the same question against a teacher that knows something, on its own
covered users (the student of the demo writes a near-constant value, so agreeing with it says
little). The covered users are cross-fitted: K folds by the user hash
(``hash_order(..., "encoder_folds")``, exact-size folds); per fold and encoder seed, two encoders
are distilled by the product's ``distill --from teacher`` path (``distill_encoder(source=
"teacher")``, soft targets, the training folds' chains only, the product's 15% early-stopping
split inside them, its own test split off), bag-only and text channel, everything else equal.
Every covered user then has an out-of-fold prediction from each, and is grouped as above by what
its fold's training users (all K-1 folds) wrote. Per group: agreement of the encoder's argmax
with the teacher's argmax, Spearman of the encoder's expected value (sum_i i * p_i over the
taxonomy's value order) with the teacher's, Spearman of each with the real outcome (a label
column), and the rate of the training folds' most common teacher value (a profile-blind
encoder's agreement); means over encoder seeds, 95% bootstrap CIs over the group's users (the
same resample for every seed and encoder; text minus bag paired). The dataset is only read;
encoders go to ``--work`` (a temporary folder by default). Writes
benchmarks/results/encoder_text_teacher.json.

    .venv/bin/python benchmarks/encoder_text.py --against teacher --data DATASET \
        --config DATASET_CONFIG.yaml --folds 5 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def words_and_strings(row: dict[str, Any], fields: list[tuple[str, str]]) -> tuple[set, set]:
    """The lower-cased words and the whole normalised strings of a profile's text/tag fields."""
    from scaletot_features.encoder.featurizer import PHRASE_PREFIX, _bag_tokens

    words: set[str] = set()
    strings: set[str] = set()
    for name, kind in fields:
        v = row.get(name)
        values = [] if v is None else ([t for t in v if t] if kind == "tags" else [v])
        for tok in _bag_tokens(values):
            (strings if tok.startswith(PHRASE_PREFIX) else words).add(tok)
    return words, strings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--against", choices=("student", "teacher"), default="student",
                   help="student: run the student on users outside the coverage; teacher: "
                   "cross-fit over the teacher's covered users")
    p.add_argument("--preset", default="demo")
    p.add_argument("--config", type=Path, default=None,
                   help="settings YAML (--against teacher; default: DATA.yaml beside the "
                   "dataset when it exists, else --preset)")
    p.add_argument("--per-group", type=int, default=120, help="users per group run by the student")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (student), fold seed "
                   "(teacher)")
    p.add_argument("--folds", type=int, default=5, help="--against teacher: cross-fitting folds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="--against teacher: encoder seeds per fold")
    p.add_argument("--outcome", default=None, help="--against teacher: the label column to rank "
                   "(default: the revenue label at the configured horizon)")
    p.add_argument("--boot", type=int, default=1000, help="--against teacher: bootstrap resamples")
    p.add_argument("--work", type=Path, default=None, help="--against teacher: where encoders go")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.against == "teacher":
        against_teacher(a)
    else:
        against_student(a)


def against_student(a: argparse.Namespace) -> None:
    a.out = a.out or REPO / "benchmarks" / "results" / "encoder_text.json"
    import pyarrow as pa
    import pyarrow.compute as pc
    from rich.console import Console
    from rich.table import Table

    from scaletot_features.config import build_settings
    from scaletot_features.data.io import read_table, write_json_atomic
    from scaletot_features.dataset import DatasetLayout
    from scaletot_features.encoder.artifact import load_encoder
    from scaletot_features.profile import FieldKind
    from trainers.distill_encoder import distill_encoder, split_users
    from trainers.student_stage import run_inference

    console = Console()
    data = a.data.resolve()
    layout = DatasetLayout(data)
    base = build_settings(a.preset)
    taxonomy, schema = base.taxonomy(), base.profile_schema()
    fields = [(f.name, f.kind.value) for f in schema.of_kind(FieldKind.text, FieldKind.tags)]
    work = Path(tempfile.mkdtemp(prefix="scaletot-encoder-text-"))

    targets = read_table(layout.student.chains)
    target_ids = np.asarray(targets.column("user_id").to_pylist())
    split, _ = split_users(target_ids, data, base)
    train_ids = set(target_ids[split == "train"].tolist())
    population = read_table(layout.profiles)
    profiles = population.to_pylist()
    seen_words: set[str] = set()
    seen_strings: set[str] = set()
    for r in profiles:
        if r["user_id"] in train_ids:
            w, s = words_and_strings(r, fields)
            seen_words |= w
            seen_strings |= s
    covered = set(target_ids.tolist())
    groups: dict[str, list[int]] = {"unseen words": [], "unseen strings": [], "seen": []}
    for r in profiles:
        if r["user_id"] in covered:
            continue
        w, s = words_and_strings(r, fields)
        if not s:
            continue  # no text at all: nothing to generalise from
        if not (w & seen_words):
            groups["unseen words"].append(r["user_id"])
        elif not (s & seen_strings):
            groups["unseen strings"].append(r["user_id"])
        else:
            groups["seen"].append(r["user_id"])
    rng = np.random.default_rng(a.seed)
    sample = {g: sorted(rng.choice(ids, min(a.per_group, len(ids)), replace=False).tolist())
              for g, ids in groups.items() if ids}
    console.print({g: f"{len(sample.get(g, []))} of {len(ids)}" for g, ids in groups.items()})

    t0 = time.perf_counter()
    users = sorted({u for ids in sample.values() for u in ids})
    run_inference(data, base, user_ids=users, out_dir=work / "reasoning_sample", progress=False)
    student = {r["user_id"]: r for r in read_table(work / "reasoning_sample").to_pylist() if r["valid"]}
    student_seconds = time.perf_counter() - t0

    result: dict[str, Any] = {"data": str(data), "groups": {g: len(v) for g, v in groups.items()},
                              "sampled": {g: len(v) for g, v in sample.items()},
                              "train_users": len(train_ids), "student_seconds":
                              round(student_seconds, 1), "encoders": {}}
    for name, text_channel in (("bag only", False), ("text channel", True)):
        s = base.model_copy(deep=True)
        s.encoder.use_text_embedding = text_channel
        t0 = time.perf_counter()
        report = distill_encoder(data, s, out=work / name.replace(" ", "_"), progress=False)
        encoder, _ = load_encoder(work / name.replace(" ", "_"))
        rows: dict[str, Any] = {"distill_seconds": round(time.perf_counter() - t0, 1),
                                "held_out": report["metrics"].get("test", {})}
        for g, ids in sample.items():
            ids = [u for u in ids if u in student]
            sub = population.filter(pc.is_in(population.column("user_id"),
                                             value_set=pa.array(ids, pa.int64())))
            feats = encoder.feature_table(sub).to_pylist()
            agree, majority = [], []
            for t in taxonomy.type_names:
                truth = [student[f["user_id"]][t] for f in feats]
                pred = [f[t] for f in feats]
                agree.append(float(np.mean([x == y for x, y in zip(pred, truth)])))
                values, counts = np.unique(truth, return_counts=True)
                majority.append(float(counts.max() / counts.sum()))
            rows[g] = {"users": len(feats), "agreement": round(float(np.mean(agree)), 3),
                       "per_type": dict(zip(taxonomy.type_names, np.round(agree, 3).tolist())),
                       "student_majority_rate": round(float(np.mean(majority)), 3)}
        result["encoders"][name] = rows
    write_json_atomic(result, a.out)

    table = Table(title="Encoder vs student on users outside the coverage: typed-state agreement")
    table.add_column("encoder")
    for g in sample:
        table.add_column(f"{g} ({result['sampled'][g]})", justify="right")
    for name, rows in result["encoders"].items():
        table.add_row(name, *[f"{rows[g]['agreement']:.3f}" for g in sample])
    first = next(iter(result["encoders"].values()))
    table.add_row("student's majority value", *[f"{first[g]['student_majority_rate']:.3f}"
                                                for g in sample])
    console.print(table)
    console.print(f"wrote {a.out}")


GROUPS = ("unseen words", "unseen strings", "seen")


def text_group(row: dict[str, Any], fields: list[tuple[str, str]], seen_words: set,
               seen_strings: set) -> str | None:
    """Which of :data:`GROUPS` a profile falls in, given what the training users wrote (None:
    no text at all)."""
    w, s = words_and_strings(row, fields)
    if not s:
        return None
    if not (w & seen_words):
        return "unseen words"
    if not (s & seen_strings):
        return "unseen strings"
    return "seen"


def expected_value(p: np.ndarray) -> np.ndarray:
    """sum_i i * p_i over the taxonomy's value order (its rank order for an ordered type),
    rounded to 1e-6: an encoder that gives several users the same input (a bag of nothing but
    the OOV token) gives them the same value up to float32 noise in the bag's mean, and that
    noise (it follows the number of words) must tie, not rank."""
    return np.round(p @ np.arange(p.shape[-1], dtype=np.float64), 6)


def _group_stats(idx: np.ndarray, teacher_arg: np.ndarray, teacher_ev: np.ndarray,
                 outcome: np.ndarray, majority: np.ndarray, enc_arg: dict[str, np.ndarray],
                 enc_ev: dict[str, np.ndarray]) -> dict[str, float]:
    """The group's numbers on the users ``idx`` (repeats allowed: a bootstrap resample);
    encoder numbers are means over the seeds (rows of ``enc_*``)."""
    from scaletot_features.ltv.metrics import spearman

    t_arg, t_ev, y = teacher_arg[idx], teacher_ev[idx], outcome[idx]
    out = {"majority_rate": float(np.mean(majority[idx] == t_arg)),
           "group_majority_rate": float(np.bincount(t_arg).max() / len(idx)),
           "teacher.outcome_spearman": spearman(y, t_ev)}
    for name in enc_arg:
        a, e = enc_arg[name][:, idx], enc_ev[name][:, idx]
        out[f"{name}.agreement"] = float(np.mean(a == t_arg[None, :]))
        out[f"{name}.teacher_spearman"] = float(np.nanmean([spearman(t_ev, x) for x in e]))
        out[f"{name}.outcome_spearman"] = float(np.nanmean([spearman(y, x) for x in e]))
    names = list(enc_arg)
    if len(names) == 2:
        b, t = names
        for m in ("agreement", "teacher_spearman", "outcome_spearman"):
            out[f"difference.{m}"] = out[f"{t}.{m}"] - out[f"{b}.{m}"]
    return out


def _with_ci(idx: np.ndarray, boot: int, seed: int, **arrays: Any) -> dict[str, Any]:
    """:func:`_group_stats` on ``idx`` and its percentile bootstrap 95% CI over the users."""
    point = _group_stats(idx, **arrays)
    rng = np.random.default_rng(seed)
    draws = [_group_stats(rng.choice(idx, len(idx), replace=True), **arrays)
             for _ in range(boot)] if boot and len(idx) > 2 else []
    out: dict[str, Any] = {}
    for k, v in point.items():
        ci = None
        if draws:
            lo, hi = np.nanpercentile([d[k] for d in draws], [2.5, 97.5])
            ci = [round(float(lo), 3), round(float(hi), 3)]
        out[k] = {"value": round(float(v), 3), "ci": ci}
    return out


def against_teacher(a: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    from rich.console import Console
    from rich.table import Table

    from scaletot_features.config import build_settings, load_settings
    from scaletot_features.data.io import read_table, write_json_atomic, write_parquet_atomic
    from scaletot_features.dataset import (DatasetLayout, hash_order, label_names, part_file,
                                           probs_column)
    from scaletot_features.encoder.artifact import load_encoder
    from scaletot_features.encoder.embed import data_profile_schema
    from scaletot_features.profile import ID_COLUMN, FieldKind
    from trainers.distill_encoder import distill_encoder

    console = Console(width=150)
    data = a.data.resolve()
    layout = DatasetLayout(data)
    config = a.config or data.with_name(data.name + ".yaml")
    base = load_settings(config) if config.exists() else build_settings(a.preset)
    if layout.student.split.exists():
        raise SystemExit(f"{data} has a student split, which distill would hold out as its "
                         "test split: run on a copy of the dataset without it")
    taxonomy = base.taxonomy()
    schema = data_profile_schema(data, base)
    fields = [(f.name, f.kind.value) for f in schema.of_kind(FieldKind.text, FieldKind.tags)]
    outcome_name = a.outcome or label_names(base.data.horizon_days)[1]
    work = a.work or Path(tempfile.mkdtemp(prefix="scaletot-encoder-text-teacher-"))

    chains = read_table(layout.teacher.chains).sort_by(ID_COLUMN)
    ids = np.asarray(chains.column(ID_COLUMN).to_pylist(), dtype=np.int64)
    n, k_folds = len(ids), a.folds
    fold = np.empty(n, dtype=np.int64)
    fold[hash_order(ids, a.seed, "encoder_folds")] = np.arange(n) * k_folds // n
    teacher_p = {t.name: np.asarray(chains.column(probs_column(t.name)).to_pylist(), dtype=np.float64)
                 for t in taxonomy.types}
    labels = read_table(layout.labels, columns=[ID_COLUMN, outcome_name]).to_pandas()
    outcome = labels.set_index(ID_COLUMN)[outcome_name].reindex(ids).to_numpy(dtype=np.float64)
    profiles = read_table(layout.profiles).to_pandas().set_index(ID_COLUMN)
    rows = {u: {**profiles.loc[u].to_dict(), ID_COLUMN: u} for u in ids.tolist()}
    population = read_table(layout.profiles)
    covered = population.filter(pc.is_in(population.column(ID_COLUMN),
                                         value_set=pa.array(ids, pa.int64()))).sort_by(ID_COLUMN)
    assert covered.column(ID_COLUMN).to_pylist() == ids.tolist(), "covered users lack profiles"

    encoders = {"bag only": False, "text channel": True}
    enc_p = {name: {t.name: np.zeros((len(a.seeds), n, len(t.value_names))) for t in taxonomy.types}
             for name in encoders}
    group = np.array([None] * n, dtype=object)
    majority = {t.name: np.zeros(n, dtype=np.int64) for t in taxonomy.types}
    seconds = {name: 0.0 for name in encoders}
    epochs: dict[str, list[int]] = {name: [] for name in encoders}
    console.print(f"{n} covered users, folds of {np.bincount(fold).tolist()}; encoders to {work}")
    for k in range(k_folds):
        train, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        seen_words: set[str] = set()
        seen_strings: set[str] = set()
        for i in train:
            w, s = words_and_strings(rows[int(ids[i])], fields)
            seen_words |= w
            seen_strings |= s
        for i in held:
            group[i] = text_group(rows[int(ids[i])], fields, seen_words, seen_strings)
        for t in taxonomy.types:
            majority[t.name][held] = np.bincount(teacher_p[t.name][train].argmax(axis=1),
                                                 minlength=len(t.value_names)).argmax()
        targets = work / f"fold{k}" / "targets"
        write_parquet_atomic(chains.take(pa.array(train)), part_file(targets, 0))
        held_profiles = covered.take(pa.array(held))
        for j, seed in enumerate(a.seeds):
            for name, text_channel in encoders.items():
                s = base.model_copy(deep=True)
                s.encoder.use_text_embedding = text_channel
                s.encoder.seed = seed
                s.encoder.holdout_fraction = 0.0  # the held-out fold is the test
                folder = work / f"fold{k}" / f"{name.replace(' ', '_')}-seed{seed}"
                t0 = time.perf_counter()
                report = distill_encoder(data, s, targets=targets, out=folder, progress=False,
                                         source="teacher")
                seconds[name] += time.perf_counter() - t0
                epochs[name].append(int(report["best_epoch"]))
                encoder, _ = load_encoder(folder)
                _, probs = encoder.predict(held_profiles)
                for t, p in zip(taxonomy.types, probs):
                    enc_p[name][t.name][j, held] = p
        counts = {g: int((group[held] == g).sum()) for g in GROUPS}
        console.print(f"fold {k}: {len(train)} training users, {len(held)} held out {counts}")

    members = {g: np.flatnonzero(group == g) for g in GROUPS}
    members["all"] = np.flatnonzero(group != None)  # noqa: E711
    result: dict[str, Any] = {
        "data": str(data), "config": str(config) if config.exists() else None,
        "outcome": outcome_name, "covered_users": n, "folds": k_folds,
        "fold_sizes": np.bincount(fold).tolist(), "encoder_seeds": list(a.seeds),
        "fold_seed": a.seed, "bootstrap": a.boot, "text_fields": [f for f, _ in fields],
        "groups": {g: int(len(v)) for g, v in members.items()},
        "groups_defined_by": "words / whole normalised strings of the text and tag fields that "
                             "occur in any user of the fold's training folds (the encoder's "
                             "train and early-stopping users)",
        "distill": {name: {"seconds": round(seconds[name], 1),
                           "best_epoch_mean": round(float(np.mean(epochs[name])), 1)}
                    for name in encoders},
        "teacher_model_ids": sorted(set(chains.column("model_id").drop_null().to_pylist()))
        if "model_id" in chains.column_names else [],
        "types": {},
    }
    for t in taxonomy.types:
        arrays = {"teacher_arg": teacher_p[t.name].argmax(axis=1),
                  "teacher_ev": expected_value(teacher_p[t.name]), "outcome": outcome,
                  "majority": majority[t.name],
                  "enc_arg": {name: enc_p[name][t.name].argmax(axis=2) for name in encoders},
                  "enc_ev": {name: expected_value(enc_p[name][t.name]) for name in encoders}}
        per_group = {g: ({"users": int(len(idx)), **_with_ci(idx, a.boot, a.seed, **arrays)}
                         if len(idx) else {"users": 0}) for g, idx in members.items()}
        for g, idx in members.items():
            # one value per (fold, seed) encoder on this group: its pooled ranking there is only
            # the order of the folds' constants, not information about the users, so it is
            # not reported (nor the paired difference that uses it)
            constant = {name: bool(len(idx)) and all(
                len(np.unique(arrays["enc_ev"][name][j, idx[fold[idx] == k]])) <= 1
                for j in range(len(a.seeds)) for k in range(k_folds)) for name in encoders}
            per_group[g]["constant_per_encoder"] = constant
            for name in (nm for nm, c in constant.items() if c):
                for m in ("teacher_spearman", "outcome_spearman"):
                    per_group[g][f"{name}.{m}"] = None
                    per_group[g][f"difference.{m}"] = None
        # seed spread of the point values (all users): how much one seed's encoder would vary
        spread = {}
        for name in encoders:
            e = arrays["enc_ev"][name]
            per_seed = [_group_stats(members["all"], **{**arrays, "enc_arg":
                                                        {name: arrays["enc_arg"][name][[j]]},
                                                        "enc_ev": {name: e[[j]]}})
                        for j in range(len(a.seeds))]
            spread[name] = {m: round(float(np.std([d[f"{name}.{m}"] for d in per_seed])), 3)
                            for m in ("agreement", "teacher_spearman", "outcome_spearman")}
        result["types"][t.name] = {"values": list(t.value_names), "groups": per_group,
                                   "seed_sd_all_users": spread}
    out = a.out or REPO / "benchmarks" / "results" / "encoder_text_teacher.json"
    write_json_atomic(result, out)

    def cell(g: dict, key: str) -> str:
        v = g.get(key)
        if v is None:
            return "-"
        ci = f" [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]" if v["ci"] else ""
        return f"{v['value']:.3f}{ci}"

    for t, r in result["types"].items():
        table = Table(title=f"{t}: out-of-fold encoders vs the teacher ({k_folds} folds, "
                            f"{len(a.seeds)} encoder seeds; 95% bootstrap CIs over users)")
        for col in ("group (n)", "row", "argmax agreement", "Spearman with teacher E",
                    f"Spearman with {outcome_name}"):
            table.add_column(col, justify="left" if col in ("group (n)", "row") else "right")
        for g in (*GROUPS, "all"):
            s = r["groups"][g]
            if not s["users"]:
                continue
            label = f"{g} ({s['users']})"
            for name in encoders:
                const = " (one value per encoder: no ranking)" \
                    if s["constant_per_encoder"][name] else ""
                table.add_row(label, name + const, cell(s, f"{name}.agreement"),
                              cell(s, f"{name}.teacher_spearman"),
                              cell(s, f"{name}.outcome_spearman"))
                label = ""
            table.add_row("", "text - bag (paired)", cell(s, "difference.agreement"),
                          cell(s, "difference.teacher_spearman"),
                          cell(s, "difference.outcome_spearman"))
            table.add_row("", "teacher", "-", "-", cell(s, "teacher.outcome_spearman"))
            table.add_row("", "training folds' majority value", cell(s, "majority_rate"), "-", "-",
                          end_section=True)
        console.print(table)
        console.print(f"seed sd (all users): {r['seed_sd_all_users']}")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
