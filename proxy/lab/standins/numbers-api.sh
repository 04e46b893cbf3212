#!/bin/sh
# kube-proxy-py stand-in for kiamol/ch03-numbers-api: GET /rng answers a random number.
# busybox nc accepts every connection on :80 (IPv4 and IPv6) and runs one handler each.
exec /usr/local/bin/run-until-term nc -ll -p 80 -e /usr/local/bin/rng-handler
