"""The dataset directory: every stage's paths, the Arrow schemas of its tables, the column names.

This is the one module that knows the layout; every stage, the validation suites, the Feast
definitions and the benchmarks ask it for a path or a schema instead of spelling one::

    DIR/
      manifest.json             generate / ingest: profile schema, label names and source, counts
      profiles/ events/ labels/ latent/      part-*.parquet tables (latent: synthetic only)
      validation/<suite>.json   Great Expectations results
      teacher/                  coverage.parquet, chains/, failures/, coverage_drift.json,
                                audit.json
                                calibration_cost.json
                                chain_cache/ (chains by profile text + teacher key, across runs)
      student/                  split.parquet, sft/ and osipo/ (model folders with student.json),
                                chains/, chains_summary.json
      encoder/                  the encoder artifact: model.safetensors + manifest.json
      features/reasoning_features/           the batch embedding, every user
      feast/                    the Feast repository: feature_store.yaml, features.py,
                                registry.db, online_store.db, lookalike/, training/
      eval/                     results.json, predictions.parquet, report.md, plots, frame.*,
                                reasoning/chunk-*/ (chains/, summary.json),
                                sweep/users-*/ (targets.parquet, encoder/, features/),
                                stage-teacher/ (encoder/, features/),
                                stage-sft/ (chains/, encoder/, features/)
      bench/<name>/             benchmarks that work on a dataset

A table is a folder of ``part-00000.parquet``, ``part-00001.parquet``, ... (:func:`part_file`);
a stage's run summary sits beside its output (:func:`run_summary_path`).

Per state type ``T`` of the taxonomy, the tables name their columns ``T`` (the value), ``T_prob``
(its probability), ``T_probs`` (the distribution in taxonomy order), and the teacher's also
``T_entropy`` and ``T_evidence``; the on-demand feature view prefixes its outputs with ``live_``.

Users are split (train / val / test, holdouts, samples, orders) by one seeded hash of the user id,
:func:`user_hash01`: a split never depends on row order, process or platform.

Nothing here writes a file, and only :func:`embedding_dim` reads one (a manifest, or the first
row groups of a table): ``data/io.py`` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pyarrow as pa

from scaletot_features.profile import ID_COLUMN, TIMESTAMP_COLUMN, TIMESTAMP_TYPE

if TYPE_CHECKING:  # pragma: no cover
    from scaletot_features.taxonomy import Taxonomy

SCHEMA_VERSION = 1
"""The dataset format version, recorded in every manifest (the dataset's, the encoder's)."""

# --------------------------------------------------------------------------- names on disk

MANIFEST = "manifest.json"
PROFILES, EVENTS, LABELS, LATENT, VALIDATION = "profiles", "events", "labels", "latent", "validation"
TEACHER, STUDENT, ENCODER, FEATURES, FEAST, EVAL, BENCH = (
    "teacher", "student", "encoder", "features", "feast", "eval", "bench")
REASONING_TABLE = "reasoning_features"
"""The batch embedding's table under ``DIR/features/`` (its validation suite has its name)."""
STUDENT_MANIFEST = "student.json"
"""Written into every student model folder: stage, base model, training summary."""
ENCODER_MANIFEST = MANIFEST
ENCODER_WEIGHTS = "model.safetensors"
FEAST_CONFIG = "feature_store.yaml"
FEAST_DEFINITIONS = "features.py"
REGISTRY_FILE, ONLINE_STORE_FILE = "registry.db", "online_store.db"
"""Relative to the Feast repository folder, as its ``feature_store.yaml`` names them."""
DEMO_DATA = "data"
"""The demo's dataset directory inside its ``out_dir``."""

PART_GLOB = "part-*.parquet"
"""Every part of a table folder (the hidden temporary files of atomic writes never match)."""


def part_file(directory: Path | str, index: int) -> Path:
    """The ``index``-th part of a table folder: ``part-00000.parquet``, ..."""
    return Path(directory) / f"part-{index:05d}.parquet"


def run_summary_path(output: Path | str) -> Path:
    """Where a stage leaves the summary of the run that wrote ``output`` (wall time, counts):
    a sibling ``<name>.summary.json``, outside the output so that readers of the output (Feast's
    glob, manifests compared for reproducibility) never see it."""
    output = Path(output)
    return output.with_name(output.name + ".summary.json")


