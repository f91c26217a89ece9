"""Encoder benchmark: end-to-end embedding throughput and peak memory (local and Ray), the
encoder's achieved FLOP/s against a plain torch matmul in the same run, and distillation fidelity.

Steps (all real, on this machine):

1. generate a synthetic population of ``--users`` (default 1M) users;
2. targets: the teacher stage with the tiny random LLM on a coverage subset (``--coverage-users``)
   and that LLM's mean-pooled hidden states over each chain, unless ``--targets`` names a table
   (e.g. ``DIR/student/chains`` of a real run). The tiny random LLM's targets exercise the
   pipeline; they say nothing about how well a real student transfers;
3. distil the encoder (the demo preset: dim 64, hidden 128, no text embedding) and read its
   held-out fidelity (typed agreement with the targets vs the majority class; cosine and R^2 to
   the projected representation);
4. embed every user with each engine in its own subprocess: parquet in, parquet out. Peak memory:
   local = the child's ru_maxrss (``os.wait4``); Ray = the largest sampled sum of RSS over the
   child and all its descendants (raylet, GCS, workers; shared object-store pages are counted
   once per process that maps them, so it over-counts);
5. FLOP/s: a 2048^3 fp32 matmul, the encoder's dense layers alone on one featurised batch, and
   end to end (users/s x dense FLOPs per user), all with the same torch thread count.

The machine's 2 cores are shared with other sessions: timings are noisy, and the load average at
start and end is recorded. Writes benchmarks/results/encoder.json (atomically) and prints a table.

    .venv/bin/python benchmarks/encoder.py --users 1000000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaletot_features.dataset import ENCODER, DatasetLayout  # noqa: E402
from scaletot_features.runtime import torch_threads  # noqa: E402

TARGET_USERS_PER_S = 100_000


def _maxrss_mb(ru_maxrss: int) -> float:
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


# --------------------------------------------------------------------------- worker (child)


def _worker(engine: str, data: str, encoder: str, out: str, batch_size: int) -> None:
    from scaletot_features.config import build_settings
    from scaletot_features.encoder import embed_population

    s = build_settings("demo")
    s.encoder.ray_tmpdir = str(Path(out).parent / "ray-tmp")
    summary = embed_population(Path(data), s, engine=engine, progress=False,
                               batch_size=batch_size, encoder_folder=Path(encoder), out=Path(out))
    print(json.dumps(summary))


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def run_engine(engine: str, data: Path, encoder: Path, work: Path, batch_size: int) -> dict:
    """One end-to-end embedding in a fresh subprocess; its time, rows and peak memory."""
    out = work / f"features-{engine}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", engine, str(data),
           str(encoder), str(out), str(batch_size)]
    peak_tree = [0.0]
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak_tree[0] = max(peak_tree[0], _tree_rss_mb(proc.pid))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, rusage = os.wait4(proc.pid, 0)
        stop.set()
        sampler.join()
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            ferr.seek(0)
            raise RuntimeError(f"{engine} embedding failed:\n{ferr.read()[-4000:]}")
        fout.seek(0)
        summary = json.loads(fout.read().strip().splitlines()[-1])
    from scaletot_features.data.io import count_rows

    rows = count_rows(out)
    return {
        "engine": engine,
        "users": summary["users"],
        "rows_written": rows,
        "parts": summary["parts"],
        "batch_size": batch_size,
        "seconds": summary["seconds"],
        "users_per_s": summary["users"] / summary["seconds"],
        "wall_s_with_startup": wall,
        "peak_rss_mb_process": _maxrss_mb(rusage.ru_maxrss),
        "peak_rss_mb_tree_sampled": peak_tree[0],
        "peak_memory_mb": (_maxrss_mb(rusage.ru_maxrss) if engine == "local" else peak_tree[0]),
        "output_mb": sum(p.stat().st_size for p in out.glob("*.parquet")) / 1e6,
    }


# --------------------------------------------------------------------------- FLOP/s


def flops(encoder_dir: Path, data: Path, batch_size: int, threads: int) -> dict[str, Any]:
    """Plain matmul vs the encoder's dense layers, same thread count, best of several runs."""
    import torch

    from scaletot_features.data.io import iter_batches
    from scaletot_features.encoder import load_encoder

    with torch_threads(threads):
        n = 2048
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        matmul = 2 * n ** 3 / best

        enc, _ = load_encoder(encoder_dir, device="cpu")
        batch = next(iter_batches(DatasetLayout(data).profiles, batch_size))
        t0 = time.perf_counter()
        feats = enc.featurizer.transform(batch)
        featurise_s = time.perf_counter() - t0
        per_row = enc.net.shape.flops_per_row()
        best = float("inf")
        with torch.inference_mode():
            for _ in range(5):
                t0 = time.perf_counter()
                enc.net(feats)
                best = min(best, time.perf_counter() - t0)
        rows = batch.num_rows
        return {"threads": threads, "matmul_shape": [n, n, n], "matmul_flop_per_s": matmul,
                "encoder_flops_per_user": per_row, "forward_rows": rows,
                "forward_users_per_s": rows / best, "forward_flop_per_s": per_row * rows / best,
                "forward_fraction_of_matmul": per_row * rows / best / matmul,
                "featurise_users_per_s": rows / featurise_s}


