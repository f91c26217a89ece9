"""The ``scaletot`` command line: one command per pipeline stage, in pipeline order.

This is the only module of the library that imports ``trainers/`` and ``validation/``. Every
command exits 0 on success, 1 when a gate fails, 2 on bad input or configuration, with a message
that names the file, key or column at fault.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from scaletot_features.config import ConfigError, Settings, load_settings

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
    events: Path = typer.Option(..., "--events", help="Events table (parquet or CSV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Validate your own profiles and events, derive labels, and write the dataset layout."""
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
            )
    except (IngestError, FileExistsError) as e:
        _fail(str(e))
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    console.print(f"ingested {manifest['users']:,} users and {manifest['events']:,} events into {out}")


@app.command()
def validate(
    data_dir: Path = typer.Argument(..., help="Dataset directory (from generate or ingest)."),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Run the sparse-profile gate (Great Expectations); exit 1 naming failed expectations."""
    from validation.gate import format_failures, validate_dataset

    s = _settings(config, preset)
    if not (data_dir / "manifest.json").exists():
        _fail(f"{data_dir} is not a dataset directory (no manifest.json); run generate or ingest")
    results = validate_dataset(data_dir, s)
    for r in results:
        mark = "[green]passed[/]" if r.success else "[red]FAILED[/]"
        console.print(f"{r.suite}: {mark}")
    console.print(f"results written to {data_dir / 'validation'}")
    if not all(r.success for r in results):
        console.print(format_failures(results), highlight=False)
        if s.validation.stop_on_failure:
            raise typer.Exit(1)


@app.command()
def teach(
    data_dir: Path = typer.Argument(..., help="Dataset directory (validated)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard earlier teacher output."),
    model: Optional[str] = typer.Option(None, "--model", help="'packaged', 'tiny-random' or a folder."),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="label | calibrated | channel"),
    search: Optional[str] = typer.Option(None, "--search", help="entropy | greedy | beam"),
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
) -> None:
    """Teacher: select the coverage subset, then write ToT chains (checkpointed, resumable)."""
    import shutil

    from trainers.teach import teach as run_teach, teach_report, teacher_layout

    s = _settings(config, preset)
    for key, value in (("model", model), ("scoring", scoring), ("search", search)):
        if value is not None:
            try:
                setattr(s.teacher, key, value)
            except ValueError as e:
                _fail(f"--{key}: {e.errors()[0]['msg'] if hasattr(e, 'errors') else e}")
    if not (data_dir / "manifest.json").exists():
        _fail(f"{data_dir} is not a dataset directory (no manifest.json); run generate or ingest")
    if overwrite and teacher_layout(data_dir).root.exists():
        shutil.rmtree(teacher_layout(data_dir).root)
    try:
        summary = run_teach(data_dir, s)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    console.print(
        f"teacher: {summary.selected} covered users; {summary.written} chains written, "
        f"{summary.failed} failed, {summary.skipped} already done ({summary.seconds:.1f} s)"
    )
    console.print(teach_report(data_dir))


@app.command()
def demo(
    config: Optional[Path] = ConfigOpt,
    preset: Optional[str] = PresetOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where the run lives."),
) -> None:
    """Run the pipeline end to end on the preset (what `make demo` runs)."""
    from scaletot_features.pipeline import run_demo

    s = _settings(config, preset)
    if out_dir is not None:
        s.out_dir = out_dir
    code = run_demo(s, console)
    raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # python -m scaletot_features.cli
    main()
