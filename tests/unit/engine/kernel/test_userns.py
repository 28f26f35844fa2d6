"""hutch.engine.kernel.userns.subid_range: parsing /etc/subuid-style files."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from hutch.engine.kernel import userns
from hutch.engine.kernel.userns import SubIdRange, subid_range


def _unused_uid() -> int:
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


@pytest.fixture
def me() -> tuple[int, str]:
    uid = os.getuid()
    return uid, pwd.getpwuid(uid).pw_name


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "subuid"
    path.write_text(text)
    return str(path)


def test_by_name(tmp_path: Path, me: tuple[int, str]) -> None:
    uid, name = me
    f = _write(tmp_path, f"someoneelse:100000:65536\n{name}:165536:65536\n")
    assert subid_range(f, uid) == SubIdRange(165536, 65536)


def test_by_numeric_uid(tmp_path: Path, me: tuple[int, str]) -> None:
    uid, _ = me
    f = _write(tmp_path, f"{uid}:200000:1000\n")
    assert subid_range(f, uid) == SubIdRange(200000, 1000)


def test_uid_without_passwd_entry(tmp_path: Path) -> None:
    uid = _unused_uid()
    f = _write(tmp_path, f"None:1:1\n{uid}:300000:5\n")
    assert subid_range(f, uid) == SubIdRange(300000, 5)


def test_first_matching_range_wins(tmp_path: Path, me: tuple[int, str]) -> None:
    uid, name = me
    f = _write(tmp_path, f"{name}:100000:10\n{uid}:200000:20\n{name}:300000:30\n")
    assert subid_range(f, uid) == SubIdRange(100000, 10)


def test_comments_blank_and_malformed_lines(tmp_path: Path, me: tuple[int, str]) -> None:
    uid, name = me
    f = _write(tmp_path, "\n".join([
        "# a comment",
        f"#{name}:1:65536",            # commented-out entry for this user
        "",
        "   ",
        f"{name}:100000",              # too few fields
        f"{name}:100000:65536:extra",  # too many fields
        f"{name}:abc:65536",           # start not a number
        f"{name}:100000:lots",         # count not a number
        f"{name}:-5:10",               # negative start
        f"{name}:100000:0",            # zero count
        f"{name}x:1:2",                # another user whose name has ours as prefix
        f"  {name}:400000:65536  ",    # surrounding whitespace is fine
        f"{name}:500000:65536",
    ]) + "\n")
    assert subid_range(f, uid) == SubIdRange(400000, 65536)


def test_zero_count_only(tmp_path: Path, me: tuple[int, str]) -> None:
    uid, name = me
    assert subid_range(_write(tmp_path, f"{name}:100000:0\n"), uid) is None


def test_no_entry_for_user(tmp_path: Path, me: tuple[int, str]) -> None:
    uid, name = me
    f = _write(tmp_path, f"{name}x:100000:65536\n{uid + 1}:100000:65536\n")
    assert subid_range(f, uid) is None
    assert subid_range(_write(tmp_path, ""), uid) is None


def test_missing_or_unreadable_file(tmp_path: Path, me: tuple[int, str]) -> None:
    uid, _ = me
    assert subid_range(str(tmp_path / "does-not-exist"), uid) is None
    assert subid_range(str(tmp_path), uid) is None  # a directory


def test_plan_full_needs_both_ranges() -> None:
    r = SubIdRange(100000, 65536)
    assert userns.IdMapPlan(1000, 1000, None, r).full is False
    assert userns.IdMapPlan(1000, 1000, r, None).full is False
    plan = userns.plan_for_current_user()
    assert (plan.uid, plan.gid) == (os.getuid(), os.getgid())
