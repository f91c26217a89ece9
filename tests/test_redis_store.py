"""Redis as the online store: a real ``redis-server`` on loopback gives the values SQLite gives.

The set-up installs Debian's ``redis-server`` when it is missing (``apt-get``, root), starts it on
a free 127.0.0.1 port with persistence off, and stops it by its PID. The test is skipped, with the
reason, only when the server cannot be installed or the ``redis`` client package is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from test_feast_repo import USERS, build_feature_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server_executable() -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    if os.geteuid() != 0:
        pytest.skip("redis-server is not installed and installing it needs root")
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "redis-server"], check=True,
                       capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        pytest.skip(f"redis-server is missing and apt-get could not install it: {e} "
                    f"{detail[-300:].decode(errors='replace')}")
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("apt-get installed redis-server but it is not on PATH")
    return exe


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    redis = pytest.importorskip("redis", reason="the redis client is not installed "
                                "(pip install -e '.[redis]')")
    exe = _redis_server_executable()
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start (exit {proc.poll()})")
                time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, redis_port):
    """(SQLite store, Redis store, data dir, Redis materialize report) over one dataset."""
    from scaletot_features.config import RedisOnlineStoreConfig, StoreConfig
    from scaletot_features.store.repo import apply_repo, get_store
    from scaletot_features.store.materialize import materialize
    from validation.gate import reasoning_gate

    d = build_feature_dataset(tmp_path_factory.mktemp("redis-data") / "data")
    apply_repo(d)
    materialize(d)
    cfg = StoreConfig(online_store=RedisOnlineStoreConfig(
        connection_string=f"127.0.0.1:{redis_port}"))
    redis_repo = d / "feast_redis"
    apply_repo(d, store=cfg, repo_dir=redis_repo)
    report = materialize(d, store=cfg, repo_dir=redis_repo, gate=reasoning_gate)
    return get_store(d), get_store(d, redis_repo), d, report


def test_redis_config_and_report(stores, redis_port):
    _, _, d, report = stores
    config = yaml.safe_load((d / "feast_redis" / "feature_store.yaml").read_text())
    assert config["online_store"] == {"type": "redis",
                                      "connection_string": f"127.0.0.1:{redis_port}"}
    assert report["online_store"] == "redis" and report["rows"] == 3 * USERS
    assert report["gate"]["success"]
    import redis

    assert redis.Redis(host="127.0.0.1", port=redis_port).dbsize() >= USERS


def test_redis_serves_the_values_sqlite_serves(stores):
    sqlite, red, _, _ = stores
    ids = [{"user_id": i} for i in list(range(1, USERS + 1, 37)) + [USERS + 5]]  # + unknown
    service = "ltv_with_reasoning"
    a = sqlite.get_online_features(features=sqlite.get_feature_service(service),
                                   entity_rows=ids).to_dict()
    b = red.get_online_features(features=red.get_feature_service(service),
                                entity_rows=ids).to_dict()
    assert set(a) == set(b) and len(a["user_id"]) == len(ids)
    assert a == b
    assert a["embedding"][-1] is None and a["life_stage"][-1] is None  # the unknown user


def test_live_view_over_redis(stores):
    sqlite, red, _, _ = stores
    row = {"user_id": 3, "profile_acquisition_channel": "paid_social",
           "profile_first_day_sessions": 1.0, "profile_age": 22.0, "profile_gender": None,
           "profile_city_tier": "tier2", "profile_device_model": "iPhone 13",
           "profile_occupation": None, "profile_interests": ["anime"]}
    refs = ["user_states:life_stage", "reasoning_live:live_embedding",
            "reasoning_live:live_life_stage_probs"]
    assert red.get_online_features(features=refs, entity_rows=[row]).to_dict() == \
        sqlite.get_online_features(features=refs, entity_rows=[row]).to_dict()


def test_incremental_materialization_into_redis(stores, redis_port):
    from scaletot_features.config import RedisOnlineStoreConfig, StoreConfig
    from scaletot_features.store.materialize import materialize

    _, _, d, _ = stores
    cfg = StoreConfig(online_store=RedisOnlineStoreConfig(
        connection_string=f"127.0.0.1:{redis_port}"))
    report = materialize(d, store=cfg, repo_dir=d / "feast_redis")
    assert report["rows"] == 0


def test_unreachable_redis_is_a_clear_error(stores, tmp_path):
    from scaletot_features.config import RedisOnlineStoreConfig, StoreConfig
    from scaletot_features.store.repo import apply_repo
    from scaletot_features.store.materialize import materialize

    _, _, d, _ = stores
    cfg = StoreConfig(online_store=RedisOnlineStoreConfig(
        connection_string=f"127.0.0.1:{_free_port()}"))
    repo = d / "feast_redis_down"
    try:
        with pytest.raises(Exception, match="(?i)connect|refused"):
            apply_repo(d, store=cfg, repo_dir=repo)
            materialize(d, store=cfg, repo_dir=repo)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    assert Path(d / "feast_redis" / "feature_store.yaml").exists()
