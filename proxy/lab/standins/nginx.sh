#!/bin/sh
# kube-proxy-py stand-in for nginx: an HTTP/1.1 server on :80 that keeps connections
# alive, as nginx does, and answers every GET with "<pod name> <client ip>:<port>" (who
# served the request and whom it saw: the learners' questions). The nginx arguments the
# real image takes are ignored; -v and -t answer as nginx would.
case "$1" in
-v | -V) echo "nginx version: kube-proxy-py stand-in (python HTTP server)"; exit 0 ;;
-t) echo "nginx: configuration file test is successful (stand-in)"; exit 0 ;;
esac
exec python3 /usr/local/lib/nginx-stand-in/server.py --name "$(hostname)" --http 80
