"""Modal's FilePatternMatcher on hutch's .dockerignore rules, as Modal's examples use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.sdk.filepatterns import FilePatternMatcher
from hutch.sdk.localfiles import tar_directory


def test_matching_negation_and_parents() -> None:
    matcher = FilePatternMatcher("*.py")
    assert matcher(Path("foo.py")) and not matcher(Path("foo.txt"))
    assert not (~matcher)(Path("foo.py")) and (~matcher)(Path("foo.txt"))
    deep = FilePatternMatcher("**/*.txt", "!keep/**")
    assert deep(Path("a/b/c.txt")) and not deep(Path("keep/x.txt"))
    assert not deep.can_prune_directories() and FilePatternMatcher("x").can_prune_directories()
    assert FilePatternMatcher("build")(Path("build/out/file.o"))  # a parent matches
    assert not FilePatternMatcher("*")(Path("."))  # never the whole directory
    with pytest.raises(ValueError, match="exclusion"):
        FilePatternMatcher("!")


def test_from_file_reads_lazily(tmp_path: Path) -> None:
    rules = tmp_path / "ignore"
    matcher = FilePatternMatcher.from_file(rules)
    rules.write_text("# comment\n*.log\n\n!important.log\n")
    assert matcher(Path("x.log")) and not matcher(Path("important.log"))
    assert matcher.patterns == ["# comment", "*.log", "!important.log"]
    assert "from_file" in repr(matcher) and repr(~matcher).startswith("~")


def test_it_is_an_ignore_predicate(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("c")
    import io
    import tarfile

    def names(data: bytes) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return sorted(m.name for m in tar.getmembers())

    assert names(tar_directory(tmp_path, FilePatternMatcher("**/*.py"))) == ["b.txt", "sub"]
    assert names(tar_directory(tmp_path, ~FilePatternMatcher("**/*.py", "sub"))) == \
        ["a.py", "sub", "sub/c.py"]


def test_exceptions_inside_ignored_directories_are_kept(tmp_path: Path) -> None:
    """Modal's "only .py files" (``~FilePatternMatcher("**/*.py")``) and a ``!`` rule
    inside an ignored directory: such directories are walked, not skipped whole."""
    import io
    import tarfile

    from hutch.sdk.dockerparse import DockerIgnore
    from hutch.sdk.localfiles import ignored_paths

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "m.py").write_text("m")
    (tmp_path / "pkg" / "notes.txt").write_text("n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "keep.txt").write_text("k")
    (tmp_path / "build" / "junk.o").write_text("j")

    def files(data: bytes) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return sorted(m.name for m in tar.getmembers() if m.isfile())

    only_py = ~FilePatternMatcher("**/*.py")
    assert files(tar_directory(tmp_path, only_py)) == ["pkg/sub/m.py"]
    rules = DockerIgnore(["build", "!build/keep.txt"])

    def ignore(rel: Path) -> bool:
        return rules(rel.as_posix())

    ignore.can_prune_directories = rules.can_prune_directories  # type: ignore[attr-defined]
    assert "build/keep.txt" in files(tar_directory(tmp_path, ignore))
    assert "build/junk.o" not in files(tar_directory(tmp_path, ignore))
    assert ignored_paths(tmp_path, only_py) == ["build/junk.o", "build/keep.txt",
                                                "pkg/notes.txt"]
