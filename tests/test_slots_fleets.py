"""Slots on realistic fleets (issue 15): every mode keeps the busiest minute within its target,
or the check says it cannot; names are those real fleets use, offsets the gate's own."""

from __future__ import annotations

import ipaddress
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.policy import WindowConfig, window_seconds
from supervisor.core.slots import SlotError, address_offset, hash_offset, slot_offset
from supervisor.fleet.plan import (
    HASH_TARGET,
    INDEX_TARGET,
    busiest_minute,
    check_fleet,
    expected_peak,
    parse_node_names,
    peak_target,
)

AGENT = "cilium-agent"
SIZES = (1000, 5000, 10000)
#: The cloud fleets' /16: 10.20.0.0/16, addresses picked at random as EC2 assigns them.
VPC = int(ipaddress.IPv4Address("10.20.0.0"))


def rack_names(n: int) -> list[str]:
    """Bare-metal names ``bm-dc{1..}-rack{01..40}-u{01..42}``, the first ``n`` of them."""
    names = [
        f"bm-dc{dc}-rack{rack:02d}-u{unit:02d}"
        for dc in range(1, n // (40 * 42) + 2)
        for rack in range(1, 41)
        for unit in range(1, 43)
    ]
    return names[:n]


def cloud_names(n: int, seed: int = 15) -> list[str]:
    """``ip-10-20-x-y.ec2.internal`` for ``n`` addresses of a /16, the rest of it holes."""
    ids = sorted(random.Random(seed).sample(range(1, 65535), n))
    return [f"ip-{str(ipaddress.IPv4Address(VPC + i)).replace('.', '-')}.ec2.internal" for i in ids]


def plain_names(n: int) -> list[str]:
    """``node-00001``, ``node-00002``, ..."""
    return [f"node-{i:05d}" for i in range(1, n + 1)]


def fqdn_names(n: int) -> list[str]:
    """``node-0001.dc1.example.com``, ... (five digits past 9999)."""
    return [f"node-{i:04d}.dc1.example.com" for i in range(1, n + 1)]


def block_addresses(n: int, unused: float = 0.0, seed: int = 15) -> list[str]:
    """IPv4 names of a block from 10.20.0.0 with a fraction of it unused at random."""
    span = math.ceil(n / (1.0 - unused))
    ids = range(n) if span == n else sorted(random.Random(seed).sample(range(span), n))
    return [str(ipaddress.IPv4Address(VPC + i)) for i in ids]


def rack_addresses(dcs: int, racks: int, hosts: int) -> list[str]:
    """``10.{dc}.{rack}.{host}``: each rack a /24 whose first hosts are nodes."""
    return [
        f"10.{dc}.{rack}.{host}"
        for dc in range(1, dcs + 1)
        for rack in range(1, racks + 1)
        for host in range(1, hosts + 1)
    ]


FLEETS = {"rack": rack_names, "cloud": cloud_names, "plain": plain_names, "fqdn": fqdn_names}


def default_window(n: int) -> float:
    """W = 10m + 0.6 s x N, the default window."""
    return window_seconds(WindowConfig(), n)


def test_the_fleets_are_what_they_say() -> None:
    """The generated fleets have N distinct names of the promised shape, and W(5000) is 1 h."""
    for make in FLEETS.values():
        for n in SIZES:
            assert len(set(make(n))) == n
    assert rack_names(5000)[0] == "bm-dc1-rack01-u01" and rack_names(5000)[-1].startswith("bm-dc3")
    assert cloud_names(5000)[0].startswith("ip-10-20-") and cloud_names(5000)[0].endswith(
        ".ec2.internal"
    )
    assert default_window(5000) == 3600.0
    assert default_window(1000) == 1200.0 and default_window(10000) == 6600.0


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_hash_slots_keep_the_busiest_minute_within_target(fleet: str, n: int) -> None:
    """Hashed slots of every realistic fleet give every node its own instant and keep the
    busiest minute of the default window at most 1.35 x N/W."""
    names = FLEETS[fleet](n)
    window = default_window(n)
    check = check_fleet(names, "hash", agent=AGENT, window=window)
    mean = n * 60 / window
    assert check.slots == "hash" and check.placed == n
    assert check.distinct_slots == n and check.most_on_one_instant == 1
    assert check.busiest_minute <= HASH_TARGET * mean
    assert check.busiest_minute > mean  # a real count, not an empty one
    assert check.problems == ()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_index_slots_are_exact_on_every_fleet(fleet: str, n: int) -> None:
    """Exact ordinals put the mean rounded up into the busiest minute, within 1.05 x N/W."""
    window = default_window(n)
    check = check_fleet(FLEETS[fleet](n), "index", agent=AGENT, window=window)
    mean = n * 60 / window
    assert check.distinct_slots == n
    assert check.busiest_minute == math.ceil(mean)
    assert check.busiest_minute <= INDEX_TARGET * mean
    assert check.problems == ()


@pytest.mark.parametrize("n", SIZES)
def test_address_slots_on_a_cloud_subnet_are_within_the_bound(n: int) -> None:
    """Addresses picked at random in a /16 give distinct slots and a busiest minute within the
    documented address bound (that of hashes: a sparse set spreads like them)."""
    names = cloud_names(n)
    window = default_window(n)
    check = check_fleet(names, "address", agent=AGENT, window=window)
    assert check.slots == "address" and check.placed == n
    assert check.distinct_slots >= 0.99 * n and check.most_on_one_instant == 1
    assert check.busiest_minute <= peak_target("address", n, window)
    assert check.busiest_minute <= HASH_TARGET * n * 60 / window
    assert check.problems == ()


@pytest.mark.parametrize("n", SIZES)
def test_address_slots_on_a_dense_block_beat_hashes(n: int) -> None:
    """A contiguous block stays within what sizing assumes (mean + 4), a block with a fifth
    unused within 1.20 x N/W: the reason address slots exist."""
    window = default_window(n)
    mean = n * 60 / window
    whole = check_fleet(block_addresses(n), "address", agent=AGENT, window=window)
    holes = check_fleet(block_addresses(n, unused=0.2), "address", agent=AGENT, window=window)
    assert whole.distinct_slots == n and holes.distinct_slots == n
    assert whole.busiest_minute <= expected_peak(n, window, "address") <= mean + 4
    assert holes.busiest_minute <= 1.20 * mean
    assert whole.problems == () and holes.problems == ()


@pytest.mark.parametrize(("dcs", "racks", "hosts"), [(1, 24, 42), (4, 30, 42), (4, 40, 42)])
def test_address_slots_on_rack_subnets_beat_hashes(dcs: int, racks: int, hosts: int) -> None:
    """The first hosts of every rack's /24 (10.dc.rack.host) spread within 1.20 x N/W."""
    names = rack_addresses(dcs, racks, hosts)
    n = len(names)
    window = default_window(n)
    check = check_fleet(names, "address", agent=AGENT, window=window)
    assert check.distinct_slots == n
    assert check.busiest_minute <= 1.20 * n * 60 / window


@pytest.mark.parametrize("fleet", ["rack", "plain", "fqdn"])
def test_address_slots_refuse_names_without_an_address(fleet: str) -> None:
    """Names that hold numbers but no IPv4 address get no address slot: every one is refused,
    and the one line names the first node and the fix."""
    names = FLEETS[fleet](5000)
    check = check_fleet(names, "address", agent=AGENT, window=3600.0)
    assert check.placed == 0 and check.distinct_slots == 0 and not check.ok
    (problem,) = check.problems
    assert (problem.severity, problem.kind) == ("refused", "no_slot")
    assert problem.message.startswith("5000 of 5000 names get no slot with address slots")
    assert f"node name {names[0]!r} holds no IPv4 address; set node_id" in problem.message
    assert "\n" not in problem.message


def test_the_old_fallback_would_be_caught() -> None:
    """Issue 15's failure, rebuilt: the last number of each rack name as the id puts 5000 nodes
    on 42 instants and about 3 x N/W into one minute, far over the target the check applies."""
    names = rack_names(5000)
    offsets = [address_offset(int(name.rsplit("u", 1)[1])) for name in names]
    assert len(set(offsets)) == 42
    assert busiest_minute(offsets, 3600.0) >= 2.5 * 5000 / 60
    assert busiest_minute(offsets, 3600.0) > peak_target("address", 5000, 3600.0)


def test_names_that_share_an_address_are_refused() -> None:
    """Two names holding one address would start on one instant: the check refuses, naming both."""
    names = [*block_addresses(998), "a-10-99-0-1", "b-10-99-0-1"]
    check = check_fleet(names, "address", agent=AGENT, window=1200.0)
    assert check.distinct_slots == 999 and check.most_on_one_instant == 2
    (problem,) = check.problems
    assert (problem.severity, problem.kind) == ("refused", "shared_slot")
    assert "'a-10-99-0-1' and 'b-10-99-0-1'" in problem.message


def test_an_aliasing_stride_is_over_the_target() -> None:
    """Every 842nd address aliases with the golden ratio: the busiest minute is several times
    N/W, and the check calls it over (not a warning: it follows from the addresses)."""
    names = [str(ipaddress.IPv4Address(VPC + 842 * k)) for k in range(5000)]
    check = check_fleet(names, "address", agent=AGENT, window=3600.0)
    assert check.distinct_slots == 5000
    assert check.busiest_minute > 3 * 5000 / 60
    (problem,) = check.problems
    assert (problem.severity, problem.kind) == ("over", "over_target")
    assert "slot_mode = index" in problem.message


def test_hash_over_target_by_chance_is_a_warning() -> None:
    """A fleet whose hashes land over the target (agent-13 on node-00001..01000, found by search)
    gets a warning, not a failure: about one fleet in 20 does by chance."""
    names = plain_names(1000)
    check = check_fleet(names, "hash", agent="agent-13", window=1200.0)
    assert check.busiest_minute > check.target
    (problem,) = check.problems
    assert (problem.severity, problem.kind) == ("warning", "over_target")
    assert check.ok


def test_index_with_a_slot_count_above_the_fleet_is_over() -> None:
    """slot_count 6000 for 5000 nodes packs their starts into 5/6 of the window: 1.2 x N/W."""
    check = check_fleet(plain_names(5000), "index", agent=AGENT, window=3600.0, slot_count=6000)
    assert check.busiest_minute == 100
    (problem,) = check.problems
    assert (problem.severity, problem.kind) == ("over", "over_target")
    assert "slot_count = 6000 for 5000 names" in problem.message


def test_index_with_a_slot_count_below_the_fleet_is_refused() -> None:
    """slot_count 4000 for 5000 nodes leaves 1000 without an ordinal: refused."""
    check = check_fleet(plain_names(5000), "index", agent=AGENT, window=3600.0, slot_count=4000)
    assert check.placed == 4000
    assert check.problems[0].kind == "no_slot" and check.problems[0].severity == "refused"
    assert "slot_count = 4000 is less than the 5000 names" in check.problems[0].message


def test_auto_is_index_with_ordinals_else_hash() -> None:
    """auto checks as the gates decide: index where ordinals are configured, else hash."""
    names = plain_names(100)
    assert check_fleet(names, "auto", agent=AGENT, window=660.0).slots == "hash"
    assert check_fleet(names, "auto", agent=AGENT, window=660.0, ordinals=True).slots == "index"


def test_the_check_uses_the_gates_offsets() -> None:
    """Each node's offset in the check is slot_offset's for that node (hash: with the agent)."""
    names = cloud_names(50)
    window = 630.0
    by_hash = [slot_offset("hash", node=n, agent="kube-proxy")[0] for n in names]
    by_address = [slot_offset("address", node=n, agent=AGENT)[0] for n in names]
    hashed = check_fleet(names, "hash", agent="kube-proxy", window=window)
    addressed = check_fleet(names, "address", agent=AGENT, window=window)
    assert hashed.busiest_minute == busiest_minute(by_hash, window)
    assert addressed.busiest_minute == busiest_minute(by_address, window)
    assert by_hash[0] == hash_offset(names[0], "kube-proxy")


def test_busiest_minute_counts_minutes_from_the_window_start() -> None:
    """Minute k is [60k, 60k + 60) s; a last, shorter minute counts on its own."""
    window = 150.0  # minutes [0, 60), [60, 120), [120, 150)
    assert busiest_minute([], window) == 0
    assert busiest_minute([0.0, 59.9 / window, 60 / window], window) == 2
    assert busiest_minute([120 / window, 130 / window, 149 / window, 0.0], window) == 3


def test_targets_for_small_fleets_leave_room_for_chance() -> None:
    """Small fleets' hash target is the plan's 95% estimate where that exceeds 1.35 x N/W, and
    the index target is the mean rounded up where that exceeds 1.05 x N/W."""
    assert peak_target("hash", 100, 660.0) == expected_peak(100, 660.0, "hash")
    assert peak_target("hash", 100, 660.0) > HASH_TARGET * 100 * 60 / 660
    assert peak_target("hash", 5000, 3600.0) == HASH_TARGET * 5000 / 60
    assert peak_target("address", 5000, 3600.0) == peak_target("hash", 5000, 3600.0)
    assert peak_target("index", 100, 660.0) == 10.0
    assert peak_target("index", 5000, 3600.0) == INDEX_TARGET * 5000 / 60


def test_parse_node_names() -> None:
    """One name a line, comments and blanks skipped, repeats counted once; two words refused."""
    assert parse_node_names("# fleet\na\n\n b \na\n") == (("a", "b"), 1)
    with pytest.raises(ValueError, match=r"line 2: 'a 3': one node name a line"):
        parse_node_names("x\na 3\n")
    with pytest.raises(ValueError, match="no node names"):
        parse_node_names("# nothing\n\n")


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=500))
def test_distinct_addresses_always_get_distinct_slots(ids: set[int]) -> None:
    """Any set of distinct IPv4 names, bare or written into cloud names, gets one slot each."""
    bare = [str(ipaddress.IPv4Address(i)) for i in ids]
    cloud = [f"ip-{a.replace('.', '-')}.ec2.internal" for a in bare]
    for names in (bare, cloud):
        check = check_fleet(names, "address", agent=AGENT, window=3600.0)
        assert check.placed == len(ids) and check.distinct_slots == len(ids)


@settings(max_examples=50, deadline=None)
@given(st.from_regex(r"[a-z]{1,8}(-[a-z]{1,5}[0-9]{1,3}){0,3}", fullmatch=True))
def test_names_without_four_numbers_never_get_an_address_slot(name: str) -> None:
    """A name with fewer than four numbers holds no address: address mode always refuses it."""
    with pytest.raises(SlotError, match="holds no IPv4 address"):
        slot_offset("address", node=name, agent=AGENT)
