"""OSIPO's own contribution: a longer OSIPO run than the demo's, on a small real setup.

A tiny synthetic population (2,000 users); ``--users`` covered users taught by the packaged
SmolLM2-135M teacher (the tiny preset's teacher: calibrated scoring, entropy-guided search);
the packaged SmolLM2-135M student, LoRA SFT at the demo's settings, then OSIPO for ``--steps``
steps (the demo runs 5) with the demo's rollout settings. Reported:

- per step: the preference pairs found (profiles whose rollouts did not tie), the mean outcome
  reward of the rollouts, the loss and the implicit-reward margin;
- the student's outcome agreement (``trainers/osipo_reward.outcome_reward``, the reward OSIPO
  optimises, and the exact match of each outcome-bearing node with the realised bucket) from
  constrained argmax decoding, before (the SFT student) and after (SFT + OSIPO), on its
  training users and, for reference, the held-out covered users; beside the best profile-blind
  answer (each outcome node set to the training users' majority realised bucket).

Reruns reuse the dataset, the teacher's chains and the SFT student; OSIPO and the evaluation
always run. Writes JSON to benchmarks/results/ and prints tables. Measured (README, Student): 23
minutes with another pipeline on the 2 cores (OSIPO 56 s/step); about 11 at uncontended rates;
``--steps 10`` halves the OSIPO part.

    .venv/bin/python benchmarks/osipo.py --users 32 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.student import evaluate  # noqa: E402
from scaletot_features.config import Settings, build_settings  # noqa: E402
from scaletot_features.data.io import read_json, write_json_atomic  # noqa: E402
from scaletot_features.dataset import DatasetLayout, student_manifest  # noqa: E402


def bench_settings(users: int, steps: int, seed: int) -> Settings:
    """The demo's student (packaged SmolLM2-135M, LoRA) and OSIPO settings, ``steps`` long; the
    tiny preset's population and teacher."""
    demo = build_settings("demo").student.model_dump()
    return build_settings("tiny", {
        "generate": {"users": 2_000, "seed": seed},
        "coverage": {"max_users": users},
        "teacher": {"model": "packaged"},
        "student": {**demo, "osipo_max_steps": steps, "seed": seed},
    })


def prepare(data: Path, settings: Settings) -> dict[str, float]:
    """Population, teacher chains and the SFT student, each only when missing; their seconds."""
    from scaletot_features.data.synthetic import generate_population
    from trainers.student_stage import train_student
    from trainers.teach import teach

    layout = DatasetLayout(data)
    spent: dict[str, float] = {}
    if not layout.manifest.exists():
        g = settings.generate
        generate_population(data, users=g.users, seed=g.seed, chunk_size=g.chunk_size,
                            progress=False)
    if not layout.teacher.chains.exists():
        t0 = time.perf_counter()
        teach(data, settings, progress=False)
        spent["teach_seconds"] = time.perf_counter() - t0
    if not layout.student.sft.exists():
        t0 = time.perf_counter()
        train_student(data, settings, stages=("sft",), progress=False)
        spent["sft_seconds"] = time.perf_counter() - t0
    return spent


