"""``hutch image``: build, list, inspect, remove, prune, export and push images (apart from
:mod:`hutch.tools.cli` to keep each module readable)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from hutch.api import urls
from hutch.sdk.image import Image
from hutch.sdk.imagepush import push_image
from hutch.sdk.output import enable_output
from hutch.sdk.transport import request_blocking


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    img = sub.add_parser("image", help="build, list, inspect, remove, prune, export and push "
                                       "images")
    img.add_argument("action",
                     choices=["build", "ls", "inspect", "rm", "prune", "export", "push"])
    img.add_argument("target", nargs="?", default="",
                     help="build: FILE.py::NAME; inspect, rm, export, push: an image reference")
    img.add_argument("dest", nargs="?", default="",
                     help="push: the registry reference to push to (REGISTRY/NAME:TAG)")
    img.add_argument("-o", "--output", help="export: the OCI archive to write")
    img.add_argument("--cache", action="store_true",
                     help="prune: also forget cached build steps (all of them, or those "
                          "not used for --older-than)")
    img.add_argument("--older-than", metavar="AGE", default=None,
                     help="prune --cache: steps unused for AGE (30m, 12h, 7d; without it "
                          "or --keep-storage: all)")
    img.add_argument("--keep-storage", metavar="SIZE", default=None,
                     help="prune --cache: then the least recently used steps beyond SIZE "
                          "(compressed; 500M, 10G)")
    img.add_argument("--creds", metavar="USER:PASS",
                     help="push: the registry's credentials (default: REGISTRY_USERNAME and "
                          "REGISTRY_PASSWORD from the environment when set)")
    img.set_defaults(func=cmd_image)


def _amount(text: str, units: Mapping[str, float], option: str, example: str) -> float:
    """``text``, a number with an optional unit of ``units`` after it, in base units."""
    unit = text[-1:] if text[-1:] in units else ""
    try:
        value = float(text[:len(text) - len(unit)]) * units.get(unit, 1)
    except ValueError:
        raise SystemExit(f"hutch: {option} expects {example}, got {text!r}") from None
    if value < 0 or value != value:
        raise SystemExit(f"hutch: {option} must not be negative, got {text!r}")
    return value


def age_seconds(text: str) -> float:
    """``30s``, ``30m``, ``12h``, ``7d`` (or bare seconds) in seconds."""
    return _amount(text, {"s": 1, "m": 60, "h": 3600, "d": 86400}, "--older-than",
                   "an age like 30m, 12h or 7d")


_SIZES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_bytes(text: str) -> int:
    """``500M``, ``10G``, ``2T`` (or bare bytes; ``K`` too; any case) in bytes."""
    units = {**_SIZES, **{unit.lower(): size for unit, size in _SIZES.items()}}
    return int(_amount(text, units, "--keep-storage", "a size like 500M or 10G"))


def _load_image(target: str) -> Image:
    """``FILE.py::NAME``: the ``Image`` that module-level name holds in that file."""
    path, sep, name = target.partition("::")
    if not sep or not name:
        raise SystemExit("hutch: image build expects FILE.py::NAME")
    spec = importlib.util.spec_from_file_location("hutch_image_file", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise SystemExit(f"hutch: cannot load {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec.loader.exec_module(module)
    image = getattr(module, name, None)
    if not isinstance(image, Image):
        raise SystemExit(f"hutch: {name} in {path} is not a hutch.Image")
    return image


def _export(ref: str, output: str | None) -> int:
    """Write an image as an OCI archive with skopeo, readable by podman load and others."""
    if not output:
        raise SystemExit("hutch: image export needs an output file: -o FILE.tar")
    if shutil.which("skopeo") is None:
        raise SystemExit("hutch: skopeo is not installed: apt-get install skopeo")
    request_blocking("GET", urls.IMAGES_INSPECT, params={"ref": ref})  # NotFound early
    layout = Path(request_blocking("GET", urls.ENGINE)["data_dir"]) / "oci"
    name = ref.rsplit("/", 1)[-1].replace(":", "-")
    proc = subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:{ref}",
                           f"oci-archive:{output}:hutch/{name}"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"hutch: skopeo failed: {proc.stderr.strip()}", file=sys.stderr)
        return 125
    print(f"wrote {output} (image hutch/{name})")
    return 0


def _push(ref: str, dest: str, creds: str | None) -> int:
    """Push an image to a registry (the engine runs skopeo); credentials from ``--creds``,
    else from ``REGISTRY_USERNAME`` and ``REGISTRY_PASSWORD`` when both are set."""
    if not dest:
        raise SystemExit("hutch: image push needs a destination: hutch image push REF "
                         "REGISTRY/NAME:TAG")
    if creds is None and os.environ.get("REGISTRY_USERNAME") \
            and "REGISTRY_PASSWORD" in os.environ:
        creds = f"{os.environ['REGISTRY_USERNAME']}:{os.environ['REGISTRY_PASSWORD']}"
    digest = push_image(ref, dest, creds)
    where = dest.removeprefix("docker://")
    print(f"pushed {ref} to {where}" + (f" ({digest})" if digest else ""))
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    if args.action in ("build", "inspect", "rm", "export", "push") and not args.target:
        raise SystemExit(f"hutch: image {args.action} needs a target")
    if args.dest and args.action != "push":
        raise SystemExit(f"hutch: image {args.action} takes one argument, got also "
                         f"{args.dest!r}")
    if args.action == "build":
        with enable_output():
            image = _load_image(args.target).build()
        print(image.object_id)
    elif args.action == "ls":
        images = request_blocking("GET", urls.IMAGES)["images"]
        print(f"{'REFERENCE':<60} {'LAYERS':>6} {'SIZE':>9}  DIGEST")
        for img in images:
            print(f"{img['ref']:<60} {img['layers']:>6} {img['size'] / 1e6:>7.1f}MB  "
                  f"{img['digest'][:19]}")
    elif args.action == "inspect":
        doc = request_blocking("GET", urls.IMAGES_INSPECT, params={"ref": args.target})
        print(json.dumps(doc, indent=2))
    elif args.action == "export":
        return _export(args.target, args.output)
    elif args.action == "push":
        return _push(args.target, args.dest, args.creds)
    elif args.action == "rm":
        request_blocking("DELETE", urls.IMAGES, params={"ref": args.target})
        print(f"removed {args.target}")
    else:
        params: dict[str, float | int] | None = None
        if args.cache:
            params = {}
            if args.older_than is not None or args.keep_storage is None:
                params["cache_older_than"] = age_seconds(args.older_than or "0")
            if args.keep_storage is not None:
                params["cache_keep_bytes"] = size_bytes(args.keep_storage)
        freed = request_blocking("POST", urls.IMAGES_PRUNE, params=params)
        forgot = f"forgot {freed['cache_entries']} cached build steps; " if args.cache else ""
        print(f"{forgot}removed {freed['blobs']} blobs ({freed['bytes'] / 1e6:.1f} MB) and "
              f"{freed['layers']} unpacked layers")
    return 0
