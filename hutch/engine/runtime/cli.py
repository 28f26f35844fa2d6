"""The command-line adapter shared by crun and runc, which take the same verbs.

Both runtimes keep their own state under ``--root``, a directory the engine owns in its
runtime dir; nothing else about a container is remembered here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from hutch.engine.runtime.base import RuntimeCommandError
from hutch.engine.runtime.spawn import SpawnedProcess, spawn

#: Both runtimes give each container a session keyring of its own by default, and the kernel
#: lets an unprivileged user hold 200 keys (``kernel.keys.maxkeys``): past about 180
#: sandboxes at once, ``crun create`` failed with "create keyring: Disk quota exceeded".
#: A sandbox cannot use a keyring anyway (its seccomp filter refuses ``add_key``,
#: ``keyctl`` and ``request_key``; ``/proc/keys`` is masked), so none is made.
NO_NEW_KEYRING = "--no-new-keyring"

class CLIRuntime:
    name = "oci"
    binary = "false"

    def __init__(self, state_root: Path, binary: str | None = None) -> None:
        self.state_root = state_root
        if binary:
            self.binary = binary
        state_root.mkdir(parents=True, exist_ok=True)

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_root), *args]

    async def _run(self, argv: list[str], *, stdin: int | None = None,
                   stdout: int | None = None, stderr: int | None = None) -> str:
        streams: dict[str, Any] = {}
        if stdout is None:
            streams["capture_stdout"] = True
        else:
            streams["stdout"] = stdout
        if stderr is None:
            streams["capture_stderr"] = True
        else:
            streams["stderr"] = stderr
        result = await trio.run_process(
            argv, stdin=subprocess.DEVNULL if stdin is None else stdin, check=False, **streams
        )
        if result.returncode != 0:
            err = (result.stderr or b"").decode(errors="replace")
            raise RuntimeCommandError(argv, result.returncode, err)
        return (result.stdout or b"").decode(errors="replace")

    async def create(self, cid: str, bundle: Path, *, stdin: int | None, stdout: int,
                     stderr: int, pid_file: Path, prefix: Sequence[str] = (),
                     console_socket: Path | None = None) -> None:
        extra = ["--console-socket", str(console_socket)] if console_socket is not None else []
        await self._run_logged("create", cid, bundle, stdout, stderr, pid_file,
                               NO_NEW_KEYRING, *extra, stdin=stdin, prefix=prefix)

    async def start(self, cid: str) -> None:
        await self._run(self._argv("start", cid))

    async def _run_logged(self, verb: str, cid: str, bundle: Path, stdout: int, stderr: int,
                          pid_file: Path, *extra: str, stdin: int | None = None,
                          prefix: Sequence[str] = ()) -> None:
        log = bundle / "runtime.log"
        argv = [self.binary, "--root", str(self.state_root), "--log", str(log),
                verb, *extra, "--bundle", str(bundle), "--pid-file", str(pid_file), cid]
        try:
            await self._run([*prefix, *argv], stdin=stdin, stdout=stdout, stderr=stderr)
        except RuntimeCommandError as exc:
            try:
                exc.stderr = _last_error(log.read_text(errors="replace")) or exc.stderr
            except OSError:
                pass
            raise RuntimeCommandError(argv, exc.code, exc.stderr) from None

    async def exec(self, cid: str, process_json: Path, *, pid_file: Path, stdin: bool,
                   stdout: bool = True, stderr: bool = True,
                   prefix: Sequence[str] = ()) -> SpawnedProcess:
        argv = self._argv("exec", "--process", str(process_json), "--pid-file", str(pid_file),
                          cid)
        return spawn([*prefix, *argv], stdin=stdin, stdout=stdout, stderr=stderr)

    async def run_attached(self, cid: str, bundle: Path) -> SpawnedProcess:
        """``run`` in the foreground with piped output (image build steps)."""
        return spawn(self._argv("run", NO_NEW_KEYRING, "--bundle", str(bundle), cid),
                     stdin=False)

    async def kill(self, cid: str, signal: int) -> None:
        await self._run(self._argv("kill", cid, str(signal)))

    async def delete(self, cid: str, *, force: bool = True) -> None:
        await self._run(self._argv("delete", *(["--force"] if force else []), cid))

    async def state(self, cid: str) -> dict[str, Any] | None:
        try:
            out = await self._run(self._argv("state", cid))
        except RuntimeCommandError as exc:
            if _missing(exc.stderr):
                return None
            raise
        doc: dict[str, Any] = json.loads(out)
        return doc


def _last_error(log_text: str) -> str:
    """The last message of a runtime's --log file (JSON lines or plain text)."""
    for line in reversed(log_text.strip().splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                return line.strip()
            continue
        if isinstance(entry, dict) and entry.get("msg"):
            return str(entry["msg"])
    return ""


def _missing(stderr: str) -> bool:
    """Whether a runtime's error says the container does not exist (crun and runc wording)."""
    text = stderr.lower()
    return "does not exist" in text or "not found" in text or "no such file" in text
