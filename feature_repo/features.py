"""Feast definitions of a ScaleToT dataset (``feast apply`` collects the objects named here).

This file ships inside the package (``scaletot_features/store/feast_repo/``). ``scaletot
features apply DIR`` copies it into ``DIR/feast/``, where it serves DIR; the project's
``feature_repo/`` holds the same file and serves the demo's output ``runs/demo/data``, so
``cd feature_repo && feast apply`` works after ``scaletot demo``. The definitions themselves live
in ``scaletot_features.store.definitions`` and read every schema from the dataset.
"""

from scaletot_features.store.definitions import define_repo

globals().update(define_repo(__file__))
