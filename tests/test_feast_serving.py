"""Online serving over HTTP on loopback: ``feast serve`` and the validating server in front of it.

Both servers run as subprocesses on free 127.0.0.1 ports over one applied and materialized
dataset (real Feast, SQLite online store, real encoder artifact with random weights), are waited
for with a bound, and are always stopped by their process group id.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from test_feast_repo import DIM, build_feature_dataset

FEAST = str(Path(sys.executable).with_name("feast"))
START_TIMEOUT = 180  # feast imports torch: about 10-20 s on 2 shared cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess in its own process group, stopped by that group's id."""

    def __init__(self, cmd: list[str], cwd: Path, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "w")
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server on port {self.port} not ready:\n"
                           + self.log.read_text()[-3000:])

    def stop(self) -> None:
        from scaletot_features.store.server import stop_process_group

        stop_process_group(self.proc)
        self._log.close()

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from scaletot_features.store.repo import apply_repo
    from scaletot_features.store.materialize import materialize
    from validation.gate import reasoning_gate

    d = build_feature_dataset(tmp_path_factory.mktemp("serve") / "data")
    apply_repo(d)
    materialize(d, gate=reasoning_gate)
    return d


@pytest.fixture(scope="module")
def servers(data_dir, tmp_path_factory):
    """(feast serve, validating server), started together, stopped whatever happens."""
    logs = tmp_path_factory.mktemp("logs")
    started: list[Server] = []
    try:
        p1, p2 = free_port(), free_port()
        feast = Server([FEAST, "serve", "-h", "127.0.0.1", "-p", str(p1), "-w", "1"],
                       data_dir / "feast", p1, logs / "feast.log")
        started.append(feast)
        ours = Server([sys.executable, "-m", "scaletot_features.store.server", str(data_dir),
                       "--host", "127.0.0.1", "--port", str(p2)], data_dir, p2, logs / "ours.log")
        started.append(ours)
        deadline = time.monotonic() + START_TIMEOUT
        for s in started:
            s.wait_ready(deadline)
        yield feast, ours
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def feast_server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def our_server(servers) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def features_table(data_dir) -> pd.DataFrame:
    from scaletot_features.data.io import read_table

    table = read_table(data_dir / "features" / "reasoning_features")
    return table.to_pandas().set_index("user_id")


def as_columns(body: dict) -> dict[str, list]:
    """Feast's JSON answer as {feature name: values}."""
    return dict(zip(body["metadata"]["feature_names"], (r["values"] for r in body["results"])))


NEW_PROFILE = {  # a user nobody has embedded: the profile arrives with the request
    "profile_acquisition_channel": ["referral"],
    "profile_first_day_sessions": [3.0],
    "profile_age": [34.0],
    "profile_gender": ["female"],
    "profile_city_tier": [None],
    "profile_device_model": ["Galaxy A15"],
    "profile_occupation": ["nurse"],
    "profile_interests": [["yoga", "recipes"]],
}


def expected_live(data_dir: Path, profile: dict[str, list]) -> dict[str, list]:
    from scaletot_features.store.transforms import encode_request

    return encode_request(profile, str(data_dir / "encoder"))


# --------------------------------------------------------------------------- feast serve


def test_feast_serve_materialized_user(feast_server, features_table):
    r = feast_server.post("/get-online-features", {
        "feature_service": "ltv_with_reasoning", "entities": {"user_id": [7, 1500]}})
    assert r.status_code == 200, r.text
    got = as_columns(r.json())
    for j, uid in enumerate([7, 1500]):
        np.testing.assert_allclose(got["embedding"][j], features_table.loc[uid, "embedding"],
                                   rtol=1e-6)
        assert got["life_stage"][j] == features_table.loc[uid, "life_stage"]
        assert got["spending_power_probs"][j] == pytest.approx(
            list(features_table.loc[uid, "spending_power_probs"]))


def test_feast_serve_new_user_through_the_live_view(feast_server, data_dir):
    r = feast_server.post("/get-online-features", {
        "feature_service": "ltv_live", "entities": {"user_id": [10**9], **NEW_PROFILE}})
    assert r.status_code == 200, r.text
    got = as_columns(r.json())
    want = expected_live(data_dir, NEW_PROFILE)
    np.testing.assert_allclose(got["live_embedding"][0], want["live_embedding"][0], rtol=1e-5)
    assert len(got["live_embedding"][0]) == DIM
    for t in ("life_stage", "retention_outlook"):
        assert got[f"live_{t}"] == want[f"live_{t}"]
        assert got[f"live_{t}_probs"][0] == pytest.approx(want[f"live_{t}_probs"][0])


