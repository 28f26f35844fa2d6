"""``hutch mcp``: hutch's sandboxes as a Model Context Protocol server, on the official
``mcp`` Python SDK (2.x: ``mcp.server.mcpserver.MCPServer``, FastMCP's successor).

A model drives it: every argument is checked and every failure is a clear tool error,
never a traceback.  It touches only sandboxes it created (the app ``hutch-mcp``), each with
a timeout (``--default-timeout``, at most ``--max-timeout``) so that a forgotten one ends by
itself, and it terminates the ones it made when it exits.  Nothing names a host path: files
are read and written inside sandboxes through the engine's file API (which resolves every
path inside the sandbox), commands run there, and no shell runs on the host.

Transports: stdio (the default: ``claude mcp add hutch -- hutch mcp``); streamable HTTP on
loopback (``--http 127.0.0.1:PORT``), where every request must carry ``Authorization:
Bearer TOKEN`` (``HUTCH_MCP_TOKEN``, else a random one printed at start, compared in
constant time); or on a Unix socket (``--unix PATH``, mode 0600: the file's permissions are
the access control).

``run_command`` returns the whole output at the end, and streams it meanwhile as MCP
progress notifications (their ``message``) to a client that asked for progress.

``import hutch`` never imports ``mcp``: this module is loaded by the CLI for its parser,
and imports the SDK only when ``hutch mcp`` runs.  (No ``from __future__ import
annotations`` here: the SDK reads the tools' annotations, some of which name its own
classes imported inside :func:`build_server`.)
"""

import argparse
import dataclasses
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hutch.exception import Error, NotFoundError
from hutch.sdk.app import App
from hutch.sdk.image import Image
from hutch.sdk.process import EXEC_TIMEOUT_RETURNCODE
from hutch.sdk.pythonkernel import KernelLost, KernelReply, PythonKernel
from hutch.sdk.sandbox import Sandbox
from hutch.tools.mcphttp import loopback_address, serve_http, token_from_env, unix_listener

APP_NAME = "hutch-mcp"
WORKDIR = "/workspace"
#: Most bytes of a command's output or of a file returned in one answer.
MAX_OUTPUT = 1 << 20
MAX_READ = 4 << 20
SANDBOX_ID = re.compile(r"sb-[0-9A-Za-z]{22}")
INSTALL_HINT = 'hutch mcp needs the MCP Python SDK: pip install "hutch[mcp]"'
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class Config:
    default_timeout: int = 1800
    max_timeout: int = 86400


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("mcp", help="serve sandboxes to AI agents over the Model Context "
                                   "Protocol (stdio; or --http / --unix)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--http", metavar="HOST:PORT",
                       help="streamable HTTP on this loopback address, with a bearer token")
    where.add_argument("--unix", metavar="PATH", help="streamable HTTP on a Unix socket (0600)")
    p.add_argument("--default-timeout", type=int, default=1800, metavar="S",
                   help="lifetime of sandboxes created without a timeout (default 1800 s)")
    p.add_argument("--max-timeout", type=int, default=86400, metavar="S",
                   help="the longest timeout a client may ask for (default 86400 s)")
    p.set_defaults(func=cmd_mcp)


class _Sandboxes:
    """The sandboxes of this server: checks ids, keeps one Python kernel per sandbox."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = App.lookup(APP_NAME, create_if_missing=True)
        self.created: set[str] = set()
        self.kernels: dict[str, PythonKernel] = {}
        self.lock = threading.Lock()

    def get(self, sandbox_id: object) -> Sandbox:
        """The running sandbox ``sandbox_id`` of this server's app, or a :class:`Refused`."""
        if not isinstance(sandbox_id, str) or not SANDBOX_ID.fullmatch(sandbox_id):
            raise Refused(f"invalid sandbox id {sandbox_id!r}: ids look like "
                          "sb-0123456789abcdefghijkl (list_sandboxes shows them)")
        try:
            sb = Sandbox.from_id(sandbox_id)
            info = sb.info()
        except NotFoundError:
            raise Refused(f"no sandbox {sandbox_id}") from None
        if info.get("app_id") != self.app.app_id:
            raise Refused(f"sandbox {sandbox_id} was not created through hutch mcp; this "
                          "server only uses its own sandboxes")
        if info.get("finished_at") is not None:
            raise Refused(f"sandbox {sandbox_id} has finished (exit code "
                          f"{info.get('returncode')}, {info.get('exit_reason') or 'ended'})")
        return sb

    def kernel(self, sb: Sandbox) -> PythonKernel:
        """The sandbox's kernel, started on first use (one that was lost restarts itself)."""
        with self.lock:
            kernel = self.kernels.get(sb.object_id)
            if kernel is None:
                kernel = self.kernels[sb.object_id] = PythonKernel(sb, filename="<run_python>")
            return kernel

    def forget(self, sandbox_id: str) -> None:
        with self.lock:
            kernel = self.kernels.pop(sandbox_id, None)
        if kernel is not None:
            kernel.close()

    def close(self) -> None:
        """Terminate what this server created (a client that exits leaves nothing)."""
        for sandbox_id in sorted(self.created):
            self.forget(sandbox_id)
            try:
                Sandbox.from_id(sandbox_id).terminate(grace_period=0)
            except Error:
                pass


