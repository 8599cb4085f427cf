"""Which addresses a caller's URL may reach: only globally routable unicast ones.

``ipaddress``'s ``is_global`` is the base. It lets through some addresses that still reach inside a
network, so these are refused as well: IPv6 forms that embed an IPv4 address (IPv4-mapped, 6to4,
Teredo, NAT64's 64:ff9b::/96 and 64:ff9b:1::/48) are judged by the embedded address; any other
IPv6 address outside 2000::/3 (global unicast: IPv4-compatible ::a.b.c.d, site-local fec0::/10);
all of 192.0.0.0/24 (IETF protocol assignments); and multicast.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Union

from netfetch.errors import BadURL, UnsafeURL

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_REFUSED = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "100.64.0.0/10", "fec0::/10"))
_NAT64 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48"))
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")  # IPv4-compatible ::a.b.c.d and the like are not in it


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_reachable_for_callers(ip: Address) -> bool:
    """True for a global unicast address that embeds no non-global one."""
    if ip.is_multicast or not ip.is_global or any(ip in net for net in _REFUSED if net.version == ip.version):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded:
            return all(is_reachable_for_callers(inner) for inner in embedded)
        return ip in _GLOBAL_UNICAST_V6
    return True


def resolve(host: str, port: int, trusted: bool, field: str) -> list[str]:
    """The addresses to connect to for ``host``; for a caller's URL every one must be global, else
    ``UnsafeURL`` (one bad answer is enough: DNS can be made to answer differently the next time)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise BadURL(f"{field}: host {host!r} not found ({error.strerror})") from None
    except UnicodeError:
        raise BadURL(f"{field}: host {host!r} is not a valid host name") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not trusted:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not is_reachable_for_callers(ip):
                raise UnsafeURL(f"{field}: {host} resolves to {ip}, which is not a global address; "
                                "only publicly routable hosts are fetched")
    return addresses
