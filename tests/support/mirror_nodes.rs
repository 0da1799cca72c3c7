//! Nodes whose runtimes pull through their agent, for the runtime tests of the registry
//! endpoint and of mirror mode: an agent process started in a cluster node next to that
//! node's containerd ([`start_containerd_agent`]), containerd's `hosts.toml` naming a
//! mirror ([`write_hosts_toml`]), a `ctr` client run inside a node (containerd 1.6 fetches
//! in the client, so a pull reaches what the node's loopback reaches: [`ctr_pull_in`]), an
//! agent's mirror counters ([`mirror_counts`]), and an HTTP `CONNECT` proxy
//! ([`ConnectProxy`]) that stands in for the internet: it records where a daemon tried to go
//! (Docker Hub, say) and tunnels only the targets a test routes to its own servers, so
//! nothing leaves the machine.

use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::{Cluster, Node};
use crate::{http, log_tails, ChildGuard};

/// The API port of agents in cluster nodes.
pub const NODE_API_PORT: u16 = 8000;
/// The secret every agent of a test cluster shares (the agent refuses to start without).
pub const CLUSTER_SECRET: &str = "imagewolf-test-cluster-secret";

/// Starts the agent binary `agent` in node `i`'s namespace next to its containerd (socket
/// `containerd_socket`), with `--distribution blobs`, its peers found as `dns:imagewolf`
/// (write the name with [`Cluster::write_hosts`]), data in `dir/dataI` and log in
/// `dir/agentI.log`, plus `extra` flags; waits until its API listens. The endpoint stays on
/// its default, 127.0.0.1:5055 in the namespace, where the node's containerd reaches it.
pub fn start_containerd_agent(
    agent: &Path,
    cluster: &Cluster,
    i: usize,
    containerd_socket: &Path,
    dir: &Path,
    extra: &[&str],
) -> ChildGuard {
    let node = cluster.node(i);
    let log = File::create(dir.join(format!("agent{i}.log"))).unwrap();
    let mut cmd = node.command(agent);
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", CLUSTER_SECRET);
    cmd.args(["--peers", &format!("dns:imagewolf:{NODE_API_PORT}")])
        .args(["--listen", &format!("{}:{NODE_API_PORT}", node.ip)])
        .args(["--bt-listen", &format!("{}:6000", node.ip)])
        .args(["--advertise-addr", &node.ip.to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("data{i}")))
        .args(["--runtime", "containerd", "--containerd-address"])
        .arg(containerd_socket)
        .args(["--distribution", "blobs"])
        .args(["--seed-seconds", "600", "--resolve-seconds", "1"])
        .args(extra)
        .env("RUST_LOG", "info,imagewolf_bt=info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null());
    let child = ChildGuard::spawn(&format!("agent{i}"), &mut cmd).unwrap();
    node.wait_listening(NODE_API_PORT, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("agent{i} did not listen: {e}\n{}", log_tails(dir, 25)));
    child
}

/// containerd's registry host configuration for `registry` (`host:port`) with `mirror`
/// (`http://host:port`) in front of it: `server` is the registry itself, where containerd
/// goes when the mirror fails.
pub fn hosts_toml(registry: &str, mirror: &str) -> String {
    format!(
        "server = \"http://{registry}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// Writes [`hosts_toml`] as `dir/<registry>/hosts.toml` (the layout of `ctr --hosts-dir`
/// and of the CRI plugin's `config_path`); returns the file's path.
pub fn write_hosts_toml(dir: &Path, registry: &str, mirror: &str) -> io::Result<PathBuf> {
    let host_dir = dir.join(registry);
    fs::create_dir_all(&host_dir)?;
    let path = host_dir.join("hosts.toml");
    fs::write(&path, hosts_toml(registry, mirror))?;
    Ok(path)
}

/// Starts `ctr -a SOCKET -n k8s.io images pull --hosts-dir HOSTS REFERENCE` inside `node`
/// (containerd 1.6's `ctr` resolves and fetches itself, then hands the content to the
/// daemon), its output to `log`. Wait for it with [`ChildGuard::wait_timeout`].
pub fn ctr_pull_in(
    node: &Node,
    socket: &Path,
    hosts: &Path,
    reference: &str,
    log: &Path,
) -> io::Result<ChildGuard> {
    let out = File::create(log)?;
    let mut cmd = node.command("ctr");
    cmd.arg("-a")
        .arg(socket)
        .args(["-n", crate::containerd::NAMESPACE, "images", "pull"])
        .arg("--hosts-dir")
        .arg(hosts)
        .arg(reference)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    ChildGuard::spawn(&format!("ctr pull in {}", node.name), &mut cmd)
}

/// An agent's mirror counters, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorCounts {
    /// `imagewolf_mirror_manifests_upstream_total`.
    pub manifests_upstream: u64,
    /// `imagewolf_mirror_blobs_upstream_total`.
    pub blobs_upstream: u64,
    /// `imagewolf_mirror_blobs_from_peers_total`.
    pub blobs_from_peers: u64,
    /// `imagewolf_mirror_peer_fallbacks_total`.
    pub peer_fallbacks: u64,
    /// `imagewolf_mirror_misses_total`.
    pub misses: u64,
}

/// The value of the unlabelled sample `name` in Prometheus text, if present.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET /metrics` of the agent at `api`: its mirror counters. Panics when the agent does
/// not answer or mirror mode is off (no such families).
pub async fn mirror_counts(api: SocketAddr) -> MirrorCounts {
    let reply = http::request(api, "GET", "/metrics", &[], b"")
        .await
        .unwrap_or_else(|e| panic!("{api}: GET /metrics: {e}"));
    assert_eq!(reply.status, 200, "{api}: GET /metrics: {}", reply.text());
    let text = reply.text();
    let get = |name: &str| {
        metric(&text, name).unwrap_or_else(|| panic!("{api}: no {name} in /metrics (mirror off?)"))
    };
    MirrorCounts {
        manifests_upstream: get("imagewolf_mirror_manifests_upstream_total"),
        blobs_upstream: get("imagewolf_mirror_blobs_upstream_total"),
        blobs_from_peers: get("imagewolf_mirror_blobs_from_peers_total"),
        peer_fallbacks: get("imagewolf_mirror_peer_fallbacks_total"),
        misses: get("imagewolf_mirror_misses_total"),
    }
}

/// An HTTP proxy on 127.0.0.1 that answers `CONNECT host:port` by tunnelling to the local
/// address the test routed that target to, and refuses everything else (403): set it as a
/// daemon's `HTTPS_PROXY` and the daemon's "internet" is what the test serves. Every
/// request line it received is recorded ([`ConnectProxy::requests`]). Stops on drop.
pub struct ConnectProxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    /// Starts the proxy; `routes` maps `host:port` targets to local addresses.
    pub async fn start(routes: Vec<(String, SocketAddr)>) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let routes = Arc::new(routes);
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every tunnel.
            let mut tunnels = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, routes) = (Arc::clone(&seen), Arc::clone(&routes));
                tunnels.spawn(async move {
                    let _ = serve_proxy_client(stream, &seen, &routes).await;
                });
                while tunnels.try_join_next().is_some() {}
            }
        });
        Ok(ConnectProxy {
            addr,
            requests,
            task,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines received so far, e.g. `CONNECT registry-1.docker.io:443`.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_proxy_client(
    mut client: TcpStream,
    seen: &Mutex<Vec<String>>,
    routes: &[(String, SocketAddr)],
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {target}"));
    let route = routes
        .iter()
        .find(|(t, _)| method == "CONNECT" && t.eq_ignore_ascii_case(target));
    let Some((_, to)) = route else {
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    };
    let mut upstream = TcpStream::connect(to).await?;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