class Refused(Exception):
    """A request this server declines, with the reason for the model to read."""


def check_path(path: object) -> str:
    """An absolute path inside the sandbox (what the file tools take)."""
    if not isinstance(path, str) or not path:
        raise Refused("path must be a non-empty string")
    if "\0" in path or len(path) > 4096:
        raise Refused("path must not hold NUL characters or exceed 4096 characters")
    if not path.startswith("/"):
        raise Refused(f"path must be absolute (a path in the sandbox such as "
                      f"{WORKDIR}/main.py), got {path!r}")
    return path


def check_timeout(value: float | None, default: float, most: float, what: str) -> float:
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= most:
        raise Refused(f"{what} must be a number of seconds above 0 and at most {most:g}")
    return float(value)


def _decoded(data: bytes) -> tuple[str, str]:
    """``data`` as UTF-8 text where it is, else as base64 (a binary file)."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        import base64

        return base64.b64encode(data).decode("ascii"), "base64"


class _Output:
    """A command's output as it comes, shared between the thread that reads it and the
    event loop that reports progress."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.sent = 0
        self.lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self.lock:
            room = MAX_OUTPUT - self.size
            self.truncated = self.truncated or len(data) > room
            if room > 0:
                self.chunks.append(data[:room])
                self.size += len(self.chunks[-1])

    def unsent(self) -> str:
        with self.lock:
            data = b"".join(self.chunks)
        new, self.sent = data[self.sent:], len(data)
        return new.decode("utf-8", errors="replace")

    def text(self) -> str:
        with self.lock:
            return b"".join(self.chunks).decode("utf-8", errors="replace")


def run_shell(sb: Sandbox, command: str, timeout: float, workdir: str | None,
              out: _Output) -> int:
    """Run ``command`` under ``sh -c``, output into ``out``; its exit code."""
    proc = sb.exec("sh", "-c", command, text=False, timeout=timeout, workdir=workdir)
    proc.stdin.write_eof()
    proc.stdin.drain()
    for _fd, data in proc.events():
        out.add(data)
    return proc.wait()


def python_result(reply: KernelReply) -> dict[str, Any]:
    """``run_python``'s answer: printed output, the trailing value's ``repr``, the
    traceback of an exception (the model reads text, not the kernel's record of it)."""
    return {"output": reply.output, "value": reply.value,
            "error": reply.error.traceback if reply.error is not None else None,
            "truncated": reply.truncated}


