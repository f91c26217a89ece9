"""The stage ablations of the LTV comparison: does each LLM stage earn its place? (DESIGN.md 4.10)

Beside C (A + the default pipeline's encoder: teacher -> SFT -> OSIPO -> student chains ->
encoder), two rows take a stage away:

- **C-teacher**: A + the features of an encoder distilled straight from the teacher's chains
  (typed-state distributions only: no student, no representation; ``distill --from teacher``).
  If it matches C, the student stages do not pay for themselves on this data.
- **C-SFT**: A + the features of an encoder distilled from the SFT student's chains (no OSIPO):
  the SFT model reasons about the covered users, then the usual student distillation. C minus
  C-SFT is what OSIPO adds.

Each row's chains, encoder and features live in ``DIR/eval/stage-*`` (``dataset.StageRow``) and
are reused while they are newer than their inputs and the encoder was distilled with the same
``encoder`` settings, so a rerun redoes nothing. A row appears only when its inputs exist
(teacher chains; an SFT student beside an OSIPO one: without OSIPO, C already is the SFT row).
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import pyarrow as pa
from rich.console import Console

from scaletot_features.config import Settings
from scaletot_features.data.io import is_current, read_json, read_table, write_json_atomic
from scaletot_features.dataset import (
    DatasetLayout,
    StageRow,
    encoder_manifest,
    run_summary_path,
    student_manifest,
)
from scaletot_features.profile import ID_COLUMN
from scaletot_features.taxonomy import Taxonomy
from trainers.distill_encoder import Source
from trainers.eval_features import (
    EvaluationError,
    FeatureSet,
    align,
    prompt_tokens,
    reasoning_matrix,
    teacher_cost,
)


def encoder_from_teacher(data_dir: Path) -> bool:
    """True when ``DIR/encoder`` was distilled from the teacher (``distill --from teacher``):
    its features are C-teacher's kind, and it has no projection for D's representations."""
    manifest = encoder_manifest(DatasetLayout(data_dir).encoder)
    return manifest.exists() and read_json(manifest).get("provenance") == "teacher"


def encoder_current(folder: Path, settings: Settings, *inputs: Path) -> bool:
    """The encoder in ``folder`` is newer than ``inputs``, has its run summary, and was
    distilled with these ``encoder`` settings."""
    if not (is_current(folder, *inputs) and run_summary_path(folder).exists()
            and encoder_manifest(folder).exists()):
        return False
    recorded = read_json(encoder_manifest(folder)).get("training", {}).get("settings")
    return recorded == settings.encoder.model_dump(mode="json")


def distilled_features(data_dir: Path, settings: Settings, row: StageRow, source: Source,
                       targets: Path) -> dict[str, float]:
    """Distil ``row.encoder`` from ``targets`` and embed every user into ``row.features``,
    each only when stale; the seconds each took (from its run summary)."""
    from scaletot_features.encoder import embed_population
    from trainers.distill_encoder import distill_encoder

    fresh = not encoder_current(row.encoder, settings, targets)
    if fresh:
        distill_encoder(data_dir, settings, targets=targets, out=row.encoder, progress=False,
                        source=source)
    if fresh or not is_current(row.features, row.encoder, DatasetLayout(data_dir).profiles):
        embed_population(data_dir, settings, encoder_folder=row.encoder, out=row.features,
                         progress=False)
    return {name: float(read_json(run_summary_path(path))["seconds"])
            for name, path in (("distill", row.encoder), ("embed", row.features))}


def features_matrix(path: Path, ids: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """A features table's encoder columns in the frame's user order (every user must be there)."""
    table = read_table(path)
    rows, theirs = align(table, ids)
    if len(rows) != len(ids):
        raise EvaluationError(f"{path} lacks {len(ids) - len(rows)} users")
    return reasoning_matrix(table.take(pa.array(theirs)), taxonomy)


def sft_chains(data_dir: Path, settings: Settings, row: StageRow, users: np.ndarray,
               console: Console, progress: bool) -> float:
    """The SFT student's chains for ``users`` in ``row.chains`` (redone when older than the SFT
    model or for other users); the inference seconds."""
    from trainers.student_stage import run_inference

    sft = DatasetLayout(data_dir).student.sft
    summary = run_summary_path(row.chains)
    if not (is_current(row.chains, sft) and summary.exists()
            and sorted(read_table(row.chains, columns=[ID_COLUMN]).column(ID_COLUMN).to_pylist())
            == sorted(users.tolist())):
        console.print(f"  C-SFT: the SFT student reasons about {len(users):,} covered users")
        result = run_inference(data_dir, settings, user_ids=users.tolist(), model_dir=sft,
                               out_dir=row.chains, overwrite=True, progress=progress)
        write_json_atomic(result, summary)
    return float(read_json(summary)["seconds"])


def stage_sets(data_dir: Path, settings: Settings, ids: np.ndarray, covered: np.ndarray,
               console: Console, progress: bool) -> list[FeatureSet]:
    """C-teacher and C-SFT, where their inputs exist, with the cost of each."""
    layout = DatasetLayout(data_dir)
    taxonomy = settings.taxonomy()
    teacher = teacher_cost(data_dir)
    sets = []
    if layout.teacher.chains.exists():
        row = layout.eval.stage_row("teacher")
        spent = distilled_features(data_dir, settings, row, "teacher", layout.teacher.chains)
        console.print(f"  C-teacher: encoder from {teacher['teacher_users']:,} teacher chains "
                      f"(distil {spent['distill']:.1f} s, embed {spent['embed']:.1f} s)")
        sets.append(FeatureSet(
            "C-teacher", f"C-teacher: + encoder from the teacher ({teacher['teacher_users']:,} "
            "LLM users, no student)", features_matrix(row.features, ids, taxonomy),
            {**teacher, "student_users": 0, "coverage": teacher["teacher_users"] / len(ids),
             "encoder_seconds": round(sum(spent.values()), 1)}))
    else:
        console.print("  no teacher chains: row C-teacher is left out (run teach)")
    if layout.student.sft.exists() and layout.student.osipo.exists() and len(covered):
        row = layout.eval.stage_row("sft")
        row.root.mkdir(parents=True, exist_ok=True)
        seconds = sft_chains(data_dir, settings, row, covered, console, progress)
        spent = distilled_features(data_dir, settings, row, "student", row.chains)
        console.print(f"  C-SFT: encoder from the SFT student's chains (distil "
                      f"{spent['distill']:.1f} s, embed {spent['embed']:.1f} s)")
        sft_meta = read_json(student_manifest(layout.student.sft))
        n = len(covered)
        sets.append(FeatureSet(
            "C-SFT", f"C-SFT: + encoder from the SFT student ({n:,} LLM users, no OSIPO)",
            features_matrix(row.features, ids, taxonomy),
            {**teacher, "student_training_seconds": round(float(sft_meta.get("wall_seconds")
                                                                or 0.0), 1),
             "student_users": n, "student_calls": n * (1 + len(taxonomy.types)),
             "student_tokens": int(prompt_tokens(data_dir, settings, covered).sum()),
             "student_seconds": round(seconds, 1), "coverage": n / len(ids),
             "encoder_seconds": round(sum(spent.values()), 1)}))
    elif layout.student.sft.exists():
        console.print("  no OSIPO student: C is the SFT student's row, C-SFT is left out")
    return sets

