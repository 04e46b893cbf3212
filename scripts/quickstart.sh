#!/usr/bin/env bash
# The README's quick start. As root on a fresh Debian machine:
#   scripts/quickstart.sh demo   install and build what is needed, start the lab, run its demo
#   scripts/quickstart.sh test   install and build what is needed, then the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  demo)
    scripts/setup.sh
    exec kube-proxy-py lab demo "${@:2}"
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
