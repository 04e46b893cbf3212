#!/bin/sh
# kube-proxy-py stand-in helper: run "$@" as a child and stop it on SIGTERM or SIGINT.
# A container's main process is PID 1 of its PID namespace, and the kernel drops
# signals sent to PID 1 that it has no handler for; busybox httpd and nc install
# none, so without this shell in front a pod would take its whole grace period to stop.
child=""
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 0' TERM INT
"$@" &
child=$!
wait "$child"
