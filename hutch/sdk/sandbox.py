"""``hutch.Sandbox`` and ``ContainerProcess``: the blocking client of the engine's sandboxes.

Names and semantics follow Modal's Sandbox API (``create``, ``exec``, ``terminate``,
``wait``, ``poll``, ``returncode``, ``from_id``, ``from_name``, ``list``, tags and the
entrypoint's ``stdout``/``stderr``).  Each call is one request to the engine; nothing is
cached here but the id, so two processes see the same sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hutch.exception import InvalidError, SandboxTerminatedError, SandboxTimeoutError
from hutch.sdk.app import App
from hutch.sdk.transport import EngineClient, default_client

_WAIT_SLICE = 55.0


class StreamReader:
    """One output stream (stdout or stderr) of an exec or of a sandbox's entrypoint."""

    def __init__(self, client: EngineClient, path: str, fd: int, text: bool = True) -> None:
        self._client = client
        self._path = path
        self._fd = fd
        self._text = text
        self._consumed = False

    def _chunks(self) -> Iterator[bytes]:
        if self._consumed:
            return
        self._consumed = True
        for event in self._client.stream_events(self._path, {"fd": self._fd}):
            if event.get("data") is not None:
                yield event["data"]

    def read(self) -> Any:
        """Everything the stream produces until it ends (a second read returns empty)."""
        data = b"".join(self._chunks())
        return data.decode(errors="replace") if self._text else data

    def __iter__(self) -> Iterator[Any]:
        """Lines (text) or chunks (bytes), as they are produced."""
        if not self._text:
            yield from self._chunks()
            return
        pending = b""
        for chunk in self._chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace") + "\n"
        if pending:
            yield pending.decode(errors="replace")


class StreamWriter:
    """The stdin of an exec."""

    def __init__(self, client: EngineClient, exec_id: str) -> None:
        self._client = client
        self._exec_id = exec_id
        self._buffer = b""

    def write(self, data: bytes | str) -> None:
        self._buffer += data.encode() if isinstance(data, str) else bytes(data)

    def write_eof(self) -> None:
        self.drain(eof=True)

    def drain(self, eof: bool = False) -> None:
        data, self._buffer = self._buffer, b""
        self._client.request("POST", f"/v1/execs/{self._exec_id}/stdin", content=data,
                             params={"eof": "true" if eof else "false"})


class ContainerProcess:
    """A command running in a sandbox (what ``Sandbox.exec`` returns)."""

    def __init__(self, client: EngineClient, info: dict[str, Any], text: bool = True) -> None:
        self._client = client
        self.object_id: str = info["exec_id"]
        self._returncode: int | None = info.get("returncode")
        path = f"/v1/execs/{self.object_id}/output"
        self.stdout = StreamReader(client, path, 1, text)
        self.stderr = StreamReader(client, path, 2, text)
        self.stdin = StreamWriter(client, self.object_id)

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def poll(self) -> int | None:
        if self._returncode is None:
            self._returncode = self._client.request(
                "GET", f"/v1/execs/{self.object_id}")["returncode"]
        return self._returncode

    def wait(self) -> int:
        while self._returncode is None:
            info = self._client.request("POST", f"/v1/execs/{self.object_id}/wait",
                                        params={"timeout": _WAIT_SLICE})
            self._returncode = info["returncode"]
        return self._returncode

    def events(self) -> Iterator[tuple[int, bytes]]:
        """Both streams interleaved in the order produced, as ``(fd, data)``; ends at exit."""
        for event in self._client.stream_events(f"/v1/execs/{self.object_id}/output"):
            if event.get("data") is not None:
                yield event["fd"], event["data"]
            elif "exit_code" in event:
                self._returncode = event["exit_code"]


