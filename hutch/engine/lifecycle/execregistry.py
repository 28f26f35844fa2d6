"""The exec sessions the engine holds: those running, and finished ones for a while (their
exit code and unread output stay readable for :data:`KEEP_SECONDS`, the newest
:data:`KEEP_MAX` of them at most), indexed by sandbox.

Why not a task per finished session sleeping out its 600 s, as before: at the issue's
1,000 execs a second that is 600,000 sleeping tasks and sessions in the daemon (trio's
deadline heap grows with them), and every sandbox's end walked all of them to find its
own.  Here a finished session costs an entry in a queue, expired in order as later ones
finish, and a sandbox's sessions are found through its own set.

Each exec also has a row in the engine's state (what the engine says of an exec whose
session it has forgotten), committed before its id is answered: a command that ended
within the answer's settle time is written once, already ended (one SQLite write of two,
at 1,000 execs a second).
"""

from __future__ import annotations

from collections import deque

import trio

from hutch.engine.commands.execs import ExecSession
from hutch.engine.storage.store import Store

#: Seconds a finished exec's session (exit code, unread output) stays readable.
KEEP_SECONDS = 600.0
#: Finished sessions kept at most (the oldest go first).
KEEP_MAX = 10_000


class ExecRegistry:
    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._sessions: dict[str, ExecSession] = {}
        self._by_sandbox: dict[str, set[str]] = {}
        #: (when it may be forgotten, exec id), oldest first
        self._finished: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: ExecSession) -> None:
        self._sessions[session.exec_id] = session
        self._by_sandbox.setdefault(session.sandbox_id, set()).add(session.exec_id)

    def record(self, session: ExecSession) -> None:
        """Commit the exec's row before its id is answered (or at its end, when nobody
        waited for the answer); a failure kills the command: the caller hears of it, and
        nothing may run on unrecorded."""
        if session.recorded is not None or self.store is None:
            return
        ended = (session.returncode, session.timed_out) \
            if session.returncode is not None else None
        try:
            self.store.insert_exec(session.exec_id, session.sandbox_id, session.argv, ended)
        except BaseException:
            session.process.kill()
            raise
        session.recorded = "running" if ended is None else "exited"

    def record_end(self, session: ExecSession, code: int, *, sandbox_live: bool) -> None:
        """The exec has ended with ``code``: its row says so (an ended sandbox's rows may
        be gone: an exec nobody was told of then stays unwritten)."""
        if self.store is None:
            return
        if session.recorded == "running":
            self.store.finish_exec(session.exec_id, code, session.timed_out)
        elif session.recorded is None and sandbox_live:
            self.record(session)

    def get(self, exec_id: str) -> ExecSession | None:
        self._expire(trio.current_time())  # (an engine with no execs ending forgets too)
        return self._sessions.get(exec_id)

    def of_sandbox(self, sandbox_id: str) -> list[ExecSession]:
        return [self._sessions[e] for e in self._by_sandbox.get(sandbox_id, ())]

    def finished(self, session: ExecSession) -> None:
        """``session`` has ended: keep it readable for a while, and forget those whose
        while is over (or beyond the newest ``KEEP_MAX``)."""
        now = trio.current_time()
        self._finished.append((now + KEEP_SECONDS, session.exec_id))
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._finished and (self._finished[0][0] <= now
                                  or len(self._finished) > KEEP_MAX):
            self._forget(self._finished.popleft()[1])

    def _forget(self, exec_id: str) -> None:
        session = self._sessions.pop(exec_id, None)
        if session is None:
            return
        mine = self._by_sandbox.get(session.sandbox_id)
        if mine is not None:
            mine.discard(exec_id)
            if not mine:
                del self._by_sandbox[session.sandbox_id]
