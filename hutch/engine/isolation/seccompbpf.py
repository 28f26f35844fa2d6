"""The sandbox seccomp profile compiled to BPF once per engine, with the host's libseccomp.

crun compiles ``linux.seccomp`` with libseccomp at every ``create`` and ``exec``; for the
default allowlist (400 syscalls, five architectures) that takes about 55 ms, more than the
rest of a sandbox's start.  crun also accepts the compiled program itself, base64-encoded,
in the ``run.oci.seccomp_bpf_data`` annotation (podman's seccomp cache hands it over the
same way), and then skips the compilation.  So the engine compiles the profile once, with
the same library and the same rules crun would use (``seccomp_rule_add_array`` per syscall
name, names libseccomp does not know skipped), and every sandbox's ``config.json`` carries
both: the annotation for crun, the ``linux.seccomp`` object for runc (which ignores the
annotation) and for the schema.

If libseccomp cannot be loaded the annotation is left out and crun compiles as usual.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import logging
import os
import tempfile

from hutch.engine.isolation.seccomp import Seccomp, default_profile

log = logging.getLogger("hutch.seccomp")

ANNOTATION = "run.oci.seccomp_bpf_data"

_ACTIONS = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
            "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_LOG": 0x7FFC0000,
            "SCMP_ACT_ALLOW": 0x7FFF0000}
_ERRNO = 0x00050000
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_NR_ERROR = -1  # __NR_SCMP_ERROR: a name this libseccomp does not know


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class SeccompCompileError(RuntimeError):
    pass


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _action(name: str, errno_ret: int | None, default_errno: int) -> int:
    if name == "SCMP_ACT_ERRNO":
        return _ERRNO | ((errno_ret if errno_ret is not None else default_errno) & 0xFFFF)
    if name not in _ACTIONS:
        raise SeccompCompileError(f"unsupported seccomp action {name}")
    return _ACTIONS[name]


def compile_profile(profile: Seccomp) -> bytes:
    """The BPF program (``struct sock_filter`` array) of ``profile``, as crun would build
    it with this host's libseccomp."""
    import errno as errno_module

    lib = _library()
    default = _action(profile.default_action, profile.default_errno_ret, errno_module.EPERM)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompCompileError("seccomp_init failed")
    try:
        for arch in profile.architectures or []:
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower()
                                                  .encode())
            if token == 0:
                continue  # this libseccomp does not know the architecture: crun skips it too
            rc = lib.seccomp_arch_add(ctx, token)
            if rc not in (0, -errno_module.EEXIST):
                raise SeccompCompileError(f"seccomp_arch_add({arch}): {os.strerror(-rc)}")
        for rule in profile.syscalls or []:
            action = _action(rule.action, rule.errno_ret, errno_module.EPERM)
            args = rule.args or []
            array = (_ArgCmp * max(1, len(args)))(*[
                _ArgCmp(a.index, _OPS[a.op], a.value, a.value_two or 0) for a in args])
            for name in rule.names:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number == _NR_ERROR:
                    continue
                rc = lib.seccomp_rule_add_array(ctx, action, number, len(args), array)
                if rc < 0 and rc != -errno_module.EACCES:  # EACCES: same as the default
                    raise SeccompCompileError(
                        f"seccomp_rule_add({name}): {os.strerror(-rc)}")
        with tempfile.TemporaryFile() as out:
            rc = lib.seccomp_export_bpf(ctx, out.fileno())
            if rc < 0:
                raise SeccompCompileError(f"seccomp_export_bpf: {os.strerror(-rc)}")
            out.seek(0)
            return out.read()
    finally:
        lib.seccomp_release(ctx)


@functools.lru_cache(maxsize=1)
def default_annotation() -> dict[str, str]:
    """``{ANNOTATION: base64 BPF}`` for the default profile, or ``{}`` when it cannot be
    compiled here (crun then compiles the JSON profile itself)."""
    try:
        program = compile_profile(default_profile())
    except (OSError, AttributeError, SeccompCompileError) as exc:
        log.warning("seccomp profile not precompiled (crun will compile it per sandbox): %s",
                    exc)
        return {}
    return {ANNOTATION: base64.b64encode(program).decode()}
