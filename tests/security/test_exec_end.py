"""An exec ends at its timeout or kill even when something in the sandbox holds its pipes.

The engine finds an exec's processes by their tree and by the ``HUTCH_EXEC_ID`` marker in
their environment.  A child that clears its environment and leaves the tree (``env -i``
in a double-forked subshell) is not found, and it holds the exec's stdout and stderr open.
The engine used to wait for EOF on those pipes before it called the exec ended, so a
timed-out or killed exec never ended: ``wait()`` and ``kill()`` blocked until the sandbox
did.  Now the engine stops waiting for EOF a short grace after the exec's process tree
was killed, closes its ends of the pipes and reports the exec's code.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import hutch

#: Leaves an orphan nobody can find by tree or marker, holding stdout and stderr open.
ORPHAN = "(env -i sleep 1000 &) ; echo started; sleep 1000"
#: How long an exec may take to end once its timeout or kill is due.
BOUND = 10.0


def _within(seconds: float, call: object) -> int:
    """``call()`` in a worker thread, failing the test (instead of hanging it) when it
    has not returned within ``seconds``."""
    assert callable(call)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return int(pool.submit(call).result(timeout=seconds))
    except FutureTimeout:
        raise AssertionError(f"no answer within {seconds} s: the exec never ended") from None
    finally:
        pool.shutdown(wait=False)


def _orphan_alive(sandbox: hutch.Sandbox) -> bool:
    ps = sandbox.exec("sh", "-c", "ps -eo args | grep -c '^sleep 1000$' || true")
    return int(ps.stdout.read().strip() or 0) >= 1


def test_timed_out_exec_ends_though_an_orphan_holds_its_pipes(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", ORPHAN, timeout=3)
    assert next(iter(p.stdout)) == "started\n"
    start = time.monotonic()
    assert _within(3 + BOUND, p.wait) == -1  # the exec's timeout, as Modal reports it
    assert time.monotonic() - start < 3 + BOUND
    assert _orphan_alive(sandbox)  # the attack really left a holder of the pipes
    assert p.stdout.read() == ""  # the stream has ended too
    assert sandbox.exec("echo", "still here").stdout.read() == "still here\n"


def test_killed_exec_ends_though_an_orphan_holds_its_pipes(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", ORPHAN)
    assert next(iter(p.stdout)) == "started\n"
    start = time.monotonic()
    assert _within(BOUND, p.kill) == 137  # SIGKILL of the command, 128 + 9
    assert time.monotonic() - start < BOUND
    assert p.wait() == 137
    assert _orphan_alive(sandbox)
    assert sandbox.exec("echo", "still here").stdout.read() == "still here\n"
