"""Process-wide settings a stage may change and must give back.

torch's CPU thread count is global to the process: a stage that pins it (the small-model stages
run fastest with one thread on two shared cores) must restore it, or every later stage of the
same process (``scaletot demo`` runs them all in one) silently inherits the pin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads (None: leave torch's setting), then restore."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
