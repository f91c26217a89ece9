"""The built wheel is the product: a Feast repository applies and materializes from it alone.

The wheel is built from a copy of the sources (nothing written into the checkout), installed
with ``--no-deps`` into a fresh venv made with ``--system-site-packages``; the project's
dependencies are made visible to it by one path line pointing at this interpreter's
site-packages (a venv made from a venv inherits the base interpreter's packages, not ours), so
nothing is fetched again. The editable install's finder lives in a ``.pth`` file there that a
plain path line does not run, so the package can only come from the wheel: a module or data
file missing from the wheel fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from test_feast_repo import build_feature_dataset

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "scaletot_features", "trainers", "validation")


def build_wheel(out: Path) -> Path:
    src = out / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info"))
        else:
            shutil.copy(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", str(out / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheels = list((out / "dist").glob("scaletot_features-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def install_into_venv(wheel: Path, env_dir: Path) -> Path:
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (site / "_scaletot_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return env_dir


@pytest.mark.slow  # about a minute: a wheel build, a venv, two CLI runs that import Feast
def test_wheel_applies_and_materializes_a_repository(tmp_path):
    wheel = build_wheel(tmp_path / "wheel")
    env_dir = install_into_venv(wheel, tmp_path / "venv")
    data = build_feature_dataset(tmp_path / "data", users=300)
    run_dir = tmp_path / "elsewhere"  # not the checkout: '' on sys.path must not find sources
    run_dir.mkdir()

    where = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c",
         "import json, scaletot_features, trainers, validation, feast; print(json.dumps("
         "[scaletot_features.__file__, trainers.__file__, validation.__file__, feast.__file__]))"],
        cwd=run_dir, check=True, capture_output=True, text=True)
    ours, trainers_file, validation_file, feast_file = json.loads(where.stdout)
    for path in (ours, trainers_file, validation_file):
        assert Path(path).is_relative_to(env_dir), f"{path} is not the installed wheel"
    assert not Path(feast_file).is_relative_to(env_dir)  # a dependency, not reinstalled

    cli = str(env_dir / "bin" / "scaletot")
    for cmd in ([cli, "features", "apply", str(data)],
                [cli, "features", "materialize", str(data)]):
        r = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=600,
                           env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
                                "HOME": str(tmp_path), "PYTHONWARNINGS": "ignore"})
        assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}\n{r.stderr[-4000:]}"

    repo = data / "feast"
    shipped = REPO / "scaletot_features" / "store" / "feast_repo" / "features.py"
    assert (repo / "features.py").read_text() == shipped.read_text()
    from feast import FeatureStore

    fs = FeatureStore(repo_path=str(repo))
    assert {v.name for v in fs.list_feature_views()} == \
        {"user_profile", "user_states", "user_embedding", "ltv_labels"}
    assert {o.name for o in fs.list_on_demand_feature_views()} == {"reasoning_live"}
    got = fs.get_online_features(features=["user_states:life_stage"],
                                 entity_rows=[{"user_id": 3}]).to_dict()
    assert got["life_stage"][0] is not None
