#!/bin/sh
# One HTTP/1.1 exchange on stdin/stdout for the numbers-api stand-in; then the
# connection closes. A client that sends nothing for 10 seconds is dropped.
read -t 10 -r method target version || exit 0
while read -t 10 -r line; do
    case "$line" in "" | "$(printf '\r')") break ;; esac
done
respond() {
    printf 'HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "$1" "$2" "${#3}" "$3"
}
path=${target%%\?*}
case "$method $path" in
"GET /rng" | "GET /rng/")
    n=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
    respond "200 OK" "text/plain" "$((n % 100 + 1))"
    ;;
"GET /" | "GET /healthz")
    respond "200 OK" "text/plain" "numbers-api stand-in on $(hostname): GET /rng
"
    ;;
*)
    respond "404 Not Found" "text/plain" "not found: $path
"
    ;;
esac
