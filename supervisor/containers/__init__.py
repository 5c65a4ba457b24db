"""The Docker side: the supervisor daemon that restarts the agent's container through
the gate, compose files, and doctor."""

from typing import Final

#: Where the gate service finds the compose project's directory (read-only). Here, not in
#: :mod:`supervisor.containers.recreate`, so that the gate can tell whether it runs as the
#: compose hook without importing the compose model (its start-up pays for it only there).
COMPOSE_MOUNT: Final = "/run/agent-supervisor/compose"