def profile_blind(labels: dict[int, dict], train_ids: list[int], taxonomy, buckets) -> dict:
    """The chain that sets each outcome node to the training users' majority realised bucket
    (other nodes: the first value): the best answer that ignores the profile."""
    values = {t.name: t.value_names[0] for t in taxonomy.types}
    for b in buckets:
        seen = Counter(x for x in (b.bucket(labels[u][b.label]) for u in train_ids) if x is not None)
        if seen:
            values[b.type] = seen.most_common(1)[0][0]
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-osipo")
    ap.add_argument("--users", type=int, default=32, help="covered users the teacher reasons about")
    ap.add_argument("--steps", type=int, default=20, help="OSIPO steps (the demo runs 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "osipo.json")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from scaletot_features.chain import chain_text
    from scaletot_features.llm.hf import TransformersBackend
    from scaletot_features.reasoning.student_inference import profile_texts
    from scaletot_features.runtime import torch_threads
    from trainers.osipo_reward import outcome_reward
    from trainers.sft import split_user_ids
    from trainers.student_stage import osipo_config, outcome_rows, train_student
    from trainers.teach import load_chains

    t_start = time.perf_counter()
    console = Console(width=max(Console().width, 130))
    settings = bench_settings(args.users, args.steps, args.seed)
    data = args.work / f"covered{args.users}-seed{args.seed}"
    console.print(f"[dim]preparing {data} (population, teacher, SFT when missing) ...[/]")
    spent = prepare(data, settings)
    layout = DatasetLayout(data)
    if layout.student.osipo.exists():
        shutil.rmtree(layout.student.osipo)
    console.print(f"[dim]OSIPO: {args.steps} steps ...[/]")
    t0 = time.perf_counter()
    train_student(data, settings, stages=("osipo",), progress=False)
    spent["osipo_seconds"] = time.perf_counter() - t0
    osipo = read_json(student_manifest(layout.student.osipo))
    sft = read_json(student_manifest(layout.student.sft))

    taxonomy = settings.taxonomy()
    buckets = osipo_config(settings).active_buckets()
    chains = {r["user_id"]: r for r in load_chains(data).to_pylist()}
    splits = {name: split_user_ids(data, name) for name in ("train", "holdout")}
    everyone = splits["train"] + splits["holdout"]
    labels = outcome_rows(data, everyone, settings.data.horizon_days)
    texts = profile_texts(data, everyone, settings.profile_schema())
    blind = profile_blind(labels, splits["train"], taxonomy, buckets)

    outcomes: dict[str, dict[str, dict]] = {}
    for name, folder in (("sft", layout.student.sft), ("sft+osipo", layout.student.osipo)):
        console.print(f"[dim]evaluating {name} ...[/]")
        with torch_threads(settings.student.torch_threads):
            backend = TransformersBackend(folder, batch_size=settings.student.infer_batch_size)
            for split, ids in splits.items():
                run = evaluate(name, backend, {u: texts[u] for u in ids}, chains, labels,
                               taxonomy, buckets, 0, settings.student.infer_batch_size)
                outcomes.setdefault(split, {})[name] = run
        del backend
    for split, ids in splits.items():
        outcomes[split]["profile-blind"] = {
            "model": "profile-blind", "users": len(ids),
            "outcome_reward": float(np.mean([outcome_reward(blind, labels[u], taxonomy, buckets)
                                             for u in ids])),
            "outcome_agreement": {b.type: {
                "match": float(np.mean(hits)) if hits else None, "n": len(hits)}
                for b in buckets for hits in [[blind[b.type] == b.bucket(labels[u][b.label])
                                               for u in ids
                                               if b.bucket(labels[u][b.label]) is not None]]}}
    steps = [{k: r.get(k) for k in ("step", "pairs", "outcome/mean", "loss", "rewards/margins",
                                   "rewards/accuracies", "seconds")}
             for r in osipo.get("log_history", [])]
    result = {
        "setup": {"population": settings.generate.users, "covered_users": len(everyone),
                  "train_users": len(splits["train"]), "holdout_users": len(splits["holdout"]),
                  "teacher": settings.teacher.model_dump(include={"model", "scoring", "search"}),
                  "student": settings.student.model_dump(), "profile_blind_chain": chain_text(blind)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds": {**{k: round(v, 1) for k, v in spent.items()},
                    "total_this_run": round(time.perf_counter() - t_start, 1)},
        "sft": {k: sft.get(k) for k in ("steps", "wall_seconds", "seconds_per_step")},
        "osipo": {k: osipo.get(k) for k in ("steps", "updates", "wall_seconds",
                                            "seconds_per_step", "first_loss", "last_loss")},
        "steps": steps, "outcomes": outcomes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, args.out)

    t = Table(title=f"OSIPO steps ({len(splits['train'])} training users, "
                    f"{settings.student.osipo_batch_size} profiles x "
                    f"{settings.student.rollouts_per_profile} rollouts per step)")
    for col in ("step", "pairs", "rollout R", "loss", "margin", "s"):
        t.add_column(col, justify="right")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in steps:
        t.add_row(fmt(r["step"], ".0f"), fmt(r["pairs"], ".0f"), fmt(r["outcome/mean"], ".3f"),
                  fmt(r["loss"], ".4f"), fmt(r["rewards/margins"], ".4f"), fmt(r["seconds"], ".1f"))
    console.print(t)
    o = Table(title="Outcome agreement (constrained argmax chains)")
    o.add_column("users")
    o.add_column("model")
    for b in buckets:
        o.add_column(f"{b.type.split('_')[0]} = realised", justify="right")
    o.add_column("outcome R", justify="right")
    o.add_column("teacher agr.", justify="right")
    for split, runs in outcomes.items():
        for name, r in runs.items():
            oa = r["outcome_agreement"]
            o.add_row(f"{split} ({r['users']})", name,
                      *[fmt(oa[b.type]["match"], ".3f") + f" (n={oa[b.type]['n']})" for b in buckets],
                      f"{r['outcome_reward']:.3f}", fmt(r.get("mean_teacher_agreement"), ".3f"))
    console.print(o)
    console.print(f"{spent}  total {time.perf_counter() - t_start:.0f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
