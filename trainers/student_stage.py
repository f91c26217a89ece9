"""The student stage for the CLI and the demo: SFT, then OSIPO, then inference.

Each sub-stage reads what the one before wrote and is skipped when its own output exists:

- ``sft``:   DIR/student/split.parquet + DIR/student/sft/      (trainers/sft.py)
- ``osipo``: DIR/student/osipo/                                (trainers/osipo_trainer.py)
- ``infer``: DIR/student/chains/part-*.parquet for every covered user, by the OSIPO student (the
  SFT one when OSIPO is off: ``student.osipo_max_steps: 0``).

Every sub-stage records its wall time, seconds per step and peak memory (:class:`ResourceMeter`)
in its output (``student.json`` in the model folders, ``DIR/student/chains_summary.json``).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scaletot_features.config import Settings
from scaletot_features.data.io import read_json, read_table, write_json_atomic
from scaletot_features.dataset import (
    LABELS_FROM_EVENTS,
    DatasetLayout,
    label_source,
    student_manifest,
)
from scaletot_features.runtime import torch_threads
from scaletot_features.data.labels import label_names

STAGES = ("sft", "osipo", "infer")


class ResourceMeter:
    """Peak resident memory of this process while a block runs (sampled every 50 ms by a
    thread), and the peak CUDA allocation when a GPU is used."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.start_rss_mb = 0.0
        self.peak_cuda_mb: float | None = None
        self.seconds = 0.0

    @contextmanager
    def measure(self) -> Iterator["ResourceMeter"]:
        import psutil
        import torch

        proc = psutil.Process()
        self.start_rss_mb = self.peak_rss_mb = proc.memory_info().rss / 2**20
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.peak_rss_mb = max(self.peak_rss_mb, proc.memory_info().rss / 2**20)
                stop.wait(self.interval)

        thread = threading.Thread(target=sample, daemon=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.seconds = time.perf_counter() - t0
            self.peak_rss_mb = max(self.peak_rss_mb, proc.memory_info().rss / 2**20)
            if torch.cuda.is_available():
                self.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20

    def as_dict(self) -> dict[str, float | None]:
        return {"peak_rss_mb": round(self.peak_rss_mb, 1), "start_rss_mb": round(self.start_rss_mb, 1),
                "peak_cuda_mb": self.peak_cuda_mb, "wall_seconds": round(self.seconds, 2)}


def student_paths(data_dir: Path) -> dict[str, Path]:
    """The student stage's outputs by name (``dataset.StudentLayout``), keyed as the stages are."""
    s = DatasetLayout(data_dir).student
    return {"root": s.root, "split": s.split, "sft": s.sft, "osipo": s.osipo, "chains": s.chains,
            "chains_summary": s.chains_summary}


# ---- OSIPO ----------------------------------------------------------------------------------


def osipo_config(settings: Settings, output_dir: Path | str = "osipo",
                 plan: "OutcomePlan | None" = None, buckets: tuple | None = None):  # -> OSIPOConfig
    """The OSIPO configuration the ``student`` settings describe. Without a ``plan``
    (:func:`resolve_osipo_outcome`), ``student.outcome: auto`` reads the event labels (``both``);
    a plan on a labels file's columns needs its ``buckets`` (:func:`outcome_buckets`)."""
    from trainers.osipo_config import OSIPOConfig

    s = settings.student
    outcome = plan.outcome if plan is not None else ("both" if s.outcome == "auto" else s.outcome)
    extra = {"outcome_buckets": tuple(buckets)} if buckets is not None else {}
    return OSIPOConfig(
        output_dir=str(output_dir), beta=s.beta, rollouts_per_profile=s.rollouts_per_profile,
        rollout_temperature=s.rollout_temperature, outcome=outcome,
        outcome_segment_weight=s.outcome_segment_weight,
        reweight_user_segments=s.reweight_user_segments, learning_rate=s.osipo_learning_rate,
        max_steps=s.osipo_max_steps, per_device_train_batch_size=s.osipo_batch_size,
        max_length=s.max_length, rollout_batch_size=s.infer_batch_size, seed=s.seed, **extra,
    )


@dataclass(frozen=True)
class OutcomePlan:
    """What OSIPO's reward reads on a dataset: ``outcome`` ``lt30``/``revenue_30``/``both`` (the
    event labels, fixed buckets; ``columns`` empty) or ``labels`` with ``columns`` state type ->
    label column (buckets from the training users' quantiles)."""

    outcome: str
    columns: dict[str, str]


LEGACY = ("lt30", "revenue_30", "both")


def resolve_osipo_outcome(data_dir: Path, settings: Settings) -> OutcomePlan:
    """``student.outcome`` on this dataset, or a ValueError naming the field, the label columns
    and the way out, before anything is trained or loaded.

    ``auto``: a dataset whose labels were derived from events gets ``both`` (the fixed buckets
    of ``osipo_reward.DEFAULT_OUTCOME_BUCKETS``); one whose labels came from a labels file gets
    every state type the taxonomy's ``outcome_types`` ties to one of its columns (matched as the
    teacher's demonstrations match them, ``trainers.few_shot.outcome_label_columns``). A label
    column's name: only the types tied to that column. ``lt30``/``revenue_30``/``both``: the
    event labels at the dataset's horizon, which must be among its labels."""
    from trainers.few_shot import outcome_label_columns

    s = settings.student
    manifest = read_json(DatasetLayout(Path(data_dir)).manifest)
    labels = list(manifest.get("label_names") or ())
    source = label_source(manifest)
    choice = s.outcome
    if choice == "auto":
        choice = "both" if source == LABELS_FROM_EVENTS else None
    if choice in LEGACY:
        active, revenue = label_names(settings.data.horizon_days)
        needed = {"lt30": active, "revenue_30": revenue}
        wanted = [needed[o] for o in (("lt30", "revenue_30") if choice == "both" else (choice,))]
        missing = [c for c in wanted if c not in labels]
        if missing:
            raise ValueError(
                f"student.outcome {s.outcome!r}: OSIPO rewards chains on the label(s) {missing} "
                f"(active days and revenue at the {settings.data.horizon_days}-day horizon), and "
                f"this dataset's labels are {labels} (label_source: {source}); set "
                "student.outcome to one of them (or auto), set student.osipo_max_steps: 0 to "
                "train the student by SFT alone, or ingest events so that these labels are "
                "derived")
        return OutcomePlan(choice, {})
    if choice is not None and choice not in labels:
        raise ValueError(
            f"student.outcome {s.outcome!r} is not auto, lt30, revenue_30, both nor a label "
            f"column of this dataset; its label columns are {labels} (label_source: {source})")
    columns = outcome_label_columns(settings, labels)
    if choice is not None:
        columns = {t: c for t, c in columns.items() if c == choice}
    if not columns:
        keys = sorted(settings.taxonomy().outcome_types)
        raise ValueError(
            f"student.outcome {s.outcome!r}: OSIPO rewards the state types the taxonomy's "
            f"outcome_types ties to a label column, and its keys {keys} name none of "
            f"{[choice] if choice else labels} (this dataset's label columns: {labels}, "
            f"label_source: {source}); key outcome_types by a label column (e.g. "
            f"{{{labels[0] if labels else 'your_label'}: [a_state_type]}}), or set "
            "student.osipo_max_steps: 0 to train the student by SFT alone")
    return OutcomePlan("labels", columns)


def check_osipo_outcome(data_dir: Path, settings: Settings) -> None:
    """Refuse, before any training, a ``student.outcome`` the dataset cannot serve
    (:func:`resolve_osipo_outcome`)."""
    resolve_osipo_outcome(data_dir, settings)


def outcome_rows(data_dir: Path, user_ids: Sequence[int], horizon_days: int,
                 plan: OutcomePlan | None = None) -> dict[int, dict]:
    """user_id -> the labels OSIPO reads and ``segment`` (the coverage stratum, for user
    re-weighting). The event labels (no ``plan``, or a ``lt30``/``revenue_30``/``both`` one):
    ``{"lt30", "revenue_30"}``, the horizon's labels under OSIPO's names, every user needing
    them. A plan on a labels file's columns: each column by its own name, None where the value
    is unknown (an empty cell, or no row for the user)."""
    ids = pa.array(list(user_ids), pa.int64())
    layout = DatasetLayout(Path(data_dir))
    if plan is None or plan.outcome in LEGACY:
        active, revenue = label_names(horizon_days)
        labels = read_table(layout.labels, columns=["user_id", active, revenue])
        labels = labels.filter(pc.is_in(labels.column("user_id"), value_set=ids)).to_pylist()
        out = {r["user_id"]: {"lt30": float(r[active]), "revenue_30": float(r[revenue])}
               for r in labels}
        missing = [u for u in user_ids if u not in out]
        if missing:
            raise KeyError(f"{len(missing)} users have no labels, e.g. user_id={missing[0]}")
    else:
        cols = sorted(set(plan.columns.values()))
        labels = read_table(layout.labels, columns=["user_id", *cols])
        labels = labels.filter(pc.is_in(labels.column("user_id"), value_set=ids)).to_pylist()
        known = {r["user_id"]: r for r in labels}
        out = {u: {c: (None if known.get(u, {}).get(c) is None else float(known[u][c]))
                   for c in cols} for u in user_ids}
    coverage = layout.teacher.coverage
    if coverage.exists():
        cov = pq.read_table(coverage, columns=["user_id", "stratum"]).to_pylist()
        strata = {r["user_id"]: r["stratum"] for r in cov}
        for u in out:
            out[u]["segment"] = strata.get(u, "<none>")
    return out


def outcome_buckets(settings: Settings, plan: OutcomePlan, rows: Sequence[dict]) -> tuple:
    """The reward's buckets: the fixed defaults for the event labels; for a labels file's
    columns, the quantile buckets of ``rows`` (the training users' :func:`osipo_records`, never
    the held-out ones)."""
    from trainers.osipo_reward import DEFAULT_OUTCOME_BUCKETS, quantile_buckets

    if plan.outcome in LEGACY:
        return DEFAULT_OUTCOME_BUCKETS
    cols = set(plan.columns.values())
    return quantile_buckets(settings.taxonomy(), plan.columns,
                            {c: [r[c] for r in rows] for c in cols})


def osipo_records(data_dir: Path, settings: Settings,
                  plan: OutcomePlan | None = None) -> list[dict[str, Any]]:
    """The OSIPO training rows: train-split users' prompts, outcome labels and segments."""
    from trainers.sft import sft_records

    rows = sft_records(data_dir, settings, "train")
    extra = outcome_rows(data_dir, [r["user_id"] for r in rows], settings.data.horizon_days, plan)
    return [{"user_id": r["user_id"], "prompt": r["prompt"], **extra[r["user_id"]]} for r in rows]


def train_osipo(data_dir: Path, settings: Settings, progress: bool = True,
                overwrite: bool = False) -> dict[str, Any]:
    """OSIPO from DIR/student/sft/ on the train split; writes DIR/student/osipo/."""
    from trainers.osipo_trainer import OSIPOTrainer
    from trainers.sft import load_model, lora_config

    paths = student_paths(data_dir)
    if paths["osipo"].exists() and not overwrite:
        raise FileExistsError(f"{paths['osipo']} already exists (pass overwrite to replace it)")
    if not paths["sft"].exists():
        raise FileNotFoundError(f"OSIPO starts from the SFT student: run the sft stage first ({paths['sft']})")
    s = settings.student
    plan = resolve_osipo_outcome(data_dir, settings)
    rows = osipo_records(data_dir, settings, plan)
    buckets = outcome_buckets(settings, plan, rows)  # before the model loads: a refusal is cheap
    model, tokenizer = load_model(paths["sft"], progress)
    args = osipo_config(settings, paths["osipo"], plan, buckets)
    trainer = OSIPOTrainer(model, args, rows, tokenizer, settings.taxonomy(),
                           peft_config=lora_config(settings) if s.lora else None)
    summary = trainer.train(progress=progress)
    import json

    sft_meta = json.loads(student_manifest(paths["sft"]).read_text())
    manifest = {
        "stage": "osipo", "base_model": s.model, "base_model_id": sft_meta.get("base_model_id"),
        "lora": s.lora, "train_users": len(rows), "beta": args.beta,
        "rollouts_per_profile": args.rollouts_per_profile, "outcome": args.outcome,
        "outcome_buckets": [dict(b.as_dict(), source=(
            "default" if plan.outcome in LEGACY else "training users' quantiles"),
            known_users=sum(r.get(b.label) is not None for r in rows))
            for b in args.active_buckets()],
        "segment_weights": dict(zip(settings.taxonomy().type_names,
                                    args.segment_weight_vector(settings.taxonomy()))),
        "learning_rate": args.learning_rate, "profiles_per_step": args.per_device_train_batch_size,
        **{k: v for k, v in summary.items()},
        "taxonomy_fingerprint": settings.taxonomy().fingerprint(),
    }
    trainer.save_model(paths["osipo"], manifest)
    return manifest


# ---- inference ------------------------------------------------------------------------------


def covered_user_ids(data_dir: Path) -> list[int]:
    return sorted(pq.read_table(DatasetLayout(data_dir).teacher.coverage,
                                columns=["user_id"]).column("user_id").to_pylist())


def final_student_dir(data_dir: Path) -> Path:
    """The student that inference uses: OSIPO's when it exists, else SFT's."""
    paths = student_paths(data_dir)
    for key in ("osipo", "sft"):
        if paths[key].exists():
            return paths[key]
    raise FileNotFoundError(f"no trained student under {paths['root']}: run the sft stage first")


def run_inference(data_dir: Path, settings: Settings, user_ids: Sequence[int] | None = None,
                  model_dir: Path | None = None, decode: str = "constrained",
                  out_dir: Path | None = None, overwrite: bool = False,
                  progress: bool = True, engine: str | None = None) -> dict[str, Any]:
    """Student chains + representations for ``user_ids`` (default: every covered user) into
    ``out_dir`` (default DIR/student/chains), on ``engine`` (default ``student.infer_engine``:
    local, or Ray Data with the ``ray`` settings)."""
    from scaletot_features.reasoning.student_inference import write_student_chains

    data_dir = Path(data_dir)
    ids = list(user_ids) if user_ids is not None else covered_user_ids(data_dir)
    model_dir = Path(model_dir) if model_dir is not None else final_student_dir(data_dir)
    meter = ResourceMeter()
    with torch_threads(settings.student.torch_threads), meter.measure():
        summary = write_student_chains(
            data_dir, model_dir, ids, settings.taxonomy(), settings.profile_schema(),
            out_dir=out_dir, decode=decode, batch_size=settings.student.infer_batch_size,
            part_rows=settings.student.infer_part_users, overwrite=overwrite, progress=progress,
            engine=engine or settings.student.infer_engine, ray_config=settings.ray)
    return {**summary.as_dict(), "model_dir": str(model_dir), **meter.as_dict()}


# ---- all together ---------------------------------------------------------------------------


def train_student(data_dir: Path, settings: Settings, stages: Sequence[str] = STAGES,
                  progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the chosen sub-stages in order; each is skipped when its output exists (unless
    ``overwrite``). A stage that runs removes the outputs derived from its previous output (listed
    under ``"invalidated"``). Returns {stage: summary or {"skipped": reason}, ...}."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown student stages {unknown}; choose from {list(STAGES)}")
    data_dir = Path(data_dir)
    if "osipo" in stages and settings.student.osipo_max_steps > 0:
        check_osipo_outcome(data_dir, settings)  # before SFT spends anything
    paths = student_paths(data_dir)
    report: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "osipo" and settings.student.osipo_max_steps == 0:
            report[stage] = {"skipped": "osipo_max_steps is 0"}
            continue
        target = paths["chains"] if stage == "infer" else paths[stage]
        if target.exists() and not overwrite:
            report[stage] = {"skipped": f"{target} exists"}
            continue
        _invalidate_after(stage, paths, report)
        if stage == "infer":
            report[stage] = run_inference(data_dir, settings, overwrite=overwrite, progress=progress)
            write_json_atomic(report[stage], paths["chains_summary"])
            continue
        meter = ResourceMeter()
        with torch_threads(settings.student.torch_threads), meter.measure():
            if stage == "sft":
                summary = train_sft(data_dir, settings, progress=progress, overwrite=overwrite)
            else:
                summary = train_osipo(data_dir, settings, progress=progress, overwrite=overwrite)
        summary = {k: v for k, v in summary.items() if k != "log_history"}
        report[stage] = {**summary, **meter.as_dict()}
        _record_resources(paths[stage], meter)
        gc.collect()  # drop the stage's model and optimiser before the next stage loads its own
    return report


def _invalidate_after(stage: str, paths: dict[str, Path], report: dict[str, Any]) -> None:
    """A stage about to run makes what was derived from its old output stale: remove it
    (a new SFT student invalidates the OSIPO student and the chains; new OSIPO, the chains)."""
    import shutil

    later = {"sft": ("osipo", "chains", "chains_summary"), "osipo": ("chains", "chains_summary"),
             "infer": ()}[stage]
    for key in later:
        path = paths[key]
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            report.setdefault("invalidated", []).append(str(path))


def train_sft(data_dir: Path, settings: Settings, progress: bool = True,
              overwrite: bool = False) -> dict[str, Any]:
    from trainers.sft import train_sft as _train_sft

    return _train_sft(data_dir, settings, progress=progress, overwrite=overwrite)


def _record_resources(model_dir: Path, meter: ResourceMeter) -> None:
    """Add the stage's peak memory and wall time to its ``student.json``."""
    import json

    path = student_manifest(model_dir)
    meta = json.loads(path.read_text())
    meta.update(meter.as_dict())
    write_json_atomic(meta, path)
