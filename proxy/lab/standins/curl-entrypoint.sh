#!/bin/sh
# kube-proxy-py stand-in for curlimages/curl's entrypoint: arguments that start with
# "-", or whose first word is not a command here, are curl's; anything else (sh, nslookup
# …) runs as given. So `kubectl run … --image=curlimages/curl -- -s http://web` and
# `kubectl run … --image=curlimages/curl -it -- sh` both do what they do on kind.
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || ! command -v "$1" >/dev/null 2>&1; then
    set -- curl "$@"
fi
exec "$@"
