"""``Image.from_dockerfile``, ``Image.dockerfile_commands`` and ``Image.from_scratch``.

A mixin of :class:`hutch.sdk.image.Image`: the Dockerfile is read into stages by
:mod:`hutch.sdk.dockerfile`, and each stage becomes an image of the class this is mixed
into (``cls``), so this module needs nothing of ``image``'s.  The last stage is the
result; an earlier one is built only when a ``COPY --from`` takes files from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from hutch.exception import InvalidError
from hutch.sdk import dockerfile, imagebases, imagesteps
from hutch.sdk.dockerfile import AUTO_DOCKERIGNORE
from hutch.sdk.imagecore import ImageCore
from hutch.sdk.options import env_without_none, reject_unsupported
from hutch.sdk.secret import Secret


class DockerfileSources(ImageCore):
    """The Dockerfile part of ``Image``."""

    @classmethod
    def from_scratch(cls, force_build: bool = False) -> Self:
        """An empty image (Dockerfile ``FROM scratch``): add files to it."""
        return cls(imagebases.scratch(), force_build=bool(force_build))

    @classmethod
    def from_dockerfile(cls, path: str | Path, *, force_build: bool = False,
                        context_dir: str | Path | None = None, ignore: Any = AUTO_DOCKERIGNORE,
                        build_args: dict[str, str] | None = None,
                        registry_secret: Secret | None = None,
                        secrets: Sequence[Secret] | None = None,
                        env: dict[str, str | None] | None = None, gpu: str | None = None,
                        add_python: str | None = None) -> Self:
        """An image built from a Dockerfile (:mod:`hutch.sdk.dockerfile` lists what each
        instruction becomes).  ``context_dir`` (default: the working directory) holds what
        COPY takes; ``.dockerignore`` there (or ``<Dockerfile>.dockerignore`` beside it)
        applies unless ``ignore`` gives patterns or a predicate; ``build_args`` set ARGs;
        ``env`` and ``secrets`` reach RUN lines; ``registry_secret`` pulls FROM images."""
        reject_unsupported({"gpu_image": gpu, "add_python": add_python}, "Image.from_dockerfile")
        dockerfile_path = Path(path).expanduser()
        try:
            text = dockerfile_path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidError(f"cannot read the Dockerfile {str(path)!r}: {exc}") from exc
        return cls._from_plan(None, text, context_dir, ignore, build_args, registry_secret,
                              secrets, env, force_build, dockerfile_path)

    def dockerfile_commands(self, *dockerfile_commands: str | list[str],
                            context_files: dict[str, str] | None = None,
                            env: dict[str, str | None] | None = None,
                            secrets: Sequence[Secret] | None = None, gpu: str | None = None,
                            context_dir: str | Path | None = None, force_build: bool = False,
                            ignore: Any = AUTO_DOCKERIGNORE,
                            build_args: dict[str, str] | None = None) -> Self:
        """Dockerfile lines applied to this image (a ``FROM`` among them starts a stage)."""
        reject_unsupported({"gpu_image": gpu, "context_files": context_files},
                           "Image.dockerfile_commands")
        lines = imagesteps.flatten_text(dockerfile_commands, "dockerfile_commands")
        if not lines:
            return self
        return type(self)._from_plan(self, "\n".join(lines), context_dir, ignore, build_args,
                                     None, secrets, env, force_build, None)

    @classmethod
    def _from_plan(cls, base: Self | None, text: str, context_dir: str | Path | None,
                   ignore: Any, build_args: dict[str, str] | None,
                   registry_secret: Secret | None, secrets: Sequence[Secret] | None,
                   env: dict[str, str | None] | None, force_build: bool,
                   dockerfile_path: Path | None) -> Self:
        """The image of the Dockerfile ``text``'s last stage (on ``base`` for
        ``dockerfile_commands``), its earlier stages built when a ``COPY --from`` needs
        them."""
        context = Path(context_dir).expanduser().absolute() if context_dir is not None \
            else Path.cwd()
        if build_args is not None and (not isinstance(build_args, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in build_args.items())):
            raise InvalidError("build_args must be a dict of str to str")

        named = registry_secret.env().get("REGISTRY_HOST") \
            if isinstance(registry_secret, Secret) else None
        bound: list[str] = [named.lower()] if named else []  # where the secret logs in

        def base_for(ref: str, from_line: bool) -> dict[str, Any]:
            """A FROM or ``COPY --from`` image.  ``registry_secret`` logs in to one
            registry only: the secret's ``REGISTRY_HOST`` if it names one, else the host of
            the Dockerfile's first FROM line (its base, as Modal describes the secret);
            FROM lines of that host get it, ``COPY --from`` images and other hosts never:
            a Dockerfile's later lines could name anyone's registry (Docker keys logins by
            host for the same reason)."""
            if ref.startswith("hutch/") or ref == "scratch":
                if from_line and not bound:
                    bound.append("")  # the base is local: no registry gets the secret
                return imagebases.from_id(ref)
            host = imagebases.registry_host(ref)
            if from_line and not bound:
                bound.append(host)
            secret = registry_secret if from_line and host == bound[0] else None
            return imagebases.registry(ref, secret, where="from_dockerfile")

        options = dockerfile.Options(
            context_dir=context, ignore=dockerfile.ignore_rules(ignore, context, dockerfile_path),
            build_args=dict(build_args or {}),
            env=env_without_none(env or {}),
            secrets=list(secrets or ()), base_for=base_for)
        images: list[Self] = []
        for stage in dockerfile.plan(text, options, extends=base is not None):
            if stage.base is None:
                assert base is not None
                image = base
            elif isinstance(stage.base, int):
                image = images[stage.base]
            else:
                image = cls(stage.base)
            for step in stage.steps:
                if isinstance(step, imagesteps.StageFiles):
                    source = images[step.stage] if isinstance(step.stage, int) else \
                        cls(step.stage)
                    step = dataclasses.replace(step, image=source)
                image = image._then(step)
            images.append(image)
        final = images[-1]
        return cls(final._base, final._steps,
                   force_build=bool(force_build) or final._force_build)
