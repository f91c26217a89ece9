"""Generation benchmark: throughput, peak memory and disk size of the synthetic population.

Each size runs in its own subprocess so its peak RSS is its own (read from the child's rusage via
``os.wait4``, which covers DuckDB's threads too). Memory must follow the chunk size, not the
population: 10 million users must stay under 1.5 GB. Writes benchmarks/results/generate.json
(atomically) and prints a table.

    .venv/bin/python benchmarks/generate.py --users 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEMORY_LIMIT_MB = 1536.0


def _worker(users: int, out: Path, chunk_size: int, seed: int) -> None:
    """Child process: generate, then print one JSON line with the timings."""
    from scaletot_features.data.synthetic import generate_population

    t0 = time.perf_counter()
    manifest = generate_population(out, users=users, seed=seed, chunk_size=chunk_size,
                                   progress=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "events": manifest["events"]}))


def _maxrss_mb(ru_maxrss: int) -> float:
    # Linux reports kilobytes, macOS bytes.
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def _bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run_one(users: int, chunk_size: int, seed: int, tmp_root: Path | None) -> dict:
    """Generate ``users`` in a fresh subprocess, reaped with os.wait4 so its own peak RSS is known."""
    with tempfile.TemporaryDirectory(prefix="scaletot-gen-", dir=tmp_root) as tmp:
        out = Path(tmp) / "data"
        out_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(users), str(out),
               str(chunk_size), str(seed)]
        t0 = time.perf_counter()
        with open(out_file, "w") as fout, tempfile.TemporaryFile("w+") as ferr:
            proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, cwd=REPO)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                ferr.seek(0)
                raise RuntimeError(f"generation of {users} users failed:\n{ferr.read()[-4000:]}")
        result = json.loads(out_file.read_text().strip().splitlines()[-1])
        disk = _bytes_on_disk(out)
    seconds = result["seconds"]
    rows = 3 * users + result["events"]  # profiles + labels + latent rows, plus events
    peak = _maxrss_mb(rusage.ru_maxrss)
    return {
        "users": users,
        "chunk_size": chunk_size,
        "seed": seed,
        "seconds": seconds,
        "wall_s_with_startup": wall,
        "events": result["events"],
        "users_per_s": users / seconds,
        "rows_written": rows,
        "rows_per_s": rows / seconds,
        "events_per_s": result["events"] / seconds,
        "peak_rss_mb": peak,
        "bytes_on_disk": disk,
        "mb_on_disk": disk / 1e6,
        "under_memory_limit": peak < MEMORY_LIMIT_MB,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_worker":
        users, out, chunk, seed = argv[1:5]
        _worker(int(users), Path(out), int(chunk), int(seed))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--chunk-size", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--tmp-dir", type=Path, default=None,
                    help="where the populations are generated (and deleted); default: system temp")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    import numpy
    import pyarrow

    from scaletot_features.data.io import write_json_atomic

    console = Console() if sys.stdout.isatty() else Console(width=120)
    runs = []
    for n in args.users:
        console.print(f"generating {n:,} users (chunk {args.chunk_size:,}) in a subprocess ...")
        runs.append(run_one(n, args.chunk_size, args.seed, args.tmp_dir))
    report = {
        "benchmark": "generate",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": numpy.__version__,
                    "pyarrow": pyarrow.__version__},
        "memory_limit_mb": MEMORY_LIMIT_MB,
        "rows_written_means": "profiles + labels + latent rows (3 per user) + event rows",
        "runs": runs,
    }
    path = write_json_atomic(report, args.out_dir / "generate.json")

    table = Table(title=f"synthetic generation ({os.cpu_count()} CPUs, chunk {args.chunk_size:,})")
    for col in ("users", "seconds", "users/s", "events", "rows/s", "peak RSS MB", "MB on disk"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(f"{r['users']:,}", f"{r['seconds']:.1f}", f"{r['users_per_s']:,.0f}",
                      f"{r['events']:,}", f"{r['rows_per_s']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                      f"{r['mb_on_disk']:,.1f}")
    console.print(table)
    console.print(f"wrote {path}")
    over = [r["users"] for r in runs if not r["under_memory_limit"]]
    if over:
        console.print(f"[red]peak RSS over {MEMORY_LIMIT_MB:.0f} MB for {over}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
