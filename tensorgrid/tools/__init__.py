"""Operators' tools: `python -m tensorgrid.tools.<name>`."""
