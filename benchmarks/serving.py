"""Serving benchmark: online latency and throughput, materialization speed, a bounded load run.

Measures on one dataset directory (built here unless ``--data`` names one):

- materialization rows/s into SQLite and, when ``redis-server`` is on PATH, into Redis (a
  server started here on a free loopback port, stopped by its PID);
- ``get_online_features`` for one user, in-process: p50/p99 for the materialized features
  (service ``ltv_with_reasoning``: profile + typed states + embedding) and for the live encoder
  view (service ``ltv_live``, profile sent as request data); target p99 < 10 ms for the latter;
- the same over HTTP (``feast serve`` and the validating server, one keep-alive client);
- throughput for batches of 100 and 1000 users (materialized and live);
- load runs: N concurrent keep-alive clients (``--clients 8 32``) for a fixed time
  (``--load-seconds 60``) against each server on loopback (``feast serve`` and the validating
  server), half materialized and half live requests: requests, errors by kind (``http_<status>``
  or the client-side cause: ``connection_reset``, ``remote_disconnected``, ``timeout``...),
  p50/p95/p99, req/s, the TCP connects the clients made (one each while keep-alive holds), the
  server's worker restarts and the load average before and after;
- then, on the same servers, bad requests (unknown feature, view or service, missing entity
  key, no entities, malformed JSON, values of the wrong type), each on a fresh connection: the
  status code, and whether the next request on that connection still gets an answer.

``feast serve`` is started with ``--max-requests 0`` (``--feast-max-requests``): Feast's default
of 1000 (+ up to 50 jitter) restarts its worker under load, and every restart drops the clients'
keep-alive connections (connection resets; docs/feast.md). ``--load-only`` skips the in-process,
Redis and single-client HTTP cases.

Without ``--data`` the dataset is synthetic and its encoder has random weights: latency does not
depend on the weights, only on the network's shape (``--dim``, ``--hidden``). Every server is
started on 127.0.0.1 and stopped before exit. Writes benchmarks/results/serving.json and prints
a table.

    .venv/bin/python benchmarks/serving.py --users 20000
    .venv/bin/python benchmarks/serving.py --users 2000 --load-only   # the load runs only
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FEAST = str(Path(sys.executable).with_name("feast"))
TARGET_P99_MS = 10.0


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {"n": int(len(ms)), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3)}


def time_calls(fn: Callable[[], Any], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def build_dataset(out: Path, users: int, dim: int, hidden: int, text_channel: bool = True) -> None:
    """Synthetic population + random-weight encoder (with the text channel, the product's
    default, unless told otherwise) + the real embed stage."""
    import torch

    from scaletot_features.config import build_settings
    from scaletot_features.data.io import read_table
    from scaletot_features.data.synthetic import generate_population
    from scaletot_features.dataset import DatasetLayout
    from scaletot_features.encoder.artifact import save_encoder
    from scaletot_features.encoder.embed import embed_population
    from scaletot_features.encoder import Featurizer, NetworkShape, ProfileEncoderNet
    from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
    from scaletot_features.taxonomy import DEFAULT_TAXONOMY

    generate_population(out, users=users, seed=0, chunk_size=min(users, 50_000), progress=False)
    featurizer = Featurizer.fit(read_table(DatasetLayout(out).profiles), DEFAULT_PROFILE_SCHEMA,
                                use_text_embedding=text_channel)
    torch.manual_seed(0)
    net = ProfileEncoderNet(NetworkShape.for_featurizer(featurizer, DEFAULT_TAXONOMY, dim=dim,
                                                        hidden=hidden))
    save_encoder(DatasetLayout(out).encoder, net, featurizer, DEFAULT_TAXONOMY)
    embed_population(out, build_settings("demo"), engine="local", progress=False)


class Proc:
    """A subprocess in its own process group, stopped by that group's id."""

    def __init__(self, cmd: list[str], cwd: Path, log: Path) -> None:
        self._log = open(log, "w")
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONWARNINGS": "ignore"},
                                     start_new_session=True)

    def stop(self) -> None:
        from scaletot_features.store.server import stop_process_group

        stop_process_group(self.proc)
        self._log.close()


