"""The command line as a user meets it: exit codes, messages, and the demo on the tiny preset."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def scaletot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "scaletot_features.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def test_bad_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher: {tau: 3}\n")
    r = scaletot("config", "--config", str(cfg))
    assert r.returncode == 2 and "teacher.tau" in r.stderr


def test_generate_validate_and_a_corrupted_set(tmp_path):
    out = tmp_path / "pop"
    assert scaletot("generate", "--out", str(out), "--users", "1500", "--seed", "3").returncode == 0
    again = scaletot("generate", "--out", str(out), "--users", "1500")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert scaletot("validate", str(out)).returncode == 0
    part = next((out / "profiles").glob("part-*.parquet"))
    table = pq.read_table(part)
    sessions = table.column("first_day_sessions").to_pylist()
    sessions[0] = -1.0
    table = table.set_column(table.schema.get_field_index("first_day_sessions"),
                             "first_day_sessions", [sessions])
    pq.write_table(table, part)
    r = scaletot("validate", str(out))
    assert r.returncode == 1 and "first_day_sessions" in r.stderr
    assert (out / "validation" / "sparse_profile.json").exists()


def test_validate_refuses_a_non_dataset(tmp_path):
    r = scaletot("validate", str(tmp_path))
    assert r.returncode == 2 and "manifest.json" in r.stderr


def test_distill_from_the_teacher_refuses_a_dataset_without_teacher_chains(tiny_population):
    r = scaletot("distill", str(tiny_population), "--from", "teacher", "--preset", "tiny")
    assert r.returncode == 2 and "no teacher chains" in r.stderr and "teach" in r.stderr
    bad = scaletot("distill", str(tiny_population), "--from", "oracle", "--preset", "tiny")
    assert bad.returncode == 2 and "--from" in bad.stderr


def test_a_teacher_only_pipeline_distils_embeds_and_evaluates(population_copy):
    data = str(population_copy)
    assert scaletot("teach", data, "--preset", "tiny", "--model", "tiny-random").returncode == 0
    r = scaletot("distill", data, "--from", "teacher", "--preset", "tiny")
    assert r.returncode == 0 and "trained from the teacher on 24 users" in r.stderr, r.stderr
    assert scaletot("embed", data, "--preset", "tiny").returncode == 0
    r = scaletot("evaluate", data, "--preset", "tiny")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "DIR/encoder was distilled from the teacher" in r.stderr
    results = json.loads((population_copy / "eval" / "results.json").read_text())
    assert [x["set"] for x in results["summary"]] == ["A", "A-gbdt", "B", "C-teacher", "oracle"]
    assert math.isfinite(results["summary"][3]["all.revenue_30.gini"])


def test_demo_on_the_tiny_preset_runs_and_reruns_quickly(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: tiny\nteacher: {model: tiny-random}\n")
    r = scaletot("demo", "--config", str(cfg), "--out-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "teach" in r.stderr and "24 chains" in r.stderr
    # it ends with the comparison table and the report, from real Feast features
    assert "LTV comparison" in r.stderr and "report: " in r.stderr
    ev = tmp_path / "run" / "data" / "eval"
    for name in ("report.md", "gain_curves.png", "coverage_uplift.png", "predictions.parquet"):
        assert (ev / name).stat().st_size > 0, name
    results = json.loads((ev / "results.json").read_text())
    sets = {(r["block"], r["set"]) for r in results["summary"]}
    assert {("main", k) for k in ("A", "A-gbdt", "B", "C-teacher", "C-SFT", "C", "oracle")} <= sets
    # the stage ablations: finite metrics, and each its own cost (the teacher's 24 users; C-SFT
    # also the SFT student's training and its inference on the covered users)
    rows = {r["set"]: r for r in results["summary"] if r["block"] == "main"}
    for key in ("C-teacher", "C-SFT"):
        for m in ("all.revenue_30.gini", "all.lt30.gini", "all.revenue_30.auc", "all.lt30.auc"):
            assert math.isfinite(rows[key][m]), (key, m)
        cost = results["costs"][key]
        assert cost["teacher_users"] == 24 and cost["teacher_seconds"] > 0
        assert 0 < cost["encoder_seconds"] < 120
    assert results["costs"]["C-teacher"]["student_users"] == 0
    sft = results["costs"]["C-SFT"]
    assert sft["student_users"] == 24 and sft["student_seconds"] > 0
    assert 0 < sft["student_training_seconds"] < results["costs"]["C"]["student_training_seconds"]
    assert {("upper_bound", k) for k in ("A", "A-gbdt", "C", "D")} <= sets  # D on its sample
    assert {k for b, k in sets if b == "sweep"} == {"C@12", "C@24", "C@48"}
    assert results["costs"]["D"]["student_users"] == results["upper_bound_users"] == 100
    assert results["costs"]["C@48"]["student_users"] == 48
    md = (ev / "report.md").read_text()
    assert "A: profile only" in md and "## Cost of each feature set" in md
    assert "C-teacher: + encoder from the teacher" in md and "Stage ablations" in md
    stages = {p: p.stat().st_mtime_ns for k in ("teacher", "sft")
              for p in (ev / f"stage-{k}").rglob("*")}
    assert any(p.name == "model.safetensors" for p in stages)
    # every student-reasoned user has a chain, the covered ones from the student stage
    chunks = sorted((ev / "reasoning").glob("chunk-*/chains"))
    assert sum(pq.read_metadata(p).num_rows for c in chunks for p in c.glob("*.parquet")) == 100 - 24
    r2 = scaletot("demo", "--config", str(cfg), "--out-dir", str(tmp_path / "run"))
    assert r2.returncode == 0 and "skipped" in r2.stderr and "0 new" in r2.stderr
    assert "evaluate: results are current, skipped" in r2.stderr and "LTV comparison" in r2.stderr
    # D for EVERY user joins the main table; finished inference chunks are reused, not redone
    first_chunk = ev / "reasoning" / "chunk-00000"
    stamp = first_chunk.stat().st_mtime
    cfg2 = tmp_path / "every.yaml"
    cfg2.write_text("preset: tiny\nteacher: {model: tiny-random}\n"
                    "ltv: {upper_bound_fraction: 1.0, coverage_sweep: [0.012]}\n")
    r3 = scaletot("evaluate", str(tmp_path / "run" / "data"), "--config", str(cfg2))
    assert r3.returncode == 0, r3.stdout + r3.stderr
    results = json.loads((ev / "results.json").read_text())
    main = [r["set"] for r in results["summary"] if r["block"] == "main"]
    assert main[:7] == ["A", "A-gbdt", "B", "C-teacher", "C-SFT", "C", "D"]
    assert "upper_bound" not in {r["block"] for r in results["summary"]}
    assert results["costs"]["D"]["student_users"] == results["users"] == 2000
    assert first_chunk.stat().st_mtime == stamp
    # the stage rows' chains, encoders and features are reused, not redone
    assert {p: p.stat().st_mtime_ns for p in stages} == stages
    assert "D: + LLM reasoning, every user" in r3.stdout


def test_evaluate_on_a_dataset_without_reasoning_and_a_bad_slice(population_copy, tmp_path):
    # a dataset straight from generate/ingest: no teacher, no encoder: A and B only (+ reference)
    r = scaletot("evaluate", str(population_copy), "--preset", "tiny")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "only A and B are compared" in r.stderr
    results = json.loads((population_copy / "eval" / "results.json").read_text())
    assert {r["set"] for r in results["summary"]} == {"A", "A-gbdt", "B", "oracle"}
    assert "A: profile only" in r.stdout and "report: " in r.stdout
    # the boosted-tree baseline beside A: finite metrics, its fit seconds, and uplifts read
    # against whichever of A and A-gbdt has the better validation Gini
    gbdt = next(r for r in results["summary"] if r["set"] == "A-gbdt")
    for key in ("all.revenue_30.gini", "all.revenue_30.auc", "all.lt30.gini", "all.lt30.auc",
                "validation.revenue_30.gini", "validation.lt30.gini"):
        assert math.isfinite(gbdt[key]), key
    assert 0 < gbdt["fit_seconds"] < 60
    rows = {r["set"]: r for r in results["summary"]}
    assert [(t["name"], t["kind"], t["auc"]) for t in results["targets"]] == [
        ("revenue_30", "ziln", "payer"), ("lt30", "hurdle_count", "retained")]
    for t in ("revenue_30", "lt30"):
        best = max(("A", "A-gbdt"), key=lambda k: rows[k][f"validation.{t}.gini"])
        assert results["uplift_base"]["main"][t] == best
        assert rows["B"][f"all.{t}.gini.uplift"] == pytest.approx(
            rows["B"][f"all.{t}.gini"] - rows[best][f"all.{t}.gini"])
    md = (population_copy / "eval" / "report.md").read_text()
    assert "A-gbdt: profile only, boosted trees" in md and "chosen per target" in md
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: tiny\nltv: {low_activity: 'sessions_on_day_one = 0'}\n")
    bad = scaletot("evaluate", str(population_copy), "--config", str(cfg))
    assert bad.returncode == 2 and "ltv.low_activity" in bad.stderr
    assert "sessions_on_day_one" in bad.stderr