def build_server(config: Config) -> tuple[Any, _Sandboxes]:
    """The MCP server with its tools, and its sandboxes (imports the ``mcp`` SDK)."""
    import anyio.to_thread
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ResourceError, ToolError

    boxes = _Sandboxes(config)
    server = MCPServer("hutch", instructions=(
        "Local, isolated Linux sandboxes (Debian with Python 3.11 by default). Create one "
        "with create_sandbox, then run shell commands (run_command), Python that keeps its "
        "variables between calls (run_python), and read, write and list its files. Paths "
        f"are absolute paths inside the sandbox; the working directory is {WORKDIR}. "
        "Terminate sandboxes when done; each also ends at its timeout."))

    # (the SDK's decorators, typed for mypy, which does not see the SDK's own types)
    tool: Callable[[F], F] = server.tool()
    logs_resource: Callable[[F], F] = server.resource("hutch://sandboxes/{sandbox_id}/logs",
                                                      mime_type="text/plain")

    async def call(fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on a worker thread (the SDK's blocking calls), its failures as tool
        errors with their reason."""
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except Refused as exc:
            raise ToolError(str(exc)) from None
        except KernelLost as exc:
            raise ToolError(str(exc)) from None
        except Error as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:  # (the file API's errors are also OSErrors)
            raise ToolError(f"{type(exc).__name__}: {exc}") from None

    @tool
    async def create_sandbox(image: str | None = None, timeout_s: int | None = None,
                             name: str | None = None, entrypoint: str | None = None,
                             env: dict[str, str] | None = None,
                             block_network: bool = False) -> dict[str, Any]:
        """Create a sandbox; returns its id. image: an image reference from `hutch image
        ls` (default: Debian with Python 3.11). timeout_s: seconds until it is terminated
        (default set by the server). entrypoint: a shell command run as its main process,
        whose output is the resource hutch://sandboxes/{id}/logs. block_network: no
        network access."""
        def create() -> dict[str, Any]:
            timeout = int(check_timeout(timeout_s, config.default_timeout,
                                        config.max_timeout, "timeout_s"))
            args = ("sh", "-c", entrypoint) if entrypoint else ()
            sb = Sandbox.create(*args, app=boxes.app, name=name, env=env,
                                image=Image.from_id(image) if image else None,
                                timeout=timeout, workdir=WORKDIR,
                                block_network=bool(block_network))
            boxes.created.add(sb.object_id)
            return {"sandbox_id": sb.object_id, "timeout_s": timeout, "workdir": WORKDIR}

        return await call(create)

    @tool
    async def list_sandboxes() -> dict[str, Any]:
        """The running sandboxes created through this server: id, name, age, timeout."""
        def listing() -> dict[str, Any]:
            now = time.time()
            return {"sandboxes": [
                {"sandbox_id": info["sandbox_id"], "name": info["name"],
                 "state": info["state"], "age_s": round(now - info["created_at"], 1),
                 "timeout_s": info["timeout"]}
                for info in (sb.info() for sb in Sandbox.list(app_id=boxes.app.app_id))]}

        return await call(listing)

    @tool
    async def terminate_sandbox(sandbox_id: str) -> dict[str, Any]:
        """Terminate a sandbox (its files and processes are gone)."""
        def terminate() -> dict[str, Any]:
            sb = boxes.get(sandbox_id)
            boxes.forget(sandbox_id)
            sb.terminate(grace_period=0)
            boxes.created.discard(sandbox_id)
            return {"sandbox_id": sandbox_id, "terminated": True}

        return await call(terminate)

    @tool
    async def run_command(sandbox_id: str, command: str, timeout_s: float = 120,
                          workdir: str | None = None,
                          ctx: Context | None = None) -> dict[str, Any]:
        """Run a shell command (sh -c) in a sandbox: its stdout and stderr together, exit
        code, and whether it was killed at its timeout (timeout_s, default 120). Output
        also streams as progress notifications while it runs."""
        if not isinstance(command, str) or not command.strip():
            raise ToolError("command must be a non-empty shell command")
        try:
            limit = check_timeout(timeout_s, 120, config.max_timeout, "timeout_s")
            where = check_path(workdir) if workdir is not None else None
        except Refused as exc:
            raise ToolError(str(exc)) from None
        out = _Output()
        sb = await call(boxes.get, sandbox_id)
        done = threading.Event()

        def execute() -> int:
            try:
                return run_shell(sb, command, limit, where, out)
            finally:
                done.set()

        async def report() -> None:
            """Output so far as progress, every 0.25 s, the last of it too."""
            while True:
                finished = done.is_set()
                if ctx is not None and (new := out.unsent()):
                    await ctx.report_progress(out.size, None, new)
                if finished:
                    return
                await anyio.sleep(0.25)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(report)
            code = await call(execute)
        timed_out = code == EXEC_TIMEOUT_RETURNCODE
        return {"exit_code": 124 if timed_out else code, "timed_out": timed_out,
                "output": out.text(), "truncated": out.truncated}

    @tool
    async def run_python(sandbox_id: str, code: str, timeout_s: float = 120) -> dict[str, Any]:
        """Run Python code in a sandbox's persistent interpreter: variables, imports and
        functions stay for the next call on the same sandbox. Returns its printed output,
        the repr of a final expression (value), and the traceback of an exception (error).
        A call past timeout_s (default 120) kills the interpreter and its state."""
        if not isinstance(code, str):
            raise ToolError("code must be a string of Python source")
        try:
            limit = check_timeout(timeout_s, 120, config.max_timeout, "timeout_s")
        except Refused as exc:
            raise ToolError(str(exc)) from None

        def run() -> dict[str, Any]:
            return python_result(boxes.kernel(boxes.get(sandbox_id)).run(code, limit))

        return await call(run)

    @tool
    async def read_file(sandbox_id: str, path: str) -> dict[str, Any]:
        """Read a file of a sandbox (absolute path): its text, or base64 when it is not
        UTF-8 (encoding says which). Files above 4 MiB are refused."""
        def read() -> dict[str, Any]:
            sb, where = boxes.get(sandbox_id), check_path(path)
            size = sb.filesystem.stat(where).size
            if size > MAX_READ:
                raise Refused(f"{where} is {size} bytes; read_file returns at most "
                              f"{MAX_READ} (use run_command with head, tail or grep)")
            content, encoding = _decoded(sb.filesystem.read_bytes(where))
            return {"path": where, "content": content, "encoding": encoding, "size": size}

        return await call(read)

    @tool
    async def write_file(sandbox_id: str, path: str, content: str,
                         encoding: str = "utf-8") -> dict[str, Any]:
        """Write a file in a sandbox (absolute path; missing parent directories are made;
        an existing file is replaced). encoding: "utf-8" (content is text) or "base64"."""
        if encoding not in ("utf-8", "base64") or not isinstance(content, str):
            raise ToolError('content must be a string and encoding "utf-8" or "base64"')

        def write() -> dict[str, Any]:
            sb, where = boxes.get(sandbox_id), check_path(path)
            if encoding == "base64":
                import base64
                import binascii

                try:
                    data = base64.b64decode(content, validate=True)
                except binascii.Error as exc:
                    raise Refused(f"content is not valid base64: {exc}") from None
            else:
                data = content.encode("utf-8")
            sb.filesystem.write_bytes(data, where)
            return {"path": where, "size": len(data)}

        return await call(write)

    @tool
    async def list_files(sandbox_id: str, path: str = WORKDIR) -> dict[str, Any]:
        """List a directory of a sandbox (absolute path, default the working directory):
        each entry's name, type (file, directory, symlink, other) and size."""
        def listing() -> dict[str, Any]:
            sb, where = boxes.get(sandbox_id), check_path(path)
            return {"path": where, "entries": [
                {"name": e.name, "type": e.type.value, "size": e.size}
                for e in sorted(sb.filesystem.list_files(where), key=lambda e: e.name)]}

        return await call(listing)

    @logs_resource
    async def sandbox_logs(sandbox_id: str) -> str:
        """The output of a sandbox's entrypoint (its last 1000 lines; stderr and the
        engine's own lines marked), also after it has ended."""
        def logs() -> str:
            if not SANDBOX_ID.fullmatch(sandbox_id):
                raise Refused(f"invalid sandbox id {sandbox_id!r}")
            sb = Sandbox.from_id(sandbox_id)
            if sb.info().get("app_id") != boxes.app.app_id:
                raise Refused(f"sandbox {sandbox_id} was not created through hutch mcp")
            return "".join(
                (e.message if e.source == "stdout" else f"[{e.source}] {e.message}")
                + ("" if e.message.endswith("\n") else "\n")
                for e in sb.logs.tail(1000))

        try:
            return await anyio.to_thread.run_sync(logs)
        except (Refused, Error) as exc:
            raise ResourceError(str(exc)) from None

    return server, boxes


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _tcp_listener(spec: str) -> tuple[socket.socket, str]:
    """A listening socket on the loopback address ``spec`` and its URL."""
    host, port = loopback_address(spec)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"hutch: cannot listen on {spec}: {exc.strerror}") from None
    sock.listen(64)
    shown = f"[{host}]" if ":" in host else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}/mcp"