def partial_dir(output: Path | str) -> Path:
    """Where a resumable stage builds ``output`` (a table folder): a hidden sibling
    ``.<name>.partial`` that survives a killed run and becomes ``output`` when the run ends."""
    output = Path(output)
    return output.with_name(f".{output.name}.partial")


def encoder_manifest(folder: Path | str) -> Path:
    """The manifest of an encoder artifact folder (``DIR/encoder`` or any other)."""
    return Path(folder) / ENCODER_MANIFEST


def encoder_weights(folder: Path | str) -> Path:
    return Path(folder) / ENCODER_WEIGHTS


def student_manifest(model_dir: Path | str) -> Path:
    """The manifest of a student model folder (``DIR/student/sft``, ``.../osipo``)."""
    return Path(model_dir) / STUDENT_MANIFEST


def demo_data_dir(out_dir: Path | str) -> Path:
    return Path(out_dir) / DEMO_DATA


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class TeacherLayout:
    """``DIR/teacher``: the coverage subset, its chains and failures, the drift check, the audit."""

    root: Path

    @property
    def coverage(self) -> Path:
        return self.root / "coverage.parquet"

    @property
    def chains(self) -> Path:
        return self.root / "chains"

    @property
    def failures(self) -> Path:
        return self.root / "failures"

    @property
    def drift(self) -> Path:
        return self.root / "coverage_drift.json"

    @property
    def audit(self) -> Path:
        return self.root / "audit.json"

    @property
    def calibration(self) -> Path:
        """What the per-taxonomy calibration cost, summed over runs (not part of any user's cost)."""
        return self.root / "calibration_cost.json"

    @property
    def chain_cache(self) -> Path:
        """The default content-addressed chain cache (``teacher.chain_cache: true``): chains
        keyed by profile text and teacher configuration, reused across runs; ``--overwrite``
        keeps it."""
        return self.root / "chain_cache"


STUDENT_MODELS = ("sft", "osipo")


@dataclass(frozen=True)
class StudentLayout:
    """``DIR/student``: the held-out split, the model folders, the chains and their summary."""

    root: Path

    @property
    def split(self) -> Path:
        return self.root / "split.parquet"

    def model(self, stage: str) -> Path:
        """The model folder a training stage writes (``sft`` or ``osipo``)."""
        if stage not in STUDENT_MODELS:
            raise ValueError(f"no student model folder for stage {stage!r} (one of {STUDENT_MODELS})")
        return self.root / stage

    @property
    def sft(self) -> Path:
        return self.model("sft")

    @property
    def osipo(self) -> Path:
        return self.model("osipo")

    @property
    def chains(self) -> Path:
        return self.root / "chains"

    @property
    def chains_summary(self) -> Path:
        return self.root / "chains_summary.json"


@dataclass(frozen=True)
class FeaturesLayout:
    """``DIR/features``: the batch feature tables."""

    root: Path

    @property
    def reasoning(self) -> Path:
        return self.root / REASONING_TABLE


@dataclass(frozen=True)
class FeastLayout:
    """A Feast repository folder (``DIR/feast`` unless another is given)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / FEAST_CONFIG

    @property
    def definitions(self) -> Path:
        return self.root / FEAST_DEFINITIONS

    @property
    def registry(self) -> Path:
        return self.root / REGISTRY_FILE

    @property
    def online_store(self) -> Path:
        return self.root / ONLINE_STORE_FILE

    @property
    def lookalike(self) -> Path:
        """The FAISS lookalike index folder."""
        return self.root / "lookalike"

    @property
    def training_features(self) -> Path:
        """Where a historical retrieval lands when no output is given."""
        return self.root / "training" / "features.parquet"


@dataclass(frozen=True)
class ReasoningChunk:
    """One checkpointed chunk of the evaluation's student inference."""

    root: Path

    @property
    def chains(self) -> Path:
        return self.root / "chains"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


@dataclass(frozen=True)
class EncoderPoint:
    """An encoder distilled for an evaluation row, and the features it writes for everyone."""

    root: Path

    @property
    def encoder(self) -> Path:
        return self.root / ENCODER

    @property
    def features(self) -> Path:
        return self.root / FEATURES


@dataclass(frozen=True)
class UsersPoint(EncoderPoint):
    """A sweep point: an encoder distilled on some users' targets (and its features)."""

    @property
    def targets(self) -> Path:
        return self.root / "targets.parquet"


def users_point(root: Path | str, users: int) -> UsersPoint:
    """The point for ``users`` users under ``root`` (``users-0000120``)."""
    return UsersPoint(Path(root) / f"users-{users:07d}")


