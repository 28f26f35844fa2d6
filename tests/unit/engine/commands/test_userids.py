"""Users of an exec, looked up as Docker does in the sandbox's own files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hutch.engine.commands import userids

PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
          "dev:x:1000:1000::/home/dev:/bin/sh\n"
          "broken:x:notanumber:1::/:/bin/sh\n")
GROUP = "root:x:0:\nnogroup:x:65534:\ndev:x:1000:\ndocker:x:999:dev,other\nstaff:x:50:dev\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "passwd").write_text(PASSWD)
    (tmp_path / "group").write_text(GROUP)
    return str(tmp_path / "passwd"), str(tmp_path / "group")


def test_a_name_gives_its_ids_groups_and_home(files: tuple[str, str]) -> None:
    who = userids.resolve("dev", *files)
    assert who == userids.Identity(1000, 1000, (1000, 999, 50), "/home/dev")


def test_a_uid_in_the_file_is_that_user(files: tuple[str, str]) -> None:
    assert userids.resolve("65534", *files) == userids.Identity(65534, 65534, (65534,),
                                                                "/nonexistent")


def test_a_uid_nobody_names_gets_group_0_and_home_slash(files: tuple[str, str]) -> None:
    assert userids.resolve("4242", *files) == userids.Identity(4242, 0, (0,), "/")


def test_a_group_by_name_or_number(files: tuple[str, str]) -> None:
    assert userids.resolve("dev:staff", *files).gid == 50
    assert userids.resolve("dev:7777", *files).gid == 7777
    with pytest.raises(userids.UnknownUser, match="unable to find group nosuch"):
        userids.resolve("dev:nosuch", *files)


def test_an_unknown_name_is_refused(files: tuple[str, str]) -> None:
    with pytest.raises(userids.UnknownUser, match="unable to find user ghost"):
        userids.resolve("ghost", *files)
    with pytest.raises(userids.UnknownUser):
        userids.resolve("broken", *files)  # a record whose uid is no number is no user


@pytest.mark.parametrize("spec", ["", ":", "a:", "../x", "a b", "x" * 40, "9" * 11, "a:b:c"])
def test_malformed_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        userids.check_spec(spec)


def test_a_fifo_or_a_directory_for_passwd_is_no_file_and_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "passwd"
    os.mkfifo(fifo)  # nobody writes it: an open without O_NONBLOCK would hang here
    assert userids.read_db(str(fifo)) == []
    assert userids.read_db(str(tmp_path)) == []
    assert userids.resolve("12", str(fifo), str(tmp_path)).uid == 12


def test_only_the_first_megabyte_is_read(tmp_path: Path) -> None:
    big = tmp_path / "passwd"
    big.write_text("x" * userids.DB_MAX + "\nlate:x:5:5::/late:/bin/sh\n")
    with pytest.raises(userids.UnknownUser):
        userids.resolve("late", str(big), str(big))


def test_home_of(files: tuple[str, str]) -> None:
    assert userids.home_of(0, files[0]) == "/root"
    assert userids.home_of(3, files[0]) == "/"


def test_ids_outside_the_maps_are_named(tmp_path: Path) -> None:
    maps = tmp_path / "map"
    maps.write_text("         0     100000       1024\n     65534     101024          1\n")
    who = userids.Identity(5000, 0, (0,), "/")
    reason = userids.unmapped(who, str(maps), str(maps))
    assert reason is not None and "user id 5000 is not mapped" in reason
    assert "0-1023, 65534" in reason
    assert userids.unmapped(userids.Identity(65534, 1000, (), "/"), str(maps), str(maps)) \
        is None
    group_reason = userids.unmapped(userids.Identity(0, 2000, (), "/"), str(maps), str(maps))
    assert group_reason is not None and "group id 2000" in group_reason
    # no maps to read: nothing to say (the kernel's EINVAL is the answer then)
    assert userids.unmapped(who, str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_root_home_comes_from_passwd_and_follows_its_changes(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("daemon:x:1:1::/usr/sbin:/bin/false\nroot:x:0:0:root:/var/root:/bin/sh\n")
    home = userids.RootHome(str(passwd))
    assert home.get() == "/var/root"
    assert home.get() == "/var/root"  # (from what it read: the file is the same)
    passwd.write_text("root:x:0:0:root:/home/admin:/bin/sh\n")  # another size
    assert home.get() == "/home/admin"
    replaced = tmp_path / "passwd.new"
    replaced.write_text("root:x:0:0:root:/home/adm1n:/bin/sh\n")  # same size, new inode
    replaced.rename(passwd)
    assert home.get() == "/home/adm1n"
    passwd.write_text("daemon:x:1:1::/usr/sbin:/bin/false\n")
    assert home.get() == "/"
    passwd.unlink()
    assert home.get() == "/"
    os.mkfifo(passwd)  # nobody writes it: an open that blocked would never return
    assert home.get() == "/"