def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        print(f"hutch: {INSTALL_HINT}", file=sys.stderr)
        return 1
    if not 0 < args.default_timeout <= args.max_timeout:
        raise SystemExit("hutch: need 0 < --default-timeout <= --max-timeout")
    token, made = token_from_env() if args.http else (None, False)
    sock, url = _tcp_listener(args.http) if args.http else (None, "")
    if args.unix:
        sock, url = unix_listener(args.unix), f"http://localhost/mcp on {args.unix}"
    try:
        server, boxes = build_server(Config(args.default_timeout, args.max_timeout))
    except BaseException:
        if args.unix:
            Path(args.unix).unlink(missing_ok=True)
        raise
    # SIGTERM (how clients and uvicorn stop a server) as an exception, so that the finally
    # below runs: it terminates this server's sandboxes and removes its socket
    signal.signal(signal.SIGTERM, _stop)
    try:
        if sock is None:
            server.run()
        else:
            print(f"hutch mcp: serving {url}", file=sys.stderr)
            if made:
                print(f"hutch mcp: token {token} (send 'Authorization: Bearer TOKEN'; "
                      "set HUTCH_MCP_TOKEN to choose it)", file=sys.stderr)
            sys.stderr.flush()
            serve_http(server, sock, token)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        boxes.close()
        if args.unix:
            Path(args.unix).unlink(missing_ok=True)
    return 0
