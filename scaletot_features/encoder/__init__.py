"""The distilled profile encoder (DESIGN.md 4.7): featuriser (``featurizer.py``, batch and
request-time), network and loaded encoder (``model.py``), artifact, batch embedding.

Training lives in ``trainers/distill_encoder.py``; this package only reads what it wrote.
"""

from scaletot_features.encoder.artifact import (
    EncoderManifestError,
    check_compatible,
    load_encoder,
    read_manifest,
    save_encoder,
)
from scaletot_features.encoder.embed import embed_population, features_dir
from scaletot_features.encoder.featurizer import FastFeaturizer, Featurizer
from scaletot_features.encoder.model import Encoder, NetworkShape, ProfileEncoderNet

__all__ = [
    "Encoder", "EncoderManifestError", "FastFeaturizer", "Featurizer", "NetworkShape",
    "ProfileEncoderNet", "check_compatible", "embed_population", "features_dir",
    "load_encoder", "read_manifest", "save_encoder",
]
