"""Checks on upstream base URLs that users or keys supply (bring-your-own-key): Emporion must not
become a way into the operator's network. Loopback, private, link-local, multicast and reserved
addresses and cloud metadata hosts are refused, after DNS resolution, unless the operator's
config allows the host by name. Adapters never follow redirects, so an allowed host cannot bounce
a request inward."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from emporion.errors import InvalidRequest, PermissionDenied

SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "169.254.169.254", "fd00:ec2::254", "100.100.100.200"})


async def check_upstream_url(url: str, allowed_hosts: frozenset[str] = frozenset()) -> None:
    """Raises unless ``url`` is an http(s) URL whose host resolves only to public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("An upstream URL must be an absolute http or https URL.", param="base_url")
    if parts.username or parts.password:
        raise InvalidRequest("An upstream URL must not carry credentials; use the key field.", param="base_url")
    host = parts.hostname.lower().rstrip(".")
    if host in allowed_hosts:
        return
    if host in METADATA_HOSTS:
        raise PermissionDenied(f"Upstream host {host} is a cloud metadata service.", code="forbidden_upstream")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequest(f"Upstream host {host} does not resolve.", param="base_url") from None
    for info in infos:
        host_address = info[4][0]
        if not isinstance(host_address, str):  # a family Python has no text form for: (family, raw bytes)
            raise PermissionDenied(f"Upstream host {host} resolves to an address that is not IP.", code="forbidden_upstream")
        address = ipaddress.ip_address(host_address.split("%")[0])
        if not _public(address):
            raise PermissionDenied(
                f"Upstream host {host} resolves to {address}, an address inside a private or reserved range.",
                code="forbidden_upstream",
            )


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in SHARED_ADDRESS_SPACE)
        or str(address) in METADATA_HOSTS
    )
