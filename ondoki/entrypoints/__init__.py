"""Entry points: the `ondoki` command and the composition root that wires adapters to the core.

These are the only core modules allowed to import adapters (import-linter checks it).
"""