STAGE_ROWS = ("teacher", "sft")
"""The evaluation's stage ablations: an encoder distilled from the teacher's chains (no student),
and one from the SFT student's chains (no OSIPO)."""


@dataclass(frozen=True)
class StageRow(EncoderPoint):
    """A stage ablation's own encoder (and its features), and the chains it learns from when it
    writes them (the SFT student's)."""

    @property
    def chains(self) -> Path:
        return self.root / "chains"


@dataclass(frozen=True)
class EvalLayout:
    """``DIR/eval``: the LTV comparison's frame, caches, results and report."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def gain_curves(self) -> Path:
        return self.root / "gain_curves.png"

    @property
    def coverage_uplift(self) -> Path:
        return self.root / "coverage_uplift.png"

    @property
    def frame(self) -> Path:
        """The point-in-time training frame pulled through Feast."""
        return self.root / "frame.parquet"

    @property
    def frame_info(self) -> Path:
        """Which service the frame came from and the profile-only service's features."""
        return self.root / "frame.json"

    @property
    def profile_text_embedding(self) -> Path:
        return self.root / "profile_text_embedding.parquet"

    @property
    def reasoning(self) -> Path:
        """The student inference chunks for users outside the student stage's chains."""
        return self.root / "reasoning"

    def chunk(self, index: int) -> ReasoningChunk:
        return ReasoningChunk(self.reasoning / f"chunk-{index:05d}")

    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    def sweep_point(self, users: int) -> UsersPoint:
        return users_point(self.sweep, users)

    def stage_row(self, stage: str) -> StageRow:
        """``stage-teacher`` or ``stage-sft`` (:data:`STAGE_ROWS`)."""
        if stage not in STAGE_ROWS:
            raise ValueError(f"no stage row {stage!r} (one of {STAGE_ROWS})")
        return StageRow(self.root / f"stage-{stage}")


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset directory keeps every stage's output."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def profiles(self) -> Path:
        return self.root / PROFILES

    @property
    def events(self) -> Path:
        return self.root / EVENTS

    @property
    def labels(self) -> Path:
        return self.root / LABELS

    @property
    def latent(self) -> Path:
        """Latent truth of a synthetic population: evaluation only, no model may read it."""
        return self.root / LATENT

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def validation(self) -> Path:
        return self.root / VALIDATION

    def validation_result(self, suite: str) -> Path:
        """A suite's result: suite names double as the result file names."""
        return self.validation / f"{suite}.json"

    @property
    def teacher(self) -> TeacherLayout:
        return TeacherLayout(self.root / TEACHER)

    @property
    def student(self) -> StudentLayout:
        return StudentLayout(self.root / STUDENT)

    @property
    def encoder(self) -> Path:
        """The encoder artifact folder (see :func:`encoder_manifest`)."""
        return self.root / ENCODER

    @property
    def features(self) -> FeaturesLayout:
        return FeaturesLayout(self.root / FEATURES)

    @property
    def feast(self) -> FeastLayout:
        return FeastLayout(self.root / FEAST)

    @property
    def eval(self) -> EvalLayout:
        return EvalLayout(self.root / EVAL)

    def bench(self, name: str) -> Path:
        """A benchmark's working folder inside the dataset."""
        return self.root / BENCH / name


# --------------------------------------------------------------------------- state columns


def value_column(type_name: str) -> str:
    """The chosen value of state type ``type_name``."""
    return type_name


def prob_column(type_name: str) -> str:
    """The chosen value's probability."""
    return f"{type_name}_prob"


def probs_column(type_name: str) -> str:
    """The distribution over the type's values, in taxonomy order."""
    return f"{type_name}_probs"


def entropy_column(type_name: str) -> str:
    """The teacher's entropy at the type's node."""
    return f"{type_name}_entropy"


def evidence_column(type_name: str) -> str:
    """The profile fields the teacher's node cites."""
    return f"{type_name}_evidence"


def state_columns(type_name: str) -> tuple[str, str, str]:
    """Value, probability, distribution: what the encoder writes and Feast serves per type."""
    return value_column(type_name), prob_column(type_name), probs_column(type_name)


def is_probs_column(name: str) -> bool:
    return name.endswith(probs_column(""))


def state_types(column_names: Iterable[str]) -> list[str]:
    """The state types a table's columns hold (a distribution column and its value column), in
    the order of the distribution columns."""
    names = list(column_names)
    present = set(names)
    cut = len(probs_column(""))
    return [n[:-cut] for n in names if is_probs_column(n) and n[:-cut] in present]


