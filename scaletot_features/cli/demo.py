"""The demo: every stage in pipeline order, each skipped when its output is already there.

It is a plain function over the stage functions, not a framework: read it top to bottom to see
what the pipeline does. It ends with the LTV comparison table and the report's path. It belongs to
the CLI layer (it runs the stages in ``trainers/`` and the gates in ``validation/``).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from scaletot_features.config import Settings
from scaletot_features.data.io import is_current, read_json
from scaletot_features.dataset import DatasetLayout, demo_data_dir, encoder_manifest


def run_demo(settings: Settings, console: Console) -> int:
    """Returns the process exit code: 0 when every implemented stage passed."""
    from scaletot_features.data.synthetic import generate_population
    from validation.gate import format_failures, validate_dataset

    out = Path(settings.out_dir)
    layout = DatasetLayout(demo_data_dir(out))
    t0 = time.perf_counter()

    console.rule(f"[bold]ScaleToT demo[/] preset={settings.preset} out={out}")
    if layout.manifest.exists():
        console.print(f"[dim]generate: {layout.root} exists, skipped[/]")
    else:
        g = settings.generate
        console.print(f"generate: {g.users:,} synthetic users (seed {g.seed})")
        generate_population(layout.root, users=g.users, seed=g.seed, chunk_size=g.chunk_size,
                            start_date=g.start_date, signup_window_days=g.signup_window_days,
                            horizon_days=settings.data.horizon_days)

    console.print("validate: sparse-profile suite (Great Expectations)")
    results = validate_dataset(layout.root, settings)
    for r in results:
        console.print(f"  {r.suite}: {'[green]passed[/]' if r.success else '[red]FAILED[/]'}")
    if not all(r.success for r in results):
        console.print(format_failures(results), highlight=False)
        if settings.validation.stop_on_failure:
            console.print("[red]the gate failed: later stages were not run[/]")
            return 1

    from trainers.teach import teach, teach_report

    tc = settings.teacher
    console.print(f"teach: {tc.model} teacher, {tc.scoring} scoring, {tc.search} search "
                  f"(tau={tc.tau}, width={tc.width}, max {tc.max_expansions} calls/user)")
    summary = teach(layout.root, settings)
    report = teach_report(layout.root)
    console.print(f"  {report['chains']} chains ({summary.written} new, {summary.skipped} "
                  f"already done, {report.get('reused', 0)} reusing an identical profile's "
                  f"chain), {report['failures']} failures; "
                  f"{report.get('mean_scoring_calls', 0):.1f} scoring calls and "
                  f"{report.get('mean_prompt_tokens', 0):.0f} tokens per user (reused at zero)")
    from trainers.audit import audit_lines

    for line in audit_lines(summary.audit):
        console.print(f"  {line}", highlight=False)
    if report.get("coverage_drift_success") is False:
        console.print("  [yellow]coverage subset drifts from the population "
                      f"(see {layout.teacher.drift})[/]")

    from trainers.student_stage import train_student

    console.print(f"train-student: {settings.student.model} (SFT, OSIPO, inference)")
    for name, summary in train_student(layout.root, settings).items():
        if name != "invalidated":
            console.print(f"  {name}: " + ("skipped" if "skipped" in summary else "done"))

    from scaletot_features.encoder import embed_population
    from trainers.distill_encoder import distill_encoder

    encoder = encoder_manifest(layout.encoder)
    if is_current(encoder, layout.student.chains):
        console.print("[dim]distill: encoder is current, skipped[/]")
    else:
        report = distill_encoder(layout.root, settings)
        console.print(f"distill: encoder {report['model_version']} on {report['users']} users; "
                      f"held-out {report['metrics'].get('test', {})}", highlight=False)
    features = layout.features.reasoning
    if is_current(features, encoder):
        console.print("[dim]embed: features are current, skipped[/]")
    else:
        report = embed_population(layout.root, settings)
        console.print(f"embed: {report['users']:,} users ({report['users_per_s']:,.0f} users/s)")

    from scaletot_features.store.repo import apply_repo
    from scaletot_features.store.materialize import materialize
    from validation.gate import reasoning_gate

    online = layout.feast.online_store
    if is_current(online, features):
        console.print("[dim]features: online store is current, skipped[/]")
    else:
        repo = apply_repo(layout.root, settings)
        report = materialize(layout.root, settings,
                             gate=reasoning_gate if settings.store.gate else None)
        console.print(f"features: applied {repo}, materialized {report['rows']:,} rows "
                      f"into {report['online_store']}")

    from trainers.evaluate import evaluate
    from trainers.report import print_tables

    results_path = layout.eval.results
    results = read_json(results_path) if is_current(results_path, online, features,
                                                    layout.student.chains) else None
    if results is not None and "targets" in results:  # older results name no targets: redo
        console.print("[dim]evaluate: results are current, skipped[/]")
    else:
        console.print(f"evaluate: LTV models ({len(settings.ltv.seeds)} seeds) on Feast features, "
                      "baselines, coverage sweep, report")
        results = evaluate(layout.root, settings, console)

    console.rule(f"done in {time.perf_counter() - t0:.1f} s")
    print_tables(results, console)
    return 0
