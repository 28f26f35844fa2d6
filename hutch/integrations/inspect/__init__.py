"""inspect_ai's ``hutch`` sandbox environment: ``inspect eval TASK --sandbox hutch``.

inspect finds it through the ``inspect_ai`` entry point, which loads
:mod:`hutch.integrations.inspect.sandboxenv` (the one module here that imports
inspect_ai); :mod:`hutch.integrations.inspect.compose` turns Dockerfile and compose
configurations into sandbox specifications without it, so that logic is tested where
inspect_ai is not installed.  This package's ``__init__`` imports neither.
"""