LIVE_PREFIX = "live_"
"""The on-demand feature view's outputs: ``live_embedding``, ``live_T``, ``live_T_prob``, ..."""


def live_column(name: str) -> str:
    return LIVE_PREFIX + name


EMBEDDING = "embedding"


def live_columns(type_names: Iterable[str]) -> list[str]:
    """Every output of the on-demand view, in order: the embedding, then per type its columns."""
    return [live_column(EMBEDDING)] + [live_column(c) for t in type_names
                                       for c in state_columns(t)]


# --------------------------------------------------------------------------- the user-hash split

_GOLDEN = 0x9E3779B97F4A7C15

SPLIT_USES: dict[str, int] = {
    "gate_sample": 0,         # validation/gate: the id-hash sample of a big table
    "coverage": 1_000_003,    # reasoning/coverage: the order within a stratum
    "student_holdout": 0,     # trainers/sft: the student's holdout (an exact count)
    "encoder_test": 0,        # trainers/distill_encoder: test, when there is no student holdout
    "encoder_val": 7919,      # trainers/distill_encoder: early-stopping users
    "eval_test": 31337,       # trainers/evaluate: the LTV comparison's test users
    "eval_order": 17,         # trainers/evaluate: who the LLM reasons about first
    "ltv_val": 104729,        # trainers/ltv: the LTV model's early-stopping users
    "encoder_folds": 52711,   # benchmarks/encoder_text: the cross-fitting folds of covered users
    "few_shot": 611953,       # trainers/few_shot: which labelled users the teacher is shown
    "calibration": 27644437,  # trainers/teach: the profiles batch calibration averages over
}
"""Every split of users by id, and the offset its configured seed gets. Splits drawn with the
same seed and the same offset are the same split: the coverage subset (the lowest hashes of each
stratum) at offset 0 would have been held out whole by the encoder's ``hash < 0.2`` test split."""


def user_hash01(user_ids: Iterable[int] | np.ndarray, seed: int = 0,
                use: str | None = None) -> np.ndarray:
    """A uniform number in [0, 1) per user id: splitmix64 of ``id + golden * (s + 1)`` where
    ``s = seed + SPLIT_USES[use]`` (``use`` None: ``s = seed``).

    Every split of users by id is built on this one hash (a fraction: :func:`hash_mask`; an
    order: :func:`hash_order`), so it is deterministic across processes and platforms (no
    Python ``hash()``), independent of row order, and a copy of a duplicated id always lands
    on the same side. Different seeds (or uses) give unrelated splits of the same users.
    """
    if use is not None and use not in SPLIT_USES:
        raise ValueError(f"unknown split use {use!r}; known: {sorted(SPLIT_USES)}")
    s = int(seed) + (SPLIT_USES[use] if use is not None else 0)
    ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    offset = np.uint64((_GOLDEN * (s + 1)) % 2**64)
    with np.errstate(over="ignore"):
        z = ids.view(np.uint64) + offset
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def hash_mask(user_ids: Iterable[int] | np.ndarray, fraction: float, seed: int = 0,
              use: str | None = None) -> np.ndarray:
    """True for about ``fraction`` of the users, chosen by :func:`user_hash01` (binomial count)."""
    return user_hash01(user_ids, seed, use) < fraction


def hash_order(user_ids: Iterable[int] | np.ndarray, seed: int = 0,
               use: str | None = None) -> np.ndarray:
    """The indices that put the users in :func:`user_hash01` order (ties by id): the first
    ``k`` of it is an exact-size sample that grows by nesting as ``k`` grows."""
    ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    return np.lexsort((ids, user_hash01(ids, seed, use)))


# --------------------------------------------------------------------------- label columns

LABEL_TIMESTAMP = "label_timestamp"
"""When a user's label becomes known: the labels' Feast timestamp (point-in-time joins)."""
FIRST_SEEN = "first_seen"
"""Event-derived labels only: the user's first-seen time, where the horizon starts."""
LABELS_FROM_EVENTS, LABELS_FROM_FILE = "events", "file"
"""A manifest's ``label_source``: derived from the events (``lt{H}``, ``revenue_{H}``, the
default) or read from a labels file (``ingest --labels``: the file's outcome columns)."""


