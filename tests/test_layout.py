"""The dataset contract has one owner: ``scaletot_features/dataset.py``.

The source walk fails when any other file spells a dataset path (a stage's folder or file name
joined onto a path, a table's part name, a run summary's name) or a per-state column pattern
(``T_prob``, ``T_probs``, ``T_entropy``, ``T_evidence``, the ``live_`` prefix). Each pattern
below is written to catch the spellings the code had before the contract existed, and nothing
else: a config key ``"teacher"``, a provenance value ``"student"``, a DuckDB view named
``profiles`` or a prediction column ``payer_prob`` are not dataset paths or state columns.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from scaletot_features import dataset as ds
from scaletot_features.taxonomy import DEFAULT_TAXONOMY

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("scaletot_features", "trainers", "validation", "feature_repo", "benchmarks")
OWNER = REPO / "scaletot_features" / "dataset.py"

# folder names of the dataset directory, of a stage's output, of the Feast folder, of eval
SEGMENTS = ("profiles", "events", "labels", "latent", "validation", "teacher", "student",
            "encoder", "features", "feast", "eval", "chains", "failures", "sft", "osipo",
            "reasoning", "sweep", "training", "lookalike")
# file (and table) names that only the dataset layout has
FILES = ("manifest.json", "coverage.parquet", "coverage_drift.json", "audit.json",
         "split.parquet", "chains_summary.json", "student.json", "model.safetensors",
         "reasoning_features", "registry.db", "online_store.db", "feature_store.yaml",
         "features.py", "results.json", "predictions.parquet", "frame.parquet", "frame.json",
         "profile_text_embedding.parquet", "targets.parquet", "summary.json", "report.md",
         "gain_curves.png", "coverage_uplift.png")
STATE_SUFFIXES = ("prob", "probs", "entropy", "evidence")

PATTERNS: dict[str, re.Pattern[str]] = {
    # data_dir / "student", root / 'chains', Path("features")
    "path segment": re.compile(r"""(?:/\s*|Path\()f?["'](?:%s)["']""" % "|".join(SEGMENTS)),
    # f"{data_dir}/profiles", "features/..."
    "path in a string": re.compile(r"""\}/(?:%s)\b|["'](?:%s)/""" % (("|".join(SEGMENTS),) * 2)),
    # "manifest.json", "features/reasoning_features" (the whole literal, or its last part)
    "file name": re.compile(r"""["'/](?:%s)["']""" % "|".join(re.escape(f) for f in FILES)),
    # f"part-{i:05d}.parquet", "part-*.parquet", f"chunk-{k:05d}", f"users-{n:07d}"
    "part or point name": re.compile(r"""f?["'](?:part|chunk|users)-[{*0-9]"""),
    # output.name + ".summary.json"; layout.validation / f"{suite}.json"
    "run summary or result name": re.compile(r"""["']\.summary\.json["']|\.validation\s*/"""),
    # f"{t}_prob", f"{prefix}{t.name}_probs", rec[f"{n.type}_entropy"]
    "state-column suffix": re.compile(r"""\}_(?:%s)\b""" % "|".join(STATE_SUFFIXES)),
    # REPO_DIRNAME = "feast", INDEX_DIRNAME = 'lookalike'
    "segment constant": re.compile(r"""^\s*[A-Z_]*(?:DIRNAME|DIR|TABLE|FOLDER|PATH)\s*=\s*["'](?:%s)["']""" % "|".join(SEGMENTS)),
    # "_probs", ("", "_prob", "_probs"), n.endswith("_probs")
    "state-column suffix literal": re.compile(r"""["']_(?:%s)["']""" % "|".join(STATE_SUFFIXES)),
    # a state column spelled out: "spending_power_probs"
    "state column": re.compile(r"""["'][a-z][a-z0-9_]*_(?:probs|entropy|evidence)["']"""),
    # the on-demand view's outputs: "live_embedding", f"live_{t}_prob"
    "live prefix": re.compile(r"""f?["']live_"""),
}


# not the dataset: where a benchmark writes its own result file (benchmarks/results/student.json)
ALLOWED = (re.compile(r"""["']benchmarks["']\s*/\s*["']results["']"""),)


def source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def spellings(path: Path) -> list[str]:
    """``line: pattern: text`` for every line of ``path`` that spells the contract."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0] if not re.search(r"""["'][^"']*#""", line) else line
        if any(a.search(code) for a in ALLOWED):
            continue
        for name, pattern in PATTERNS.items():
            if pattern.search(code):
                out.append(f"{i}: {name}: {line.strip()}")
    return out


def offenders() -> dict[str, list[str]]:
    found = {}
    for path in source_files():
        hits = spellings(path)
        if hits:
            found[str(path.relative_to(REPO))] = hits
    return found


def test_only_dataset_py_spells_the_contract():
    found = offenders()
    assert str(OWNER.relative_to(REPO)) in found, "the patterns no longer match dataset.py itself"
    others = {k: v for k, v in found.items() if Path(REPO / k) != OWNER}
    assert not others, "dataset paths or state-column patterns spelled outside dataset.py " \
        "(use scaletot_features.dataset):\n" + "\n".join(
            f"{k}:{h}" for k, hits in others.items() for h in hits)


@pytest.mark.parametrize("line", [
    'path = data_dir / "student" / "chains"',
    "REASONING_TABLE = Path(\"features\") / 'reasoning_features'",
    'return json.loads((DATA_DIR / "manifest.json").read_text())',
    'write_parquet_atomic(t, out / f"part-{n:05d}.parquet")',
    'chunk = root / f"chunk-{k:05d}"',
    'cols += [pa.field(f"{t}_prob", pa.float64())]',
    'col = f"{prefix}{t.name}_probs"',
    'for suffix in ("", "_prob", "_probs"):',
    'cols = ["user_id", "spending_power_probs"]',
    'Field(name=f"live_{t}", dtype=String)',
    'write_json_atomic(r, layout.validation / f"{r.suite}.json")',
    'REPO_DIRNAME = "feast"',
    'raise TargetsError(f"{data_dir}/profiles has duplicate user ids")',
])
def test_patterns_catch_the_old_spellings(line, tmp_path):
    f = tmp_path / "x.py"
    f.write_text(line + "\n")
    assert spellings(f), line


@pytest.mark.parametrize("line", [
    '"teacher": {"max_expansions": 8}',
    'rec = {"provenance": "student"}',
    'con.register("profiles", table)',
    '"revenue_pred": pred.revenue, "payer_prob": pred.payer_prob,',
    '__all__ = ["count_tail_prob", "positive_prob"]',
    'PROVENANCE = "encoder"',
    'out = work / "data"',
    'apply_repo(data, repo_dir=data / "feast_redis")',
    'ap.add_argument("--out", default=REPO / "benchmarks" / "results" / "student.json")',
    'default=REPO / "runs" / "bench" / "teacher_real"',
    '"""The folder whose ``features.py`` every repository copies (``T_probs``)."""',
])
def test_patterns_leave_other_strings_alone(line, tmp_path):
    f = tmp_path / "x.py"
    f.write_text(line + "\n")
    assert not spellings(f), line


# --------------------------------------------------------------------------- dataset.py itself


def test_layout_paths(tmp_path):
    layout = ds.DatasetLayout(tmp_path)
    assert layout.profiles == tmp_path / "profiles"
    assert layout.manifest == tmp_path / "manifest.json"
    assert layout.validation_result("labels") == tmp_path / "validation" / "labels.json"
    assert layout.teacher.coverage == tmp_path / "teacher" / "coverage.parquet"
    assert layout.teacher.chains == tmp_path / "teacher" / "chains"
    assert layout.teacher.drift == tmp_path / "teacher" / "coverage_drift.json"
    assert layout.teacher.audit == tmp_path / "teacher" / "audit.json"
    assert layout.teacher.chain_cache == tmp_path / "teacher" / "chain_cache"
    assert layout.student.split == tmp_path / "student" / "split.parquet"
    assert layout.student.chains == tmp_path / "student" / "chains"
    assert layout.student.chains_summary == tmp_path / "student" / "chains_summary.json"
    assert layout.student.model("osipo") == tmp_path / "student" / "osipo"
    assert layout.encoder == tmp_path / "encoder"
    assert ds.encoder_manifest(layout.encoder) == tmp_path / "encoder" / "manifest.json"
    assert layout.features.reasoning == tmp_path / "features" / "reasoning_features"
    assert layout.feast.registry == tmp_path / "feast" / "registry.db"
    assert layout.feast.online_store == tmp_path / "feast" / "online_store.db"
    assert layout.eval.results == tmp_path / "eval" / "results.json"
    chunk = layout.eval.chunk(3)
    assert chunk.chains == tmp_path / "eval" / "reasoning" / "chunk-00003" / "chains"
    point = layout.eval.sweep_point(120)
    assert point.targets == tmp_path / "eval" / "sweep" / "users-0000120" / "targets.parquet"
    assert point.encoder == point.root / "encoder" and point.features == point.root / "features"
    assert ds.part_file(tmp_path, 7) == tmp_path / "part-00007.parquet"
    assert ds.run_summary_path(layout.encoder) == tmp_path / "encoder.summary.json"


def test_state_column_naming():
    assert ds.state_columns("life_stage") == ("life_stage", "life_stage_prob", "life_stage_probs")
    assert ds.entropy_column("x") == "x_entropy" and ds.evidence_column("x") == "x_evidence"
    assert ds.live_column(ds.prob_column("x")) == "live_x_prob"
    names = ["user_id", "embedding", "a", "a_prob", "a_probs", "b_probs", "c", "c_probs"]
    assert ds.state_types(names) == ["a", "c"]  # b has no value column
    assert ds.is_probs_column("a_probs") and not ds.is_probs_column("a_prob")


def test_schemas_keep_their_columns():
    tax = DEFAULT_TAXONOMY
    t = tax.type_names[0]
    teacher = ds.teacher_chain_schema(tax)
    assert teacher.names[:3] == ["user_id", "event_timestamp", "chain_text"]
    assert teacher.names[3:8] == [t, f"{t}_prob", f"{t}_entropy", f"{t}_evidence", f"{t}_probs"]
    assert teacher.names[-9:] == ["provenance", "model_id", "scoring", "search", "logp",
                                  "scoring_calls", "branched_nodes", "prompt_tokens", "seconds"]
    cache = ds.teacher_chain_cache_schema(tax)
    assert cache.names[:4] == ["key", "teacher_key", "profile_text", "chain_text"]
    assert cache.names[4:8] == [t, f"{t}_prob", f"{t}_entropy", f"{t}_probs"]  # evidence: per user
    assert cache.names[-9:] == teacher.names[-9:]
    student = ds.student_chain_schema(tax)
    assert student.names[:6] == ["user_id", "chain_text", "valid", "error", t, f"{t}_prob"]
    assert student.names[-4:] == ["representation", "segment_representations", "provenance",
                                  "model_id"]
    target = ds.distill_target_schema(tax)
    assert target.names == [n for n in student.names if n != "segment_representations"]
    feats = ds.reasoning_feature_schema(tax)
    assert feats.names == (["user_id", "event_timestamp", "embedding"]
                           + [c for n in tax.type_names for c in ds.state_columns(n)]
                           + ["provenance", "model_version"])
    assert feats.field("embedding").type == pa.list_(pa.float32())
    assert ds.label_schema(90).names == ["user_id", "first_seen", "label_timestamp", "lt90",
                                         "revenue_90"]


def test_embedding_dim_of_an_encoder_folder_and_of_a_table(tmp_path):
    import json

    import pyarrow.parquet as pq

    enc = tmp_path / "enc"
    enc.mkdir()
    ds.encoder_manifest(enc).write_text(json.dumps({"format": "scaletot-encoder", "dim": 12}))
    assert ds.embedding_dim(enc) == 12
    table = tmp_path / "table"
    table.mkdir()
    pq.write_table(pa.table({"embedding": pa.array([None, None], pa.list_(pa.float32()))}),
                   ds.part_file(table, 0))
    assert ds.embedding_dim(table) == 0  # no embedding yet
    pq.write_table(pa.table({"embedding": pa.array([None, [0.5] * 7], pa.list_(pa.float32()))}),
                   ds.part_file(table, 1))
    assert ds.embedding_dim(table) == 7  # the first non-null one, in part order
    dataset_dir = tmp_path / "data"
    dataset_dir.mkdir()
    ds.encoder_manifest(dataset_dir).write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(ValueError, match="not an encoder manifest"):
        ds.embedding_dim(dataset_dir)
    with pytest.raises(FileNotFoundError, match="neither"):
        ds.embedding_dim(tmp_path / "empty")
