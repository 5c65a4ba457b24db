"""What the control-plane probe can answer (invariant 11), as the decision reads it.

Only "ready" admits a start at its slot. "loaded" (HTTP 429, or a 2xx slower than
``probe.max_latency``) and "down" (refused, timed out, 5xx) move the start to the node's next
slot. "broken" means the probe's own configuration cannot succeed (an unknown host name, a TLS
verification failure, 401/403, a malformed answer): it is reported loudly and the gate decides
as if no probe were configured, so a wrong URL or CA pushed to every node cannot hold the fleet.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

ProbeAnswer = Literal["ready", "loaded", "down", "broken"]
PROBE_ANSWERS: Final[tuple[ProbeAnswer, ...]] = get_args(ProbeAnswer)
