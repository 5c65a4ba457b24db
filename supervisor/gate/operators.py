"""Who is acting, and whether they may: operator commands and ``--force``.

Allowed: root; the owner of the state directory (they can rewrite the state file anyway, so
refusing them would be theatre, and it lets a non-root operator run a local trial); members of
``operators_group``. Everyone else gets exit 77 and the attempt is logged.

With ``operators_group`` set, root reached through sudo counts as the sudo user: a broad sudo
rule for node tooling must not let everyone override the gate. The state directory is root's
and 0700, so in production group members act through sudo, and this check is what tells them
apart from other sudoers.

An ``operators_group`` that does not exist on the node is a configuration error (exit 78), not
a refusal of everyone (77): the fix is in the configuration, and 77 would send operators hunting
for a membership that cannot exist. It is checked here, when a decision needs the group, and
not at load: the plain gate (no ``--force``) never asks who the operator is, and an operator
setting must never be the reason the agent, hence the node's networking, stays down.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from supervisor.base.errors import ConfigError, NotPermitted


@dataclass(frozen=True, slots=True)
class Operator:
    """The invoking user; ``sudo_user`` is who ran sudo, when that is how we were started."""

    user: str
    uid: int
    sudo_user: str | None = None

    @property
    def display(self) -> str:
        """``alice`` or ``root (sudo by alice)``."""
        return f"{self.user} (sudo by {self.sudo_user})" if self.sudo_user else self.user


def current_operator() -> Operator:
    """The real user behind this process."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid:{uid}"
    sudo = os.environ.get("SUDO_USER") if uid == 0 else None
    return Operator(user=name, uid=uid, sudo_user=sudo or None)


def _group(name: str, source: str | None) -> grp.struct_group:
    """The group entry of ``operators_group``; a :class:`ConfigError` if there is none."""
    try:
        return grp.getgrnam(name)
    except KeyError:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}operators_group {name!r}: no such group on this node") from None


def _in_group(entry: grp.struct_group, user: str, *, this_process: bool) -> bool:
    """Whether ``user`` is in the group ``entry`` (by its members or the user's primary group);
    with ``this_process``, the process's own supplementary groups count too."""
    if user in entry.gr_mem:
        return True
    if this_process and (entry.gr_gid in os.getgroups() or os.getegid() == entry.gr_gid):
        return True
    try:
        return pwd.getpwnam(user).pw_gid == entry.gr_gid
    except KeyError:
        return False


def authorize(
    op: Operator,
    action: str,
    state_dir: Path,
    operators_group: str | None,
    *,
    source: str | None = None,
) -> None:
    """Raise :class:`NotPermitted` unless ``op`` may perform ``action``.

    Raise :class:`ConfigError` when the answer depends on ``operators_group`` and no such group
    exists; ``source`` (where the key was set, e.g. ``cfg.source_of("operators_group")``)
    prefixes that message. Root without sudo, root through sudo by root, and the owner of the
    state directory need no group, so a missing one does not stop them.
    """
    if os.geteuid() == 0:
        sudo = op.sudo_user
        if (
            operators_group
            and sudo
            and sudo != "root"
            and not _in_group(_group(operators_group, source), sudo, this_process=False)
        ):
            raise NotPermitted(
                f"{action}: not permitted for {sudo} (through sudo); only members of group "
                f"{operators_group!r} may do this"
            )
        return
    try:
        if state_dir.stat().st_uid == os.geteuid():
            return
    except OSError:
        pass
    if operators_group and _in_group(_group(operators_group, source), op.user, this_process=True):
        return
    who = f"user {op.user} (uid {op.uid})"
    group = f"members of group {operators_group!r}" if operators_group else "root"
    raise NotPermitted(f"{action}: not permitted for {who}; only {group} may do this")
