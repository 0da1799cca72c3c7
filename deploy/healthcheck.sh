#!/bin/bash
# HEALTHCHECK of the imagewolf/agent image: GET /healthz on the agent's own API, with bash's
# /dev/tcp (the slim image has no curl or wget, and adding one for this is not worth it).
# The port comes from IMAGEWOLF_LISTEN; a wildcard listen address is probed on loopback.
set -euo pipefail
listen=${IMAGEWOLF_LISTEN:-0.0.0.0:8000}
host=${listen%:*}
port=${listen##*:}
host=${host#[}
host=${host%]}
case "$host" in
  0.0.0.0 | "") host=127.0.0.1 ;;
  ::) host=::1 ;;
esac
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /healthz HTTP/1.0\r\nHost: imagewolf\r\n\r\n' >&3
read -r -t 5 status_line <&3
case "$status_line" in
  "HTTP/1."?" 200 "*) exit 0 ;;
  *) echo "unhealthy: $status_line" >&2; exit 1 ;;
esac
