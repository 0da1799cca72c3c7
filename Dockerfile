# syntax=docker/dockerfile:1
# The imagewolf/agent image: the node agent on Debian bookworm-slim.
#
#   docker build -t imagewolf/agent .
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t REGISTRY/imagewolf/agent --push .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts. Every flag has
# an ENV default below; override any of them with -e / environment:. The agent runs as root:
# it must use the node's Docker or containerd socket, which only root (or the docker group,
# whose members are root-equivalent anyway) may open.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

# --- Build --------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The registry and target caches persist between builds: a source edit recompiles the
# workspace crates only, not the ~200 dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p imagewolf-agent \
 && install -D -m 0755 target/release/imagewolf-agent /out/imagewolf-agent

# containerd's client `ctr`, for --runtime containerd (only the binary, not the daemon and
# runc the Debian package would pull in).
FROM debian:${DEBIAN_RELEASE}-slim AS ctr
RUN apt-get update \
 && cd /tmp && apt-get download containerd \
 && dpkg-deb -x containerd_*.deb /x \
 && install -D -m 0755 /x/usr/bin/ctr /out/ctr

# --- Run ----------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/imagewolf-agent /usr/local/bin/imagewolf-agent
COPY --from=ctr /out/ctr /usr/local/bin/ctr
COPY deploy/docker-entrypoint.sh /usr/local/bin/imagewolf-entrypoint
COPY deploy/healthcheck.sh /usr/local/bin/imagewolf-healthcheck

# Defaults for every flag (imagewolf-agent --help explains each). IMAGEWOLF_PEERS suits a
# Swarm service named imagewolf; Kubernetes sets its headless Service instead.
ENV IMAGEWOLF_PEERS=dns:tasks.imagewolf:8000 \
    IMAGEWOLF_LISTEN=0.0.0.0:8000 \
    IMAGEWOLF_BT_LISTEN=0.0.0.0:6000 \
    IMAGEWOLF_DATA_DIR=/var/lib/imagewolf \
    IMAGEWOLF_RUNTIME=docker \
    DOCKER_HOST=unix:///var/run/docker.sock \
    IMAGEWOLF_CONTAINERD_ADDRESS=/run/containerd/containerd.sock \
    IMAGEWOLF_CONTAINERD_NAMESPACE=k8s.io \
    IMAGEWOLF_CONTAINERD_CTR=ctr \
    IMAGEWOLF_HUB_REGISTRY=docker.io \
    IMAGEWOLF_POLL_SECONDS=30 \
    IMAGEWOLF_SEED_SECONDS=600 \
    IMAGEWOLF_RESOLVE_SECONDS=5 \
    IMAGEWOLF_LOG_FORMAT=text \
    IMAGEWOLF_MAX_TORRENTS=16 \
    IMAGEWOLF_DISTRIBUTION=auto \
    IMAGEWOLF_CACHE_SIZE=20G \
    IMAGEWOLF_ENDPOINT_LISTEN=127.0.0.1:5055 \
    IMAGEWOLF_MIRROR=on \
    RUST_LOG=info,imagewolf_bt=warn
# Flags without a default, unset unless given (an empty value would be an invalid one):
#   IMAGEWOLF_ADVERTISE_ADDR   IMAGEWOLF_REGISTRY   IMAGEWOLF_POLL
#   IMAGEWOLF_WEBHOOK_TOKEN    (or IMAGEWOLF_WEBHOOK_TOKEN_FILE, read by the entrypoint)
#   IMAGEWOLF_CLUSTER_SECRET   (or IMAGEWOLF_CLUSTER_SECRET_FILE, read by the entrypoint):
#                               required, the same on every agent (openssl rand -hex 32)
#   IMAGEWOLF_INSECURE_NO_CLUSTER_SECRET (=true runs without one: trusted networks only)
#   IMAGEWOLF_REGISTRY_AUTH_FILE (registry credentials: a mounted config.json / .dockerconfigjson)
#   IMAGEWOLF_REGISTRY_CA      (PEM of a private CA for registries, added to the roots)
#   IMAGEWOLF_INSECURE_REGISTRY (HOST[:PORT]s read over plain http: INSECURE)
#   IMAGEWOLF_ALLOW            (unset: every image is distributed; set it in production, e.g.
#                               registry.example.com/team/**,*/library/nginx)
#   IMAGEWOLF_ENDPOINT_ADDRESS (the registry endpoint as the runtime reaches it, if not the
#                               listen address)
#   IMAGEWOLF_PLATFORM         (this node's os/arch[/variant]; unset: the host's)
#   IMAGEWOLF_PLATFORMS        (the platforms an origin spreads out of an index; unset: its own)

VOLUME /var/lib/imagewolf
# 8000: HTTP API (webhooks, /stats, /metrics, agent to agent). 6000: BitTorrent.
EXPOSE 8000/tcp 6000/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/imagewolf-healthcheck"]
ENTRYPOINT ["/usr/local/bin/imagewolf-entrypoint"]