def label_names(horizon_days: int = 30) -> tuple[str, str]:
    """The label columns derived from events at a horizon: active days ``lt{H}`` and revenue
    ``revenue_{H}``."""
    return f"lt{horizon_days}", f"revenue_{horizon_days}"


def label_source(manifest: dict) -> str:
    """Where a dataset's labels came from (manifests before labels files: the events)."""
    return str(manifest.get("label_source", LABELS_FROM_EVENTS))


# --------------------------------------------------------------------------- evaluation columns


def prediction_column(target: str) -> str:
    """``DIR/eval/predictions``: a target's point prediction (its expected value)."""
    return f"{target}_pred"


def truth_column(target: str) -> str:
    """``DIR/eval/predictions``: a target's realised value."""
    return f"{target}_true"


def auc_score_column(target: str, auc: str) -> str:
    """``DIR/eval/predictions``: the score a target's AUC reads (``payer``: p(value > 0);
    ``retained``: p(count >= threshold))."""
    return f"{target}_{auc}_score"


# --------------------------------------------------------------------------- schemas


EVENTS_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("value", pa.float64(), nullable=True),
])
"""The events table of a dataset directory, generated or ingested alike."""


def label_schema(horizon_days: int = 30) -> pa.Schema:
    """``DIR/labels`` derived from events: one row per user (definitions in ``data/labels.py``)."""
    active, revenue = label_names(horizon_days)
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema([
        pa.field(ID_COLUMN, pa.int64(), nullable=False),
        pa.field(FIRST_SEEN, ts, nullable=False),
        pa.field(LABEL_TIMESTAMP, ts, nullable=False),
        pa.field(active, pa.int32(), nullable=False),
        pa.field(revenue, pa.float64(), nullable=False),
    ])


def file_label_schema(outcomes: Iterable[str]) -> pa.Schema:
    """``DIR/labels`` read from a labels file: user, label time, each outcome as float64 (null:
    this user's outcome is unknown)."""
    return pa.schema([pa.field(ID_COLUMN, pa.int64(), nullable=False),
                      pa.field(LABEL_TIMESTAMP, pa.timestamp("us", tz="UTC"), nullable=False)]
                     + [pa.field(name, pa.float64(), nullable=True) for name in outcomes])


def latent_schema(taxonomy: Taxonomy) -> pa.Schema:
    """``DIR/latent``: user_id + one string column per state type (evaluation only)."""
    return pa.schema([pa.field(ID_COLUMN, pa.int64(), nullable=False)]
                     + [pa.field(value_column(t), pa.string(), nullable=False)
                        for t in taxonomy.type_names])


def _chosen_fields(taxonomy: Taxonomy) -> list[pa.Field]:
    """Per type, the chosen value and its probability (every chain table has these)."""
    return [f for t in taxonomy.type_names
            for f in (pa.field(value_column(t), pa.string()), pa.field(prob_column(t), pa.float64()))]


def teacher_chain_schema(taxonomy: Taxonomy) -> pa.Schema:
    """``DIR/teacher/chains``: one row per finished user, chain columns then cost columns."""
    cols = [pa.field("user_id", pa.int64(), nullable=False),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("chain_text", pa.string())]
    for t in taxonomy.type_names:
        cols += [pa.field(value_column(t), pa.string()), pa.field(prob_column(t), pa.float64()),
                 pa.field(entropy_column(t), pa.float64()),
                 pa.field(evidence_column(t), pa.list_(pa.string())),
                 pa.field(probs_column(t), pa.list_(pa.float64()))]
    cols += [pa.field("provenance", pa.string()), pa.field("model_id", pa.string()),
             pa.field("scoring", pa.string()), pa.field("search", pa.string()),
             pa.field("logp", pa.float64()), pa.field("scoring_calls", pa.int32()),
             pa.field("branched_nodes", pa.int32()), pa.field("prompt_tokens", pa.int64()),
             pa.field("seconds", pa.float64())]
    return pa.schema(cols)


TEACHER_USER_COLUMNS = ("user_id", "event_timestamp")
"""What a teacher chain row has of its user; :func:`teacher_chain_cache_schema` stores the rest,
less the evidence (the fields present in the user's own profile row)."""
TEACHER_COST_COLUMNS = ("scoring_calls", "prompt_tokens", "seconds")
"""A chain row's cost: what this run spent on this user (zero where its chain was reused)."""