# --------------------------------------------------------------------------- main


def build_encoder(data: Path, work: Path, coverage_users: int, targets: Path | None) -> dict:
    from scaletot_features.config import build_settings
    from scaletot_features.llm.hf import TransformersBackend
    from trainers.distill_encoder import chain_targets, distill_encoder
    from trainers.teach import load_chains, teach

    s = build_settings("demo", {
        "teacher": {"model": "tiny-random", "scoring": "calibrated", "search": "greedy",
                    "checkpoint_every": 64},
        "coverage": {"max_users": coverage_users},
    })
    t0 = time.perf_counter()
    provenance = "given table"
    if targets is None:
        # the tiny LLM's small matmuls: far faster on 1 thread here
        with torch_threads(1):
            backend = TransformersBackend("tiny-random", device="cpu")
            teach(data, s, backend=backend, progress=False)
            targets = work / "targets"
            chain_targets(data, load_chains(data), backend, targets, s.taxonomy())
        provenance = "teacher chains (tiny random LLM) + its hidden states"
    teach_s = time.perf_counter() - t0
    summary = distill_encoder(data, s, targets=targets, progress=False, out=work / ENCODER)
    test = summary["metrics"]["test"]
    return {"targets": str(targets), "targets_made_from": provenance, "targets_seconds": teach_s,
            "distill_seconds": summary["seconds"], "covered_users": summary["users"],
            "split": summary["split"], "best_epoch": summary["best_epoch"],
            "held_out": {k: test.get(k) for k in ("users", "typed_agreement", "majority_agreement",
                                                  "cosine", "r2", "typed_agreement_by_type",
                                                  "majority_agreement_by_type")},
            "model_version": summary["model_version"]}


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"encoder: {result['users']:,} users, {result['machine']['cpus']} cores "
                    f"(load avg {result['machine']['load_start']:.1f} -> "
                    f"{result['machine']['load_end']:.1f}, shared)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for r in result["engines"]:
        ok = "ok" if r["users_per_s"] >= TARGET_USERS_PER_S else "below"
        t.add_row(f"{r['engine']}: users/s end to end (target {TARGET_USERS_PER_S:,}: {ok})",
                  f"{r['users_per_s']:,.0f}")
        t.add_row(f"{r['engine']}: seconds / wall with start-up",
                  f"{r['seconds']:.1f} / {r['wall_s_with_startup']:.1f}")
        t.add_row(f"{r['engine']}: peak memory MB", f"{r['peak_memory_mb']:,.0f}")
        t.add_row(f"{r['engine']}: batch / rows written / parts / MB",
                  f"{r['batch_size']:,} / {r['rows_written']:,} / {r['parts']} / "
                  f"{r['output_mb']:,.0f}")
    f = result["flops"]
    t.add_row(f"plain matmul 2048^3 GFLOP/s ({f['threads']} thread)",
              f"{f['matmul_flop_per_s'] / 1e9:,.1f}")
    t.add_row("encoder dense FLOPs per user", f"{f['encoder_flops_per_user']:,}")
    t.add_row("encoder forward GFLOP/s (fraction of matmul)",
              f"{f['forward_flop_per_s'] / 1e9:,.1f} ({f['forward_fraction_of_matmul']:.1%})")
    for r in result["engines"]:
        t.add_row(f"{r['engine']}: end-to-end GFLOP/s (fraction of matmul)",
                  f"{r['flop_per_s'] / 1e9:,.2f} ({r['fraction_of_matmul']:.1%})")
    h = result["distillation"]["held_out"]
    t.add_row("held-out covered users", f"{h['users']}")
    t.add_row("held-out typed agreement (majority class)",
              f"{h['typed_agreement']:.3f} ({h['majority_agreement']:.3f})")
    t.add_row("held-out cosine / R^2 to projected representation",
              f"{h['cosine']:.3f} / {h['r2']:.3f}")
    Console(width=120).print(t)


