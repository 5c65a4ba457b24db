"""Slot offsets: exact ordinals, low-discrepancy addresses, hashes, and which names give an id."""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.slots import (
    SlotError,
    address_offset,
    hash_offset,
    index_offset,
    no_address_message,
    node_id_from_name,
    slot_offset,
)

BLOCK = int(ipaddress.IPv4Address("10.0.0.0"))


def max_interval_excess(offsets: list[float], length: float) -> float:
    """The most any interval of ``length`` (on the circle) holds beyond its share N*length."""
    pts = sorted(offsets)
    ext = pts + [p + 1.0 for p in pts]
    share = len(pts) * length
    worst = 0.0
    for p in pts:
        count = bisect.bisect_left(ext, p + length) - bisect.bisect_left(ext, p)
        worst = max(worst, count - share)
    return worst


def busiest_bin(offsets: list[float], bins: int) -> int:
    """Offsets in the fullest of ``bins`` equal bins of the window."""
    counts = [0] * bins
    for o in offsets:
        counts[min(int(o * bins), bins - 1)] += 1
    return max(counts)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32 - 20_000),
    st.integers(min_value=2, max_value=3000),
)
def test_contiguous_block_has_no_close_pair(first: int, n: int) -> None:
    """Any N consecutive ids are at least 0.4/N of the window apart (three-gap theorem)."""
    pts = sorted(address_offset(first + i) for i in range(n))
    gaps = [b - a for a, b in itertools.pairwise(pts)] + [pts[0] + 1 - pts[-1]]
    assert min(gaps) >= 0.4 / n


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32 - 20_000),
    st.integers(min_value=10, max_value=5000),
    st.floats(min_value=0.001, max_value=0.5),
)
def test_contiguous_block_fills_every_interval_fairly(first: int, n: int, length: float) -> None:
    """Every interval of the window holds its share of a contiguous block to within 5 nodes."""
    offsets = [address_offset(first + i) for i in range(n)]
    assert max_interval_excess(offsets, length) <= 5.0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10_000), st.data())
def test_index_offsets_are_exact(count: int, data: st.DataObject) -> None:
    """slot_index/slot_count is the offset exactly, and auto mode picks it."""
    index = data.draw(st.integers(min_value=0, max_value=count - 1))
    assert index_offset(index, count) == index / count
    assert slot_offset("auto", node="n", agent="a", slot_index=index, slot_count=count) == (
        index / count,
        "index",
    )


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_address_offset_is_a_fraction_for_any_integer(node_id: int) -> None:
    """Any integer id (even negative or past 64 bits) maps into [0, 1)."""
    assert 0.0 <= address_offset(node_id) < 1.0


@given(st.text(max_size=60), st.text(max_size=30))
def test_hash_offset_is_stable_and_in_range(node: str, agent: str) -> None:
    """The hash offset is in [0, 1) and the same every time for the same node and agent."""
    off = hash_offset(node, agent)
    assert 0.0 <= off < 1.0
    assert off == hash_offset(node, agent)


def test_hash_depends_on_agent() -> None:
    """Two agents on one node get different slots, so they do not start together."""
    assert hash_offset("node-1", "cilium-agent") != hash_offset("node-1", "kube-proxy")


def test_index_offset_rejects_out_of_range() -> None:
    """An ordinal outside [0, count) is an error naming it."""
    with pytest.raises(ValueError, match="slot_index 5 is not in"):
        index_offset(5, 5)


def test_address_block_peak_with_a_fifth_unused() -> None:
    """With a fifth of a block unused at random, the busiest minute stays under 1.20 x N/W."""
    rng = random.Random(7)
    n, bins = 5000, 60
    for _ in range(5):
        ids = rng.sample(range(6250), n)
        offsets = [address_offset(BLOCK + i) for i in ids]
        assert busiest_bin(offsets, bins) <= 1.20 * n / bins