def _str_dict(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidError(f"{what} must be a dict of str to str")
    return dict(value)


class Sandbox:
    """A sandbox on the local engine."""

    def __init__(self, client: EngineClient, info: dict[str, Any]) -> None:
        self._client = client
        self._info = info
        self.object_id: str = info["sandbox_id"]
        path = f"/v1/sandboxes/{self.object_id}/logs"
        self.stdout = StreamReader(client, path, 1)
        self.stderr = StreamReader(client, path, 2)

    # constructors ---------------------------------------------------------------------------
    @staticmethod
    def create(*entrypoint_args: str, app: App | None = None, name: str | None = None,
               tags: dict[str, str] | None = None, image: str | None = None,
               env: dict[str, str] | None = None, workdir: str | None = None,
               timeout: float = 300) -> Sandbox:
        if not all(isinstance(a, str) for a in entrypoint_args):
            raise InvalidError("entrypoint arguments must be strings")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidError("timeout must be a number of seconds")
        client = default_client()
        body: dict[str, Any] = {
            "entrypoint": list(entrypoint_args) or None, "name": name,
            "tags": _str_dict(tags, "tags"), "env": _str_dict(env, "env"),
            "workdir": workdir, "timeout": float(timeout), "image": image,
        }
        if app is not None:
            body["app_id"] = app.app_id
        return Sandbox(client, client.request("POST", "/v1/sandboxes", json_body=body))

    @staticmethod
    def from_id(sandbox_id: str) -> Sandbox:
        client = default_client()
        return Sandbox(client, client.request("GET", f"/v1/sandboxes/{sandbox_id}"))

    @staticmethod
    def from_name(app_name: str, name: str) -> Sandbox:
        client = default_client()
        info = client.request("GET", "/v1/sandboxes/by-name",
                              params={"app_name": app_name, "name": name})
        return Sandbox(client, info)

    @staticmethod
    def list(*, app_id: str | None = None, tags: dict[str, str] | None = None
             ) -> Iterator[Sandbox]:
        client = default_client()
        params: dict[str, Any] = {}
        if app_id is not None:
            params["app_id"] = app_id
        if tags:
            params["tags"] = json.dumps(_str_dict(tags, "tags"))
        body = client.request("GET", "/v1/sandboxes", params=params)
        for info in body["sandboxes"]:
            yield Sandbox(client, info)

    # state ------------------------------------------------------------------------------------
    def _refresh(self) -> dict[str, Any]:
        self._info = self._client.request("GET", f"/v1/sandboxes/{self.object_id}")
        return self._info

    @property
    def name(self) -> str | None:
        name: str | None = self._info.get("name")
        return name

    @property
    def returncode(self) -> int | None:
        if self._info["state"] != "exited":
            self._refresh()
        code: int | None = self._info["returncode"]
        return code

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, raise_on_termination: bool = True) -> None:
        while self._info["state"] != "exited":
            self._info = self._client.request(
                "POST", f"/v1/sandboxes/{self.object_id}/wait", params={"timeout": _WAIT_SLICE}
            )
        if raise_on_termination:
            if self._info["exit_reason"] == "timeout":
                raise SandboxTimeoutError(f"Sandbox {self.object_id} timed out")
            if self._info["exit_reason"] == "terminated":
                raise SandboxTerminatedError(f"Sandbox {self.object_id} was terminated")

    def terminate(self, grace_period: float = 3.0) -> None:
        self._info = self._client.request("POST", f"/v1/sandboxes/{self.object_id}/terminate",
                                          json_body={"grace_period": float(grace_period)})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._info = self._client.request("PUT", f"/v1/sandboxes/{self.object_id}/tags",
                                          json_body={"tags": _str_dict(tags, "tags")})

    def get_tags(self) -> dict[str, str]:
        tags: dict[str, str] = self._refresh()["tags"]
        return tags

    def info(self) -> dict[str, Any]:
        """The engine's current record of this sandbox."""
        return dict(self._refresh())

    # exec -------------------------------------------------------------------------------------
    def exec(self, *args: str, timeout: float | None = None, workdir: str | None = None,
             env: dict[str, str] | None = None, text: bool = True,
             stdin: bool = True) -> ContainerProcess:
        if not args or not all(isinstance(a, str) for a in args):
            raise InvalidError("exec needs a command: one or more string arguments")
        body: dict[str, Any] = {"argv": list(args), "env": _str_dict(env, "env"),
                                "workdir": workdir, "stdin": stdin}
        if timeout is not None:
            body["timeout"] = float(timeout)
        info = self._client.request("POST", f"/v1/sandboxes/{self.object_id}/execs",
                                    json_body=body)
        return ContainerProcess(self._client, info, text)

    def __repr__(self) -> str:
        return f"Sandbox({self.object_id})"

