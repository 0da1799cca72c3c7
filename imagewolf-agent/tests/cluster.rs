//! ImageWolf on a real cluster, all started by this test: one network namespace per node on a
//! bridge, one dockerd per node (Debian's docker.io), Debian's docker-registry with its push
//! notifications pointed at an agent, and the agent binary running inside every namespace,
//! finding the others through `--peers dns:imagewolf`. Fails loudly, never skips, when root,
//! dockerd or the registry are missing (`scripts/test` installs them).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use imagewolf::cluster::{require_root_and_tools, Cluster, ClusterBuilder, HOST_LINKS_CIDR};
use imagewolf::docker::{
    build_test_image, extend_test_image, free_port, Dockerd, Registry, RegistryOptions,
};
use imagewolf::{agent_api, http, log_tails, ChildGuard, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");
const API_PORT: u16 = 8000;
const LAYERS: usize = 3;

/// Starts the agent in `node`'s namespace, logging to `logs/agentN.log`.
fn start_agent(
    cluster: &Cluster,
    i: usize,
    dockerd: &Dockerd,
    dir: &Path,
    extra: &[&str],
) -> ChildGuard {
    let node = cluster.node(i);
    let log = File::create(dir.join(format!("agent{i}.log"))).unwrap();
    let mut cmd = node.command(AGENT);
    // Every agent of the test cluster shares one secret (the agent refuses to start without).
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", "imagewolf-test-cluster-secret");
    cmd.args(["--peers", &format!("dns:imagewolf:{API_PORT}")])
        .args(["--listen", &format!("{}:{API_PORT}", node.ip)])
        .args(["--bt-listen", &format!("{}:6000", node.ip)])
        .args(["--advertise-addr", &node.ip.to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("data{i}")))
        .args(["--docker-host", &dockerd.docker_host()])
        .args(["--seed-seconds", "600", "--resolve-seconds", "1"])
        .args(extra)
        .env("RUST_LOG", "info,imagewolf_bt=info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null());
    let agent = ChildGuard::spawn(&format!("agent{i}"), &mut cmd).unwrap();
    node.wait_listening(API_PORT, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("agent{i} did not listen: {e}\n{}", logs(dir)));
    agent
}

/// The tails of the agents' logs in `dir`.
fn logs(dir: &Path) -> String {
    log_tails(dir, 25)
}

async fn stats(ip: Ipv4Addr) -> Vec<serde_json::Value> {
    agent_api::stats(SocketAddr::from((ip, API_PORT))).await
}

/// Waits until every listed node's dockerd has `reference` and its agent says loaded.
async fn wait_loaded_everywhere(
    nodes: &[(Ipv4Addr, &Dockerd)],
    reference: &str,
    bound: Duration,
    dir: &Path,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut missing = Vec::new();
        for (ip, dockerd) in nodes {
            let loaded = stats(*ip).await.iter().any(|i| {
                i["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(reference))
                    && i["state"] == "loaded"
            });
            if !(loaded && dockerd.has_image(reference)) {
                missing.push(ip.to_string());
            }
        }
        if missing.is_empty() {
            return started.elapsed();
        }
        if started.elapsed() > bound {
            let mut detail = String::new();
            for (ip, _) in nodes {
                detail.push_str(&format!("{ip}: {:?}\n", stats(*ip).await));
            }
            panic!(
                "{reference} not loaded on {missing:?} within {bound:?}\n{detail}\n{}",
                logs(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_image_reaches_every_node_from_one_registry_pull() {
    require_root_and_tools().unwrap_or_else(|e| panic!("{e}"));
    const NODES: usize = 4;
    let dir = TempDir::new("cluster").unwrap();
    let cluster = ClusterBuilder::new(NODES).build().unwrap();
    let ips = cluster.node_ips();
    cluster.write_hosts("imagewolf", &ips).unwrap();
    let bridge = cluster.bridge_ip();

    // The registry notifies node 0's agent; a second registry (no notifications) plays
    // Docker Hub for the webhook part.
    let registry_addr = format!("{bridge}:{}", free_port().unwrap());
    let hub_addr = format!("{bridge}:{}", free_port().unwrap());
    let registry = Registry::start_with(
        &registry_addr,
        &RegistryOptions::notifying(format!(
            "http://{}:{API_PORT}/registryNotifications",
            ips[0]
        )),
    )
    .unwrap();
    let hub = Registry::start(&hub_addr).unwrap();
    let insecure = [registry_addr.as_str(), hub_addr.as_str()];
    let builder = Dockerd::start("builder", &insecure).unwrap();
    let dockerds: Vec<Dockerd> = (0..NODES)
        .map(|i| Dockerd::start(&format!("node{i}"), &insecure).unwrap())
        .collect();

    // The last agent starts late, after the first image is everywhere else. This test covers
    // the tarball path (the fallback for images the registry API cannot read, and
    // `--distribution tarball`); the registry-native path has the test below.
    let hub_flag = [
        "--hub-registry",
        hub_addr.as_str(),
        "--distribution",
        "tarball",
    ];
    let mut agents: Vec<ChildGuard> = (0..NODES - 1)
        .map(|i| start_agent(&cluster, i, &dockerds[i], dir.path(), &hub_flag))
        .collect();

    // 1. docker push -> every node has the image, and the registry served it once.
    let reference = format!("{registry_addr}/test/app:v1");
    let image_id = build_test_image(&builder, &reference, LAYERS, 8).unwrap();
    let pushed = Instant::now();
    builder.run_cli(&["push", &reference]).unwrap();
    let early: Vec<(Ipv4Addr, &Dockerd)> = ips[..NODES - 1]
        .iter()
        .copied()
        .zip(dockerds.iter())
        .collect();
    let took =
        wait_loaded_everywhere(&early, &reference, Duration::from_secs(120), dir.path()).await;
    eprintln!(
        "push -> loaded on {} nodes in {:.2} s",
        NODES - 1,
        pushed.elapsed().as_secs_f64()
    );
    assert!(took < Duration::from_secs(120));
    for d in &dockerds[..NODES - 1] {
        assert_eq!(
            d.image_id(&reference).unwrap(),
            image_id,
            "a node has a different image"
        );
    }
    assert_eq!(
        registry.blob_get_count(),
        LAYERS + 1,
        "the registry served blobs {:?} (layers + config once expected)",
        registry.blob_gets()
    );
    let origin = stats(ips[0]).await;
    assert_eq!(origin.len(), 1);
    assert_eq!(origin[0]["origin"], true);
    assert_eq!(origin[0]["image_id"], image_id.as_str());
    // Receivers loaded every layer but the last ahead of the whole image (the archive read
    // from the registry's API puts the config first), and left no partial image behind:
    // each dockerd has exactly the builder's image.
    for (ip, d) in ips[1..NODES - 1].iter().zip(&dockerds[1..NODES - 1]) {
        let receiver = stats(*ip).await;
        assert_eq!(
            receiver[0]["layers_loaded_ahead"],
            LAYERS - 1,
            "{receiver:?}"
        );
        let all = d.run_cli(&["images", "-a", "-q", "--no-trunc"]).unwrap();
        let ids: Vec<&str> = all.split_whitespace().collect();
        assert_eq!(ids, [image_id.as_str()], "images left on {ip}");
    }

    // 2. The same push again: the registry notifies again; nothing is pulled twice.
    builder.run_cli(&["push", &reference]).unwrap();
    let metrics_addr = SocketAddr::from((ips[0], API_PORT));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The repeated notification has arrived once the HTTP counters show a second POST.
        let m = http::request(metrics_addr, "GET", "/metrics", &[], b"")
            .await
            .unwrap()
            .text();
        let posts: u64 = m
            .lines()
            .filter(|l| {
                l.starts_with("imagewolf_http_requests_total")
                    && l.contains("registryNotifications")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if posts >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no second notification:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        registry.blob_get_count(),
        LAYERS + 1,
        "a repeated push was pulled again"
    );
    // One pull (from the registry's API) and one load: nothing was done twice.
    assert_eq!(stats(ips[0]).await[0]["attempts"], 2);

    // 3. A late agent catches up on what it missed.
    let last = NODES - 1;
    agents.push(start_agent(
        &cluster,
        last,
        &dockerds[last],
        dir.path(),
        &hub_flag,
    ));
    wait_loaded_everywhere(
        &[(ips[last], &dockerds[last])],
        &reference,
        Duration::from_secs(90),
        dir.path(),
    )
    .await;
    assert_eq!(dockerds[last].image_id(&reference).unwrap(), image_id);
    assert_eq!(
        registry.blob_get_count(),
        LAYERS + 1,
        "the late agent pulled from the registry"
    );

    // 4. A Docker Hub webhook for an image on "the hub" reaches every node too.
    let hub_ref = format!("{hub_addr}/team/web:2.0");
    let hub_id = build_test_image(&builder, &hub_ref, 2, 4).unwrap();
    builder.run_cli(&["push", &hub_ref]).unwrap();
    let hook = serde_json::json!({
        "push_data": {"pushed_at": 1764201600, "pusher": "team", "tag": "2.0"},
        "repository": {"repo_name": "team/web", "namespace": "team", "name": "web"},
    });
    let reply = http::request(
        SocketAddr::from((ips[1], API_PORT)),
        "POST",
        "/hubNotifications",
        &[("Content-Type", "application/json")],
        hook.to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let all: Vec<(Ipv4Addr, &Dockerd)> = ips.iter().copied().zip(dockerds.iter()).collect();
    wait_loaded_everywhere(&all, &hub_ref, Duration::from_secs(120), dir.path()).await;
    for d in &dockerds {
        assert_eq!(d.image_id(&hub_ref).unwrap(), hub_id);
    }
    assert_eq!(
        hub.blob_get_count(),
        2 + 1,
        "the hub registry served the image more than once"
    );

    drop(agents);
    drop(dockerds);
}

/// `/stats` of `ip`'s agent for the image pushed as `reference`.
async fn image_stats(ip: Ipv4Addr, reference: &str) -> serde_json::Value {
    agent_api::image_record(SocketAddr::from((ip, API_PORT)), reference)
        .await
        .unwrap_or_else(|| panic!("{ip} has no record of {reference}"))
}

/// The registry-native path (`--distribution blobs`) on a real cluster: the everyday update
/// moves only its new layer, every dockerd keeps the registry's digests, and what the
/// orchestrator does next (a pull by digest, a pull of a related image) fetches nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_moves_only_its_new_layer_and_nodes_keep_the_registry_digests() {
    require_root_and_tools().unwrap_or_else(|e| panic!("{e}"));
    const NODES: usize = 4;
    const LAYER_MIB: usize = 8;
    let dir = TempDir::new("cluster-blobs").unwrap();
    let cluster = ClusterBuilder {
        nodes: NODES,
        host_links: true,
        ..Default::default()
    }
    .build()
    .unwrap();
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
    .unwrap();
    // A registry nobody hears from: what an ordinary `docker pull` afterwards talks to.
    let quiet_addr = format!("{bridge}:{}", free_port().unwrap());
    let quiet = Registry::start(&quiet_addr).unwrap();
    // dockerd runs in the root namespace, the agent in the node's: the endpoint listens on
    // the node's host-local link (loopback on a real host), which dockerd must be told is
    // plain http.
    let insecure = [registry_addr.as_str(), quiet_addr.as_str(), HOST_LINKS_CIDR];
    let builder = Dockerd::start("builder", &insecure).unwrap();
    let dockerds: Vec<Dockerd> = (0..NODES)
        .map(|i| Dockerd::start(&format!("node{i}"), &insecure).unwrap())
        .collect();
    let endpoints: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("{}:5055", n.local_ip.expect("host links")))
        .collect();
    let _agents: Vec<ChildGuard> = (0..NODES)
        .map(|i| {
            let flags = [
                "--distribution",
                "blobs",
                "--endpoint-listen",
                endpoints[i].as_str(),
            ];
            start_agent(&cluster, i, &dockerds[i], dir.path(), &flags)
        })
        .collect();
    let all: Vec<(Ipv4Addr, &Dockerd)> = ips.iter().copied().zip(dockerds.iter()).collect();
    let repo_digest = |d: &Dockerd, reference: &str| {
        d.run_cli(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            reference,
        ])
        .unwrap()
    };

    // 1. v1, three layers: every node has it, from one registry read.
    let v1 = format!("{registry_addr}/test/app:v1");
    let v1_id = build_test_image(&builder, &v1, LAYERS, LAYER_MIB).unwrap();
    builder.run_cli(&["push", &v1]).unwrap();
    let v1_digest = builder.repo_digest(&v1).unwrap();
    wait_loaded_everywhere(&all, &v1, Duration::from_secs(120), dir.path()).await;
    assert_eq!(
        registry.blob_get_count(),
        LAYERS + 1,
        "{:?}",
        registry.blob_gets()
    );
    for d in &dockerds {
        assert_eq!(d.image_id(&v1).unwrap(), v1_id);
        let digests = repo_digest(d, &v1);
        assert!(
            digests.contains(&format!("{registry_addr}/test/app@{v1_digest}")),
            "dockerd lacks the registry's digest of v1: {digests}"
        );
        assert!(
            !digests.contains(":5055/"),
            "the endpoint's name was left: {digests}"
        );
    }

    // 2. The everyday update: v2 = v1 + one 1 MiB layer. Only that layer and the new config
    //    move: the registry serves two blobs, and no receiver downloads more than about them.
    let v2 = format!("{registry_addr}/test/app:v2");
    let v2_id = extend_test_image(&builder, &v1, &v2, 1).unwrap();
    let pushed = Instant::now();
    builder.run_cli(&["push", &v2]).unwrap();
    let v2_digest = builder.repo_digest(&v2).unwrap();
    wait_loaded_everywhere(&all, &v2, Duration::from_secs(120), dir.path()).await;
    eprintln!(
        "update (1 MiB on {} MiB): push -> loaded on {NODES} nodes in {:.2} s",
        LAYERS * LAYER_MIB,
        pushed.elapsed().as_secs_f64()
    );
    assert_eq!(
        registry.blob_get_count(),
        LAYERS + 1 + 2,
        "v2 read more than its new layer and config from the registry: {:?}",
        registry.blob_gets()
    );
    for (i, (ip, d)) in all.iter().enumerate() {
        assert_eq!(d.image_id(&v2).unwrap(), v2_id);
        let digests = repo_digest(d, &v2);
        assert!(
            digests.contains(&format!("{registry_addr}/test/app@{v2_digest}")),
            "node {i} lacks the registry's digest of v2: {digests}"
        );
        let s = image_stats(*ip, &v2).await;
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
            // Endgame may fetch a few blocks twice; v1's 24 MiB must not move again.
            assert!(
                down <= needed * 3 / 2,
                "node {i} received {down} bytes for {needed} bytes of new blobs: {s}"
            );
        }
    }

    // 3. The same image pushed under another tag: nothing moves, every node gets the name.
    let latest = format!("{registry_addr}/test/app:latest");
    builder.run_cli(&["tag", &v2, &latest]).unwrap();
    let before = registry.blob_get_count();
    builder.run_cli(&["push", &latest]).unwrap();
    wait_loaded_everywhere(&all, &latest, Duration::from_secs(60), dir.path()).await;
    for d in &dockerds {
        assert_eq!(d.image_id(&latest).unwrap(), v2_id);
    }
    assert_eq!(registry.blob_get_count(), before, "a new tag moved blobs");

    // 4. What the orchestrator does next. A pull by the registry's digest fetches no blob.
    let before = registry.blob_get_count();
    dockerds[1]
        .run_cli(&["pull", &format!("{registry_addr}/test/app@{v2_digest}")])
        .unwrap();
    assert_eq!(
        registry.blob_get_count(),
        before,
        "a pull by digest fetched blobs"
    );
    // An ordinary pull of a related image (v1 + another layer) from a registry ImageWolf
    // never heard of fetches only that layer and its config: dockerd knows v1's layers by
    // their registry digests.
    builder
        .run_cli(&["tag", &v1, &format!("{quiet_addr}/test/app:v1")])
        .unwrap();
    let v3 = format!("{quiet_addr}/test/app:v3");
    extend_test_image(&builder, &v1, &v3, 1).unwrap();
    builder.run_cli(&["push", &v3]).unwrap();
    let pushed_blobs = quiet.blob_get_count();
    dockerds[2].run_cli(&["pull", &v3]).unwrap();
    assert_eq!(
        quiet.blob_get_count() - pushed_blobs,
        2,
        "an ordinary pull of v1 + one layer fetched {:?}",
        quiet.blob_gets()
    );
}
