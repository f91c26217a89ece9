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
    p.add_argument("--preset", default="demo")
    p.add_argument("--per-group", type=int, default=120, help="users per group run by the student")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoder_text.json")
    a = p.parse_args()

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


if __name__ == "__main__":
    main()
