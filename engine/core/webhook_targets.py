"""Where an outbound webhook may go: the address policy. Pure: no IO.

A webhook is a request the engine makes for whoever wrote a funnel file or a setting. Without a policy it
reaches whatever the engine's machine reaches: a cloud's metadata service, the database, the dashboard
on loopback (server-side request forgery). So every address a receiver's host resolves to is judged
here, and one that is not on the public internet (loopback, private, link-local, unique-local, shared,
multicast, reserved and the other special ranges, and the IPv6 forms that only wrap such an IPv4
address) is refused, unless the host, as the URL writes it, is listed in `webhooks.allow_private_hosts`
(an internal CRM). The engine's own listeners (its HTTP app, its `base_url`) are refused always.

`engine.runtime.webhook_network` resolves a host once, asks `address_problem` about every address, and connects
only to an address found fine; `funnel validate` asks `url_problem` about the literal addresses it can
read in a URL (a name is judged when the webhook is sent, by what it resolves to then).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

IPAddress = IPv4Address | IPv6Address

ALLOW_SETTING = "webhooks.allow_private_hosts"
_HOW = f": webhooks call public addresses only; to call this host anyway, list it in {ALLOW_SETTING}"

_V4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(network), kind)
    for network, kind in (
        ("0.0.0.0/8", "this-network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_V6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(network), kind)
    for network, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard"),
        ("2001::/32", "Teredo"),
        ("2001:db8::/32", "documentation"),
        ("2001:10::/28", "ORCHID"),
        ("2001:20::/28", "ORCHID"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ip_network("64:ff9b::/96")
_GLOBAL_UNICAST = ip_network("2000::/3")
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (names the addresses meaning "all", binds nothing)


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeioAEIO" or kind.startswith(("IETF", "IPv4")) else "a"


def _in_range(kind: str, network: IPv4Network | IPv6Network) -> str:
    return f"{_article(kind)} {kind} address ({network})"


def special_range(address: IPAddress) -> str | None:
    """What `address` is when it is not a public internet address, e.g. "a private address (10.0.0.0/8)";
    None for a public one. IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by it."""
    if isinstance(address, IPv4Address):
        for network, kind in _V4:
            if address in network:
                return _in_range(kind, network)
        return None if address.is_global else "a special-purpose address"
    wrapped = address.ipv4_mapped or address.sixtofour
    if wrapped is None and address in _NAT64:
        wrapped = IPv4Address(int(address) & 0xFFFFFFFF)
    if wrapped is not None:
        inner = special_range(wrapped)
        return None if inner is None else f"a form of {wrapped}, {inner}"
    for network6, kind in _V6:
        if address in network6:
            return _in_range(kind, network6)
    if address not in _GLOBAL_UNICAST:
        return "a reserved address (outside 2000::/3)"
    return None if address.is_global else "a special-purpose address"


def _inet_aton_part(part: str) -> int | None:
    # How inet_aton (and so getaddrinfo) reads one part: 0x hex, a leading 0 octal, else decimal.
    if part[:2].lower() == "0x":
        digits, base = part[2:], 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    try:
        return int(digits, base) if digits and digits.isascii() and digits.isalnum() else None
    except ValueError:
        return None


def literal_address(host: str) -> IPAddress | None:
    """The address `host` writes, in any form the resolver reads as one without asking DNS: dotted quads,
    one number (`2852039166`), hex and octal parts (`0xa9.0376.43518`), bracketed IPv6; None for a name."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ip_address(text)
    except ValueError:
        pass
    parts = text.split(".")
    if not text or len(parts) > 4:
        return None
    values = [_inet_aton_part(part) for part in parts]
    if any(value is None for value in values):
        return None
    numbers = [value for value in values if value is not None]
    *leading, last = numbers
    if any(value > 255 for value in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    packed = 0
    for value in leading:
        packed = packed << 8 | value
    return IPv4Address(packed << 8 * (5 - len(numbers)) | last)


def host_key(host: str) -> str:
    """A host as settings and URLs are compared: lowercase, no brackets or final dot, an address in its
    one canonical form (so `2852039166` and `169.254.169.254` are the same host)."""
    address = literal_address(host)
    if address is not None:
        return str(address)
    return host.strip().strip("[]").lower().rstrip(".")


def _shown(host: str, port: int) -> str:
    key = host_key(host)
    return f"[{key}]:{port}" if ":" in key else f"{host.strip('[]')}:{port}"


@dataclass(frozen=True, slots=True)
class Targets:
    """What the policy is told by the settings: the hosts allowed to be private (as keys), and where the
    engine itself listens: (host key, port, what it is) and, when the HTTP app listens on every address,
    its port on any address of this machine."""

    allowed: frozenset[str] = frozenset()
    own: tuple[tuple[str, int, str], ...] = ()
    own_port: int | None = None

    @classmethod
    def of(
        cls,
        allow_private_hosts: Iterable[str] = (),
        base_url: str | None = None,
        http_host: str = "127.0.0.1",
        http_port: int | None = None,
    ) -> Targets:
        own: list[tuple[str, int, str]] = []
        if base_url:
            parts = urlsplit(base_url)
            if parts.hostname:
                own.append(
                    (host_key(parts.hostname), parts.port or (443 if parts.scheme == "https" else 80), "base_url")
                )
        own_port = None
        if http_port is not None:
            if http_host in _WILDCARDS:
                own_port = http_port
            else:
                hosts = [host_key(http_host)] + (["127.0.0.1", "::1"] if host_key(http_host) == "localhost" else [])
                own += [(host, http_port, "HTTP app") for host in hosts]
        return cls(frozenset(host_key(h) for h in allow_private_hosts), tuple(own), own_port)


def address_problem(host: str, port: int, address: IPAddress, targets: Targets, *, local: bool = False) -> str | None:
    """Why a webhook to `host`:`port` must not connect to `address` (one of what `host` resolved to), or
    None. `local`: the address is one of this machine's (the adapter finds out)."""
    key = host_key(host)
    for own_host, own_port, what in targets.own:
        if port == own_port and own_host in (key, str(address)):
            return f"{_shown(host, port)} is the engine's own {what}"
    if local and port == targets.own_port:
        return f"{_shown(host, port)} is the engine's own HTTP app"
    if key in targets.allowed:
        return None
    found = special_range(address)
    if found is None and local:
        found = "an address of this machine"
    if found is None:
        return None
    if literal_address(host) is None:
        return f"{host} resolves to {address}, {found}{_HOW}"
    if host.strip("[]") == str(address):
        return f"{address} is {found}{_HOW}"
    return f"{host} is {address}, {found}{_HOW}"


def url_problem(url: str, targets: Targets) -> str | None:
    """What `funnel validate` can tell from a receiver's URL alone: a literal address the policy refuses,
    a name that is loopback by definition (RFC 6761), or one of the engine's own listeners."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None  # not a port: the request fails with its own message
    address = literal_address(host)
    if address is not None:
        return address_problem(host, port, address, targets)
    key = host_key(host)
    for own_host, own_port, what in targets.own:
        if (key, port) == (own_host, own_port):
            return f"{_shown(host, port)} is the engine's own {what}"
    if (key == "localhost" or key.endswith(".localhost")) and key not in targets.allowed:
        return f"{host} is a loopback address (localhost and every name under it, RFC 6761){_HOW}"
    return None
