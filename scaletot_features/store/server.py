"""A validating HTTP front for the feature store: Feast's API, with 4xx for every bad request.

``feast serve`` answers some bad requests with HTTP 500 (measured on Feast 0.67: an unknown
feature of a known view, an empty or misnamed entity key, a non-integer user id, columns of
different lengths) and needs every request-data key present, even for a missing profile field.
This server checks the request against the registry and the dataset's profile schema first, then
calls the same ``FeatureStore.get_online_features`` and answers in the same JSON shape as
``feast serve``'s ``/get-online-features``:

- 404: unknown feature service, feature view or feature;
- 422: malformed body; no entity rows; a missing or non-integer ``user_id`` where a stored view
  needs it, or one outside int64; an unknown request key; a profile value of the wrong type, outside its domain or
  range, or a required profile field missing (request data goes in ``entities`` as
  ``profile_<field>``; absent optional fields are sent to the encoder as missing);
- 500 only for a failure of the server itself, as JSON (``server_error``), and the keep-alive
  connection stays usable (:class:`AnswerServerErrors`); a ``FeastError`` gets Feast's status.

It also answers ``POST /lookalikes`` ({"user_id": 1, "k": 10}) and ``GET /health``.
Run: ``python -m scaletot_features.store.server DIR --port 6566`` (loopback by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaletot_features.data.io import read_json
from scaletot_features.dataset import DatasetLayout
from scaletot_features.profile import (
    ProfileField,
    ProfileSchema,
    ProfileValueError,
    check_value,
)

MAX_ROWS = 10_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with a message naming what is wrong."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class OnlineFeaturesRequest(BaseModel):
    """The body of ``feast serve``'s ``/get-online-features``."""

    model_config = ConfigDict(extra="forbid")

    features: list[str] | None = None
    feature_service: str | None = None
    entities: dict[str, list[Any]] = Field(default_factory=dict)
    full_feature_names: bool = False


class LookalikeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int
    k: int = Field(10, ge=1, le=1000)
    features: list[str] | None = None


@dataclass
class Catalog:
    """What the registry defines, read once: views and their features, services, request keys."""

    views: dict[str, list[str]]  # stored views -> feature names
    join_keys: dict[str, list[str]]  # stored views -> join keys
    odfvs: dict[str, list[str]]  # on-demand views -> feature names
    odfv_requests: dict[str, list[str]]  # on-demand views -> request-data keys
    services: dict[str, list[str]]  # service -> "view:feature" references
    request_fields: dict[str, ProfileField] = field(default_factory=dict)  # key -> profile field

    @classmethod
    def from_store(cls, fs: Any, schema: ProfileSchema, prefix: str = "profile_") -> "Catalog":
        views = {v.name: [f.name for f in v.features] for v in fs.list_feature_views()
                 if v.online}
        join_keys = {v.name: [c.name for c in v.entity_columns] for v in fs.list_feature_views()
                     if v.online}
        odfvs, requests = {}, {}
        for o in fs.list_on_demand_feature_views():
            odfvs[o.name] = [f.name for f in o.features]
            requests[o.name] = [f.name for src in o.source_request_sources.values()
                                for f in src.schema]
        services = {s.name: [f"{p.name_to_use()}:{f.name}" for p in s.feature_view_projections
                             for f in p.features] for s in fs.list_feature_services()}
        fields = {prefix + f.name: f for f in schema.fields}
        return cls(views, join_keys, odfvs, requests, services, fields)

    def resolve(self, body: OnlineFeaturesRequest) -> list[str]:
        if (body.features is None) == (body.feature_service is None):
            raise RequestError(422, "bad_request",
                               "give exactly one of 'features' and 'feature_service'")
        if body.feature_service is not None:
            if body.feature_service not in self.services:
                raise RequestError(404, "unknown_feature_service",
                                   f"unknown feature service {body.feature_service!r}; known: "
                                   f"{sorted(self.services)}")
            return self.services[body.feature_service]
        assert body.features is not None
        if not body.features:
            raise RequestError(422, "bad_request", "'features' is empty")
        for ref in body.features:
            view, sep, feat = ref.partition(":")
            if not sep or not view or not feat:
                raise RequestError(422, "bad_feature_reference",
                                   f"feature reference {ref!r} is not 'view:feature'")
            known = self.views.get(view, self.odfvs.get(view))
            if known is None:
                raise RequestError(404, "unknown_feature_view",
                                   f"unknown feature view {view!r}; known: "
                                   f"{sorted(self.views) + sorted(self.odfvs)}")
            if feat not in known:
                raise RequestError(404, "unknown_feature",
                                   f"unknown feature {feat!r} in view {view!r}; known: {known}")
        return list(body.features)


