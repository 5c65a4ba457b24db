"""Where inside a window a node may start: its slot, as a fraction of the window in [0, 1).

Why slots rather than random jitter: a slot is a fixed, node-specific offset on a grid shared
by every node of the cluster (counted from the Unix epoch). Hashed slots spread exactly as one
draw of random jitter over the window would (a Poisson count a minute: the busiest minute of a
5000-node fleet in a one-hour window is about 1.25 times the mean, above 1.35 in about one
fleet of 20), so what slots buy is not a better spread by chance but what jitter cannot give:

* one answer whoever asks: the same state and clock give the same start time to the waiting
  gate, a fresh gate after a reboot, ``status`` and ``simulate`` (a fresh random draw would
  give each of them another time), so operators can say in advance when a node will start;
* a node keeps its place: a crash-looping node comes back at its own offset one or more
  windows later, never early in one window and late in the next;
* where the fleet gives each node a number, a spread better than chance: exact ordinals put
  ``N / W`` starts into every minute to within one.

Three ways to pick the offset (``slot_mode``; ``auto``, the default, is ``index`` when
``slot_index`` and ``slot_count`` are configured, else ``hash``):

* ``index``: ``slot_index / slot_count`` exactly, when the fleet's configuration gives each node
  an ordinal. Perfectly even: the busiest minute is the mean rounded up.
* ``address``: a low-discrepancy sequence over an integer node id, the node's IPv4 address (the
  node name, or an address written into it such as ``ip-10-1-2-3.ec2.internal``) or the
  configured ``node_id``: ``frac(id * phi)``. Over a dense block of ids (a contiguous range, or
  one with a few holes) and over the first hosts of every rack's subnet, every minute gets its
  share to within a few starts (at most 1.17 x N/W measured) with no configuration at all. Over
  addresses picked at random in a large subnet (a cloud VPC) it spreads like the hash, and a
  few regular strides alias, worse than the hash: check a fleet's real names with
  ``plan --nodes-file``.
  There is no fallback to a number in the name: rack-style names (``bm-dc2-rack07-u12``) carry
  several numbers, and the last one (the rack unit) repeats in every rack: 5000 nodes on 40
  slots, 125 on one instant (issue 15). A name without an IPv4 address, and no ``node_id``, is
  a :class:`SlotError`.
* ``hash``: SHA-256 of node name and agent. Needs nothing and never changes for a node; spreads
  like random jitter.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Final, Literal, get_args

#: How a node's slot offset is chosen (config ``slot_mode`` adds "auto": index if configured).
SlotMode = Literal["hash", "index", "address"]
SLOT_MODES: Final[tuple[SlotMode, ...]] = get_args(SlotMode)
SLOT_MODE_SETTINGS: Final = ("auto", *SLOT_MODES)

#: 2**64 / golden ratio, rounded to an odd integer: multiplying by it is Fibonacci hashing,
#: whose fractional parts for consecutive integers are the most evenly spread of any constant.
#: Odd, so ``id -> id * _PHI_64 mod 2**64`` is a bijection: distinct ids never share a slot.
_PHI_64: Final = 0x9E3779B97F4A7C15
_TWO_64: Final = 1 << 64
#: Four numbers of at most three digits joined by ``.`` or ``-``: an IPv4 address written into
#: a host name (``ip-10-1-2-3.ec2.internal``, ``10-1-2-3.nodes.example``).
_EMBEDDED_IPV4: Final = re.compile(r"(?<!\d)(\d{1,3})[.-](\d{1,3})[.-](\d{1,3})[.-](\d{1,3})(?!\d)")


class SlotError(ValueError):
    """A node cannot get a slot in the configured mode; the message names the node and the fix.

    Raised by :func:`slot_offset` for ``slot_mode = address`` when neither the node name nor
    ``node_id`` gives an id. Configuration loading turns it into exit 78; ``plan --nodes-file``
    counts it as a mode that cannot work for the fleet.
    """


def hash_offset(node: str, agent: str) -> float:
    """Stable pseudo-random offset from the node name and agent name.

    Spreads like random jitter (the busiest minute of a 5000-node fleet with a one-hour window
    sees about 1.25 times the mean, above 1.35 in about one fleet of 20), but needs nothing and
    never changes for a node.
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
    hashing is off by a few square roots of the share. That holds for runs of ids (and for
    runs of runs, such as the first hosts of each rack's subnet), not for any set: a sparse
    random subset spreads like hashes, and ids in a few regular strides alias.
    The product is taken modulo 2**64 in integers, so large ids (IPv4 addresses) lose no
    precision; negative ids are taken modulo 2**64 as well, so any integer has an offset.
    """
    return ((node_id * _PHI_64) % _TWO_64) / _TWO_64


def node_id_from_name(node: str) -> int | None:
    """The IPv4 address a node name holds, as an integer, or None.

    ``10.1.2.3`` -> the address as an integer; ``ip-10-1-2-3.ec2.internal`` -> 10.1.2.3 (an
    address written into the name with ``.`` or ``-``; the digits of ``ec2`` are not part of
    it); four numbers that are not an address (an octet above 255, a leading zero) are skipped
    for a later address in the name. Any other name -> None: ``node-0042`` or
    ``bm-dc2-rack07-u12`` holds numbers, not an address, and a number from a name is no id
    (the rack unit ``12`` is the same in every rack).
    """
    for match in _EMBEDDED_IPV4.finditer(node):
        try:
            return int(ipaddress.IPv4Address(".".join(match.groups())))
        except ValueError:
            continue  # an octet above 255 (or a leading zero): not an address
    return None


def no_address_message(node: str) -> str:
    """What :class:`SlotError` says for a node name that holds no IPv4 address."""
    return (
        f"slot_mode = address: node name {node!r} holds no IPv4 address; set node_id to a number "
        "unique to this node (its position in the fleet, 0 to N-1, or its IPv4 address as an "
        "integer: 10.1.2.3 is 167838211), or use slot_mode = index (with slot_index and "
        "slot_count) or slot_mode = hash"
    )


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

    ``auto`` uses exact slots when an ordinal is configured, else the hash. ``address`` uses the
    configured ``node_id``, else the IPv4 address the node name holds, else raises
    :class:`SlotError` (never a silent fallback: a wrong guess puts whole racks on one slot).
    """
    if mode in ("auto", "index") and slot_index is not None and slot_count is not None:
        return index_offset(slot_index, slot_count), "index"
    if mode == "address":
        nid = node_id if node_id is not None else node_id_from_name(node)
        if nid is None:
            raise SlotError(no_address_message(node))
        return address_offset(nid), "address"
    return hash_offset(node, agent), "hash"
