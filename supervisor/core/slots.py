"""Where inside a window a node may start: its slot, as a fraction of the window in [0, 1).

Why slots beat random jitter: with random jitter every refused agent picks a fresh random
delay, so starts cluster by chance (the birthday problem: some minutes of a 5000-node fleet
see twice the mean) and the same node may be early one time and late the next. A slot is a
fixed, node-specific offset on a grid shared by every node of the cluster (counted from the
Unix epoch), so the answer is deterministic (the same state and clock give the same time),
operators can say in advance when a node will start, and the aggregate start rate is flat.

Three ways to pick the offset:

* ``index``: ``slot_index / slot_count`` exactly, when the fleet's configuration gives each node
  an ordinal. Perfectly even.
* ``address``: a low-discrepancy sequence over an integer node id (its IPv4 address or the number
  in its name): ``frac(id * phi)``. Consecutive ids land far apart and any contiguous block of ids
  covers the window almost evenly, with no configuration at all.
* ``hash``: SHA-256 of node name and agent. Needs nothing, spreads like random jitter but is
  stable. The default when nothing better is known.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Final, Literal, get_args

#: 2**64 / golden ratio, rounded to an odd integer: multiplying by it is Fibonacci hashing,
#: whose fractional parts for consecutive integers are the most evenly spread of any constant.
#: How a node's slot offset is chosen (config ``slot_mode`` adds "auto": index if configured).
SlotMode = Literal["hash", "index", "address"]
SLOT_MODES: Final[tuple[SlotMode, ...]] = get_args(SlotMode)
SLOT_MODE_SETTINGS: Final = ("auto", *SLOT_MODES)

_PHI_64: Final = 0x9E3779B97F4A7C15
_TWO_64: Final = 1 << 64
_DIGITS: Final = re.compile(r"(\d+)")
#: Four numbers of at most three digits joined by ``.`` or ``-``: an IPv4 address written into
#: a host name (``ip-10-1-2-3.ec2.internal``, ``10-1-2-3.nodes.example``).
_EMBEDDED_IPV4: Final = re.compile(r"(?<!\d)(\d{1,3})[.-](\d{1,3})[.-](\d{1,3})[.-](\d{1,3})(?!\d)")


def hash_offset(node: str, agent: str) -> float:
    """Stable pseudo-random offset from the node name and agent name.

    Spreads like random jitter (the busiest minute of a 5000-node fleet with a one-hour window
    sees about 1.3 times the mean), but needs nothing and never changes for a node.
    """
    digest = hashlib.sha256(f"{node}\x00{agent}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _TWO_64


def index_offset(index: int, count: int) -> float:
    """Exact offset ``index / count``; the fleet's ordinals make the start rate flat."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"slot_index {index} is not in [0, {count})")
    return index / count


def address_offset(node_id: int) -> float:
    """Low-discrepancy offset ``frac(node_id * phi)`` from an integer node id.

    Why the golden ratio: by the three-gap theorem the offsets of any run of consecutive ids cut
    the window into gaps of at most three sizes, none shorter than about ``0.4 / N`` of it, and
    every interval of the window holds its fair share of a contiguous address block to within
    a few nodes (the excess grows like log N; at most 3.5 measured up to N = 5000), where
    hashing is off by a few square roots of the share. The product is
    taken modulo 2**64 in integers, so large ids (IPv4 addresses) lose no precision; negative
    ids are taken modulo 2**64 as well, so any integer has an offset.
    """
    return ((node_id * _PHI_64) % _TWO_64) / _TWO_64


def node_id_from_name(node: str) -> int | None:
    """An integer id for a node: its IPv4 address if the name holds one, else a number in it.

    ``10.1.2.3`` -> the address as an integer; ``ip-10-1-2-3.ec2.internal`` -> the address
    10.1.2.3 (cloud-style names; the digits of ``ec2`` are not part of it); ``node-0042`` and
    ``node-0042.dc1.example.com`` -> 42 (the last number of the host label, not of the
    domain, which every node shares); a name without digits -> None.
    """
    try:
        return int(ipaddress.IPv4Address(node))
    except ValueError:
        pass
    for match in _EMBEDDED_IPV4.finditer(node):
        try:
            return int(ipaddress.IPv4Address(".".join(match.groups())))
        except ValueError:
            continue  # an octet above 255 (or a leading zero): not an address
    host = node.split(".", 1)[0]
    numbers = _DIGITS.findall(host) or _DIGITS.findall(node)
    if numbers:
        return int(numbers[-1])
    return None


def slot_offset(
    mode: str,
    *,
    node: str,
    agent: str,
    slot_index: int | None = None,
    slot_count: int | None = None,
    node_id: int | None = None,
) -> tuple[float, str]:
    """Return (offset fraction, the mode actually used).

    ``auto`` uses exact slots when an ordinal is configured, else the hash. ``address`` falls
    back to the hash when no node id is configured and none can be read from the name.
    """
    if mode in ("auto", "index") and slot_index is not None and slot_count is not None:
        return index_offset(slot_index, slot_count), "index"
    if mode == "address":
        nid = node_id if node_id is not None else node_id_from_name(node)
        if nid is not None:
            return address_offset(nid), "address"
    return hash_offset(node, agent), "hash"
