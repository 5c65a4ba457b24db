"""The gate's Docker calls: connect to the engine, inspect the agent's container.

The docker SDK is imported inside these functions only: the gate imports this module on every
call (when ``docker.container`` is set), and must not pay for the SDK otherwise.
"""

from __future__ import annotations

import os
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


def inspect_container(name: str, timeout: float = HOOK_TIMEOUT) -> ContainerInfo | None:
    """``docker inspect NAME`` as a :class:`ContainerInfo`; None when there is no such one."""
    import docker.errors

    client = connect_from_env(timeout)
    try:
        return ContainerInfo.from_attrs(client.containers.get(name).attrs)
    except docker.errors.NotFound:
        return None
    finally:
        client.close()
