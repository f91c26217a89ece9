"""The CLI layer: the ``scaletot`` command line (``app.py``) and the demo's orchestration
(``demo.py``).

This package is the top of the library: the only part of ``scaletot_features`` that imports
``trainers/`` and ``validation/`` (tests/test_boundary.py walks the imports). It hands what the
library needs from them as arguments, e.g. the reasoning-feature gate to ``materialize``.
"""

from scaletot_features.cli.app import app, main

__all__ = ["app", "main"]