def wait_http(url: str, proc: Proc, timeout: float = 240) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{proc.log.read_text()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready")


def request_profiles(data_dir: Path, n: int) -> list[dict[str, Any]]:
    """Request-data rows (profile_<field>) built from real profiles."""
    from scaletot_features.data.io import read_table
    from scaletot_features.dataset import DatasetLayout
    from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA, is_missing

    rows = read_table(DatasetLayout(data_dir).profiles).slice(0, n).to_pylist()
    out = []
    for r in rows:
        row = {}
        for f in DEFAULT_PROFILE_SCHEMA.fields:
            v = r[f.name]
            row[f"profile_{f.name}"] = None if is_missing(v) else (
                float(v) if f.kind.value == "numeric" else v)
        out.append(row)
    return out


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


# --------------------------------------------------------------------------- measurements


def bench_in_process(data_dir: Path, repo_dir: Path | None, n: int, prefix: str
                     ) -> dict[str, Any]:
    from scaletot_features.store.repo import get_store

    fs = get_store(data_dir, repo_dir)
    stored = fs.get_feature_service("ltv_with_reasoning")
    live = fs.get_feature_service("ltv_live")
    profiles = request_profiles(data_dir, 1000)
    users = 1000
    rng = np.random.default_rng(0)
    ids = iter(rng.integers(1, users + 1, 10**6).tolist())
    out: dict[str, Any] = {}
    out[f"{prefix}one_user_materialized"] = percentiles(time_calls(
        lambda: fs.get_online_features(features=stored,
                                       entity_rows=[{"user_id": next(ids)}]).to_dict(), n))
    k = iter(range(10**6))
    out[f"{prefix}one_user_live_encoder"] = percentiles(time_calls(
        lambda: fs.get_online_features(features=live,
                                       entity_rows=[profiles[next(k) % 1000]]).to_dict(), n))
    from scaletot_features.dataset import DatasetLayout
    from scaletot_features.encoder.featurizer import TextEmbedder
    from scaletot_features.store.transforms import get_encoder

    if get_encoder(str(DatasetLayout(data_dir).encoder)).featurizer.texts:
        # the text channel's strings cached (above: 1,000 profiles cycled) vs none cached: every
        # call then runs the sentence model on the request's strings (what a new string costs)
        def cold() -> Any:
            TextEmbedder._cache.clear()
            return fs.get_online_features(features=live,
                                          entity_rows=[profiles[next(k) % 1000]]).to_dict()

        out[f"{prefix}one_user_live_encoder_cold_strings"] = percentiles(
            time_calls(cold, max(50, n // 5), warmup=5))
    for batch in (100, 1000):
        rows = [{"user_id": int(i)} for i in rng.integers(1, users + 1, batch)]
        reps = 20 if batch == 100 else 6
        t = time_calls(lambda: fs.get_online_features(features=stored, entity_rows=rows)
                       .to_dict(), reps, warmup=2)
        out[f"{prefix}batch_{batch}_materialized"] = {
            **percentiles(t), "rows_per_s": round(batch / statistics.median(t), 1)}
        req = profiles[:batch]
        t = time_calls(lambda: fs.get_online_features(features=live, entity_rows=req)
                       .to_dict(), reps, warmup=2)
        out[f"{prefix}batch_{batch}_live_encoder"] = {
            **percentiles(t), "rows_per_s": round(batch / statistics.median(t), 1)}
    return out


def bench_http(url: str, data_dir: Path, n: int) -> dict[str, Any]:
    import requests

    s = requests.Session()
    profiles = request_profiles(data_dir, 1000)
    rng = np.random.default_rng(1)
    ids = iter(rng.integers(1, 1000, 10**6).tolist())
    k = iter(range(10**6))

    def stored() -> None:
        r = s.post(url + "/get-online-features", json={
            "feature_service": "ltv_with_reasoning", "entities": {"user_id": [next(ids)]}})
        r.raise_for_status()

    def live() -> None:
        row = profiles[next(k) % 1000]
        r = s.post(url + "/get-online-features", json={
            "feature_service": "ltv_live", "entities": {kk: [v] for kk, v in row.items()}})
        r.raise_for_status()

    return {"one_user_materialized": percentiles(time_calls(stored, n)),
            "one_user_live_encoder": percentiles(time_calls(live, n))}


def _error_kind(e: BaseException) -> str:
    """A client-side failure by its root cause: ``remote_disconnected`` (the server closed the
    connection before answering), ``connection_reset`` (RST), ``connection_refused``,
    ``timeout``, else the exception's class name."""
    import http.client

    import requests

    found, todo, seen = [], [e], set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        found.append(c)
        todo += [x for x in (c.__cause__, c.__context__, getattr(c, "reason", None), *c.args)
                 if isinstance(x, BaseException)]
    for cls, kind in ((http.client.RemoteDisconnected, "remote_disconnected"),
                      (ConnectionResetError, "connection_reset"),
                      (ConnectionRefusedError, "connection_refused"),
                      (BrokenPipeError, "broken_pipe"), (requests.Timeout, "timeout")):
        if any(isinstance(c, cls) for c in found):
            return kind
    return type(e).__name__


def tcp_states(port: int) -> dict[str, int]:
    """Loopback TCP sockets with ``port`` at either end, by state (from /proc/net/tcp{,6})."""
    names = {"01": "established", "06": "time_wait", "08": "close_wait", "0A": "listen"}
    out: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state = parts[1], parts[2], parts[3]
            if int(local.rsplit(":", 1)[1], 16) == port or \
                    int(remote.rsplit(":", 1)[1], 16) == port:
                key = names.get(state, state)
                out[key] = out.get(key, 0) + 1
    return out


def server_log_lines(log: Path, limit: int = 30) -> list[str]:
    """The lines of a server's log about its workers' lives and errors (the log is deleted)."""
    keys = ("Booting worker", "Maximum request limit", "Autorestarting", "Shutting down",
            "Worker exiting", "Traceback", "ERROR", "Error")
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if any(k in ln for k in keys)]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def worker_boots(log: Path | None) -> int:
    """Gunicorn worker (re)starts written to a server's log so far (0 for plain uvicorn)."""
    if log is None or not log.exists():
        return 0
    return log.read_text(errors="replace").count("Booting worker with pid")


def load_run(url: str, data_dir: Path, clients: int, seconds: float,
             log: Path | None = None) -> dict[str, Any]:
    """``clients`` threads, each with its own keep-alive session, for ``seconds``.

    Half the requests are for materialized users, half for the live view (profile as request
    data). Errors are counted by kind (``http_<status>`` or the client-side root cause); beside
    them: the TCP connections the clients had to open (one each when keep-alive holds), the
    server's worker (re)starts in its log, and the TIME_WAIT sockets on the port afterwards.
    """
    import requests

    port = int(url.rsplit(":", 1)[1])
    profiles = request_profiles(data_dir, 500)
    lat: list[float] = []
    errors: dict[str, int] = {}
    messages: list[str] = []
    lock = threading.Lock()
    boots0 = worker_boots(log)
    load0 = [round(x, 2) for x in os.getloadavg()]
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        s = requests.Session()
        rng = np.random.default_rng(seed)
        i = 0
        while time.monotonic() < stop:
            if i % 2 == 0:
                body = {"feature_service": "ltv_with_reasoning",
                        "entities": {"user_id": [int(rng.integers(1, 1000))]}}
            else:
                row = profiles[int(rng.integers(0, len(profiles)))]
                body = {"feature_service": "ltv_live",
                        "entities": {k: [v] for k, v in row.items()}}
            i += 1
            t0 = time.perf_counter()
            kind = message = ""
            try:
                r = s.post(url + "/get-online-features", json=body, timeout=30)
                if r.status_code != 200:
                    kind, message = f"http_{r.status_code}", f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                kind, message = _error_kind(e), f"{type(e).__name__}: {e}"[:300]
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if kind:
                    errors[kind] = errors.get(kind, 0) + 1
                    if len(messages) < 5:
                        messages.append(message)
        s.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    with ConnectCounter() as connects:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(lat),
            "errors": sum(errors.values()), "error_kinds": errors, "error_messages": messages,
            "requests_per_s": round(len(lat) / wall, 1),
            "tcp_connections_opened": connects.count,
            "server_worker_restarts": worker_boots(log) - boots0,
            "tcp_after": tcp_states(port),
            "load_average_start": load0,
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            **percentiles(lat)}


def bad_requests(data_dir: Path) -> list[tuple[str, Any]]:
    """(name, JSON body, or raw bytes for malformed JSON): requests a server must refuse."""
    row = request_profiles(data_dir, 1)[0]
    live = {k: [v] for k, v in row.items()}
    return [
        ("unknown feature", {"features": ["user_profile:nope"], "entities": {"user_id": [1]}}),
        ("unknown feature view", {"features": ["nope:age"], "entities": {"user_id": [1]}}),
        ("unknown feature service", {"feature_service": "nope", "entities": {"user_id": [1]}}),
        ("missing entity key", {"features": ["user_profile:age"], "entities": {"uid": [1]}}),
        ("no entities", {"features": ["user_profile:age"], "entities": {}}),
        ("malformed JSON", b'{"features": ["user_profile:age"], "entities": {'),
        ("user_id of the wrong type", {"features": ["user_profile:age"],
                                       "entities": {"user_id": ["abc"]}}),
        ("user_id outside int64", {"features": ["user_profile:age"],
                                   "entities": {"user_id": [2**63]}}),
        ("profile field of the wrong type", {"feature_service": "ltv_live",
                                             "entities": {**live, "profile_age": ["thirty"]}}),
    ]


class ConnectCounter:
    """Counts TCP connects made by urllib3 in this process while active (a pooled connection
    the server dropped is reconnected in place, which the pools' own counters miss)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "ConnectCounter":
        from urllib3.connection import HTTPConnection

        self._orig = orig = HTTPConnection.connect
        counter = self

        def connect(conn: Any) -> None:
            with counter._lock:
                counter.count += 1
            orig(conn)

        HTTPConnection.connect = connect  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        from urllib3.connection import HTTPConnection

        HTTPConnection.connect = self._orig  # type: ignore[method-assign]


def warm_up(url: str, data_dir: Path, n: int = 20) -> None:
    """A few requests of each kind before timing: the first live requests load the models."""
    import requests

    profiles = request_profiles(data_dir, n)
    with requests.Session() as s:
        for i, row in enumerate(profiles):
            s.post(url + "/get-online-features", json={
                "feature_service": "ltv_with_reasoning", "entities": {"user_id": [i + 1]}},
                timeout=120)
            s.post(url + "/get-online-features", json={
                "feature_service": "ltv_live", "entities": {k: [v] for k, v in row.items()}},
                timeout=120)


def send_bad_requests(url: str, data_dir: Path) -> dict[str, Any]:
    """Each bad request on a fresh keep-alive connection: its status code (or the client-side
    error), then one good request on the same session, which must get 200 (``reset after``
    counts the cases where the server dropped the connection under it instead)."""
    import requests

    out: dict[str, Any] = {}
    after: dict[str, Any] = {}
    good = {"feature_service": "ltv_with_reasoning", "entities": {"user_id": [1]}}
    for name, body in bad_requests(data_dir):
        with requests.Session() as s:
            try:
                if isinstance(body, bytes):
                    r = s.post(url + "/get-online-features", data=body, timeout=30,
                               headers={"Content-Type": "application/json"})
                else:
                    r = s.post(url + "/get-online-features", json=body, timeout=30)
                out[name] = r.status_code
            except requests.RequestException as e:
                out[name] = _error_kind(e)
            try:
                after[name] = s.post(url + "/get-online-features", json=good,
                                     timeout=30).status_code
            except requests.RequestException as e:
                after[name] = _error_kind(e)
    codes = [v for v in out.values() if isinstance(v, int)]
    return {"status": out, "all_4xx": len(codes) == len(out) and all(400 <= c < 500
                                                                      for c in codes),
            "any_5xx": any(c >= 500 for c in codes), "next_request_on_connection": after,
            "next_request_failed": sum(v != 200 for v in after.values())}


# --------------------------------------------------------------------------- main


def start_redis(workdir: Path) -> tuple[subprocess.Popen | None, int | None, str | None]:
    exe = shutil.which("redis-server")
    if exe is None:
        return None, None, "redis-server not on PATH (apt-get install -y redis-server)"
    try:
        import redis
    except ImportError:
        return None, None, "redis client not installed (pip install -e '.[redis]')"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc, port, None
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    return None, None, "redis-server did not answer"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--data", type=Path, default=None, help="an existing dataset directory with "
                   "encoder and reasoning features (its repository is written in DIR/feast)")
    p.add_argument("--n", type=int, default=1000, help="single-user calls per in-process case")
    p.add_argument("--http-n", type=int, default=300)
    p.add_argument("--clients", type=int, nargs="+", default=[8, 32],
                   help="concurrent keep-alive clients of each load run")
    p.add_argument("--load-seconds", type=float, default=60.0, help="length of each load run")
    p.add_argument("--load-only", action="store_true", help="only apply, materialize (SQLite), "
                   "the load runs against both servers and the bad requests")
    p.add_argument("--servers", nargs="+", default=["feast_serve", "validating_server"],
                   choices=["feast_serve", "validating_server"], help="servers to load")
    p.add_argument("--feast-max-requests", type=int, default=0,
                   help="feast serve's --max-requests: 0 (no worker restarts) by default here; "
                   "1000 is Feast's own default, whose restarts drop keep-alive connections")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--no-text-channel", action="store_true",
                   help="the synthetic encoder without the sentence-model text channel")
    a = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    from scaletot_features.data.io import write_json_atomic
    from scaletot_features.dataset import DatasetLayout
    from scaletot_features.store import StoreConfig
    from scaletot_features.store.repo import apply_repo
    from scaletot_features.store.materialize import materialize
    from validation.gate import reasoning_gate

    console = Console(width=max(150, shutil.get_terminal_size().columns))
    work = Path(tempfile.mkdtemp(prefix="scaletot-serving-"))
    procs: list[Proc] = []
    redis_proc = None
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "note": "2 CPU cores shared with other sessions: timings are noisy",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "target_p99_ms_live_in_process": TARGET_P99_MS,
    }
    try:
        if a.data is None:
            data = work / "data"
            t0 = time.perf_counter()
            build_dataset(data, a.users, a.dim, a.hidden, text_channel=not a.no_text_channel)
            result["dataset"] = {"users": a.users, "dim": a.dim, "hidden": a.hidden,
                                 "text_channel": not a.no_text_channel,
                                 "encoder": "random weights", "build_s":
                                 round(time.perf_counter() - t0, 1)}
        else:
            data = a.data.resolve()
            result["dataset"] = {"path": str(data), "encoder": "the dataset's own"}
        console.print(f"dataset: {data}")
        apply_repo(data)
        rep = materialize(data, gate=reasoning_gate)
        result["materialize_sqlite"] = {k: rep[k] for k in ("rows", "seconds", "rows_per_s")}
        console.print(f"materialize sqlite: {rep['rows_per_s']} rows/s")

        redis_proc, port, why = (None, None, "--load-only") if a.load_only else start_redis(work)
        if redis_proc is not None:
            cfg = StoreConfig(online_store="redis", redis_connection=f"127.0.0.1:{port}")
            apply_repo(data, store=cfg, repo_dir=data / "feast_redis")
            rep = materialize(data, store=cfg, repo_dir=data / "feast_redis")
            result["materialize_redis"] = {k: rep[k] for k in ("rows", "seconds", "rows_per_s")}
            console.print(f"materialize redis: {rep['rows_per_s']} rows/s")
        else:
            result["materialize_redis"] = {"skipped": why}

        if not a.load_only:
            result["in_process_sqlite"] = bench_in_process(data, None, a.n, "")
            if redis_proc is not None:
                result["in_process_redis"] = bench_in_process(data, data / "feast_redis",
                                                              max(200, a.n // 2), "")
            live = result["in_process_sqlite"]["one_user_live_encoder"]["p99_ms"]
            result["target_met"] = live < TARGET_P99_MS

        if not a.skip_http:
            p1, p2 = free_port(), free_port()
            feast_cmd = [FEAST, "serve", "-h", "127.0.0.1", "-p", str(p1), "-w", "1",
                         "--no-access-log", "--max-requests", str(a.feast_max_requests)]
            commands = {
                "feast_serve": (p1, feast_cmd, DatasetLayout(data).feast.root),
                "validating_server": (p2, [sys.executable, "-m", "scaletot_features.store.server",
                                           str(data), "--port", str(p2)], data)}
            servers: dict[str, tuple[str, Proc]] = {}
            for name in a.servers:
                port, cmd, cwd = commands[name]
                procs.append(Proc(cmd, cwd, work / f"{name}.log"))
                servers[name] = (f"http://127.0.0.1:{port}", procs[-1])
            for url, proc in servers.values():
                wait_http(url, proc)
            result["feast_serve_command"] = " ".join(["feast"] + feast_cmd[1:])
            if not a.load_only:
                for name, (url, _) in servers.items():
                    result[f"http_{name}"] = bench_http(url, data, a.http_n)
            result["load"] = {name: [] for name in servers}
            for name, (url, proc) in servers.items():
                warm_up(url, data)
                for clients in a.clients:
                    console.print(f"load: {name}, {clients} clients, {a.load_seconds:g} s")
                    run = load_run(url, data, clients, a.load_seconds, log=proc.log)
                    result["load"][name].append(run)
                    console.print(f"  {run['requests']} requests, {run['errors']} errors "
                                  f"{run['error_kinds']}, p99 {run['p99_ms']} ms")
            # at the end of the same run, on the same servers: requests each must refuse
            result["bad_requests"] = {name: send_bad_requests(url, data)
                                      for name, (url, _) in servers.items()}
            result["server_log_lines"] = {name: server_log_lines(proc.log)
                                          for name, (_, proc) in servers.items()}
    finally:
        for proc in procs:
            proc.stop()
        if redis_proc is not None and redis_proc.poll() is None:
            os.kill(redis_proc.pid, signal.SIGTERM)
            redis_proc.wait(timeout=10)
        if a.data is None:
            shutil.rmtree(work, ignore_errors=True)
        else:  # the Redis repository pointed at a server that no longer runs
            shutil.rmtree(data / "feast_redis", ignore_errors=True)

    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json_atomic(result, a.out)
    table = Table(title="ScaleToT serving (2 shared CPU cores; noisy)")
    for c in ("case", "p50 ms", "p99 ms", "rows/s or req/s", "errors"):
        table.add_column(c)
    for group in ("in_process_sqlite", "in_process_redis", "http_feast_serve",
                  "http_validating_server"):
        for name, v in (result.get(group) or {}).items():
            table.add_row(f"{group}: {name}", str(v["p50_ms"]), str(v["p99_ms"]),
                          str(v.get("rows_per_s", "")), "")
    for name in ("materialize_sqlite", "materialize_redis"):
        v = result.get(name, {})
        table.add_row(name, "", "", str(v.get("rows_per_s", v.get("skipped", ""))), "")
    console.print(table)
    if "load" in result:
        console.print(f"feast serve ran as: {result['feast_serve_command']}")
        load = Table(title="Load: keep-alive clients on loopback, half materialized, half live")
        for c in ("server", "clients", "s", "requests", "errors", "error kinds", "TCP conns",
                  "worker restarts", "p50 ms", "p95 ms", "p99 ms", "req/s", "load avg"):
            load.add_column(c)
        for name, runs in result["load"].items():
            for v in runs:
                load.add_row(name, str(v["clients"]), str(v["seconds"]), str(v["requests"]),
                             str(v["errors"]), ", ".join(f"{k} {n}" for k, n in
                                                         v["error_kinds"].items()) or "-",
                             str(v["tcp_connections_opened"]), str(v["server_worker_restarts"]),
                             str(v["p50_ms"]), str(v["p95_ms"]), str(v["p99_ms"]),
                             str(v["requests_per_s"]),
                             f"{v['load_average_start'][0]}-{v['load_average_end'][0]}")
        console.print(load)
        bad = Table(title="Bad requests (status code; 4xx expected)")
        bad.add_column("request")
        for name in result["bad_requests"]:
            bad.add_column(name)
        for case in next(iter(result["bad_requests"].values()))["status"]:
            bad.add_row(case, *(str(v["status"][case]) for v in result["bad_requests"].values()))
        bad.add_row("all 4xx", *(str(v["all_4xx"]) for v in result["bad_requests"].values()))
        bad.add_row("next request on the same connection failed",
                    *(f"{v['next_request_failed']} of {len(v['status'])}"
                      for v in result["bad_requests"].values()))
        console.print(bad)
    console.print(f"load average (1, 5, 15 min) at start {result['load_average_start']}, "
                  f"at end {result['load_average_end']} on {os.cpu_count()} cores")
    if "target_met" in result:
        console.print(f"live encoder, one user, in-process p99 < {TARGET_P99_MS} ms: "
                      f"{'met' if result['target_met'] else 'NOT met'}")
    console.print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
