"""hutch.engine.isolation.seccomp: the sandbox's seccomp allowlist.

The rules are checked here by a small evaluator with the semantics runtimes give them
(a rule matches when all its argument comparisons hold; no match means the default
action), against the kernel's syscall tables in the host's headers, and against the names
libseccomp knows.  That the runtimes really enforce it is the security battery's job
(tests/security).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema.protocols import Validator

from hutch.engine.isolation import seccomp

SECCOMP_REF = "config-linux.json#/linux/properties/seccomp"
ALLOW = "allow"



def _words(text: str) -> list[str]:
    return text.split()


#: What the issue says must be refused with EPERM.
MUST_REFUSE = _words("""
keyctl add_key request_key bpf perf_event_open userfaultfd init_module finit_module
delete_module kexec_load kexec_file_load clock_settime clock_adjtime settimeofday adjtimex
stime mount umount2 pivot_root swapon swapoff reboot acct quotactl lookup_dcookie
open_by_handle_at name_to_handle_at iopl ioperm syslog setns io_uring_setup io_uring_enter
io_uring_register open_tree move_mount fsopen fsmount fsconfig fspick mount_setattr
""")

#: What ordinary programs need (Python threads and subprocesses, pip, apt, gcc, git).
MUST_ALLOW = _words("""
read write openat close mmap mprotect munmap brk futex rt_sigaction rt_sigprocmask execve
wait4 pipe2 dup3 getdents64 newfstatat statx faccessat2 fchmodat fchownat rseq prctl
set_robust_list set_tid_address getrandom socket connect sendto recvfrom epoll_wait
ppoll ptrace process_vm_readv setresuid setgroups chroot sched_getaffinity prlimit64
""")

#: Syscalls newer than the libseccomp the tests may meet (2.5.4 in Debian 12).
NEWER_THAN_LIBSECCOMP = {
    "file_getattr", "file_setattr", "getxattrat", "listmount", "listxattrat",
    "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mseal", "open_tree_attr",
    "removexattrat", "setxattrat", "statmount", "sync_file_range2", "uprobe", "uretprobe",
}

CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM, CLONE_SETTLS = 0x10000, 0x40000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x100000, 0x200000, 0x1000000
CLONE_VFORK, SIGCHLD = 0x4000, 17
#: glibc's pthread_create, fork and posix_spawn.
PTHREAD = (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
           | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID)
FORK = CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
SPAWN = CLONE_VM | CLONE_VFORK | SIGCHLD


def _holds(arg: dict[str, Any], args: tuple[int, ...]) -> bool:
    value = args[arg["index"]] if arg["index"] < len(args) else 0
    op, want = arg["op"], arg["value"]
    if op == "SCMP_CMP_MASKED_EQ":
        return value & want == arg["valueTwo"]
    compare: dict[str, Callable[[int, int], bool]] = {
        "SCMP_CMP_EQ": int.__eq__, "SCMP_CMP_NE": int.__ne__, "SCMP_CMP_LT": int.__lt__,
        "SCMP_CMP_LE": int.__le__, "SCMP_CMP_GT": int.__gt__, "SCMP_CMP_GE": int.__ge__,
    }
    return compare[op](value, want)


def evaluate(profile: dict[str, Any], name: str, *args: int) -> str | int:
    """``"allow"`` or the errno a call gets; fails when rules with different outcomes
    match (runtimes would have to choose)."""
    outcomes = set()
    for rule in profile["syscalls"]:
        if name in rule["names"] and all(_holds(a, args) for a in rule.get("args", [])):
            outcomes.add(ALLOW if rule["action"] == "SCMP_ACT_ALLOW" else rule["errnoRet"])
    assert len(outcomes) <= 1, f"{name}{args}: conflicting rules {outcomes}"
    return outcomes.pop() if outcomes else profile["defaultErrnoRet"]


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    return seccomp.profile_json()


def test_profile_validates_against_the_schema(
    runtime_validator: Callable[..., Validator], profile: dict[str, Any]
) -> None:
    validator = runtime_validator(SECCOMP_REF)
    assert list(validator.iter_errors(profile)) == []
    # and the validator really looks at the rules
    bad = {**profile, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_MAYBE"}]}
    assert list(validator.iter_errors(bad))
    assert list(validator.iter_errors({**profile, "architectures": ["SCMP_ARCH_Z80"]}))


def test_default_is_enosys_and_architectures(profile: dict[str, Any]) -> None:
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.ENOSYS
    expected = {"x86_64": {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"},
                "aarch64": {"SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"}}
    if platform.machine() in expected:  # only the host's own architectures
        assert set(profile["architectures"]) == expected[platform.machine()]
    assert evaluate(profile, "a_syscall_of_the_future") == errno.ENOSYS
    assert all(rule["names"] for rule in profile["syscalls"])


def test_each_syscall_has_one_class() -> None:
    classes = [seccomp.ALLOWED, seccomp.DENIED, seccomp.CONDITIONAL, seccomp.UNIMPLEMENTED]
    for i, a in enumerate(classes):
        for b in classes[i + 1:]:
            assert not a & b


@pytest.mark.parametrize("name", MUST_REFUSE)
def test_dangerous_syscalls_get_eperm(profile: dict[str, Any], name: str) -> None:
    assert evaluate(profile, name) == errno.EPERM
    assert evaluate(profile, name, 0, 0, 0) == errno.EPERM


@pytest.mark.parametrize("name", MUST_ALLOW)
def test_ordinary_syscalls_are_allowed(profile: dict[str, Any], name: str) -> None:
    assert evaluate(profile, name, 2, 1, 0) == ALLOW


def test_clone_refuses_namespace_flags_only(profile: dict[str, Any]) -> None:
    for flags in (PTHREAD, FORK, SPAWN, SIGCHLD, 0):
        assert evaluate(profile, "clone", flags) == ALLOW, hex(flags)
    for name, bit in seccomp.CLONE_NAMESPACES.items():
        assert evaluate(profile, "clone", bit) == errno.EPERM, name
        assert evaluate(profile, "clone", bit | FORK) == errno.EPERM, name
    every = sum(seccomp.CLONE_NAMESPACES.values())
    assert evaluate(profile, "clone", every | SIGCHLD) == errno.EPERM
    # CLONE_NEWTIME's bit is part of clone's exit signal (0x80 | SIGCHLD is fine there)
    assert evaluate(profile, "clone", seccomp.CLONE_NEWTIME | SIGCHLD) == ALLOW
    # high bits of the 64-bit register do not hide a namespace flag
    assert evaluate(profile, "clone", (1 << 40) | 0x10000000) == errno.EPERM
    assert evaluate(profile, "clone3", 0, 88) == errno.ENOSYS  # libc falls back to clone


def test_unshare_refuses_namespace_flags_only(profile: dict[str, Any]) -> None:
    for flags in (0, CLONE_FILES, CLONE_FS, CLONE_SYSVSEM, CLONE_FILES | CLONE_FS):
        assert evaluate(profile, "unshare", flags) == ALLOW, hex(flags)
    for name, bit in [*seccomp.CLONE_NAMESPACES.items(), ("NEWTIME", seccomp.CLONE_NEWTIME)]:
        assert evaluate(profile, "unshare", bit) == errno.EPERM, name
        assert evaluate(profile, "unshare", bit | CLONE_FILES) == errno.EPERM, name
    assert evaluate(profile, "setns", 3, 0) == errno.EPERM


def test_personality_and_sockets(profile: dict[str, Any]) -> None:
    for value in (0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert evaluate(profile, "personality", value) == ALLOW, hex(value)
    for value in (0x40000, 0x400000, 0x100000):  # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...
        assert evaluate(profile, "personality", value) != ALLOW, hex(value)
    for family in (1, 2, 10, 16, 17):  # unix, inet, inet6, netlink, packet
        assert evaluate(profile, "socket", family, 1, 0) == ALLOW, family
    assert evaluate(profile, "socket", seccomp.AF_VSOCK, 1, 0) == errno.EPERM
    assert evaluate(profile, "socketcall", 1, 0) == errno.EPERM


def test_no_rules_conflict_on_sampled_arguments(profile: dict[str, Any]) -> None:
    values = [0, 1, 2, 8, 17, 40, 0x80, 0xFFFFFFFF, 1 << 63, *seccomp.PERSONALITIES,
              *seccomp.CLONE_NAMESPACES.values()]
    names = {n for rule in profile["syscalls"] if "args" in rule for n in rule["names"]}
    for name in names:
        for value in values:
            evaluate(profile, name, value)  # asserts a single outcome


def _header_names(path: Path, pattern: str) -> set[str]:
    return set(re.findall(pattern, path.read_text()))


HEADERS = [
    ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"#define __NR_(\w+)"),
    ("/usr/include/x86_64-linux-gnu/asm/unistd_32.h", r"#define __NR_(\w+)"),
    ("/usr/include/x86_64-linux-gnu/asm/unistd_x32.h", r"#define __NR_(\w+)"),
    ("/usr/include/aarch64-linux-gnu/asm/unistd.h", r"#define __NR(?:3264)?_(\w+)"),
    ("/usr/include/asm-generic/unistd.h", r"#define __NR(?:3264)?_(\w+)"),
]
#: Header macros that are not syscalls, or syscalls libseccomp spells differently.
NOT_SYSCALLS = {"arch_specific_syscall", "syscalls", "fstatat", "llseek"}


@pytest.mark.parametrize("header,pattern", HEADERS)
def test_every_syscall_of_the_kernel_tables_is_classified(header: str, pattern: str) -> None:
    path = Path(header)
    if not path.is_file():
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    names = _header_names(path, pattern) - NOT_SYSCALLS
    assert len(names) > 250
    known = seccomp.ALLOWED | seccomp.DENIED | seccomp.CONDITIONAL | seccomp.UNIMPLEMENTED
    assert sorted(names - known) == []


# libseccomp's architecture tokens (the kernel's AUDIT_ARCH_* values).
ARCH_TOKENS = [0xC000003E, 0x40000003, 0x4000003E, 0xC00000B7, 0x40000028]


def test_names_are_known_to_libseccomp(profile: dict[str, Any]) -> None:
    """A misspelt name would be skipped by the runtimes without a word."""
    libname = ctypes.util.find_library("seccomp")
    if libname is None:
        pytest.skip("libseccomp is not installed")
    lib = ctypes.CDLL(libname)
    resolve = lib.seccomp_syscall_resolve_name_arch
    resolve.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    resolve.restype = ctypes.c_int
    names = {n for rule in profile["syscalls"] for n in rule["names"]}
    unknown = {n for n in names if all(resolve(a, n.encode()) < 0 for a in ARCH_TOKENS)}
    assert unknown <= NEWER_THAN_LIBSECCOMP
    assert "read" not in unknown and "clone3" not in unknown


def test_the_precompiled_program_is_the_profile_and_a_valid_filter() -> None:
    """The annotation crun loads instead of compiling: libseccomp's BPF of the profile."""
    import base64

    from hutch.engine.isolation import seccompbpf
    from hutch.engine.isolation.seccomp import default_profile

    program = seccompbpf.compile_profile(default_profile())
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes each
    assert len(program) // 8 < 4096  # the kernel's limit on filter length
    annotation = seccompbpf.default_annotation()[seccompbpf.ANNOTATION]
    assert base64.b64decode(annotation) == program
    smaller = default_profile().model_copy(update={"syscalls": []})
    assert seccompbpf.compile_profile(smaller) != program  # the rules are in it
