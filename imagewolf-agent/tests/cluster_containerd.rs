//! The registry-native path (`--distribution blobs`) on a cluster of containerd nodes, what
//! Kubernetes runs, all started by this test: one network namespace per node on a bridge,
//! a real containerd (Debian's 1.6, CRI plugin on) running INSIDE each node's namespace with
//! its own root, state and socket, the agent binary next to it with `--runtime containerd`,
//! and Debian's docker-registry on the bridge address with its push notifications pointed at
//! node 0's agent. A builder dockerd (root namespace) builds and pushes the images; no node
//! has Docker: the origin reads the registry's API, the others take the blobs from the swarm,
//! and every containerd pulls from its agent's endpoint on 127.0.0.1:5055 inside its
//! namespace. Fails loudly, never skips, when root, containerd, dockerd or the registry are
//! missing (`scripts/test` installs them).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use imagewolf::cluster::{require_root_and_tools, ClusterBuilder};
use imagewolf::containerd::{require_containerd, Containerd as ContainerdProcess};
use imagewolf::docker::{
    build_test_image, extend_test_image, free_port, Access, Dockerd, Registry, RegistryOptions,
};
use imagewolf::mirror_nodes::start_containerd_agent;
use imagewolf::{agent_api, log_tails, require_tool, ChildGuard, TempDir};
use imagewolf_agent::containerd::Containerd;
use imagewolf_agent::loader::ImageLoader;

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");
const API_PORT: u16 = imagewolf::mirror_nodes::NODE_API_PORT;
const NODES: usize = 3;
const LAYERS: usize = 3;
const LAYER_MIB: usize = 4;

/// The tails of the agents' logs in `dir` and of the containerds' logs.
fn logs(dir: &Path, containerds: &[ContainerdProcess]) -> String {
    let mut out = log_tails(dir, 25);
    for (i, c) in containerds.iter().enumerate() {
        out.push_str(&format!("--- containerd of node {i}\n{}\n", c.log_tail()));
    }
    out
}

async fn stats(ip: Ipv4Addr) -> Vec<serde_json::Value> {
    agent_api::stats(SocketAddr::from((ip, API_PORT))).await
}

/// `/stats` of `ip`'s agent for the image pushed as `reference`.
async fn image_stats(ip: Ipv4Addr, reference: &str) -> Option<serde_json::Value> {
    agent_api::image_record(SocketAddr::from((ip, API_PORT)), reference).await
}

