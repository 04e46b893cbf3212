#!/usr/bin/env bash
# Install what kube-proxy-py and its tests need on a fresh Debian machine (run as root):
# kernel tools, the Python package with its lab and dev extras, and the pinned upstream Kubernetes
# binaries (built from the Go module proxy once, then cached under ~/.cache/kube-proxy-py).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs packages and tests create network namespaces)" >&2
  exit 2
fi

# gcc, libc6-dev, pkg-config and libseccomp-dev: cgo builds of kubelet and of runc (with
# seccomp) by `kube-proxy-py lab build`; buildah (our image from the Dockerfile),
# mmdebstrap (the python:3.11-slim-bookworm stand-in) and curl (the curl stand-ins) for
# its images; util-linux's nsenter and unshare for the lab's nodes; nfacct for the
# accounting objects upstream's iptables rules name (the migration test loads them).
pkgs=(iptables nftables conntrack iproute2 tcpdump procps kmod gcc libc6-dev pkg-config
      libseccomp-dev buildah mmdebstrap curl util-linux nfacct)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

say "installing kube-proxy-py with the lab and its test dependencies (pip)"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev,lab]'

if [ "${KUBE_PROXY_PY_SKIP_K8S_BUILD:-}" != "1" ]; then
  say "building or reusing the pinned Kubernetes binaries, the node components (containerd, runc, CNI plugins, registry), the add-ons (CoreDNS, MetalLB) and the lab's images (first time: tens of minutes on 2 cores)"
  kube-proxy-py lab build
fi
