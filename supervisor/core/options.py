"""The one rule for the agent's option names, wherever a name is met: a key of the config
file's ``[agent]`` table (checked at load), a file of the agent's config directory (``config
render`` and ``config import``), an option passed to a render.

cilium-agent's options are lower-case words joined by single dashes (``cluster-name``,
``k8s-kubeconfig-path``); the file name in ``--config-dir`` is the option. A name that breaks
the rule (``cluster_name``, ``Cluster-Name``, ``foo-``, ``a--b``, ``.hidden``) is no option the
agent knows: better one exit 78 where it is written than a render that fails later, or a file
the agent reads as an option nobody meant.
"""

from __future__ import annotations

import re
from typing import Final

#: Lower-case letters and digits in words joined by single dashes.
OPTION_NAME: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
#: Longer names are no option of the agent's (its longest are under 60 characters).
MAX_OPTION_NAME: Final = 200
#: The end of the error for a bad name, after ``<where>: agent.<name>: ``.
OPTION_NAME_RULE: Final = (
    "option names are the agent's kebab-case names (lower-case letters and digits, "
    "words joined by single dashes, e.g. cluster-name, k8s-kubeconfig-path)"
)


def is_option_name(name: str) -> bool:
    """True when ``name`` can be one of the agent's options (and so a file name in its dir)."""
    return len(name) <= MAX_OPTION_NAME and OPTION_NAME.fullmatch(name) is not None
