"""Interactive processes of the OpenAI Agents SDK's hutch sessions (its ``pty_exec_start`` /
``pty_write_stdin`` tools): ``exec(pty=True)`` for a terminal, a plain exec otherwise.

Why push rather than poll: the SDK's Modal backend polls each stream with short reads
because Modal's reads block; hutch's streams iterate asynchronously on the caller's loop, so
one reader task per stream appends what comes and wakes the SDK's shared collector
(``collect_pty_output``), which then needs no polling of its own.  A separate module from
:mod:`hutch.integrations.openai_agents` only to keep each one readable.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.sandbox.errors import ExecTransportError
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.pty_output import collect_pty_output
from agents.sandbox.session.pty_types import (
    PTY_PROCESSES_MAX,
    PtyExecUpdate,
    allocate_pty_process_id,
    clamp_pty_yield_time_ms,
    process_id_to_prune_from_meta,
    resolve_pty_write_yield_time_ms,
)
from agents.sandbox.types import User

import hutch
from hutch.integrations import agentrefs


@dataclass
class _PtyProcess:
    """One interactive process: its output as it comes, and whether all of it has."""

    process: Any  # hutch.ContainerProcess (bytes)
    tty: bool
    last_used: float = field(default_factory=time.monotonic)
    output_chunks: deque[bytes] = field(default_factory=deque)
    output_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    output_notify: asyncio.Event = field(default_factory=asyncio.Event)
    output_closed: asyncio.Event = field(default_factory=asyncio.Event)
    readers: list[asyncio.Task[None]] = field(default_factory=list)


async def _pump(entry: _PtyProcess, stream: Any) -> None:
    try:
        async for chunk in stream:
            entry.output_chunks.append(chunk if isinstance(chunk, bytes) else chunk.encode())
            entry.output_notify.set()
    except Exception:  # (the process was killed, or the sandbox ended: its output is over)
        pass
    finally:
        if all(task.done() or task is asyncio.current_task() for task in entry.readers):
            entry.output_closed.set()
            entry.output_notify.set()


class HutchPtyMixin(BaseSandboxSession):  # type: ignore[misc]
    """The SDK's PTY methods for a session that has ``_handle()`` (its hutch sandbox)."""

    _pty_lock: asyncio.Lock
    _pty_processes: dict[int, _PtyProcess]

    def _init_pty(self) -> None:
        self._pty_lock = asyncio.Lock()
        self._pty_processes = {}

    async def _handle(self) -> hutch.Sandbox:
        raise RuntimeError("a session's sandbox handle")  # (the session overrides it)

    def supports_pty(self) -> bool:
        return True

    async def pty_exec_start(self, *command: str | Path, timeout: float | None = None,
                             shell: bool | list[str] = True, user: str | User | None = None,
                             tty: bool = False, yield_time_s: float | None = None,
                             max_output_tokens: int | None = None) -> PtyExecUpdate:
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        options: dict[str, Any] = {"text": False, "pty": tty,
                                   "timeout": agentrefs.exec_timeout(timeout)}
        if user is not None:
            options["user"] = user.name if isinstance(user, User) else user
        sandbox = await self._handle()
        try:
            process = await sandbox.exec.aio(*argv, **options)
        except Exception as e:
            raise ExecTransportError(command=argv, cause=e) from e
        entry = _PtyProcess(process=process, tty=tty)
        streams = [process.stdout] if tty else [process.stdout, process.stderr]
        entry.readers = [asyncio.ensure_future(_pump(entry, s)) for s in streams]
        async with self._pty_lock:
            process_id = allocate_pty_process_id(set(self._pty_processes))
            pruned = self._prune_one()
            self._pty_processes[process_id] = entry
        if pruned is not None:
            await self._kill(pruned)
        wait_ms = 10_000 if yield_time_s is None else int(yield_time_s * 1000)
        return await self._update(process_id, entry, clamp_pty_yield_time_ms(wait_ms),
                                  max_output_tokens)

    async def pty_write_stdin(self, *, session_id: int, chars: str,
                              yield_time_s: float | None = None,
                              max_output_tokens: int | None = None) -> PtyExecUpdate:
        async with self._pty_lock:
            entry = self._resolve_pty_session_entry(pty_processes=self._pty_processes,
                                                    session_id=session_id)
        if chars:
            entry.process.stdin.write(chars.encode())
            await entry.process.stdin.drain.aio()
        wait_ms = 250 if yield_time_s is None else int(yield_time_s * 1000)
        entry.last_used = time.monotonic()
        return await self._update(
            session_id, entry,
            resolve_pty_write_yield_time_ms(yield_time_ms=wait_ms, input_empty=chars == ""),
            max_output_tokens)

    async def pty_terminate_all(self) -> None:
        async with self._pty_lock:
            entries = list(self._pty_processes.values())
            self._pty_processes.clear()
        for entry in entries:
            await self._kill(entry)

    async def _update(self, process_id: int, entry: _PtyProcess, yield_time_ms: int,
                      max_output_tokens: int | None) -> PtyExecUpdate:
        """Output until ``yield_time_ms`` passed or all came; with all of it, the exit code
        (and the process is forgotten, as the SDK's other backends do)."""
        output, tokens, closed = await collect_pty_output(
            output_chunks=entry.output_chunks, output_lock=entry.output_lock,
            output_notify=entry.output_notify, is_done=entry.output_closed.is_set,
            yield_time_ms=yield_time_ms, max_output_tokens=max_output_tokens)
        exit_code: int | None = None
        if closed:
            try:
                exit_code = await asyncio.wait_for(entry.process.wait.aio(), timeout=10.0)
            except Exception:
                exit_code = None
        if exit_code is not None:
            async with self._pty_lock:
                self._pty_processes.pop(process_id, None)
        return PtyExecUpdate(process_id=None if exit_code is not None else process_id,
                             output=output, exit_code=exit_code,
                             original_token_count=tokens)

    def _prune_one(self) -> _PtyProcess | None:
        if len(self._pty_processes) < PTY_PROCESSES_MAX:
            return None
        meta = [(pid, e.last_used, e.output_closed.is_set())
                for pid, e in self._pty_processes.items()]
        victim = process_id_to_prune_from_meta(meta)
        return None if victim is None else self._pty_processes.pop(victim, None)

    async def _kill(self, entry: _PtyProcess) -> None:
        try:
            if await entry.process.poll.aio() is None:
                await asyncio.wait_for(entry.process.kill.aio(), timeout=10.0)
        except Exception:  # (it ended meanwhile, or so did the sandbox)
            pass
        for task in entry.readers:
            task.cancel()
        await asyncio.gather(*entry.readers, return_exceptions=True)