def test_contiguous_block_peak_beats_hash() -> None:
    """Over one minute of a 60-minute window, addresses stay within 1.05x; hashes do not."""
    n, bins = 5000, 60
    by_address = [address_offset(BLOCK + i) for i in range(n)]
    by_hash = [hash_offset(f"node-{i:04d}", "cilium-agent") for i in range(n)]
    assert busiest_bin(by_address, bins) <= 1.05 * n / bins
    assert busiest_bin(by_hash, bins) > 1.05 * n / bins
    assert busiest_bin(by_hash, bins) <= 1.35 * n / bins


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10.1.2.3", int(ipaddress.IPv4Address("10.1.2.3"))),
        ("ip-10-1-2-3.ec2.internal", int(ipaddress.IPv4Address("10.1.2.3"))),
        ("ip-10-1-2-3", int(ipaddress.IPv4Address("10.1.2.3"))),
        ("10-1-2-3.nodes.example", int(ipaddress.IPv4Address("10.1.2.3"))),
        ("node-0042", None),
        ("node-0042.dc1.example.com", None),
        ("worker7", None),
        ("bm-dc2-rack07-u12", None),
        ("ip-10-1-2-300.x", None),
        ("ip-10-01-02-03.x", None),
        ("control-plane", None),
    ],
)
def test_node_id_from_name(name: str, expected: int | None) -> None:
    """A name gives the IPv4 address it is or holds, and nothing else: no number from a name."""
    assert node_id_from_name(name) == expected


def test_address_mode_uses_the_configured_id_or_the_name_address() -> None:
    """address mode prefers a configured node_id, else reads the IPv4 address in the name."""
    assert slot_offset("address", node="10.0.0.7", agent="a") == (
        address_offset(BLOCK + 7),
        "address",
    )
    assert slot_offset("address", node="x", agent="a", node_id=9) == (address_offset(9), "address")
    assert slot_offset("address", node="bm-dc2-rack07-u12", agent="a", node_id=9) == (
        address_offset(9),
        "address",
    )


@pytest.mark.parametrize("name", ["gateway", "bm-dc2-rack07-u12", "node-0042.dc1.example.com"])
def test_address_mode_without_an_address_is_a_slot_error(name: str) -> None:
    """address mode never falls back (to a number in the name, or to the hash): a name without
    an IPv4 address and no node_id is a SlotError naming the node and the fix."""
    with pytest.raises(SlotError) as info:
        slot_offset("address", node=name, agent="a")
    assert str(info.value) == no_address_message(name)
    assert isinstance(info.value, ValueError)
    assert f"node name {name!r} holds no IPv4 address" in str(info.value)
    for fix in ("set node_id", "slot_mode = index", "slot_mode = hash"):
        assert fix in str(info.value)


def test_rack_names_sharing_a_last_number_are_not_slotted_together() -> None:
    """Regression (issue 15): bm-dc2-rack07-u12 and bm-dc3-rack31-u12 used to get one slot (the
    number 12); now neither gets any slot from its name in address mode, and both hash apart."""
    for name in ("bm-dc2-rack07-u12", "bm-dc3-rack31-u12"):
        with pytest.raises(SlotError):
            slot_offset("address", node=name, agent="a")
    assert hash_offset("bm-dc2-rack07-u12", "a") != hash_offset("bm-dc3-rack31-u12", "a")


def test_distinct_ids_never_share_an_address_slot() -> None:
    """Fibonacci hashing by an odd constant is a bijection modulo 2**64: 100,000 consecutive ids
    and, past them, 100,000 ids a /24 apart give 200,000 distinct offsets."""
    past = BLOCK + 100_000
    ids = [BLOCK + i for i in range(100_000)] + [past + 256 * i for i in range(100_000)]
    assert len(set(ids)) == 200_000
    assert len({address_offset(i) for i in ids}) == 200_000


def test_auto_without_ordinals_is_hash() -> None:
    """auto mode with no slot_index is the hash of node and agent."""
    assert slot_offset("auto", node="n1", agent="a") == (hash_offset("n1", "a"), "hash")


def test_an_invalid_embedded_address_is_skipped_for_a_later_valid_one() -> None:
    """A four-number group that is not an address (an octet above 255) does not stop the search:
    a later embedded address in the name is still found."""
    assert node_id_from_name("x-999-0-0-1-10-0-0-7") == int(ipaddress.IPv4Address("10.0.0.7"))


def test_index_mode_uses_the_ordinals() -> None:
    """index mode with slot_index and slot_count is index/count exactly."""
    assert slot_offset("index", node="n1", agent="a", slot_index=3, slot_count=8) == (
        0.375,
        "index",
    )


@pytest.mark.parametrize(
    ("index", "count"),
    [(3, 8), (None, 8), (3, None)],
)
def test_hash_mode_ignores_ordinals_and_auto_needs_both(
    index: int | None, count: int | None
) -> None:
    """hash mode never uses ordinals, and auto uses them only when both index and count are set."""
    expected = (hash_offset("n1", "a"), "hash")
    assert slot_offset("hash", node="n1", agent="a", slot_index=index, slot_count=count) == expected
    if index is None or count is None:
        assert slot_offset("auto", node="n1", agent="a", slot_index=index, slot_count=count) == (
            expected
        )
