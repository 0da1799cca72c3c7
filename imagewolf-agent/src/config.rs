//! Command line and environment: every flag has an `IMAGEWOLF_*` variable beside it for
//! container use.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::registry::manifest::Platform;

/// How the agent finds the other agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    /// `dns:NAME[:PORT]`: every address NAME resolves to is an agent (swarm's `tasks.NAME`,
    /// a Kubernetes headless Service). Re-resolved periodically.
    Dns {
        /// The name to resolve.
        name: String,
        /// The agents' HTTP API port.
        port: u16,
    },
    /// `static:HOST:PORT,HOST:PORT,...`: a fixed list (hosts may be names).
    Static(Vec<String>),
}

impl std::str::FromStr for PeerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("dns:") {
            let (name, port) = match rest.rsplit_once(':') {
                Some((name, port)) => (
                    name,
                    port.parse::<u16>()
                        .map_err(|_| format!("bad port in --peers {s:?}"))?,
                ),
                None => (rest, crate::config::DEFAULT_API_PORT),
            };
            if name.is_empty() {
                return Err(format!("--peers {s:?}: empty DNS name"));
            }
            Ok(PeerSpec::Dns {
                name: name.to_owned(),
                port,
            })
        } else if let Some(rest) = s.strip_prefix("static:") {
            let list: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            for entry in &list {
                if entry
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(format!("--peers static entry {entry:?} is not HOST:PORT"));
                }
            }
            Ok(PeerSpec::Static(list))
        } else {
            Err(format!(
                "--peers {s:?}: expected dns:NAME[:PORT] or static:HOST:PORT,HOST:PORT,..."
            ))
        }
    }
}

/// The agents' HTTP API port when `--peers dns:NAME` names none.
pub const DEFAULT_API_PORT: u16 = 8000;

/// Which runtime images are loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// Docker Engine, through its API (`DOCKER_HOST`).
    Docker,
    /// containerd (Kubernetes nodes), through its `ctr` client: images reach the runtime
    /// through the agent's registry endpoint (or `ctr import`); this node originates
    /// through the registry API (https and credentials included), no Docker needed.
    Containerd,
    /// No runtime: verified tarballs are kept in `DATA_DIR/loaded/` (demos, tests).
    None,
}

/// How images travel between agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistributionMode {
    /// `blobs` when the runtime can pull from the endpoint (docker, containerd), else
    /// `tarball` (`--runtime none`).
    Auto,
    /// As blobs by digest through the node's store; the runtime pulls from the agent's
    /// registry endpoint and keeps the registry's digests; a new version moves only its new
    /// layers. On Docker nodes, images the registry API cannot read (an unknown CA, missing
    /// credentials, unsupported media types) go as tarballs through Docker.
    Blobs,
    /// As one `docker save` tarball per image, loaded with `docker load` / `ctr import`.
    Tarball,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// ImageWolf agent: spreads pushed container images to every node of a cluster over
/// BitTorrent, so the registry serves each image once instead of once per node.
#[derive(Debug, Clone, Parser)]
#[command(name = "imagewolf-agent", version)]
pub struct AgentConfig {
    /// How to find the other agents: dns:NAME[:PORT] (every address NAME resolves to, e.g.
    /// tasks.imagewolf on Swarm or a headless Service on Kubernetes; re-resolved as nodes come
    /// and go) or static:HOST:PORT,HOST:PORT,... PORT is the agents' HTTP API port.
    #[arg(long, env = "IMAGEWOLF_PEERS")]
    pub peers: PeerSpec,

    /// Address of the HTTP API (webhooks, /stats, /metrics, agent-to-agent, tracker).
    #[arg(long, env = "IMAGEWOLF_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Address for BitTorrent peer connections.
    #[arg(long, env = "IMAGEWOLF_BT_LISTEN", default_value = "0.0.0.0:6000")]
    pub bt_listen: SocketAddr,

