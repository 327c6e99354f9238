"""Per-user address ACLs: ``permit`` and ``deny`` lists of networks.

Evaluation (independent of the order the networks are written in):

1. No rules at all: every address is allowed.
2. Otherwise the most specific matching network (longest prefix) decides;
   when a ``permit`` and a ``deny`` network of the same length both match,
   ``deny`` wins.
3. No rule matches: denied if ``permit`` is non-empty (it is an allow-list),
   allowed if there are only ``deny`` rules.

IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) are matched as IPv4; IPv4
networks never match IPv6 addresses and the other way round, so
``0.0.0.0/0`` covers all of IPv4 and ``::/0`` all of IPv6.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Tuple, Union

__all__ = ["AddressACL", "ip_of", "normalize_ip"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def normalize_ip(address: Union[str, Address]) -> Address:
    """Parse an address (a zone suffix is ignored); IPv4-mapped IPv6 becomes IPv4."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ip_of(sockaddr: Any) -> str:
    """The IP address of a socket address as text (IPv4-mapped IPv6 as IPv4); the raw host if not an IP."""
    host = sockaddr[0] if isinstance(sockaddr, tuple) else str(sockaddr)
    if ":" not in host:
        return host  # IPv4 as the kernel writes it (already canonical), or not an IP at all
    try:
        return str(normalize_ip(host))
    except ValueError:
        return host


def _network(text: str) -> Network:
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


@dataclass(frozen=True)
class AddressACL:
    """Networks a user may or may not log in from; see the module docstring for the order."""

    permit: Tuple[Network, ...] = ()
    deny: Tuple[Network, ...] = ()

    @classmethod
    def parse(cls, permit: Iterable[str] = (), deny: Iterable[str] = ()) -> "AddressACL":
        """Build from strings (``10.0.0.0/8``, ``2001:db8::/32``, ``192.0.2.7``); ``ValueError`` names the bad one."""
        lists = []
        for name, items in (("permit", permit), ("deny", deny)):
            networks = []
            for item in items:
                try:
                    networks.append(_network(item))
                except ValueError as exc:
                    raise ValueError(f"{name}: {item!r} is not a network: {exc}") from None
            lists.append(tuple(networks))
        return cls(lists[0], lists[1])

    @property
    def empty(self) -> bool:
        return not self.permit and not self.deny

    def allows(self, address: Union[str, Address]) -> bool:
        if self.empty:
            return True
        try:
            ip = normalize_ip(address)
        except ValueError:
            return False  # not an IP address (e.g. a Unix socket): only an empty ACL allows it
        best: Optional[Tuple[int, bool]] = None  # (prefix length, allowed)
        for networks, allowed in ((self.permit, True), (self.deny, False)):
            for network in networks:
                if network.version == ip.version and ip in network:
                    candidate = (network.prefixlen, allowed)
                    if best is None or candidate[0] > best[0] or (candidate[0] == best[0] and not allowed):
                        best = candidate
        if best is None:
            return not self.permit
        return best[1]
