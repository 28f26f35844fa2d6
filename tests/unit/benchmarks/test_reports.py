"""The local-files and base-cost benchmarks' trees and reports (their runs need an
engine: ``python -m benchmarks.localfiles`` / ``.basecost``)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import basecost, localfiles


def test_the_tree_has_ten_thousand_files(tmp_path: Path) -> None:
    root = localfiles.make_tree(tmp_path / "t")
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) == localfiles.DIRS * localfiles.FILES == 10_000
    assert {p.stat().st_size for p in files} == {localfiles.SIZE}


def test_localfiles_report(tmp_path: Path) -> None:
    figures = {"copy=False, unchanged tree": {"median_ms": 12.34, "min_ms": 10.0,
                                              "max_ms": 20.0, "runs": 5}}
    localfiles.write(figures, tmp_path)
    assert json.loads((tmp_path / "localfiles.json").read_text()) == figures
    assert "| copy=False, unchanged tree | **12.3 ms** | 10.0 ms | 20.0 ms | 5 |" in \
        (tmp_path / "localfiles.md").read_text()


def test_basecost_sizes_and_report(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 1000)
    (tmp_path / "a" / "l").symlink_to("f")
    assert basecost._du(tmp_path / "a") == 1000 + len("f")
    result = {"python_version": "3.11", "runs": 1, "cold_build_median_s": 95.25,
              "cold_build_s": [95.25], "ref": "hutch/debian-slim:py3.11-x", "layers": 2,
              "compressed_bytes": 200 << 20, "unpacked_bytes": 600 << 20}
    basecost.write(result, tmp_path)
    text = (tmp_path / "basecost.md").read_text()
    assert "**95.2 s**" in text and "**600 MiB**" in text and "| 200 MiB |" in text