    /// The IP other agents reach this node at. Default: the source address of the route to the
    /// first peer, else the first non-loopback address of the host.
    #[arg(long, env = "IMAGEWOLF_ADVERTISE_ADDR")]
    pub advertise_addr: Option<IpAddr>,

    /// Where tarballs and torrents are kept while they are spread.
    #[arg(long, env = "IMAGEWOLF_DATA_DIR", default_value = "/var/lib/imagewolf")]
    pub data_dir: PathBuf,

    /// Docker Engine API endpoint (unix:///path or tcp://host:port).
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,

    /// Container runtime that images are loaded into.
    #[arg(long, env = "IMAGEWOLF_RUNTIME", value_enum, default_value = "docker")]
    pub runtime: Runtime,

    /// containerd's socket (for --runtime containerd).
    #[arg(
        long,
        env = "IMAGEWOLF_CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_address: PathBuf,

    /// containerd namespace images are imported into (the kubelet uses k8s.io).
    #[arg(long, env = "IMAGEWOLF_CONTAINERD_NAMESPACE", default_value = "k8s.io")]
    pub containerd_namespace: String,

    /// containerd's `ctr` client, a name on PATH or a path (for --runtime containerd).
    #[arg(long, env = "IMAGEWOLF_CONTAINERD_CTR", default_value = "ctr")]
    pub containerd_ctr: PathBuf,

    /// Watch these repositories and spread every new digest, for registries that cannot send
    /// webhooks: http://HOST[:PORT]/REPO (every tag) or http://HOST[:PORT]/REPO:TAG,
    /// comma-separated. Only the agent with the lowest address polls.
    #[arg(long, env = "IMAGEWOLF_POLL", value_delimiter = ',')]
    pub poll: Vec<crate::poll::PollTarget>,

    /// Seconds between two polling rounds.
    #[arg(long, env = "IMAGEWOLF_POLL_SECONDS", default_value_t = 30)]
    pub poll_seconds: u64,

    /// Registry to pull from for Docker Hub webhooks (point it at a mirror or a test registry).
    #[arg(long, env = "IMAGEWOLF_HUB_REGISTRY", default_value = "docker.io")]
    pub hub_registry: String,

    /// Pull from this registry instead of the host named in registry notifications (when the
    /// registry's own idea of its address is not reachable from the nodes).
    #[arg(long, env = "IMAGEWOLF_REGISTRY")]
    pub registry: Option<String>,

