#!/usr/bin/env bash
# Every benchmark of issue 6 at its sizes, one after another, then the report in docs/:
#
#   scripts/bench-all.sh [RESULTS_DIR] [more `kube-proxy-py bench all` flags]
#
# RESULTS_DIR (default bench-results/) gets one JSON and one log per step; docs/ gets
# benchmarks.json, benchmarks.md and benchmarks.png. Run it as root on an otherwise idle
# machine: the figures are wall times and share the CPU with anything else running.
#
# Wall time on a 2-core machine: about 3 hours — bench sync at 1k/5k/10k/30k Services
# ~70 min (iptables-restore of the biggest rulesets dominates), bench latency at 1k and
# 10k with 10 minutes of churn at 10k ~75 min, bench datapath at 10/1k/10k ~25 min.
# `--dry-run` prints the plan with per-step estimates. Interrupted? Run it again: steps
# that already have their JSON are skipped (`--force` reruns them).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-all.sh: run as root (the benchmarks build network namespaces)" >&2
  exit 2
fi

out=bench-results
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  out="$1"
  shift
fi
exec python3 -m proxy bench all --out "$out" --docs docs "$@"