def test_feast_serve_answers_a_wrongly_typed_profile_field_with_422(feast_server):
    body = {"features": ["reasoning_live:live_life_stage"],
            "entities": {**NEW_PROFILE, "profile_age": ["thirty"]}}
    r = feast_server.post("/get-online-features", body)
    assert r.status_code == 422, r.text
    assert "profile_age" in r.text and "expected a number" in r.text


# --------------------------------------------------------------------------- validating server


def test_validating_server_answers_like_feast_serve(feast_server, our_server):
    for body in ({"feature_service": "ltv_with_reasoning", "entities": {"user_id": [3, 4]}},
                 {"features": ["user_profile:age", "user_states:life_stage_prob"],
                  "entities": {"user_id": [5]}},
                 {"feature_service": "ltv_live", "entities": {"user_id": [10**9],
                                                              **NEW_PROFILE}}):
        a, b = feast_server.post("/get-online-features", body), \
            our_server.post("/get-online-features", body)
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        assert as_columns(a.json()) == as_columns(b.json())


def test_validating_server_fills_absent_optional_profile_fields(our_server, data_dir):
    sparse = {"profile_acquisition_channel": ["app_store"], "profile_first_day_sessions": [0]}
    r = our_server.post("/get-online-features", {"feature_service": "ltv_live",
                                                 "entities": sparse})
    assert r.status_code == 200, r.text
    full = {k: [None] for k in NEW_PROFILE}
    full.update(profile_acquisition_channel=["app_store"], profile_first_day_sessions=[0.0])
    want = expected_live(data_dir, full)
    np.testing.assert_allclose(as_columns(r.json())["live_embedding"][0],
                               want["live_embedding"][0], rtol=1e-5)


def test_unknown_user_is_not_found_not_a_value(our_server):
    r = our_server.post("/get-online-features", {"features": ["user_states:life_stage"],
                                                 "entities": {"user_id": [10**12]}})
    assert r.status_code == 200
    res = r.json()["results"][1]
    assert res["values"] == [None] and res["statuses"] == ["NOT_FOUND"]


BAD_REQUESTS = [
    ("unknown feature", {"features": ["user_profile:nope"], "entities": {"user_id": [1]}},
     404, "unknown_feature"),
    ("unknown view", {"features": ["nope:age"], "entities": {"user_id": [1]}}, 404,
     "unknown_feature_view"),
    ("unknown service", {"feature_service": "nope", "entities": {"user_id": [1]}}, 404,
     "unknown_feature_service"),
    ("reference without view", {"features": ["age"], "entities": {"user_id": [1]}}, 422,
     "bad_feature_reference"),
    ("features and service", {"features": ["user_profile:age"],
                              "feature_service": "ltv_profile_only",
                              "entities": {"user_id": [1]}}, 422, "bad_request"),
    ("no entities", {"features": ["user_profile:age"], "entities": {}}, 422, "missing_entity"),
    ("entity key missing", {"features": ["user_profile:age"], "entities": {"uid": [1]}}, 422,
     "unknown_key"),
    ("entity key missing beside request data",
     {"features": ["user_profile:age", "reasoning_live:live_life_stage"],
      "entities": NEW_PROFILE}, 422, "missing_entity"),
    ("empty rows", {"features": ["user_profile:age"], "entities": {"user_id": []}}, 422,
     "missing_entity"),
    ("non-integer id", {"features": ["user_profile:age"], "entities": {"user_id": ["abc"]}},
     422, "bad_entity"),
    ("id outside int64", {"features": ["user_profile:age"], "entities": {"user_id": [2**63]}},
     422, "bad_entity"),
    ("ragged columns", {"features": ["reasoning_live:live_life_stage"],
                        "entities": {**NEW_PROFILE, "profile_age": [30.0, 40.0]}}, 422,
     "bad_request"),
    ("profile number as text", {"features": ["reasoning_live:live_life_stage"],
                                "entities": {**NEW_PROFILE, "profile_age": ["abc"]}}, 422,
     "bad_profile_field"),
    ("profile number out of range", {"features": ["reasoning_live:live_life_stage"],
                                     "entities": {**NEW_PROFILE, "profile_age": [430.0]}}, 422,
     "bad_profile_field"),
    ("category outside its domain", {"features": ["reasoning_live:live_life_stage"],
                                     "entities": {**NEW_PROFILE,
                                                  "profile_acquisition_channel": ["pigeon"]}},
     422, "bad_profile_field"),
    ("tags not a list", {"features": ["reasoning_live:live_life_stage"],
                         "entities": {**NEW_PROFILE, "profile_interests": ["yoga"]}}, 422,
     "bad_profile_field"),
    ("required field missing", {"features": ["reasoning_live:live_life_stage"],
                                "entities": {"profile_age": [30.0]}}, 422, "bad_profile_field"),
    ("misspelt request key", {"features": ["reasoning_live:live_life_stage"],
                              "entities": {**NEW_PROFILE, "profile_agee": [30.0]}}, 422,
     "unknown_key"),
    ("entities not a mapping", {"features": ["user_profile:age"], "entities": [1, 2]}, 422,
     "bad_request"),
]