/// Waits until every node's containerd lists `reference` pointing at `digest` and its agent
/// says loaded; returns how long that took from `since`.
async fn wait_loaded_everywhere(
    ips: &[Ipv4Addr],
    containerds: &[ContainerdProcess],
    reference: &str,
    digest: &str,
    since: Instant,
    bound: Duration,
    dir: &Path,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut missing = Vec::new();
        for (ip, c) in ips.iter().zip(containerds) {
            let loaded = image_stats(*ip, reference)
                .await
                .is_some_and(|s| s["state"] == "loaded");
            if !(loaded && c.digest_of(reference).as_deref() == Some(digest)) {
                missing.push(ip.to_string());
            }
        }
        if missing.is_empty() {
            return since.elapsed();
        }
        if started.elapsed() > bound {
            let mut detail = String::new();
            for (ip, c) in ips.iter().zip(containerds) {
                detail.push_str(&format!(
                    "{ip}: {:?}\n  images: {:?}\n",
                    stats(*ip).await,
                    c.images()
                ));
            }
            panic!(
                "{reference} ({digest}) not loaded on {missing:?} within {bound:?}\n{detail}\n{}",
                logs(dir, containerds)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The registry-native path on containerd nodes: every node's containerd gets each image
/// under the registry's name and manifest digest, pulled from its agent's endpoint; the
/// everyday update moves only its new layer; containerd never fetches from the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_nodes_get_registry_digests_and_an_update_moves_only_its_new_layer() {
    require_root_and_tools().unwrap_or_else(|e| panic!("{e}"));
    require_containerd().unwrap_or_else(|e| panic!("{e}"));
    require_tool("docker-registry", "docker-registry");
    require_tool("dockerd", "docker.io");
    let dir = TempDir::new("cluster-ctrd").unwrap();
    let cluster = ClusterBuilder::new(NODES).build().unwrap();
    let ips = cluster.node_ips();
    cluster.write_hosts("imagewolf", &ips).unwrap();
    let bridge = cluster.bridge_ip();
    let registry_addr = format!("{bridge}:{}", free_port().unwrap());
    let registry = Registry::start_with(
        &registry_addr,
        &RegistryOptions::notifying(format!(
            "http://{}:{API_PORT}/registryNotifications",
            ips[0]
        )),
    )
    .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let builder = Dockerd::start("ctrd-builder", &[registry_addr.as_str()])
        .unwrap_or_else(|e| panic!("dockerd (apt-get install -y docker.io): {e}"));
    let containerds: Vec<ContainerdProcess> = (0..NODES)
        .map(|i| {
            ContainerdProcess::start_in(cluster.node(i), &format!("ctrd-node{i}"))
                .unwrap_or_else(|e| panic!("containerd did not start: {e}"))
        })
        .collect();
    let _agents: Vec<ChildGuard> = (0..NODES)
        .map(|i| {
            start_containerd_agent(
                Path::new(AGENT),
                &cluster,
                i,
                containerds[i].socket(),
                dir.path(),
                &[],
            )
        })
        .collect();

    // 1. v1, three layers: every node's containerd has it under the registry's name and
    //    manifest digest, and the registry served each blob once (to the origin).
    let v1 = format!("{registry_addr}/test/app:v1");
    let v1_id = build_test_image(&builder, &v1, LAYERS, LAYER_MIB).unwrap();
    let pushed = Instant::now();
    builder.run_cli(&["push", &v1]).unwrap();
    let v1_digest = builder.repo_digest(&v1).unwrap();
    let took = wait_loaded_everywhere(
        &ips,
        &containerds,
        &v1,
        &v1_digest,
        pushed,
        Duration::from_secs(120),
        dir.path(),
    )
    .await;
    eprintln!(
        "v1 ({} MiB in {LAYERS} layers): push -> loaded in {NODES} containerds in {:.2} s",
        LAYERS * LAYER_MIB,
        took.as_secs_f64()
    );
    assert_eq!(
        registry.blob_get_count(),
        LAYERS + 1,
        "the registry served blobs {:?} (layers + config once expected)",
        registry.blob_gets()
    );
    for (i, c) in containerds.iter().enumerate() {
        // Pulled by digest, then tagged: both names point at the registry's manifest.
        let by_digest = format!("{registry_addr}/test/app@{v1_digest}");
        assert_eq!(
            c.digest_of(&by_digest).as_deref(),
            Some(v1_digest.as_str()),
            "node {i}: {:?}",
            c.images()
        );
        // Nothing is left under the endpoint's name.
        assert!(
            c.images().iter().all(|(r, _, _)| !r.contains(":5055/")),
            "node {i}: {:?}",
            c.images()
        );
        // What the kubelet sees: the CRI plugin took the image in (its label, and its record
        // under the image id), and the loader's own check finds it by config digest.
        let line = c
            .images()
            .into_iter()
            .find(|(r, _, _)| *r == v1)
            .map(|(_, _, l)| l)
            .unwrap();
        assert!(
            line.contains("io.cri-containerd.image=managed"),
            "node {i}: the CRI plugin did not take {v1} in: {line}"
        );
        assert_eq!(c.digest_of(&v1_id).as_deref(), Some(v1_digest.as_str()));
        let loader = Containerd::connect(c.loader_config()).await.unwrap();
        assert!(loader.has_image(&v1_id).await.unwrap(), "node {i}");
        // Unpacked: one committed snapshot per layer, ready for a container.
        let snapshots = c.ctr(&["snapshots", "ls"]).unwrap();
        assert_eq!(
            snapshots
                .lines()
                .filter(|l| l.contains("Committed"))
                .count(),
            LAYERS,
            "node {i}:\n{snapshots}"
        );
        // The agent's hosts dir put its endpoint in front of the registry.
        let hosts = dir.path().join(format!(
            "data{i}/containerd-hosts/{registry_addr}/hosts.toml"
        ));
        let hosts = fs::read_to_string(&hosts)
            .unwrap_or_else(|e| panic!("node {i}: {}: {e}", hosts.display()));
        assert!(
            hosts.contains(&format!("server = \"http://{registry_addr}\""))
                && hosts.contains("[host.\"http://127.0.0.1:5055\"]"),
            "node {i}: {hosts}"
        );
        let s = image_stats(ips[i], &v1).await.unwrap();
        assert_eq!(s["origin"], i == 0, "{s}");
        assert_eq!(s["blobs"]["total"], LAYERS + 1, "{s}");
    }

    // 2. The everyday update: v2 = v1 + one 1 MiB layer. Only the new layer and config move.
    let v2 = format!("{registry_addr}/test/app:v2");
    let v2_id = extend_test_image(&builder, &v1, &v2, 1).unwrap();
    let pushed = Instant::now();
    builder.run_cli(&["push", &v2]).unwrap();
    let v2_digest = builder.repo_digest(&v2).unwrap();
    let took = wait_loaded_everywhere(
        &ips,
        &containerds,
        &v2,
        &v2_digest,
        pushed,
        Duration::from_secs(120),
        dir.path(),
    )
    .await;
    eprintln!(
        "update (1 MiB on {} MiB): push -> loaded in {NODES} containerds in {:.2} s",
        LAYERS * LAYER_MIB,
        took.as_secs_f64()
    );
    assert_eq!(
        registry.blob_get_count(),
        LAYERS + 1 + 2,
        "v2 read more than its new layer and config from the registry: {:?}",
        registry.blob_gets()
    );
    for (i, (ip, c)) in ips.iter().zip(&containerds).enumerate() {
        assert_eq!(
            c.digest_of(&v1).as_deref(),
            Some(v1_digest.as_str()),
            "node {i} lost v1: {:?}",
            c.images()
        );
        let loader = Containerd::connect(c.loader_config()).await.unwrap();
        assert!(loader.has_image(&v2_id).await.unwrap(), "node {i}");
        // v2 unpacked on v1's snapshots: one more.
        let snapshots = c.ctr(&["snapshots", "ls"]).unwrap();
        assert_eq!(
            snapshots
                .lines()
                .filter(|l| l.contains("Committed"))
                .count(),
            LAYERS + 1,
            "node {i}:\n{snapshots}"
        );
        let s = image_stats(*ip, &v2).await.unwrap();
        assert_eq!(s["state"], "loaded", "{s}");
        assert_eq!(s["blobs"]["total"], LAYERS + 2, "{s}");
        assert_eq!(
            s["blobs"]["present"], LAYERS,
            "node {i} fetched v1's layers again: {s}"
        );
        let needed = s["blobs"]["bytes_needed"].as_u64().unwrap();
        assert!(
            needed < (1 << 20) + (64 << 10),
            "node {i} needed {needed} bytes for a 1 MiB update: {s}"
        );
        if i > 0 {
            let down = s["bytes_down"].as_u64().unwrap();
            // Endgame may fetch a few blocks twice; v1's layers must not move again.
            assert!(
                down < needed * 3 / 2,
                "node {i} received {down} bytes for {needed} bytes of new blobs: {s}"
            );
            eprintln!("node {i}: v2 moved {down} bytes for {needed} bytes of new blobs");
        }
    }

    // 3. containerd never went to the registry: every blob the registry served went to the
    //    origin's agent, and no request at all came from containerd.
    let log = registry.accesses();
    let blob_gets: Vec<&Access> = log
        .iter()
        .filter(|a| a.method == "GET" && a.path.contains("/blobs/sha256:"))
        .collect();
    assert_eq!(blob_gets.len(), LAYERS + 1 + 2, "{blob_gets:?}");
    for a in &blob_gets {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.client, ips[0].to_string(), "a blob went elsewhere: {a:?}");
        assert!(
            !a.agent.contains("containerd"),
            "containerd fetched a blob from the registry: {a:?}"
        );
    }
    let by_containerd: Vec<&Access> = log
        .iter()
        .filter(|a| a.agent.contains("containerd"))
        .collect();
    assert!(
        by_containerd.is_empty(),
        "containerd talked to the registry: {by_containerd:?}"
    );
    // Nobody but the origin (and the builder's pushes) talked to the registry.
    let receivers: Vec<String> = ips[1..].iter().map(ToString::to_string).collect();
    let from_receivers: Vec<&Access> = log
        .iter()
        .filter(|a| receivers.contains(&a.client))
        .collect();
    assert!(
        from_receivers.is_empty(),
        "receivers talked to the registry: {from_receivers:?}"
    );
}
