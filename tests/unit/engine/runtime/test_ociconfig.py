"""hutch.engine.runtime.ociconfig: the generated config.json is a valid runtime-spec document with
podman-like defaults."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from jsonschema.protocols import Validator

from hutch.engine.isolation import seccomp
from hutch.engine.runtime import ociconfig

PODMAN_DEFAULT_CAPS = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
    "CAP_SYS_CHROOT",
}
RUNC_MASKED = {
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
}
RUNC_READONLY = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
ETC_FILES = {
    "/etc/hostname": "/data/sandboxes/sb-x/etc/hostname",
    "/etc/hosts": "/data/sandboxes/sb-x/etc/hosts",
    "/etc/resolv.conf": "/data/sandboxes/sb-x/etc/resolv.conf",
}


def _kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "rootfs": "/data/sandboxes/sb-x/rootfs",
        "hostname": "sb-x",
        "process": ociconfig.process_spec(
            ["/bin/sh", "-c", "echo hi"], {"PATH": "/usr/bin:/bin", "A": "b=c"}, "/work"
        ),
        "etc_files": ETC_FILES,
        "devpts_gid": True,
    }
    kwargs.update(overrides)
    return kwargs


def _spec(**overrides: Any) -> dict[str, Any]:
    return ociconfig.sandbox_spec(**_kwargs(**overrides)).to_json()


def _errors(validator: Validator, doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def config_validator(runtime_validator: Callable[..., Validator]) -> Validator:
    return runtime_validator()


@pytest.mark.parametrize("devpts_gid", [True, False])
@pytest.mark.parametrize("etc_files", [ETC_FILES, {}])
def test_sandbox_spec_validates(config_validator: Validator, devpts_gid: bool,
                                etc_files: dict[str, str]) -> None:
    doc = _spec(devpts_gid=devpts_gid, etc_files=etc_files)
    assert _errors(config_validator, doc) == []
    # What is written to disk is this JSON; it must survive a round trip unchanged.
    assert json.loads(json.dumps(doc)) == doc


def test_to_json_uses_spec_names_and_drops_unset(config_validator: Validator) -> None:
    doc = _spec()
    assert doc["ociVersion"] == ociconfig.OCI_VERSION
    assert "noNewPrivileges" in doc["process"]
    assert "maskedPaths" in doc["linux"] and "readonlyPaths" in doc["linux"]
    assert "seccomp" in doc["linux"]
    assert "no_new_privileges" not in doc["process"]
    assert "oci_version" not in doc
    # unset optional fields are dropped rather than written as null
    assert "consoleSize" not in doc["process"]
    assert "additionalGids" not in doc["process"]["user"]
    assert all("path" not in ns for ns in doc["linux"]["namespaces"])
    assert "options" not in next(m for m in doc["mounts"] if m["destination"] == "/proc")
    assert all(v is not None for m in doc["mounts"] for v in m.values())


def test_processes_start_with_1024_open_files_and_the_engines_hard_limit() -> None:
    """The daemon raises its own soft limit; its sandboxes' processes must not inherit it."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (nofile,) = _spec()["process"]["rlimits"]
    assert nofile["type"] == "RLIMIT_NOFILE"
    assert nofile["soft"] == min(1024, hard) and nofile["hard"] == hard


def test_namespaces_without_user_namespace() -> None:
    doc = _spec()
    types = [ns["type"] for ns in doc["linux"]["namespaces"]]
    assert sorted(types) == sorted(["pid", "network", "ipc", "uts", "mount", "cgroup"])
    assert len(types) == len(set(types))
    # The engine already runs inside its own user namespace; sandboxes share it.
    assert "user" not in types


