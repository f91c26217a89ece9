"""Repeated profiles benchmark: `teach` on the same covered users with dedup off, dedup on, and
a second run served by the chain cache.

A synthetic population (the project's generator, 20,000 users by default: 14,943 distinct
profile texts) and a coverage capped at ``--users``; each arm teaches its own copy of the
dataset with the same teacher (packaged SmolLM2 by default, one loaded model, prefix cache
cleared before each arm). Reports users/s (teach's own clock: calibration and search), scoring
calls (the ToT budget's unit and the backend's counter), prompt tokens, searched vs reused
users, and how many searches identical texts save at the full default coverage (7.32%, counted
without the LLM). Writes JSON and prints a table.

    .venv/bin/python benchmarks/teach_dedup.py --users 200 --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaletot_features.config import build_settings  # noqa: E402
from scaletot_features.data.io import read_table, write_json_atomic  # noqa: E402
from scaletot_features.dataset import DatasetLayout  # noqa: E402
from scaletot_features.reasoning.coverage import select_coverage  # noqa: E402

ARMS = (  # name, teacher.dedup, teacher.chain_cache, rerun after --overwrite
    ("dedup off", False, False, False),
    ("dedup on", True, True, False),
    ("cached rerun", True, True, True),
)


def distinct_texts(data: Path, settings, max_users: int | None) -> tuple[int, int]:
    """(covered users, distinct profile texts among them) for a coverage cap (None: the full
    default fraction)."""
    c, schema = settings.coverage, settings.profile_schema()
    layout = DatasetLayout(data)
    chosen = select_coverage(layout.profiles, schema, c.fraction, c.strata, c.seed, max_users)
    profiles = read_table(layout.profiles)
    rows = profiles.filter(pc.is_in(profiles.column("user_id"), value_set=chosen.column("user_id")))
    texts = Counter(schema.to_text(r, settings.teacher.profile_style) for r in rows.to_pylist())
    return rows.num_rows, len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="dataset directory (default: generate one)")
    ap.add_argument("--population", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=200, help="covered users taught per arm")
    ap.add_argument("--model", default="packaged")
    ap.add_argument("--scoring", default="calibrated")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "teach_dedup.json")
    args = ap.parse_args()

    from scaletot_features.data.synthetic import generate_population
    from scaletot_features.llm.hf import TransformersBackend
    from trainers.teach import clear_teacher_output, teach

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    data = args.data
    if data is None:
        data = work / "population"
        generate_population(data, users=args.population, seed=0, chunk_size=10_000,
                            progress=False)

    def settings(dedup: bool, cache: bool):
        return build_settings("demo", {
            "coverage": {"max_users": args.users},
            "teacher": {"model": args.model, "scoring": args.scoring, "dedup": dedup,
                        "chain_cache": cache, "torch_threads": args.threads}})

    console = Console(width=140)
    base = settings(True, True)
    covered, distinct = distinct_texts(data, base, args.users)
    full_users, full_distinct = distinct_texts(data, base, None)
    console.print(f"[dim]{covered} covered users, {distinct} distinct texts; at the full "
                  f"coverage {full_users} users, {full_distinct} distinct texts[/]")

    backend = TransformersBackend(args.model, batch_size=base.teacher.batch_size)
    runs = []
    for name, dedup, cache, rerun in ARMS:
        target = work / ("on" if dedup else "off")
        if rerun:
            clear_teacher_output(target)  # what `teach --overwrite` does: the cache stays
        else:
            shutil.copytree(data, target)
        s = settings(dedup, cache)
        backend.clear_prefix_cache()
        before = backend.usage.snapshot()
        console.print(f"[dim]{name} ...[/]")
        t0 = time.perf_counter()
        summary = teach(target, s, backend=backend, progress=False)
        wall = time.perf_counter() - t0
        used = backend.usage.snapshot() - before
        runs.append({
            "arm": name, "dedup": dedup, "chain_cache": cache, "users": summary.written,
            "failed": summary.failed, "searched": summary.computed, "reused": summary.reused,
            "cache_hits": summary.cache_hits, "scoring_calls": summary.scoring_calls,
            "scoring_calls_per_user": summary.scoring_calls_per_user,
            "scoring_calls_per_searched": summary.scoring_calls_per_computed,
            "prompt_tokens": summary.prompt_tokens,
            "backend_scoring_calls": used.scoring_calls,  # calibration included
            "backend_prompt_tokens": used.prompt_tokens,
            "teach_seconds": summary.seconds, "wall_seconds": wall,
            "users_per_s": summary.written / summary.seconds,
            # the same work per search in every arm: differences are other jobs on the cores
            "seconds_per_searched": summary.seconds / summary.computed if summary.computed
            else None,
        })

    off, on = runs[0], runs[1]
    result = {
        "model": backend.model_id, "scoring": args.scoring, "search": base.teacher.search,
        "max_expansions": base.teacher.max_expansions, "threads": args.threads,
        "population": args.population if args.data is None else None,
        "covered_users": covered, "distinct_texts": distinct,
        "full_coverage_users": full_users, "full_coverage_distinct_texts": full_distinct,
        "runs": runs,
        "speedup_users_per_s": on["users_per_s"] / off["users_per_s"],
        "scoring_call_ratio": off["scoring_calls"] / max(on["scoring_calls"], 1),
        "full_coverage_search_ratio": full_users / full_distinct,
    }
    write_json_atomic(result, args.out)

    table = Table(title=f"teach on {covered} covered users ({distinct} distinct texts), "
                        f"{backend.model_id}, {args.scoring}")
    for col in ("arm", "searched", "reused", "cache hits", "scoring calls", "calls/user",
                "calls/searched", "prompt tokens", "teach s", "users/s"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(r["arm"], str(r["searched"]), str(r["reused"]), str(r["cache_hits"]),
                      str(r["scoring_calls"]), f"{r['scoring_calls_per_user']:.2f}",
                      f"{r['scoring_calls_per_searched']:.2f}", str(r["prompt_tokens"]),
                      f"{r['teach_seconds']:.1f}", f"{r['users_per_s']:.2f}")
    console.print(table)
    console.print(f"dedup on / off: {result['speedup_users_per_s']:.3f}x users/s, "
                  f"{result['scoring_call_ratio']:.3f}x fewer scoring calls; at the full "
                  f"coverage ({full_users} users) identical texts would save "
                  f"{full_users - full_distinct} searches "
                  f"({result['full_coverage_search_ratio']:.3f}x). JSON: {args.out}")


if __name__ == "__main__":
    main()