def teacher_chain_cache_schema(taxonomy: Taxonomy) -> pa.Schema:
    """``DIR/teacher/chain_cache`` (or ``teacher.chain_cache``'s folder): one row per distinct
    (profile text, teacher key): the content key, the teacher key, the text, then the chain
    columns of :func:`teacher_chain_schema` without the user's id, timestamp and evidence; the
    cost columns hold what the chain cost when it was computed."""
    keep = [f for f in teacher_chain_schema(taxonomy)
            if f.name not in TEACHER_USER_COLUMNS
            and f.name not in {evidence_column(t) for t in taxonomy.type_names}]
    return pa.schema([pa.field("key", pa.string(), nullable=False),
                      pa.field("teacher_key", pa.string(), nullable=False),
                      pa.field("profile_text", pa.string())] + keep)


TEACHER_FAILURE_SCHEMA = pa.schema([pa.field("user_id", pa.int64()),
                                    pa.field("reason", pa.string())])
"""``DIR/teacher/failures``: users whose chain could not be produced or validated, with why."""


STUDENT_SPLIT_SCHEMA = pa.schema([pa.field("user_id", pa.int64(), nullable=False),
                                  pa.field("split", pa.string(), nullable=False)])
"""``DIR/student/split.parquet``: ``train`` or ``holdout`` per covered user."""


def student_chain_schema(taxonomy: Taxonomy, segment_representations: bool = True) -> pa.Schema:
    """``DIR/student/chains``: one row per user, valid or not, with the LLM's representations.

    Without ``segment_representations`` it is the distillation's target table
    (:func:`distill_target_schema`): the subset of a student chain the encoder learns from.
    """
    cols = [pa.field(ID_COLUMN, pa.int64(), nullable=False), pa.field("chain_text", pa.string()),
            pa.field("valid", pa.bool_()), pa.field("error", pa.string())]
    cols += _chosen_fields(taxonomy)
    cols += [pa.field("representation", pa.list_(pa.float32()))]
    if segment_representations:
        cols += [pa.field("segment_representations", pa.list_(pa.list_(pa.float32())))]
    cols += [pa.field("provenance", pa.string()), pa.field("model_id", pa.string())]
    return pa.schema(cols)


def distill_target_schema(taxonomy: Taxonomy) -> pa.Schema:
    """The targets ``trainers.distill_encoder.chain_targets`` writes: a student chain table
    without the per-segment representations."""
    return student_chain_schema(taxonomy, segment_representations=False)


def reasoning_feature_schema(taxonomy: Taxonomy) -> pa.Schema:
    """``DIR/features/reasoning_features``: per user the embedding, per type value, probability
    and distribution, and provenance (the embedding's length is checked by the validation suite)."""
    cols = [pa.field(ID_COLUMN, pa.int64(), nullable=False),
            pa.field(TIMESTAMP_COLUMN, TIMESTAMP_TYPE, nullable=False),
            pa.field(EMBEDDING, pa.list_(pa.float32()))]
    for t in taxonomy.types:
        cols += [pa.field(value_column(t.name), pa.string()),
                 pa.field(prob_column(t.name), pa.float64()),
                 pa.field(probs_column(t.name), pa.list_(pa.float64()))]
    cols += [pa.field("provenance", pa.string()), pa.field("model_version", pa.string())]
    return pa.schema(cols)


def embedding_dim(path: Path | str) -> int:
    """The embedding size of an encoder artifact folder or of a reasoning-features table folder.

    An encoder folder answers with its manifest's ``dim``; a table (``part-*.parquet``) with the
    length of its first non-null ``embedding`` (0 when every row's is null). Anything else is
    refused: ``FileNotFoundError`` for a folder that is neither, ``ValueError`` for a manifest
    that is not an encoder's (a dataset's ``manifest.json`` has no ``dim``).
    """
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    manifest = encoder_manifest(path)
    if manifest.exists():
        dim = json.loads(manifest.read_text()).get("dim")
        if not isinstance(dim, int):
            raise ValueError(f"{manifest} is not an encoder manifest (no integer 'dim')")
        return dim
    parts = sorted(path.glob(PART_GLOB))
    if not parts:
        raise FileNotFoundError(f"{path} is neither an encoder artifact nor a table of "
                                f"{PART_GLOB} parts")
    for part in parts:
        f = pq.ParquetFile(part)
        for group in range(f.num_row_groups):
            column = f.read_row_group(group, columns=[EMBEDDING]).column(0)
            lengths = pc.drop_null(pc.list_value_length(column))
            if len(lengths):
                return int(lengths[0].as_py())
    return 0