def test_process_defaults() -> None:
    proc = _spec()["process"]
    assert proc["noNewPrivileges"] is True
    assert proc["terminal"] is False
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["args"] == ["/bin/sh", "-c", "echo hi"]
    assert proc["cwd"] == "/work"
    assert proc["env"] == ["PATH=/usr/bin:/bin", "A=b=c"]
    caps = proc["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert set(caps[kind]) == PODMAN_DEFAULT_CAPS, kind
        assert len(caps[kind]) == 11, kind
    assert caps["inheritable"] == []
    assert caps["ambient"] == []
    assert "CAP_SYS_ADMIN" not in caps["bounding"]


def test_capability_lists_are_not_shared() -> None:
    """Changing one process's capabilities must not leak into another's or the defaults."""
    a = ociconfig.process_spec(["true"], {}, "/")
    a.capabilities.bounding.append("CAP_SYS_ADMIN")
    a.capabilities.effective.append("CAP_NET_RAW")
    b = ociconfig.process_spec(["true"], {}, "/")
    assert set(b.capabilities.bounding) == PODMAN_DEFAULT_CAPS
    assert set(b.capabilities.effective) == PODMAN_DEFAULT_CAPS
    assert set(ociconfig.DEFAULT_CAPABILITIES) == PODMAN_DEFAULT_CAPS


def test_masked_and_readonly_paths() -> None:
    linux = _spec()["linux"]
    assert set(linux["maskedPaths"]) == RUNC_MASKED
    assert set(linux["readonlyPaths"]) == RUNC_READONLY


def test_hostname_and_root() -> None:
    doc = _spec(hostname="my-box", rootfs="/r/rootfs")
    assert doc["hostname"] == "my-box"
    assert doc["root"] == {"path": "/r/rootfs", "readonly": False}


def test_etc_files_are_readonly_binds() -> None:
    mounts = _spec()["mounts"]
    etc = {m["destination"]: m for m in mounts if m["destination"].startswith("/etc/")}
    assert set(etc) == set(ETC_FILES)
    for dest, mount in etc.items():
        assert mount["type"] == "bind"
        assert mount["source"] == ETC_FILES[dest]
        assert "ro" in mount["options"]
        assert "rw" not in mount["options"]
        assert {"bind", "rbind"} & set(mount["options"])


def test_standard_mounts() -> None:
    mounts = {m["destination"]: m for m in _spec(devpts_gid=True)["mounts"]}
    for dest in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"):
        assert dest in mounts, dest
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/sys"]["type"] == "sysfs"
    assert "ro" in mounts["/sys"]["options"]
    assert "newinstance" in mounts["/dev/pts"]["options"]
    assert "gid=5" in mounts["/dev/pts"]["options"]
    no_gid = {m["destination"]: m for m in _spec(devpts_gid=False)["mounts"]}
    assert not any(o.startswith("gid=") for o in no_gid["/dev/pts"]["options"])
    # parents are mounted before their children
    order = [m["destination"] for m in _spec()["mounts"]]
    assert order.index("/dev") < order.index("/dev/pts") < len(order)
    assert order.index("/dev") < order.index("/dev/shm")


def test_exec_process_validates_against_process_schema(
    runtime_validator: Callable[..., Validator], config_validator: Validator
) -> None:
    process = ociconfig.process_spec(["python3", "-c", "print(1)"], {"HOME": "/root"}, "/tmp")
    # As the engine writes it for `crun exec --process`: with the exec's marker appended.
    process = process.model_copy(update={"env": [*process.env, "HUTCH_EXEC_ID=ex-1"]})
    doc = process.model_dump(by_alias=True, exclude_none=True)
    assert doc["env"] == ["HOME=/root", "HUTCH_EXEC_ID=ex-1"]
    part = runtime_validator("config-schema.json#/properties/process")
    assert _errors(part, doc) == []
    # and embedded in a full config
    full = _spec()
    full["process"] = doc
    assert _errors(config_validator, full) == []
    # the part validator really checks
    assert _errors(part, {**doc, "cwd": 5})
    assert _errors(part, {k: v for k, v in doc.items() if k != "cwd"})  # cwd is required
    assert _errors(part, {**doc, "args": "ls"})  # checked through defs.json
    assert _errors(part, {**doc, "user": {"uid": "0", "gid": 0}})


def test_validator_rejects_invalid_documents(config_validator: Validator) -> None:
    good = _spec()
    assert _errors(config_validator, good) == []

    missing_version = copy.deepcopy(good)
    del missing_version["ociVersion"]
    assert _errors(config_validator, missing_version)

    bad_ns = copy.deepcopy(good)
    bad_ns["linux"]["namespaces"].append({"type": "bogus"})
    assert _errors(config_validator, bad_ns)  # checked through config-linux.json/defs-linux.json

    bad_mount = copy.deepcopy(good)
    bad_mount["mounts"].append({"type": "bind", "source": "/x"})  # no destination
    assert _errors(config_validator, bad_mount)  # checked through defs.json

    bad_uid = copy.deepcopy(good)
    bad_uid["process"]["user"]["uid"] = -1
    assert _errors(config_validator, bad_uid)


@pytest.mark.parametrize("host_network", [False, True])
def test_seccomp_profile_is_part_of_every_spec(config_validator: Validator,
                                               host_network: bool) -> None:
    """Sandboxes and image-build steps (``host_network``) run under the same profile, and
    the whole config, seccomp part included, is valid."""
    doc = _spec(host_network=host_network)
    assert _errors(config_validator, doc) == []
    profile = doc["linux"]["seccomp"]
    assert profile == seccomp.profile_json()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "defaultErrnoRet" in profile and "default_errno_ret" not in profile
    denied = next(r for r in profile["syscalls"] if "keyctl" in r["names"])
    assert denied == {"names": denied["names"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    masked = next(r for r in profile["syscalls"] if r["names"] == ["clone"] and "args" in r)
    assert set(masked["args"][0]) == {"index", "value", "valueTwo", "op"}
    # every spec gets its own copy
    first = ociconfig.sandbox_spec(**_kwargs())
    first.linux.seccomp.syscalls.clear()  # type: ignore[union-attr]
    assert _spec()["linux"]["seccomp"]["syscalls"]


def test_validator_checks_the_seccomp_part(config_validator: Validator) -> None:
    good = _spec()
    bad_action = copy.deepcopy(good)
    bad_action["linux"]["seccomp"]["syscalls"][0]["action"] = "SCMP_ACT_PERHAPS"
    assert _errors(config_validator, bad_action)
    bad_op = copy.deepcopy(good)
    rule = next(r for r in bad_op["linux"]["seccomp"]["syscalls"] if "args" in r)
    rule["args"][0]["op"] = "SCMP_CMP_SOMETIMES"
    assert _errors(config_validator, bad_op)
    no_names = copy.deepcopy(good)
    no_names["linux"]["seccomp"]["syscalls"].append({"names": [], "action": "SCMP_ACT_ALLOW"})
    assert _errors(config_validator, no_names)
    negative_errno = copy.deepcopy(good)
    negative_errno["linux"]["seccomp"]["defaultErrnoRet"] = -1
    assert _errors(config_validator, negative_errno)
    no_default = copy.deepcopy(good)
    del no_default["linux"]["seccomp"]["defaultAction"]
    assert _errors(config_validator, no_default)


def test_spec_model_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError):
        ociconfig.Mount(destination="/x", bogus=1)  # type: ignore[call-arg]