    /// INSECURE: read these registries (`HOST[:PORT]`, exactly as in image names; repeat the
    /// flag or comma-separate) over plain http, credentials included, without TLS. Other
    /// hosts are read over https; one written with an explicit port other than 443 falls
    /// back to plain http (anonymously) only when it does not speak TLS at all.
    #[arg(
        long = "insecure-registry",
        env = "IMAGEWOLF_INSECURE_REGISTRY",
        value_delimiter = ',',
        value_name = "HOST[:PORT]"
    )]
    pub insecure_registry: Vec<String>,

    /// A PEM file of CA certificates to trust for registries (a private CA), added to the
    /// platform's roots.
    #[arg(long, env = "IMAGEWOLF_REGISTRY_CA", value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,

    /// Registry credentials: a Docker `config.json` or a Kubernetes `.dockerconfigjson`
    /// (`{"auths": {"HOST": {"auth": "base64(user:password)"}}}`), read at start. Used for
    /// basic auth and the token flow, sent to that registry and its token service only.
    #[arg(long, env = "IMAGEWOLF_REGISTRY_AUTH_FILE", value_name = "FILE")]
    pub registry_auth_file: Option<PathBuf>,

    /// Keep seeding this long after the image is loaded here, then delete the tarball.
    #[arg(long, env = "IMAGEWOLF_SEED_SECONDS", default_value_t = 600)]
    pub seed_seconds: u64,

    /// How often `dns:` peers are re-resolved, in seconds.
    #[arg(long, env = "IMAGEWOLF_RESOLVE_SECONDS", default_value_t = 5)]
    pub resolve_seconds: u64,

    /// Log format.
    #[arg(long, env = "IMAGEWOLF_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Require this token on the webhook endpoints (`Authorization: Bearer TOKEN`, or
    /// `?token=TOKEN` for Docker Hub). Prefer the environment variable to keep it out of `ps`.
    #[arg(long, env = "IMAGEWOLF_WEBHOOK_TOKEN", hide_env_values = true)]
    pub webhook_token: Option<String>,

    /// Only distribute images whose `HOST[:PORT]/REPOSITORY` matches one of these patterns
    /// (repeat the flag, or comma-separate). `*` matches within one path segment, `**`
    /// across segments: `registry.local:5000/team/*`, `*/library/nginx`,
    /// `registry.local:5000/**`. Checked on webhooks, polling and other agents'
    /// announcements alike; a refused image is logged, counted and never pulled or loaded.
    /// Unset: every image is allowed (set it in production).
    #[arg(
        long = "allow",
        env = "IMAGEWOLF_ALLOW",
        value_delimiter = ',',
        value_name = "HOST/REPO-PATTERN"
    )]
    pub allow: Vec<crate::allowlist::AllowPattern>,

    /// Most distributions this agent works on at once (pulling and exporting, downloading,
    /// verifying, loading), announcements from other agents included. More wait in a queue
    /// (`queued` in /stats) and start in arrival order as slots free. A torrent that only
    /// keeps seeding after its image is loaded here holds no slot (--seed-seconds bounds it).
    #[arg(long, env = "IMAGEWOLF_MAX_TORRENTS", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_torrents: u16,

    /// Secret shared by every agent of the cluster (required; at least 16 bytes, e.g.
    /// `openssl rand -hex 32`): announcements are signed with it (HMAC-SHA256), and every
    /// agent-to-agent request (announcing, listing, fetching a torrent) is authenticated
    /// with it before its body is read, so nobody else on the network can make nodes load
    /// an image or read what they distribute. Prefer the environment variable (or the
    /// image's `IMAGEWOLF_CLUSTER_SECRET_FILE`) to keep it out of `ps`.
    #[arg(long, env = "IMAGEWOLF_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Run without a cluster secret: ANY host that can reach the API port can make this node
    /// download and load images, and read its distributions. Only for a network where every
    /// host is trusted (a laptop demo, a throwaway test cluster).
    #[arg(long, env = "IMAGEWOLF_INSECURE_NO_CLUSTER_SECRET")]
    pub insecure_no_cluster_secret: bool,

    /// How images travel: `blobs` (layers by digest through a node-local store and
    /// registry endpoint: only new layers move, the runtime keeps the registry's digests),
    /// `tarball` (the whole image as one `docker save` archive, `docker load`ed), or `auto`:
    /// `blobs` with a runtime that can pull from the endpoint (docker, containerd),
    /// `tarball` with `--runtime none`.
    #[arg(
        long,
        env = "IMAGEWOLF_DISTRIBUTION",
        value_enum,
        default_value = "auto"
    )]
    pub distribution: DistributionMode,

    /// Disk budget of the node's blob store (`blobs` mode), e.g. `20G`, `512M` or bytes:
    /// past it, the least recently used blobs no image in flight needs are deleted.
    #[arg(long, env = "IMAGEWOLF_CACHE_SIZE", default_value = "20G", value_parser = parse_size)]
    pub cache_size: u64,

    /// Where the node's read-only registry endpoint listens (`blobs` mode). The runtime
    /// pulls images from it; keep it on loopback (or a host-local address).
    #[arg(
        long,
        env = "IMAGEWOLF_ENDPOINT_LISTEN",
        default_value = "127.0.0.1:5055"
    )]
    pub endpoint_listen: SocketAddr,

    /// Mirror mode (`blobs` mode): the endpoint also answers pulls of images nobody
    /// announced, as a pull-through mirror for containerd's `hosts.toml` and dockerd's
    /// `registry-mirrors` (README, "Cold pulls"). Images come from the store, else from the
    /// cluster, else from the upstream registry, read with this agent's credentials for
    /// what `--allow` allows; anyone who reaches the endpoint can pull them.
    #[arg(long, env = "IMAGEWOLF_MIRROR", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub mirror: bool,

    /// The endpoint's address as the runtime reaches it, when that is not the listen
    /// address (e.g. the agent runs in another network namespace than the runtime).
    /// dockerd speaks plain http only to 127.0.0.0/8 unless told `--insecure-registry`.
    #[arg(long, env = "IMAGEWOLF_ENDPOINT_ADDRESS")]
    pub endpoint_address: Option<String>,

    /// This node's platform, `os/architecture[/variant]`, taken out of multi-platform
    /// images (`blobs` mode). Default: the host's.
    #[arg(long, env = "IMAGEWOLF_PLATFORM", value_parser = Platform::parse)]
    pub platform: Option<Platform>,

    /// Every platform the cluster's nodes run (`linux/amd64,linux/arm64`): an origin reads
    /// and spreads each of them out of a multi-platform image, so every node finds its own
    /// in the swarm. Default: the origin's own only.
    #[arg(long, env = "IMAGEWOLF_PLATFORMS", value_delimiter = ',', value_parser = Platform::parse)]
    pub platforms: Vec<Platform>,
}

