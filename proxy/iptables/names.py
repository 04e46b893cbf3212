"""iptables mode's chain names, upstream kube-proxy's so runbooks keep working: the fixed
chains, and per service port ``KUBE-SVC-`` + the first 16 base32 characters of
sha256(servicePortName + protocol); ``KUBE-SEP-`` also hashes ``ip:port``."""

from __future__ import annotations

from proxy.naming import PortLike, b32, protocol_text

# fixed chains, per table
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"
"""Legacy iptables' drift canary (declared by the kernel layer, owned like our chains)."""
KUBE_SERVICE_TRAFFIC = "KUBE-SERVICE-TRAFFIC"
KUBE_NODEPORT_TRAFFIC = "KUBE-NODEPORT-TRAFFIC"
"""With ``--metrics-service-counters``: send every packet of a DNATed connection to the
counting chain (``KUBE-CNT-``) of the service port it was sent to."""
OUR_GUARD_JUMP = "kube-proxy localnet guard"
"""The comment on our jumps to KUBE-FIREWALL (the kubelet's own jumps have none)."""

NAT_FIXED = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)
FILTER_FIXED = (
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
)
COUNTER_FIXED = (KUBE_SERVICE_TRAFFIC, KUBE_NODEPORT_TRAFFIC)
PER_SERVICE_PREFIXES = (
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
    "KUBE-CNT-",
    "KUBE-TRF-",
)
OWNED_FIXED = frozenset(
    (*NAT_FIXED, *FILTER_FIXED, *COUNTER_FIXED, KUBE_FIREWALL, KUBE_PROXY_CANARY)
)


def is_owned_chain(name: str) -> bool:
    """Chains kube-proxy-py creates (and so may delete)."""
    return name in OWNED_FIXED or name.startswith(PER_SERVICE_PREFIXES)


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    return b32(service_port_name + protocol)[:16]


def _ipt(prefix: str, sp: PortLike) -> str:
    return prefix + port_proto_hash(sp.service_port_name, protocol_text(sp))


def svc_chain(sp: PortLike) -> str:
    """Cluster traffic policy chain."""
    return _ipt("KUBE-SVC-", sp)


def svl_chain(sp: PortLike) -> str:
    """Local traffic policy chain."""
    return _ipt("KUBE-SVL-", sp)


def ext_chain(sp: PortLike) -> str:
    """External destinations (NodePort, ExternalIP, LB IP)."""
    return _ipt("KUBE-EXT-", sp)


def fw_chain(sp: PortLike) -> str:
    """loadBalancerSourceRanges firewall."""
    return _ipt("KUBE-FW-", sp)


def cnt_chain(sp: PortLike) -> str:
    """kube-proxy-py's own (``--metrics-service-counters``): the service port's traffic
    counters, and its reject or drop."""
    return _ipt("KUBE-CNT-", sp)


def traffic_chain(network: str) -> str:
    """kube-proxy-py's own (``--metrics-service-counters``): one node of the traffic
    dispatch tree, the service destinations within ``network``."""
    return "KUBE-TRF-" + b32(network)[:16]


def sep_chain(sp: PortLike, endpoint: str) -> str:
    """One endpoint (``endpoint`` is ``ip:port``)."""
    return "KUBE-SEP-" + b32(sp.service_port_name + protocol_text(sp) + endpoint)[:16]
