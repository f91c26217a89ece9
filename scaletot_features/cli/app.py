"""The ``scaletot`` command line: one command per pipeline stage, in pipeline order.

With ``demo.py`` beside it, this is the CLI layer: the only part of the library that imports
``trainers/`` and ``validation/``. Every command exits 0 on success, 1 when a gate fails, 2 on
bad input or configuration, with a message that names the file, key or column at fault.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from scaletot_features.config import ConfigError, Settings, load_settings
from scaletot_features.dataset import DatasetLayout

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ScaleToT features: LLM-derived reasoning features for low-activity users, served by Feast.",
)
console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config overriding the preset.")
PresetOpt = typer.Option(None, "--preset", "-p", help="tiny | demo | full (default: demo).")


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _require_dataset(data_dir: Path) -> None:
    if not DatasetLayout(data_dir).manifest.exists():
        _fail(f"{data_dir} is not a dataset directory (no manifest.json); run generate or ingest")


def _settings(config: Optional[Path], preset: Optional[str]) -> Settings:
    try:
        return load_settings(config, preset)
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable; keeps type checkers calm


@app.command("config")
def show_config(config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt) -> None:
    """Print the resolved configuration as YAML (preset + file)."""
    import yaml

    s = _settings(config, preset)
    typer.echo(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False))


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory to create."),
    users: Optional[int] = typer.Option(None, "--users", "-n", help="Population size."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s"),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Users per parquet part."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Generate a synthetic low-activity population (profiles, events, labels, latent truth)."""
    from scaletot_features.data.synthetic import generate_population

    s = _settings(config, preset)
    g = s.generate
    try:
        manifest = generate_population(
            out,
            users=users or g.users,
            seed=g.seed if seed is None else seed,
            chunk_size=chunk_size or g.chunk_size,
            start_date=g.start_date,
            signup_window_days=g.signup_window_days,
            horizon_days=s.data.horizon_days,
            overwrite=overwrite,
        )
    except FileExistsError as e:
        _fail(str(e))
    console.print(f"wrote {manifest['users']:,} users and {manifest['events']:,} events to {out}")