/// `on` or `off` (also `true`/`false`, `1`/`0`).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{s:?}: on or off expected")),
    }
}

/// A byte size: digits with an optional `K`, `M`, `G` or `T` suffix (powers of 1024; `KiB`,
/// `MB` and the like are read the same way).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 20G, 512M, 1048576)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// Shortest cluster secret accepted.
pub const MIN_CLUSTER_SECRET_LEN: usize = 16;

impl AgentConfig {
    /// Checks what flags alone cannot: a cluster secret is set (and long enough), or its
    /// absence is explicitly accepted.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cluster_secret, self.insecure_no_cluster_secret) {
            (Some(_), true) => Err(
                "--cluster-secret and --insecure-no-cluster-secret contradict each other".into(),
            ),
            (Some(secret), false) if secret.len() < MIN_CLUSTER_SECRET_LEN => Err(format!(
                "the cluster secret is {} bytes; use at least {MIN_CLUSTER_SECRET_LEN} \
                 (e.g. `openssl rand -hex 32`)",
                secret.len()
            )),
            (None, false) => Err(
                "no cluster secret: set --cluster-secret (or IMAGEWOLF_CLUSTER_SECRET) to the \
                 same random value on every agent, e.g. `openssl rand -hex 32`; without one, \
                 anyone on the network could make this node load images. On a network where \
                 every host is trusted, --insecure-no-cluster-secret runs without"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// Whether images travel as blobs (`--distribution`, `auto` resolved).
    pub fn blobs(&self) -> bool {
        match self.distribution {
            DistributionMode::Blobs => true,
            DistributionMode::Tarball => false,
            DistributionMode::Auto => self.runtime != Runtime::None,
        }
    }

    /// How long to keep seeding after a local load.
    pub fn seed_time(&self) -> Duration {
        Duration::from_secs(self.seed_seconds)
    }

    /// Time between two polling rounds.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_seconds.max(1))
    }