def _prepare(work: Path, users: int, seed: int, coverage_users: int, targets: Path | None,
             batch_size: int | None) -> None:
    """Child: population, targets, distillation and FLOP/s; prints one JSON line."""
    import torch

    from scaletot_features.config import build_settings
    from scaletot_features.data.synthetic import generate_population

    data = work / "data"
    t0 = time.perf_counter()
    generate_population(data, users=users, seed=seed, chunk_size=100_000, progress=False)
    generate_s = time.perf_counter() - t0
    distillation = build_encoder(data, work, coverage_users, targets)
    cfg = build_settings("demo").encoder
    threads = cfg.embed_threads or torch.get_num_threads()
    fl = flops(work / ENCODER, data, batch_size or cfg.embed_batch_size, threads)
    print(json.dumps({"generate_seconds": generate_s, "distillation": distillation, "flops": fl,
                      "cuda": torch.cuda.is_available(),
                      "batch": {"local": batch_size or cfg.embed_batch_size,
                                "ray": batch_size or cfg.ray_batch_size}}))


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=REPO,
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="users per batch (default: the encoder config's embed_batch_size for "
                         "local, ray_batch_size for Ray)")
    ap.add_argument("--coverage-users", type=int, default=200)
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--targets", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoder.json")
    ap.add_argument("--_worker", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--_prepare", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        engine, data, encoder, out, bs = args._worker
        _worker(engine, data, encoder, out, int(bs))
        return
    if args._prepare:
        _prepare(args._prepare, args.users, args.seed, args.coverage_users, args.targets,
                 args.batch_size)
        return

    # This process stays small (no torch, no data): a child's ru_maxrss on Linux starts from
    # the RSS of the process that forked it, so the heavy steps run in children too.
    import importlib.metadata

    from scaletot_features.data.io import write_json_atomic

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scaletot-enc-", dir=args.work) as tmp:
        work = Path(tmp)
        prep_args = ["--_prepare", str(work), "--users", str(args.users), "--seed", str(args.seed),
                     "--coverage-users", str(args.coverage_users)]
        if args.targets:
            prep_args += ["--targets", str(args.targets)]
        if args.batch_size:
            prep_args += ["--batch-size", str(args.batch_size)]
        prep = _child(prep_args)
        fl = prep["flops"]
        engines = []
        for engine in args.engines:
            if engine == "ray" and importlib.util.find_spec("ray") is None:
                print("ray is not installed: skipping the Ray engine (pip install -e '.[scale]')")
                continue
            r = run_engine(engine, work / "data", work / ENCODER, work, prep["batch"][engine])
            r["flop_per_s"] = r["users_per_s"] * fl["encoder_flops_per_user"]
            r["fraction_of_matmul"] = r["flop_per_s"] / fl["matmul_flop_per_s"]
            engines.append(r)

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    result = {
        "benchmark": "encoder",
        "users": args.users,
        "seed": args.seed,
        "generate_seconds": prep["generate_seconds"],
        "target_users_per_s": TARGET_USERS_PER_S,
        "text_embedding": False,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": version("torch"),
                    "pyarrow": version("pyarrow"), "ray": version("ray"), "cuda": prep["cuda"],
                    "load_start": load_start, "load_end": os.getloadavg()[0],
                    "note": "2 cores shared with other sessions: timings are noisy"},
        "distillation": prep["distillation"],
        "flops": fl,
        "engines": engines,
    }
    write_json_atomic(result, args.out)
    print_table(result)


if __name__ == "__main__":
    main()
