"""The image store (an OCI layout) and what fills it: imports, layers, steps; no engine."""