@app.command()
def ingest(
    profiles: Path = typer.Option(..., "--profiles", help="Profiles table (parquet or CSV)."),
    events: Optional[Path] = typer.Option(
        None, "--events", help="Events table (parquet or CSV); labels are derived from it "
        "unless --labels is given."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Labels you already have (parquet or CSV): user_id, optional "
        "label_timestamp, outcome columns (ltv.targets names them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Validate your own profiles with events and/or a labels file, and write the dataset layout
    (labels: the file's outcome columns, else derived from the events)."""
    from scaletot_features.data.ingest import IngestError
    from scaletot_features.data.ingest import ingest as run_ingest

    import warnings

    s = _settings(config, preset)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = run_ingest(
                profiles,
                events,
                out,
                schema=s.profile_schema(),
                horizon_days=s.data.horizon_days,
                min_timestamp=s.data.min_timestamp,
                max_timestamp=s.data.max_timestamp,
                overwrite=overwrite,
                taxonomy=s.taxonomy(),
                labels=labels,
                targets=s.ltv.targets,
            )
    except (IngestError, FileExistsError) as e:
        _fail(str(e))
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    what = f"{manifest['events']:,} events" if events is not None else "no events"
    console.print(f"ingested {manifest['users']:,} users and {what} into {out}; labels "
                  f"{manifest['label_names']} from {'the labels file' if labels else 'the events'}",
                  highlight=False)


@app.command()
def validate(
    data_dir: Path = typer.Argument(..., help="Dataset directory (from generate or ingest)."),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Run the sparse-profile gate (Great Expectations); exit 1 naming failed expectations."""
    from validation.gate import format_failures, validate_dataset

    s = _settings(config, preset)
    _require_dataset(data_dir)
    results = validate_dataset(data_dir, s)
    for r in results:
        mark = "[green]passed[/]" if r.success else "[red]FAILED[/]"
        console.print(f"{r.suite}: {mark}")
    console.print(f"results written to {DatasetLayout(data_dir).validation}")
    if not all(r.success for r in results):
        console.print(format_failures(results), highlight=False)
        if s.validation.stop_on_failure:
            raise typer.Exit(1)


@app.command()
def teach(
    data_dir: Path = typer.Argument(..., help="Dataset directory (validated)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard earlier teacher output."),
    model: Optional[str] = typer.Option(
        None, "--model", help="smollm2-135m (packaged), qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, "
        "gemma3-270m, tiny-random or a local folder."),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="label | calibrated | channel | chat | factored"),
    search: Optional[str] = typer.Option(None, "--search", help="entropy | greedy | beam"),
    calibration: Optional[str] = typer.Option(
        None, "--calibration", help="none | content_free | batch (default: the mode's own)"),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="local | ray (Ray Data actors, one teacher each; settings: ray)"),
    few_shot: Optional[int] = typer.Option(
        None, "--few-shot", help="labelled users shown to the teacher before every question "
        "(teacher.few_shot; 0 = none)"),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Teacher: select the coverage subset, write ToT chains (checkpointed, resumable), then
    audit the chains against the covered users' labels."""
    from trainers.audit import audit_lines
    from trainers.teach import clear_teacher_output, teach as run_teach, teach_report

    s = _settings(config, preset)
    for key, value in (("model", model), ("scoring", scoring), ("search", search),
                       ("calibration", calibration), ("engine", engine),
                       ("few_shot", few_shot)):
        if value is not None:
            try:
                setattr(s.teacher, key, value)
            except ValueError as e:
                _fail(f"--{key}: {e.errors()[0]['msg'] if hasattr(e, 'errors') else e}")
    _require_dataset(data_dir)
    if overwrite:
        clear_teacher_output(data_dir)  # the chain cache stays: its keys name their configuration
    try:
        summary = run_teach(data_dir, s)
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # FileNotFound: a model not installed
        _fail(str(e))
    console.print(
        f"teacher: {summary.selected} covered users; {summary.written} chains written, "
        f"{summary.failed} failed, {summary.skipped} already done ({summary.seconds:.1f} s); "
        f"{summary.computed} searched, {summary.reused} reused an identical profile's chain "
        f"({summary.cache_hits} from the chain cache); {summary.scoring_calls} scoring calls, "
        f"{summary.scoring_calls_per_user:.2f} per user (reused included), "
        f"{summary.scoring_calls_per_computed:.2f} per searched chain"
    )
    console.print(teach_report(data_dir))
    for line in audit_lines(summary.audit):
        console.print(line, highlight=False)


@app.command("train-student")
def train_student(
    data_dir: Path = typer.Argument(..., help="Dataset directory with teacher chains."),
    stage: Optional[list[str]] = typer.Option(
        None, "--stage", help="sft | osipo | infer (repeatable; default: all, in order)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo stages whose output exists."),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="inference on local | ray (Ray Data actors; settings: ray)"),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Student: SFT on the teacher's chains, then OSIPO, then chains + representations
    (checkpointed: a killed inference resumes where it stopped)."""
    from trainers.student_stage import STAGES, train_student as run_student

    s = _settings(config, preset)
    if engine not in (None, "local", "ray"):
        _fail(f"--engine: {engine!r} is not one of local, ray")
    if engine is not None:
        s.student.infer_engine = engine
    try:
        report = run_student(data_dir, s, stages=tuple(stage or STAGES), overwrite=overwrite)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    for name, summary in report.items():
        if name == "invalidated":
            continue
        shown = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        console.print(f"{name}: {shown}", highlight=False)


@app.command()
def distill(
    data_dir: Path = typer.Argument(..., help="Dataset directory with student (or teacher) chains."),
    source: str = typer.Option(
        "student", "--from", help="student: its representations and typed states (default); "
        "teacher: the teacher's typed-state distributions only, no student."),
    targets: Optional[Path] = typer.Option(
        None, "--targets", help="Target table (default: DIR/student/chains, or DIR/teacher/chains "
        "with --from teacher)."),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Distil the student's representations and typed states (or, --from teacher, the teacher's
    typed-state distributions) into the profile encoder: DIR/encoder."""
    from trainers.distill_encoder import SOURCES, TargetsError, distill_encoder

    if source not in SOURCES:
        _fail(f"--from: {source!r} is not one of {', '.join(SOURCES)}")
    s = _settings(config, preset)
    _require_dataset(data_dir)
    try:
        report = distill_encoder(data_dir, s, targets=targets, source=source)
    except TargetsError as e:
        _fail(str(e))
    test = report["metrics"].get("test", {})
    console.print(f"encoder {report['model_version']} trained from the {source} on "
                  f"{report['users']} users (best epoch {report['best_epoch']}); held-out: {test}")


@app.command()
def embed(
    data_dir: Path = typer.Argument(..., help="Dataset directory with a distilled encoder."),
    engine: Optional[str] = typer.Option(None, "--engine", help="local | ray"),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Embed every user with the encoder: DIR/features/reasoning_features (streamed)."""
    from scaletot_features.encoder import EncoderManifestError, embed_population

    if engine not in (None, "local", "ray"):
        _fail(f"--engine: {engine!r} is not one of local, ray")
    try:
        report = embed_population(data_dir, _settings(config, preset), engine=engine)
    except (EncoderManifestError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"embedded {report['users']:,} users with {report['engine']} "
                  f"({report['users_per_s']:,.0f} users/s) into {report['path']}")


features_app = typer.Typer(no_args_is_help=True,
                            help="Feast: apply, materialize, historical retrieval, lookalikes, serving.")
app.add_typer(features_app, name="features")


def _store_call(fn, *args, **kwargs):
    from scaletot_features.store.repo import StoreError
    from scaletot_features.store.materialize import GateFailedError

    try:
        return fn(*args, **kwargs)
    except GateFailedError as e:
        _fail(str(e), code=1)
    except StoreError as e:
        _fail(str(e))


@features_app.command("apply")
def features_apply(data_dir: Path = typer.Argument(..., help="Dataset directory."),
                   config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt) -> None:
    """Write DIR/feast (feature_store.yaml + definitions) and register it with Feast."""
    from scaletot_features.store.repo import apply_repo

    repo = _store_call(apply_repo, data_dir, _settings(config, preset))
    console.print(f"applied the feature repository at {repo}")


@features_app.command("materialize")
def features_materialize(
    data_dir: Path = typer.Argument(..., help="Dataset directory."),
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
) -> None:
    """Gate the reasoning features (Great Expectations), then load them into the online store."""
    from scaletot_features.store.materialize import materialize
    from validation.gate import reasoning_gate

    s = _settings(config, preset)
    report = _store_call(materialize, data_dir, s,
                         gate=reasoning_gate if s.store.gate else None)
    console.print(f"materialized {report['rows']:,} rows into {report['online_store']} "
                  f"({report['rows_per_s']:,.0f} rows/s)")


@features_app.command("historical")
def features_historical(
    data_dir: Path = typer.Argument(..., help="Dataset directory."),
    entities: Path = typer.Option(..., "--entities", help="Parquet/CSV with user_id and a timestamp."),
    out: Optional[Path] = typer.Option(None, "--out", help="Parquet to write (atomic)."),
    service: Optional[str] = typer.Option(None, "--service", help="Feature service name."),
    with_labels: bool = typer.Option(False, "--with-labels", help="Join the label columns too."),
) -> None:
    """Point-in-time-correct features for an entity table, written to parquet."""
    from scaletot_features.store.retrieval import historical_features

    path = _store_call(historical_features, data_dir, entities, service, out, with_labels=with_labels)
    console.print(f"wrote {path}")


@features_app.command("lookalikes")
def features_lookalikes(
    data_dir: Path = typer.Argument(..., help="Dataset directory."),
    user_id: int = typer.Option(..., "--user-id"),
    k: int = typer.Option(10, "--k"),
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
) -> None:
    """The k users most similar by reasoning embedding, with their online features."""
    from scaletot_features.store.lookalike import lookalikes

    df = _store_call(lookalikes, data_dir, user_id, k, settings=_settings(config, preset))
    typer.echo(df.to_string(index=False))


@features_app.command("serve")
def features_serve(
    data_dir: Path = typer.Argument(..., help="Dataset directory."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(6566, "--port"),
) -> None:
    """The validating HTTP server (Feast's JSON; 4xx for bad requests, /lookalikes, /health)."""
    from scaletot_features.store.server import serve

    _store_call(serve, data_dir, host=host, port=port)


@app.command()
def evaluate(
    data_dir: Path = typer.Argument(..., help="Dataset directory (the demo's, or your own)."),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """LTV comparison: ZILN models on Feast features (A profile, A-gbdt boosted trees on it,
    B sentence embedding, C ScaleToT encoder, D LLM reasoning), the coverage sweep, costs, and a
    report with plots; uplifts over the best profile-only row (chosen on validation users)."""
    from trainers.evaluate import EvaluationError, evaluate as run_evaluate
    from trainers.report import print_tables

    s = _settings(config, preset)
    _require_dataset(data_dir)
    try:
        results = run_evaluate(data_dir, s, console)
    except (EvaluationError, FileNotFoundError) as e:
        _fail(str(e))
    print_tables(results, Console())


@app.command()
def demo(
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where the run lives."),
) -> None:
    """Run the pipeline end to end on the preset (what `make demo` runs)."""
    from scaletot_features.cli.demo import run_demo

    s = _settings(config, preset)
    if out_dir is not None:
        s.out_dir = out_dir
    code = run_demo(s, console)
    raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # python -m scaletot_features.cli.app; ``-m scaletot_features.cli``
    main()                  # runs cli/__main__.py