@pytest.mark.parametrize("body,status,kind", [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx(our_server, body, status, kind):
    r = our_server.post("/get-online-features", body)
    assert r.status_code == status, r.text
    got = r.json()
    assert got["error"] == kind and got["detail"]


def test_malformed_json_is_422(our_server):
    r = requests.post(our_server.url + "/get-online-features", data=b'{"features": [',
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 422


KEEP_ALIVE_CLIENTS = 4
KEEP_ALIVE_ROUNDS = 3


def test_concurrent_keep_alive_clients_see_no_resets(our_server, monkeypatch):
    """Clients on their own keep-alive sessions at once, every bad request interleaved with good
    ones: each good request is answered 200 and each bad one its 4xx, none fails at the
    connection, and each client keeps the one TCP connection it opened (a server that dropped a
    connection after an answer, as ``feast serve`` does after its errors, would show resets or
    reconnects here)."""
    from urllib3.connection import HTTPConnection

    connects: list[int] = []
    connect = HTTPConnection.connect

    def counting(conn: HTTPConnection) -> None:
        connects.append(threading.get_ident())
        connect(conn)

    monkeypatch.setattr(HTTPConnection, "connect", counting)
    good = [({"feature_service": "ltv_with_reasoning", "entities": {"user_id": [7]}}, 200),
            ({"feature_service": "ltv_live", "entities": {"user_id": [10**9], **NEW_PROFILE}},
             200)]
    bad = [(b[1], b[2]) for b in BAD_REQUESTS] + [(b'{"features": [', 422)]

    def client(i: int) -> list[tuple[int, Any, Any]]:
        got = []
        with requests.Session() as s:
            mine = (bad[i:] + bad[:i]) * KEEP_ALIVE_ROUNDS  # each client its own order
            for j, (body, want) in enumerate(mine):
                for b, w in (good[j % 2], (body, want)):
                    try:
                        if isinstance(b, bytes):
                            r = s.post(our_server.url + "/get-online-features", data=b,
                                       headers={"Content-Type": "application/json"},
                                       timeout=60)
                        else:
                            r = s.post(our_server.url + "/get-online-features", json=b,
                                       timeout=60)
                        got.append((i, w, r.status_code))
                    except requests.RequestException as e:
                        got.append((i, w, repr(e)))
        return got

    with ThreadPoolExecutor(KEEP_ALIVE_CLIENTS) as pool:
        results = [x for r in pool.map(client, range(KEEP_ALIVE_CLIENTS)) for x in r]
    assert len(results) == KEEP_ALIVE_CLIENTS * KEEP_ALIVE_ROUNDS * 2 * len(bad)
    wrong = [(i, want, got) for i, want, got in results if got != want]
    assert not wrong, wrong[:5]
    assert len(connects) == KEEP_ALIVE_CLIENTS, \
        f"{len(connects)} TCP connects for {KEEP_ALIVE_CLIENTS} keep-alive clients"


def test_lookalikes_endpoint(our_server):
    r = our_server.post("/lookalikes", {"user_id": 9, "k": 4})
    assert r.status_code == 200, r.text
    neighbours = r.json()["neighbours"]
    assert [n["rank"] for n in neighbours] == [1, 2, 3, 4]
    assert 9 not in [n["user_id"] for n in neighbours]
    assert all("life_stage" in n for n in neighbours)
    assert our_server.post("/lookalikes", {"user_id": 10**12, "k": 4}).status_code == 404
    assert our_server.post("/lookalikes", {"user_id": 9, "k": 0}).status_code == 422
