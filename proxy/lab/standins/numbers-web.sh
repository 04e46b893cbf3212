#!/bin/sh
# kube-proxy-py stand-in for kiamol/ch03-numbers-web: busybox httpd on :80; GET / runs
# /var/www/cgi-bin/index.cgi, which fetches a number from the numbers-api Service.
exec /usr/local/bin/run-until-term httpd -f -p 80 -h /var/www
