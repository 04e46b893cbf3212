"""nftables mode's names: the table, its fixed chains and sets, and the per service port
chains and sets (upstream kube-proxy's scheme, so runbooks keep working): readable names
such as ``service-ULMVA6XW-ns1/svc1/tcp/p80`` (8 hash characters of the readable part)."""

from __future__ import annotations

from proxy.naming import PortLike, b32, protocol_text

NFT_NAME_MAX = 256  # NFT_CHAIN_MAXNAMELEN, including the terminating NUL

TABLE = "kube-proxy"
TABLE_COMMENT = "rules for kube-proxy"

# nft priority keywords as numbers (dstnat = -100, srcnat = 100)
DSTNAT = -100
SRCNAT = 100

FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"

SERVICES = "services"
MASQUERADING = "masquerading"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_CHECK = "firewall-check"
REJECT_CHAIN = "reject-chain"
DROP_CHAIN = "drop-chain"
"""With ``--metrics-service-counters``: drops go through it, to be counted."""

TRAFFIC_DNAT = "traffic-dnat"
TRAFFIC_REJECT = "traffic-reject"
TRAFFIC_DROP = "traffic-drop"
"""With ``--metrics-service-counters``: dynamic sets whose elements (a service
destination: address . protocol . port) count the packets and bytes DNATed, rejected and
dropped."""
TRAFFIC_SETS = {"dnat": TRAFFIC_DNAT, "reject": TRAFFIC_REJECT, "drop": TRAFFIC_DROP}
"""The traffic counting set of each verdict."""

SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
CLUSTER_IPS = "cluster-ips"
HAIRPIN_CONNECTIONS = "hairpin-connections"
NODEPORT_IPS = "nodeport-ips"


def _hash_and_truncate(readable: str) -> str:
    name = b32(readable, 8) + "-" + readable
    # the longest prefix we add is "endpoint-" (9 chars); keep room for it and the NUL
    limit = NFT_NAME_MAX - 1 - len("endpoint-")
    if len(name) > limit:
        name = name[: limit - 3] + "..."
    return name


def port_base(sp: PortLike) -> str:
    return _hash_and_truncate(f"{sp.namespace}/{sp.name}/{protocol_text(sp)}/{sp.port_name}")


def endpoint_base(sp: PortLike, endpoint: str) -> str:
    """``endpoint`` is ``ip:port`` or ``[ipv6]:port``; ':' becomes '/' or '.'."""
    if endpoint.startswith("["):
        host, _, port = endpoint[1:].partition("]:")
        flat = host.replace(":", ".") + "/" + port
    else:
        host, _, port = endpoint.rpartition(":")
        flat = host + "/" + port
    return _hash_and_truncate(
        f"{sp.namespace}/{sp.name}/{protocol_text(sp)}/{sp.port_name}__{flat}"
    )


def service_chain(sp: PortLike) -> str:
    return "service-" + port_base(sp)


def local_chain(sp: PortLike) -> str:
    return "local-" + port_base(sp)


def external_chain(sp: PortLike) -> str:
    return "external-" + port_base(sp)


def firewall_chain(sp: PortLike) -> str:
    return "firewall-" + port_base(sp)


def endpoint_chain(sp: PortLike, endpoint: str) -> str:
    return "endpoint-" + endpoint_base(sp, endpoint)


def affinity_set(sp: PortLike, endpoint: str) -> str:
    return "affinity-" + endpoint_base(sp, endpoint)
