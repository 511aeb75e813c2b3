"""The iptables commands of netfilter capture (pure): TNG's egress rule layout, our chain name."""

from __future__ import annotations

from gateway.config import CaptureDst, Netfilter
from gateway.netfilter import cleanup_commands, rule_commands


def test_rules_match_tng_layout():
    nf = Netfilter(capture_dst=(CaptureDst(None, 8080), CaptureDst("10.0.0.5", 9000, 9010)))
    cmds = [" ".join(c) for c in rule_commands(3, nf, 40003)]
    assert cmds == [
        "-t nat -N CAI_EGRESS_3",
        "-t nat -A CAI_EGRESS_3 -p tcp -m mark --mark 565 -j RETURN",
        "-t nat -A CAI_EGRESS_3 -p tcp -m addrtype ! --src-type LOCAL --dst-type LOCAL --dport 8080 "
        "-j REDIRECT --to-ports 40003",
        "-t nat -A CAI_EGRESS_3 -p tcp -m addrtype ! --src-type LOCAL -d 10.0.0.5 --dport 9000:9010 "
        "-j REDIRECT --to-ports 40003",
        "-t nat -I PREROUTING 1 -p tcp -j CAI_EGRESS_3",
        "-t nat -I OUTPUT 1 -p tcp -j CAI_EGRESS_3",
    ]
    local = Netfilter(capture_dst=(CaptureDst(None, 8080),), capture_local_traffic=True, so_mark=7)
    assert "! --src-type LOCAL" not in " ".join(" ".join(c) for c in rule_commands(0, local, 1))
    assert ["-t", "nat", "-X", "CAI_EGRESS_3"] in cleanup_commands(3)