def _check_value(key: str, f: ProfileField, v: Any, row: int) -> Any:
    """The value as Feast wants it (floats for Float64 request data), or a 422 naming the key."""
    try:
        return check_value(f, v, strict=True)
    except ProfileValueError as e:
        raise RequestError(422, "bad_profile_field", f"{key} (row {row}): {e}") from None


def validate_entities(catalog: Catalog, refs: list[str], entities: dict[str, list[Any]]
                      ) -> dict[str, list[Any]]:
    """The entity columns Feast should get: checked, typed, missing optional fields as null."""
    views = {r.partition(":")[0] for r in refs}
    keys_needed = sorted({k for v in views if v in catalog.views for k in catalog.join_keys[v]})
    request_needed = sorted({k for v in views if v in catalog.odfvs
                             for k in catalog.odfv_requests[v]})
    if not entities:
        raise RequestError(422, "missing_entity", "no entity rows: 'entities' is empty"
                           + (f"; it needs {keys_needed}" if keys_needed else ""))
    lengths = {k: len(v) for k, v in entities.items()}
    if len(set(lengths.values())) != 1:
        raise RequestError(422, "bad_request", f"entity columns have different lengths {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise RequestError(422, "missing_entity", "no entity rows: the columns are empty")
    if n > MAX_ROWS:
        raise RequestError(422, "bad_request", f"{n} rows; at most {MAX_ROWS} per request")
    allowed = set(keys_needed) | set(request_needed) | {"user_id"}
    unknown = sorted(set(entities) - allowed)
    if unknown:
        raise RequestError(422, "unknown_key",
                           f"unknown entity/request keys {unknown}; expected {sorted(allowed)}")
    for key in keys_needed:
        if key not in entities:
            raise RequestError(422, "missing_entity", f"missing entity key {key!r} (needed by "
                               f"{sorted(v for v in views if v in catalog.views)})")
    out: dict[str, list[Any]] = {}
    if "user_id" in entities:
        ids = entities["user_id"]
        bad = [v for v in ids if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise RequestError(422, "bad_entity",
                               f"user_id values must be integers, got {bad[0]!r}")
        big = [v for v in ids if not INT64_MIN <= v <= INT64_MAX]
        if big:  # Feast's int64 join key would fail on it with a 500
            raise RequestError(422, "bad_entity",
                               f"user_id values must fit in int64, got {big[0]}")
        out["user_id"] = ids
    for key in request_needed:
        f = catalog.request_fields.get(key)
        values = entities.get(key, [None] * n)
        if f is None:  # a request key the profile schema does not know: pass it through
            out[key] = values
            continue
        out[key] = [_check_value(key, f, v, i) for i, v in enumerate(values)]
    return out


class AnswerServerErrors:
    """ASGI middleware: an exception of the app becomes a JSON answer here, and goes no further.

    Starlette's outermost error middleware answers an unhandled exception with a 500 and then
    re-raises it (so does a handler registered for ``Exception``, which is how ``feast serve``
    answers its errors); uvicorn then closes the connection after a response that did not say
    ``Connection: close``, and a keep-alive client's next request on it is reset (measured on
    ``feast serve``: docs/feast.md). Here a ``FeastError`` gets its own status (Feast's mapping),
    anything else a logged 500 ``server_error``, and the connection stays usable.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def _send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception as e:
            if started:  # half an answer is out: nothing to do but let the server close it
                raise
            from fastapi.responses import JSONResponse
            from feast.errors import FeastError

            if isinstance(e, FeastError):
                status, kind = e.http_status_code(), "feast_error"
            else:
                status, kind = 500, "server_error"
            if status >= 500:
                logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            response = JSONResponse(status_code=status, content={
                "error": kind, "detail": f"{type(e).__name__}: {e}"[:2000]})
            await response(scope, receive, send)


def _warm(fs: Any, catalog: Catalog, data_dir: Path, repo_dir: Path | str | None) -> None:
    """Load the encoder, the lookalike index and the online store before the first request."""
    from scaletot_features.store.lookalike import load_or_build_index
    from scaletot_features.store.transforms import get_encoder

    for o in fs.list_on_demand_feature_views():
        if o.tags.get("encoder_dir"):
            embedder = get_encoder(o.tags["encoder_dir"]).featurizer.text_embedder
            if embedder is not None:  # the sentence model loads at its first string
                import pyarrow as pa

                embedder.embed(pa.array(["warm-up"]))
    if catalog.views:
        view = sorted(catalog.views)[0]
        fs.get_online_features(features=[f"{view}:{catalog.views[view][0]}"],
                               entity_rows=[{"user_id": 0}])
    if "user_embedding" in catalog.views:
        load_or_build_index(data_dir, repo_dir=repo_dir)


def create_app(data_dir: Path | str, repo_dir: Path | str | None = None) -> Any:
    """The FastAPI app over the dataset's applied and materialized repository."""
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from feast.feature_server_utils import convert_response_to_dict

    from scaletot_features.store.lookalike import lookalikes
    from scaletot_features.store.repo import StoreError, get_store

    data_dir = Path(data_dir).resolve()
    fs = get_store(data_dir, repo_dir)
    schema = ProfileSchema.model_validate(
        read_json(DatasetLayout(data_dir).manifest)["profile_schema"])
    catalog = Catalog.from_store(fs, schema)
    # read once: a registry lookup per request costs ~15 ms (restart the server after apply)
    services = {s.name: s for s in fs.list_feature_services()}
    _warm(fs, catalog, data_dir, repo_dir)
    app = FastAPI(title="ScaleToT feature server", version="1")
    app.add_middleware(AnswerServerErrors)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(status_code=e.status, content={"error": e.kind, "detail": e.message})

    @app.exception_handler(RequestValidationError)
    async def _body_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": "bad_request",
                                                      "detail": jsonable_encoder(e.errors())})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "views": sorted(catalog.views), "on_demand": sorted(catalog.odfvs),
                "services": sorted(catalog.services)}

    @app.post("/get-online-features")
    async def get_online_features(body: OnlineFeaturesRequest) -> JSONResponse:
        refs = catalog.resolve(body)
        entities = validate_entities(catalog, refs, body.entities)
        features: Any = services[body.feature_service] if body.feature_service else refs
        response = await run_in_threadpool(
            lambda: fs.get_online_features(features=features, entity_rows=entities,
                                           full_feature_names=body.full_feature_names))
        return JSONResponse(content=convert_response_to_dict(response.proto))

    @app.post("/lookalikes")
    async def post_lookalikes(body: LookalikeRequest) -> JSONResponse:
        if body.features is not None:
            catalog.resolve(OnlineFeaturesRequest(features=body.features))
        try:
            frame = await run_in_threadpool(
                lambda: lookalikes(data_dir, body.user_id, body.k, body.features,
                                   repo_dir=repo_dir))
        except StoreError as e:
            raise RequestError(404, "not_found", str(e)) from e
        return JSONResponse(content={"user_id": body.user_id,
                                     "neighbours": frame.to_dict(orient="records")})

    return app


def serve(data_dir: Path | str, host: str = "127.0.0.1", port: int = 6566,
          repo_dir: Path | str | None = None) -> None:
    """Run the server until interrupted (loopback unless ``host`` says otherwise)."""
    import uvicorn

    uvicorn.run(create_app(data_dir, repo_dir), host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6566)
    p.add_argument("--repo-dir", type=Path, default=None)
    a = p.parse_args(argv)
    serve(a.data_dir, a.host, a.port, a.repo_dir)


if __name__ == "__main__":
    main()


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server started with ``start_new_session=True``: SIGTERM its group, then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
