#!/bin/sh
# Entrypoint of the imagewolf/agent image. Swarm and Kubernetes hand secrets over as files;
# the agent reads them from the environment. For each VAR below, VAR_FILE=PATH loads the
# file's content into VAR (trailing newlines dropped), so the secret never appears in
# `docker inspect` or the service definition. Then the agent replaces this shell.
set -eu
for var in IMAGEWOLF_WEBHOOK_TOKEN IMAGEWOLF_CLUSTER_SECRET; do
  eval "file=\${${var}_FILE:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "imagewolf: ${var}_FILE=$file is not a readable file" >&2
      exit 1
    fi
    value=$(cat "$file")
    if [ -z "$value" ]; then
      echo "imagewolf: ${var}_FILE=$file is empty" >&2
      exit 1
    fi
    export "$var=$value"
    unset "${var}_FILE"
  fi
done
exec imagewolf-agent "$@"
