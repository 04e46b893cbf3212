"""The Kubernetes API's validation rules for the fields kube-proxy-py reads, in our words.

Written from the API's documented rules (v1.37: ``k8s.io/apimachinery/pkg/util/validation``
and the core and discovery validators) so that an object the API server would refuse is
refused here too, with a message that names the rule. Go's ``regexp`` anchors ``^…$`` at
the ends of the text only; Python's ``$`` also matches before a trailing newline, so every
pattern here is used with :meth:`re.Pattern.fullmatch`.

Values from outside reach messages only through :func:`show`, which bounds their length and
never recurses into nested data.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
IANA_SVC_NAME_MAX = 15
LABEL_VALUE_MAX = 63
SHOW_MAX = 64
"""Characters of an outside value quoted in a message."""

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(_LABEL)
_DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT_NAME_CHARSET = re.compile(r"[-a-z0-9]+")
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def show(value: Any) -> str:
    """``value`` quoted for a message: at most :data:`SHOW_MAX` characters of a string,
    no control characters, and only the type of nested data (never its contents)."""
    if isinstance(value, str):
        text = value if len(value) <= SHOW_MAX else value[:SHOW_MAX] + "…"
        quoted = repr(text)
        if len(value) > SHOW_MAX:
            quoted += f" ({len(value)} characters)"
        return quoted
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**18) < value < 10**18 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return f"an object with {len(value)} key{'' if len(value) == 1 else 's'}"
    return f"a {type(value).__name__}"


def printable(value: str, limit: int = SHOW_MAX) -> str:
    """``value`` with anything but printable ASCII escaped (``\\n``, ``\\x00``, ``\\u2028``)
    and cut to ``limit`` characters: an invalid name still identifies its object in a
    report, and can never start a new line or a rule."""
    text = ascii(value[: limit + 1])[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def dns1123_label(value: str) -> str | None:
    """Why ``value`` is not an RFC 1123 label (namespace, Service name, port name), or None."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be no more than {DNS1123_LABEL_MAX} characters"
    if not _DNS1123_LABEL.fullmatch(value):
        if _DNS1123_SUBDOMAIN.fullmatch(value):
            return "must not contain dots"
        return (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
            "or '-', and must start and end with an alphanumeric character"
        )
    return None


def dns1123_subdomain(value: str) -> str | None:
    """Why ``value`` is not an RFC 1123 subdomain (EndpointSlice and Node names), or None."""
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def port_name(value: str) -> str | None:
    """Why ``value`` is not an IANA service name (a named ``targetPort``), or None."""
    problems = []
    if len(value) > IANA_SVC_NAME_MAX:
        problems.append(f"must be no more than {IANA_SVC_NAME_MAX} characters")
    if not _PORT_NAME_CHARSET.fullmatch(value):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not any("a" <= c <= "z" for c in value):
        problems.append("must contain at least one letter (a-z)")
    if "--" in value:
        problems.append("must not contain consecutive hyphens")
    if value.startswith("-") or value.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    return "; ".join(problems) or None


def label_value(value: str) -> str | None:
    """Why ``value`` is not a label value (zone hints, zone labels), or None."""
    if len(value) > LABEL_VALUE_MAX:
        return f"must be no more than {LABEL_VALUE_MAX} characters"
    if not _LABEL_VALUE.fullmatch(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


def port_number(value: Any) -> str | None:
    """Why ``value`` is not a port number 1-65535 (a JSON integer), or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{show(value)} is not an integer"
    if not 1 <= value <= 65535:
        return f"{show(value)} is out of range 1-65535"
    return None


def parse_ip(value: Any) -> tuple[IPAddress | None, str | None]:
    """An IP address as the API's strict legacy-field rule reads it: dotted-quad IPv4 without
    leading zeros or IPv6, no IPv4-mapped IPv6, no zone, no surrounding space.
    Returns (address, None) or (None, why not)."""
    if not isinstance(value, str):
        return None, f"{show(value)} is not a string"
    if "%" in value or value != value.strip():
        return None, f"{show(value)} must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None, f"{show(value)} must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return None, f"{show(value)} must not be an IPv4-mapped IPv6 address"
    return ip, None


def endpoint_ip_problem(ip: IPAddress) -> str | None:
    """The API's rule for endpoint addresses and externalIPs (``ValidateEndpointIP``)."""
    if ip.version == 4:  # the common case, on integers (an endpoint list can be long)
        n = int(ip)
        if n != 0 and n >> 24 != 127 and n >> 16 != 0xA9FE and n >> 8 != 0xE00000:
            return None
    if ip.is_unspecified:
        return f"{ip} may not be unspecified"
    if ip.is_loopback:
        return f"{ip} may not be in the loopback range (127.0.0.0/8, ::1/128)"
    if ip.is_link_local:
        return f"{ip} may not be in the link-local range (169.254.0.0/16, fe80::/10)"
    if ip in _LINK_LOCAL_MULTICAST[ip.version]:
        return f"{ip} may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
    return None


_LINK_LOCAL_MULTICAST = {
    4: ipaddress.ip_network("224.0.0.0/24"),
    6: ipaddress.ip_network("ff02::/10", strict=False),
}


def service_ip_problem(ip: IPAddress) -> str | None:
    """Addresses no Service range can hand out as a ClusterIP and no proxy can serve.

    The API server allocates ClusterIPs from its service CIDR, which a state file does not
    name; these are refused whatever that range is: unspecified, loopback, link-local,
    multicast and the IPv4 broadcast address."""
    problem = endpoint_ip_problem(ip)
    if problem is not None:
        return problem
    if ip.is_multicast:
        return f"{ip} may not be a multicast address"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} may not be the broadcast address"
    return None


def parse_cidr(value: Any) -> tuple[IPNetwork | None, str | None]:
    """A CIDR as the API's strict legacy-field rule reads it (surrounding space is allowed
    for loadBalancerSourceRanges, by a historical accident the API keeps): no leading zeros,
    no IPv4-mapped IPv6, no bits set beyond the prefix length."""
    if not isinstance(value, str):
        return None, f"{show(value)} is not a string"
    text = value.strip()
    addr_text, sep, prefix = text.partition("/")
    if not sep or not prefix.isascii() or not prefix.isdigit() or len(prefix) > 3:
        return (
            None,
            f"{show(value)} must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        )
    if prefix != "0" and prefix.startswith("0"):
        return None, f"{show(value)} must not have leading 0s in IP or prefix length"
    ip, why = parse_ip(addr_text)
    if ip is None:
        return None, f"{show(value)} must be a valid CIDR value ({why})"
    try:
        net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    except ValueError:
        return (
            None,
            f"{show(value)} must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        )
    if net.network_address != ip:
        return None, f"{show(value)} must not have bits set beyond the prefix length"
    return net, None
