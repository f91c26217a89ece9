"""The command line as a user meets it: exit codes, messages, and the demo on the tiny preset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

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


def test_demo_on_the_tiny_preset_runs_and_reruns_quickly(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: tiny\nteacher: {model: tiny-random}\n")
    r = scaletot("demo", "--config", str(cfg), "--out-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "teach" in r.stderr and "24 chains" in r.stderr
    r2 = scaletot("demo", "--config", str(cfg), "--out-dir", str(tmp_path / "run"))
    assert r2.returncode == 0 and "skipped" in r2.stderr and "0 new" in r2.stderr
