"""Is the teacher the bottleneck? The encoder distilled from a PERFECT teacher, at several coverages.

On synthetic data the latent states are known (DIR/latent, written for evaluation only). This
benchmark stands them in for the LLM's chains of the covered users: targets = the true typed
states (and their one-hot as the "representation"), distilled by the same ``distill_encoder``,
embedded for everyone by the same ``embed_population``, and compared by the same LTV models,
split, slices and seeds as ``scaletot evaluate`` (C_perfect against A). It answers a question the
product's evaluation cannot: if the teacher read the states right, how many covered users would
the encoder need before the LTV model gains, and how much?

No product path reads the latent truth; this is a measurement device, like the reference row.

    .venv/bin/python benchmarks/perfect_teacher.py --data runs/demo/data --users 120 600 1464 6000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from scaletot_features.config import build_settings  # noqa: E402
from scaletot_features.data.io import (  # noqa: E402
    read_table,
    write_json_atomic,
    write_parquet_atomic,
)
from scaletot_features.dataset import DatasetLayout, users_point  # noqa: E402
from scaletot_features.encoder import embed_population  # noqa: E402
from scaletot_features.encoder.embed import data_profile_schema  # noqa: E402
from scaletot_features.profile import ID_COLUMN  # noqa: E402
from trainers.distill_encoder import distill_encoder  # noqa: E402
from trainers.eval_features import (  # noqa: E402
    FeatureSet,
    align,
    covered_users,
    one_hot_states,
    reasoning_matrix,
    reasoning_order,
)
from trainers.evaluate import (  # noqa: E402
    aggregate,
    evaluation_targets,
    fit_block,
    low_activity_mask,
    split_test,
    target_labels,
    training_frame,
)
from scaletot_features.runtime import torch_threads  # noqa: E402


def perfect_targets(data_dir: Path, users: np.ndarray, taxonomy) -> pa.Table:
    truth = read_table(DatasetLayout(data_dir).latent)
    truth = truth.filter(pc.is_in(truth.column(ID_COLUMN), value_set=pa.array(users)))
    onehot = one_hot_states(truth, taxonomy).astype(np.float32)
    cols = {ID_COLUMN: truth.column(ID_COLUMN)}
    for t in taxonomy.type_names:
        cols[t] = truth.column(t)
    cols["representation"] = pa.array(list(onehot), pa.list_(pa.float32()))
    cols["provenance"] = pa.array(["latent-truth"] * truth.num_rows)
    return pa.table(cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "runs" / "demo" / "data")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--users", type=int, nargs="+", default=[120, 600, 1464, 6000],
                    help="covered users per point (demo: 120 = its default, 1464 = 7.32%%)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "perfect_teacher.json")
    args = ap.parse_args()
    console = Console(stderr=True)
    settings = build_settings(args.preset)
    data_dir = args.data.resolve()
    taxonomy = settings.taxonomy()
    schema = data_profile_schema(data_dir, settings)
    cfg = settings.ltv
    # the "representation" is the one-hot of the true states: the embedding cannot be wider
    settings.encoder.dim = min(settings.encoder.dim, sum(len(t.value_names) for t in taxonomy.types))

    frame = training_frame(data_dir, settings, console)
    ids = frame.column(ID_COLUMN).to_numpy()
    targets = evaluation_targets(data_dir, settings)
    y = target_labels(frame, targets)
    profiles = frame.select([ID_COLUMN] + schema.names)
    covered = covered_users(data_dir)
    test = split_test(ids, covered, cfg.test_fraction, cfg.split_seed)
    low = low_activity_mask(profiles, cfg.low_activity)
    order = reasoning_order(ids, covered, cfg.split_seed)
    # a perfect teacher's covered users must not be tested on: their states are their labels' cause
    sets = [FeatureSet("A", "A: profile only", None)]
    facts = {}
    root = DatasetLayout(data_dir).bench("perfect_teacher")
    for n in args.users:
        users = order[:n]
        t0 = time.perf_counter()
        point = users_point(root, n)
        point.root.mkdir(parents=True, exist_ok=True)
        targets = point.targets
        write_parquet_atomic(perfect_targets(data_dir, users, taxonomy), targets)
        d = distill_encoder(data_dir, settings, targets=targets, out=point.encoder,
                            progress=False)
        embed_population(data_dir, settings, encoder_folder=point.encoder,
                         out=point.features, progress=False)
        table = read_table(point.features)
        rows, theirs = align(table, ids)
        sets.append(FeatureSet(f"P@{n}", f"C, perfect teacher @ {n:,} users",
                               reasoning_matrix(table.take(pa.array(theirs)), taxonomy)))
        test_m = d["metrics"].get("test", {})
        facts[f"P@{n}"] = {"users": n, "coverage": n / len(ids),
                           "encoder_typed_agreement_held_out": test_m.get("typed_agreement"),
                           "majority_agreement_held_out": test_m.get("majority_agreement"),
                           "seconds": round(time.perf_counter() - t0, 1)}
        console.print(f"P@{n}: encoder held-out typed agreement with the truth "
                      f"{test_m.get('typed_agreement')} (majority {test_m.get('majority_agreement')})")
    # covered users of every point go to train (like the student's covered users in evaluate)
    test_p = test & ~np.isin(ids, order[:max(args.users)])
    runs: list = []
    with torch_threads(cfg.torch_threads):
        runs += fit_block("main", sets, profiles, y, targets, test_p, low, np.arange(len(ids)),
                          settings, schema, [],
                          lambda msg, done: done or console.print(f"  fit {msg}"))
    summary = aggregate(runs)
    table = Table(title="LTV uplift over A with an encoder distilled from the TRUE states "
                        f"({int(test_p.sum()):,} test users, seeds {cfg.seeds})")
    keys = [f"{s}.{t.name}.gini" for t in targets for s in ("all", "low_activity")]
    for h in ["feature set", "covered", "encoder typed agr. (held-out)"] + [
            f"Δ {k.split('.')[1]} Gini" + (" low-act." if k.startswith("low") else "") for k in keys]:
        table.add_column(h, justify="right" if h != "feature set" else "left")
    for r in summary:
        f = facts.get(r["set"], {})
        cells = []
        for key in keys:
            cells.append("-" if r["set"] == "A" else
                         f"{r[key + '.uplift']:+.3f} ± {r[key + '.uplift_std']:.3f}")
        agr = f.get("encoder_typed_agreement_held_out")
        table.add_row(r["label"], f"{f.get('users', 0):,}", "-" if agr is None else f"{agr:.3f}",
                      *cells)
    Console(width=200).print(table)
    write_json_atomic({"data_dir": str(data_dir), "test_users": int(test_p.sum()),
                       "points": facts, "summary": summary}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
