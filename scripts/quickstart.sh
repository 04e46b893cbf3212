#!/usr/bin/env bash
# The README's quick start. As root on a fresh Debian machine:
#   scripts/quickstart.sh demo   install what is needed, then the guided tour
#   scripts/quickstart.sh test   install what is needed, then the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  demo)
    KUBE_PROXY_PY_SKIP_K8S_BUILD=1 scripts/setup.sh
    exec kube-proxy-py tour "${@:2}"
    ;;
  test)
    scripts/setup.sh
    exec python3 -m pytest "${@:2}"
    ;;
  *)
    echo "usage: scripts/quickstart.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
