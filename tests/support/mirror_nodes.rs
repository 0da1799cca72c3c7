//! Nodes whose runtimes pull through their agent, for the runtime tests of the registry
//! endpoint and of mirror mode: an agent process started in a cluster node next to that
//! node's containerd ([`start_containerd_agent`]).

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::{log_tails, ChildGuard};

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
