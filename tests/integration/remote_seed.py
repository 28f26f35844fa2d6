"""The seed-style program the remote-engine tests run three ways (locally, over TLS, over
ssh) and compare: create from an image with a local directory, an exec whose output must
stream (it waits for a file the program writes only after reading its first line), files
both ways, terminate.  Prints one JSON line of what it saw (ids left out)."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import hutch


def main(local_dir: str) -> None:
    image = hutch.Image.debian_slim().add_local_dir(local_dir, "/data")
    sb = hutch.Sandbox.create(image=image, timeout=300)
    seen: dict[str, object] = {}
    try:
        p = sb.exec("sh", "-c", "echo ready; while [ ! -e /tmp/go ]; do sleep 0.02; done; "
                    "cat /data/hello.txt; echo to-stderr >&2; exit 7")
        lines = iter(p.stdout)
        seen["first"] = next(lines)  # only once it streamed can the program answer it
        with sb.open("/tmp/go", "w") as f:
            f.write("go")
        seen["rest"] = list(lines)
        seen["stderr"] = p.stderr.read()
        seen["code"] = p.wait()
        with tempfile.TemporaryDirectory() as scratch:
            up = Path(scratch) / "up.bin"
            up.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
            sb.filesystem.copy_from_local(up, "/tmp/up.bin")
            check = sb.exec("sha256sum", "/tmp/up.bin")
            seen["uploaded"] = check.stdout.read().split()[0]
            seen["local_sha"] = hashlib.sha256(up.read_bytes()).hexdigest()
            sb.exec("sh", "-c", "seq 1 50000 > /tmp/down.txt").wait()
            down = Path(scratch) / "down.txt"
            sb.filesystem.copy_to_local("/tmp/down.txt", down)
            seen["downloaded"] = hashlib.sha256(down.read_bytes()).hexdigest()
    finally:
        sb.terminate()
    seen["after_terminate"] = sb.poll() is not None
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1])
