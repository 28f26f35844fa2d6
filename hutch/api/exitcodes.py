"""The exit codes the engine gives sandboxes and execs it ended itself, as the tools a user
knows do: one home for the engine, the SDK and the CLI.

Why these numbers: ``timeout(1)`` exits 124 when its time runs out, and a shell reports a
process killed by SIGKILL as 128 + 9.  Modal gives a sandbox that reached its timeout and
one that was terminated the same codes.
"""

from __future__ import annotations

import signal

#: what ran out of time (a sandbox's ``timeout``, an exec's, ``hutch exec --exec-timeout``)
TIMED_OUT = 124
#: what was terminated (SIGKILL)
KILLED = 128 + signal.SIGKILL
