"""``python -m scaletot_features.cli``: the same command line as ``scaletot``."""

from scaletot_features.cli.app import main

main()
