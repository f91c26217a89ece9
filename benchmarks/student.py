"""Student benchmark: SFT alone vs SFT + OSIPO on held-out covered users.

For each student (and the teacher and a majority baseline for reference), on the held-out users
of DIR/student/split.parquet:

- valid-chain rate: constrained decoding (valid by construction, checked by the strict parser)
  and free generation on a small sample (the model writes the text; the parser judges it);
- typed agreement with the teacher's chain, per state type and mean;
- outcome agreement: each outcome-bearing node against the user's realised bucket (exact match,
  and the mean graded outcome reward OSIPO optimises);
- training cost: seconds per step and peak memory of SFT and OSIPO (each stage runs in its own
  subprocess, so its peak RSS is its own), inference users per second.

Trains the missing stages first (``--preset``, default demo). Writes JSON and prints a table.

    .venv/bin/python benchmarks/student.py --data runs/demo/data --free-sample 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaletot_features.config import build_settings  # noqa: E402
from scaletot_features.data.io import write_json_atomic  # noqa: E402
from scaletot_features.dataset import student_manifest  # noqa: E402


def _maxrss_mb(ru_maxrss: int) -> float:
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def train_stage(data: Path, preset: str, overrides: dict, stage: str) -> dict:
    """Run one student stage in a fresh subprocess: its report plus the child's own peak RSS
    (ru_maxrss of the child process, which only ran that stage)."""
    code = ("import json, resource, sys; from pathlib import Path; "
            "from scaletot_features.config import build_settings; "
            "from trainers.student_stage import train_student; "
            f"s = build_settings({preset!r}, json.loads(sys.argv[1])); "
            f"r = train_student(Path(sys.argv[2]), s, stages=({stage!r},), progress=False); "
            "r['maxrss'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "print('@@' + json.dumps(r, default=str))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(overrides), str(data)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("@@")][-1]
    raw = json.loads(line[2:])
    return {**raw[stage], "child_peak_rss_mb": _maxrss_mb(raw["maxrss"])}


def evaluate(name: str, backend, texts: dict[int, str], teacher: dict[int, dict], labels: dict[int, dict],
             taxonomy, buckets, free_sample: int, batch_size: int) -> dict:
    from scaletot_features.reasoning.student_inference import infer_table
    from trainers.osipo_reward import outcome_reward

    t0 = time.perf_counter()
    table = infer_table(backend, texts, taxonomy, "constrained", batch_size, model_id=name)
    seconds = time.perf_counter() - t0
    result = {"model": name, "users": table.num_rows, "infer_seconds": seconds,
              "users_per_s": table.num_rows / seconds}
    result.update(_scores(table.to_pylist(), teacher, labels, taxonomy, buckets, outcome_reward))
    if free_sample:
        sample = dict(list(texts.items())[:free_sample])
        t0 = time.perf_counter()
        free = infer_table(backend, sample, taxonomy, "free", batch_size, model_id=name)
        free_rows = free.to_pylist()
        result["free"] = {"users": len(free_rows), "seconds": time.perf_counter() - t0,
                          "valid_rate": float(np.mean([r["valid"] for r in free_rows])),
                          "errors": [r["error"] for r in free_rows if not r["valid"]][:3],
                          **_scores([r for r in free_rows if r["valid"]], teacher, labels, taxonomy,
                                    buckets, outcome_reward, prefix="valid_")}
    return result


def infer_before_after(backend, texts: dict[int, str], taxonomy, batch_size: int) -> dict:
    """Constrained inference one user at a time (batch 1: the path before batched decoding) and
    ``batch_size`` users decoded together over one KV cache, back to back on the same model:
    users/s, the 1-minute load average around each, and whether the chains are the same."""
    from scaletot_features.reasoning.student_inference import infer_table

    runs, tables = {}, {}
    for name, size in (("before", 1), ("after", batch_size)):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        tables[name] = infer_table(backend, texts, taxonomy, "constrained", size, model_id="x")
        seconds = time.perf_counter() - t0
        runs[name] = {"batch_size": size, "users": len(texts), "seconds": seconds,
                      "users_per_s": len(texts) / seconds,
                      "load_average_1min": [load, os.getloadavg()[0]]}
    a, b = tables["before"].to_pylist(), tables["after"].to_pylist()
    return {**runs, "speedup": runs["after"]["users_per_s"] / runs["before"]["users_per_s"],
            "same_chains": float(np.mean([x["chain_text"] == y["chain_text"]
                                          for x, y in zip(a, b)]))}


def _scores(rows: list[dict], teacher: dict, labels: dict, taxonomy, buckets, reward_fn,
            prefix: str = "") -> dict:
    from scaletot_features.chain import ChainParseError, parse_chain_values

    valid = []
    for r in rows:
        try:
            parse_chain_values(r["chain_text"], taxonomy)
            valid.append(r)
        except ChainParseError:
            pass
    out: dict = {f"{prefix}valid_rate" if not prefix else "parsed": len(valid) / max(len(rows), 1)}
    if not valid:
        return out
    types = taxonomy.type_names
    agree = {t: float(np.mean([r[t] == teacher[r["user_id"]][t] for r in valid])) for t in types}
    out[f"{prefix}teacher_agreement"] = agree
    out[f"{prefix}mean_teacher_agreement"] = float(np.mean(list(agree.values())))
    out[f"{prefix}outcome_agreement"] = _outcome_match(valid, labels, buckets)
    out[f"{prefix}outcome_reward"] = float(np.mean(
        [reward_fn({t: r[t] for t in types}, labels[r["user_id"]], taxonomy, buckets) for r in valid]))
    return out


def _outcome_match(rows: list[dict], labels: dict, buckets) -> dict:
    """Exact match of each outcome-bearing node with the realised bucket (users it applies to)."""
    out = {}
    for b in buckets:
        hits = [r[b.type] == b.bucket(labels[r["user_id"]][b.label]) for r in rows
                if b.bucket(labels[r["user_id"]][b.label]) is not None]
        out[b.type] = {"match": float(np.mean(hits)) if hits else None, "n": len(hits)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset directory with teacher chains")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", default="{}", help="JSON overrides of the settings, e.g. "
                    "'{\"student\": {\"osipo_max_steps\": 4}}'")
    ap.add_argument("--free-sample", type=int, default=8, help="held-out users for free generation")
    ap.add_argument("--split", default="holdout", choices=["holdout", "train"])
    ap.add_argument("--with-base", action="store_true", help="also evaluate the untrained base model")
    ap.add_argument("--infer-before-after", action="store_true",
                    help="also time the final student's constrained inference one user at a "
                    "time and batched, side by side")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "student.json")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from scaletot_features.llm.hf import TransformersBackend
    from scaletot_features.reasoning.student_inference import profile_texts, student_model_id
    from trainers.osipo_reward import outcome_reward
    from trainers.sft import split_user_ids
    from scaletot_features.runtime import torch_threads
    from trainers.student_stage import osipo_config, outcome_rows, student_paths
    from trainers.teach import load_chains

    console = Console(width=max(Console().width, 150))
    overrides = json.loads(args.set)
    settings = build_settings(args.preset, overrides)
    taxonomy = settings.taxonomy()
    paths = student_paths(args.data)
    training = {}
    for stage in ("sft", "osipo"):
        if not paths[stage].exists():
            console.print(f"[dim]training {stage} ({args.preset}) ...[/]")
            training[stage] = train_stage(args.data, args.preset, overrides, stage)
        meta = json.loads(student_manifest(paths[stage]).read_text())
        training[stage] = {**{k: v for k, v in meta.items() if k not in ("log_history", "loss_history")},
                           **{k: v for k, v in training.get(stage, {}).items() if k == "child_peak_rss_mb"}}
        if stage == "osipo":
            hist = meta.get("log_history", [])
            training[stage]["margins"] = [round(r.get("rewards/margins", float("nan")), 4) for r in hist]
            training[stage]["outcome_mean"] = [round(r["outcome/mean"], 3) for r in hist]

    ids = split_user_ids(args.data, args.split)
    texts = profile_texts(args.data, ids, settings.profile_schema())
    texts = {u: texts[u] for u in ids}
    chains = {r["user_id"]: r for r in load_chains(args.data).to_pylist()}
    labels = outcome_rows(args.data, ids, settings.data.horizon_days)
    buckets = osipo_config(settings).active_buckets()

    runs = []
    compared = None
    models = ([("base", settings.student.model)] if args.with_base else []) + \
             [("sft", paths["sft"]), ("sft+osipo", paths["osipo"])]
    for name, folder in models:
        console.print(f"[dim]evaluating {name} on {len(ids)} {args.split} users ...[/]")
        with torch_threads(settings.student.torch_threads):
            backend = TransformersBackend(folder, batch_size=settings.student.infer_batch_size)
            run = evaluate(name, backend, texts, chains, labels, taxonomy, buckets,
                           args.free_sample, settings.student.infer_batch_size)
        run["model_id"] = student_model_id(Path(folder)) if name != "base" else backend.model_id
        runs.append(run)
        if args.infer_before_after and name == "sft+osipo":
            console.print(f"[dim]inference before/after on {len(ids)} users ...[/]")
            with torch_threads(settings.student.torch_threads):
                compared = infer_before_after(backend, texts, taxonomy,
                                              settings.student.infer_batch_size)
        del backend

    # References: the teacher's own chains, and the majority of the train users' teacher values.
    teacher_rows = [{**chains[u], "chain_text": chains[u]["chain_text"]} for u in ids]
    teacher_ref = {"model": "teacher", **_scores(teacher_rows, chains, labels, taxonomy, buckets,
                                                 outcome_reward)}
    train_ids = split_user_ids(args.data, "train")
    majority = {t: Counter(chains[u][t] for u in train_ids).most_common(1)[0][0]
                for t in taxonomy.type_names}
    from scaletot_features.chain import chain_text

    maj_rows = [{"user_id": u, "chain_text": chain_text(majority), **majority} for u in ids]
    majority_ref = {"model": "majority(train teacher)", **_scores(maj_rows, chains, labels, taxonomy,
                                                                  buckets, outcome_reward)}

    # And the majority realised bucket of the train users on each outcome node: what an
    # outcome-only model that ignores the profile would score.
    train_labels = outcome_rows(args.data, train_ids, settings.data.horizon_days)
    realised = {b.type: Counter(x for x in (b.bucket(train_labels[u][b.label]) for u in train_ids)
                                if x is not None).most_common(1) for b in buckets}
    outcome_majority = {**majority, **{t: c[0][0] for t, c in realised.items() if c}}
    om_rows = [{"user_id": u, "chain_text": chain_text(outcome_majority), **outcome_majority}
               for u in ids]
    outcome_ref = {"model": "majority(train realised)", **_scores(om_rows, chains, labels, taxonomy,
                                                                  buckets, outcome_reward)}

    result = {"data": str(args.data), "preset": args.preset, "overrides": overrides,
              "split": args.split, "users": len(ids), "free_sample": args.free_sample,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "training": training, "runs": runs, "references": [teacher_ref, majority_ref, outcome_ref],
              "infer_before_after": compared}
    write_json_atomic(result, args.out)

    bt = [b.type for b in buckets]
    table = Table(title=f"Student on {len(ids)} {args.split} covered users ({args.preset})")
    for col in ["model", "valid (constr.)", "valid (free)", "teacher agr.",
                *[f"{t.split('_')[0]} = real" for t in bt], "outcome R", "users/s"]:
        table.add_column(col, justify="right")

    def row(r: dict) -> list[str]:
        oa = r.get("outcome_agreement", {})
        free = r.get("free")
        return [r["model"], f"{r.get('valid_rate', 1.0):.2f}",
                f"{free['valid_rate']:.2f} (n={free['users']})" if free else "-",
                f"{r.get('mean_teacher_agreement', float('nan')):.3f}",
                *[f"{oa[t]['match']:.2f} (n={oa[t]['n']})" if oa.get(t, {}).get("match") is not None
                  else "-" for t in bt],
                f"{r.get('outcome_reward', float('nan')):.3f}",
                f"{r['users_per_s']:.2f}" if "users_per_s" in r else "-"]

    for r in runs + [teacher_ref, majority_ref, outcome_ref]:
        table.add_row(*row(r))
    console.print(table)
    cost = Table(title="Training cost (2 shared CPU cores: timings are noisy)")
    for col in ["stage", "steps", "s/step", "wall s", "peak RSS MB"]:
        cost.add_column(col, justify="right")
    for stage, t in training.items():
        cost.add_row(stage, str(t.get("steps")), f"{t.get('seconds_per_step', float('nan')):.1f}",
                     f"{t.get('wall_seconds', float('nan')):.0f}",
                     f"{t.get('child_peak_rss_mb', t.get('peak_rss_mb', float('nan'))):.0f}")
    console.print(cost)
    if compared is not None:
        inf = Table(title="Constrained inference of the final student, one run, same users")
        for col in ("path", "batch", "users/s", "load avg (1 min)"):
            inf.add_column(col, justify="right")
        for name, label in (("before", "one user at a time"), ("after", "batched, one KV cache")):
            r = compared[name]
            inf.add_row(label, str(r["batch_size"]), f"{r['users_per_s']:.2f}",
                        "{:.2f} -> {:.2f}".format(*r["load_average_1min"]))
        console.print(inf)
        console.print(f"speed-up {compared['speedup']:.2f}x, same chains "
                      f"{compared['same_chains']:.0%}")
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