    /// How often to re-resolve `dns:` peers.
    pub fn resolve_interval(&self) -> Duration {
        Duration::from_secs(self.resolve_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn peer_specs_parse() {
        assert_eq!(
            "dns:tasks.imagewolf".parse::<PeerSpec>().unwrap(),
            PeerSpec::Dns {
                name: "tasks.imagewolf".into(),
                port: DEFAULT_API_PORT
            }
        );
        assert_eq!(
            "dns:imagewolf:9000".parse::<PeerSpec>().unwrap(),
            PeerSpec::Dns {
                name: "imagewolf".into(),
                port: 9000
            }
        );
        assert_eq!(
            "static:10.0.0.1:8000, node2:8000"
                .parse::<PeerSpec>()
                .unwrap(),
            PeerSpec::Static(vec!["10.0.0.1:8000".into(), "node2:8000".into()])
        );
        for bad in [
            "",
            "dns:",
            "dns:x:notaport",
            "static:host",
            "imagewolf",
            "static:a:1,b",
        ] {
            assert!(bad.parse::<PeerSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mirror_is_on_by_default_and_turned_off_by_the_flag() {
        let parse = |args: &[&str]| {
            AgentConfig::try_parse_from(
                ["imagewolf-agent", "--peers", "static:a:1"]
                    .iter()
                    .chain(args),
            )
        };
        assert!(parse(&[]).unwrap().mirror);
        assert!(!parse(&["--mirror", "off"]).unwrap().mirror);
        assert!(!parse(&["--mirror=false"]).unwrap().mirror);
        assert!(parse(&["--mirror", "on"]).unwrap().mirror);
        assert!(parse(&["--mirror", "sometimes"]).is_err());
    }

    #[test]
    fn allow_and_max_torrents_from_flags_and_environment() {
        let parse = |args: &[&str]| {
            AgentConfig::try_parse_from(
                ["imagewolf-agent", "--peers", "static:a:1"]
                    .iter()
                    .chain(args),
            )
        };
        // Defaults: everything allowed, 16 slots.
        let config = parse(&[]).unwrap();
        assert!(config.allow.is_empty());
        assert_eq!(config.max_torrents, 16);

        let config = parse(&[
            "--allow",
            "registry.local:5000/team/*",
            "--allow",
            "*/library/nginx,docker.io/x/**",
            "--max-torrents",
            "3",
        ])
        .unwrap();
        let patterns: Vec<String> = config.allow.iter().map(ToString::to_string).collect();
        assert_eq!(
            patterns,
            [
                "registry.local:5000/team/*",
                "*/library/nginx",
                "docker.io/x/**"
            ]
        );
        assert_eq!(config.max_torrents, 3);
        let err = parse(&["--allow", "nginx"]).unwrap_err().to_string();
        assert!(err.contains("HOST[:PORT]/REPOSITORY"), "{err}");
        assert!(parse(&["--max-torrents", "0"]).is_err());

        // The environment, comma-separated. Only this test reads these variables.
        std::env::set_var("IMAGEWOLF_ALLOW", "r:5000/a/*, r:5000/b");
        std::env::set_var("IMAGEWOLF_MAX_TORRENTS", "5");
        let config = parse(&[]);
        std::env::remove_var("IMAGEWOLF_ALLOW");
        std::env::remove_var("IMAGEWOLF_MAX_TORRENTS");
        let config = config.unwrap();
        let allow = crate::allowlist::Allowlist::new(config.allow);
        assert!(allow.allows_name("r:5000", "a/app") && allow.allows_name("r:5000", "b"));
        assert!(!allow.allows_name("r:5000", "c"));
        assert_eq!(config.max_torrents, 5);
    }

    #[test]
    fn a_cluster_secret_is_required_unless_its_absence_is_explicit() {
        let parse = |args: &[&str]| {
            AgentConfig::try_parse_from(
                ["imagewolf-agent", "--peers", "static:a:1"]
                    .iter()
                    .chain(args),
            )
            .unwrap()
            .validate()
        };
        let err = parse(&[]).unwrap_err();
        assert!(err.contains("--cluster-secret") && err.contains("--insecure-no-cluster-secret"));
        assert!(parse(&["--cluster-secret", "short"])
            .unwrap_err()
            .contains("at least 16"));
        assert!(parse(&["--cluster-secret", "0123456789abcdef"]).is_ok());
        assert!(parse(&["--insecure-no-cluster-secret"]).is_ok());
        assert!(parse(&[
            "--cluster-secret",
            "0123456789abcdef",
            "--insecure-no-cluster-secret"
        ])
        .is_err());
    }

    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let cmd = AgentConfig::command();
        cmd.clone().debug_assert();
        for arg in cmd.get_arguments() {
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
    }
}
