"""The ``chequered`` command line: one module per command group.

The one place where the stages of the flow meet (the demo wires them together)."""
