"""``FilePatternMatcher``: Modal's ``ignore=`` helper, with ``.dockerignore`` rules.

``add_local_dir(..., ignore=FilePatternMatcher("**/*.pyc"))``, ``~FilePatternMatcher(...)``
(keep only what matches) and ``FilePatternMatcher.from_file(".gitignore")`` work as in
Modal: a path is matched with its parent directories (Docker's ``MatchesOrParentMatches``),
``!`` lines bring paths back, and the last matching line decides
(:class:`hutch.sdk.dockerparse.DockerIgnore`, which runs patterns in linear time).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from hutch.sdk.dockerparse import DockerIgnore


class _Negated:
    """``~matcher``: true where the matcher is false."""

    def __init__(self, inner: Callable[[Path], bool], shown: str) -> None:
        self._inner = inner
        self._shown = shown

    def __call__(self, path: Path) -> bool:
        return not self._inner(path)

    def __invert__(self) -> Callable[[Path], bool]:
        return self._inner

    def can_prune_directories(self) -> bool:
        return False  # a directory left out could hold a path the negation keeps

    def __repr__(self) -> str:
        return f"~{self._shown}"


class FilePatternMatcher:
    """Matches ``Path`` objects (relative to the directory being added) against patterns
    of ``.dockerignore`` syntax."""

    _file_path: str | Path | None
    _pattern_strings: tuple[str, ...] | None

    def __init__(self, *pattern: str) -> None:
        for p in pattern:
            if not isinstance(p, str):
                raise TypeError(f"patterns are strings, not {type(p).__name__}")
            if p.strip().strip(os.path.sep) == "!":
                raise ValueError('Illegal exclusion pattern: "!"')
        self._pattern_strings = pattern
        self._file_path = None

    @classmethod
    def from_file(cls, file_path: str | Path) -> FilePatternMatcher:
        """The patterns of a file (one per line, ``#`` comments), read on first use."""
        instance = cls.__new__(cls)
        instance._file_path = file_path
        instance._pattern_strings = None
        return instance

    @cached_property
    def patterns(self) -> list[str]:
        """The patterns, read from the file when there is one."""
        if self._file_path is not None:
            lines = Path(self._file_path).read_text("utf8").splitlines()
        else:
            lines = list(self._pattern_strings or ())
        return [line.strip() for line in lines if line.strip()]

    @cached_property
    def _rules(self) -> DockerIgnore:
        return DockerIgnore(self.patterns)

    def can_prune_directories(self) -> bool:
        """Whether a matched directory can be skipped whole (no ``!`` line could bring
        back something inside it)."""
        return not any(p.startswith("!") for p in self.patterns)

    def __call__(self, path: Path) -> bool:
        rel = os.path.normpath(str(path))
        return rel != "." and self._rules(rel.lstrip("/"))

    def __invert__(self) -> _Negated:
        return _Negated(self, repr(self))

    def __repr__(self) -> str:
        where = f"from_file({str(self._file_path)!r})" if self._file_path is not None else \
            ", ".join(repr(p) for p in self._pattern_strings or ())
        return f"FilePatternMatcher({where})"
