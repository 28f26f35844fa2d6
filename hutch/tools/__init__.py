"""The ``hutch`` command line and ``hutch doctor``."""
