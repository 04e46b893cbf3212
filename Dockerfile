# kube-proxy-py node agent image: kube-proxy-py:0.1.0 (see docs/deploy.md).
#
#   docker build -t kube-proxy-py:0.1.0 .
#
# The base is pinned by tag only: this repository is built without registry access
# here, so no digest could be verified. Pin a digest in your own build pipeline.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# A wheel of kube-proxy-py alone; its dependencies are resolved in the final stage.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="kube-proxy-py" \
      org.opencontainers.image.description="A kube-proxy replacement: iptables and nftables Service rules" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# The kernel tools the agent runs: iptables-restore/-save (nft and legacy backends),
# nft, conntrack (stale UDP entries), ip (node addresses) and sysctl (route_localnet).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables conntrack iproute2 procps \
 && rm -rf /var/lib/apt/lists/*

# The wheel without extras: the agent's dependencies only (no scapy or cryptography, which
# the lab and the test harness use).
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Runs as root on purpose: programming netfilter in the host network namespace needs
# CAP_NET_ADMIN (and CAP_NET_RAW for legacy iptables) in the process that calls
# iptables-restore, nft and conntrack. A non-root user would need those capabilities
# as ambient capabilities or as file capabilities on each of those binaries and on
# python; the DaemonSet instead grants exactly NET_ADMIN and NET_RAW to root and drops
# every other capability (docs/deploy.md, "Security").
ENTRYPOINT ["kube-proxy-py"]
CMD ["--help"]
