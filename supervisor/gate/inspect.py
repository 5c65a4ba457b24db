"""Docker lookups, in one place: connect to the engine, get a container by name, list the
containers that carry some labels, get an image's attributes, inspect the agent's container.

Every module that asks Docker what is there (the gate, the compose model, the compose hook,
the debug workflow, doctor) asks through these functions, so a lookup means the same thing
everywhere: a container that is not there is None (never an exception to catch at each call),
a listing includes stopped containers and skips those removed while it was being made.

The docker SDK is imported inside these functions only: the gate imports this module on every
call (when ``docker.container`` is set), and must not pay for the SDK otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Final

from supervisor.core.container import ContainerInfo

#: Seconds the gate gives Docker to answer before it decides without it.
HOOK_TIMEOUT: Final = 3.0


def _unix_socket(docker_host: str | None) -> str | None:
    """The socket path of a unix DOCKER_HOST (the default one when unset), else None."""
    if not docker_host:
        return "/var/run/docker.sock"
    if docker_host.startswith("unix://"):
        return docker_host.removeprefix("unix://") or None
    return None


def connect_from_env(timeout: float) -> Any:
    """A client for DOCKER_HOST, or DockerException when nothing answers there.

    A unix socket is tried first with a socket of our own, closed whatever happens: the SDK
    leaks the socket of a failed connect, one per reconnect attempt while Docker is down.
    """
    import socket

    import docker
    import docker.errors

    path = _unix_socket(os.environ.get("DOCKER_HOST"))
    if path is not None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(timeout)
            probe.connect(path)
        except OSError as exc:
            raise docker.errors.DockerException(
                f"cannot connect to Docker at unix://{path}: {exc.strerror or exc}"
            ) from None
        finally:
            probe.close()
    return docker.from_env(timeout=timeout)


def get_container(client: Any, name: str) -> Any | None:
    """The container ``name`` (a name or an id), inspected; None when there is none."""
    import docker.errors

    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def labelled_containers(client: Any, labels: Sequence[str]) -> list[Any]:
    """Every container, running or not, that carries all of ``labels`` (``key`` or
    ``key=value``); one removed while the list was made is left out, not an error."""
    return list(
        client.containers.list(all=True, filters={"label": list(labels)}, ignore_removed=True)
    )


def image_attrs(client: Any, ref: str) -> dict[str, Any] | None:
    """``docker image inspect REF``; None when the node does not have that image."""
    import docker.errors

    try:
        return dict(client.images.get(ref).attrs)
    except docker.errors.ImageNotFound:
        return None


def inspect_container(name: str, timeout: float = HOOK_TIMEOUT) -> ContainerInfo | None:
    """``docker inspect NAME`` as a :class:`ContainerInfo`; None when there is no such one."""
    client = connect_from_env(timeout)
    try:
        found = get_container(client, name)
        return None if found is None else ContainerInfo.from_attrs(found.attrs)
    finally:
        client.close()
