//! The registry-native path (`--distribution blobs`) with real agents in one process on
//! loopback (`--runtime none`: an image lands in the node's store, served by its endpoint)
//! and Debian's real registry: every node gets exactly its platform out of a multi-platform
//! index, what the store already has never travels again, and a node's endpoint serves what
//! it received, checked against the registry's digests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use imagewolf::agent_api::{notify_push, wait_for_state};
use imagewolf::docker::Registry;
use imagewolf::http;
use imagewolf::local_agents::{stored_blobs, HeldPort, LocalAgents};
use imagewolf::oci::{self, Blob, Image};
use imagewolf::TempDir;
use imagewolf_agent::registry::manifest::Platform;
use imagewolf_agent::registry::HostPolicy;

/// How long an agent may take to reach a state.
const DEADLINE: Duration = Duration::from_secs(60);

/// The `manifest.json` entry of the one archive in an agent's `loaded/` directory.
fn loaded_archive(data_dir: &Path) -> serde_json::Value {
    let files: Vec<_> = std::fs::read_dir(data_dir.join("loaded"))
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(files.len(), 1, "one archive loaded");
    let mut tar = tar::Archive::new(std::fs::File::open(files[0].path()).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == "manifest.json" {
            let list: Vec<serde_json::Value> = serde_json::from_reader(&mut entry).unwrap();
            return list[0].clone();
        }
    }
    panic!("no manifest.json in the loaded archive");
}

/// Tracker announces an agent has served (`GET /announce`), from its `/metrics`.
async fn announces_served(api: SocketAddr) -> u64 {
    let reply = http::request(api, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics");
    reply
        .text()
        .lines()
        .filter(|l| {
            l.starts_with("imagewolf_http_requests_total{") && l.contains("path=\"/announce\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_gets_exactly_its_platform_and_shared_blobs_travel_once() {
    let registry = Registry::start_local().unwrap_or_else(|e| {
        panic!("the registry-native tests need Debian's docker-registry (apt-get install docker-registry): {e}")
    });
    let reg_addr: SocketAddr = registry.addr().parse().unwrap();
    let repo = "team/multi";
    // Three platforms sharing a base layer, each with a layer of its own.
    let base = Blob::layer("base.bin", 3 << 20, 1);
    let platforms = [
        ("linux", "amd64", None),
        ("linux", "arm64", None),
        ("linux", "arm", Some("v7")),
    ];
    let images: Vec<Image> = platforms
        .iter()
        .enumerate()
        .map(|(i, (os, arch, variant))| {
            let own = Blob::layer(&format!("{arch}.bin"), 1 << 20, 10 + i as u64);
            Image::new(os, arch, *variant, vec![base.clone(), own])
        })
        .collect();
    for image in &images {
        oci::push_image(reg_addr, repo, image).await.unwrap();
    }
    let entries: Vec<_> = images
        .iter()
        .zip(&platforms)
        .map(|(image, (os, arch, variant))| (image, *os, *arch, *variant))
        .collect();
    let (index, index_digest) = oci::index(&entries);
    oci::push_manifest(reg_addr, repo, "v1", oci::OCI_INDEX, &index)
        .await
        .unwrap();
    let pushed_gets = registry.blob_get_count();

    // Node 0 (amd64) hears the push and spreads every platform of the cluster; node 1 is
    // amd64 too, node 2 arm64, node 3 arm/v7.
    let dir = TempDir::new("blob-flow").unwrap();
    // The test registry is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    let policy = HostPolicy::naming([registry.addr()]);
    let source: std::sync::Arc<dyn imagewolf_agent::source::ImageSource> = std::sync::Arc::new(
        imagewolf_agent::registry::RegistrySource::new().with_policy(policy.clone()),
    );
    // One more agent (amd64) joins at the end: the others list its address from the start.
    // Until then its port closes every connection at once (a reserved listener nobody
    // accepts on would hold every announcement to it until its timeout; a closed port could
    // be taken by another socket before the agent starts).
    let (mut cluster, late) = LocalAgents::start(
        dir.path().to_path_buf(),
        vec![Some(source), None, None, None],
        1,
    )
    .await
    .unwrap();
    cluster.registry_policy = policy;
    let late = HeldPort::hold(late.into_iter().next().unwrap());
    let node_platforms: Vec<Platform> =
        ["linux/amd64", "linux/amd64", "linux/arm64", "linux/arm/v7"]
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect();
    let mut endpoints = Vec::new();
    for (i, p) in node_platforms.iter().enumerate() {
        endpoints.push(
            cluster
                .enable_blobs(i, 1 << 30, *p, &node_platforms)
                .await
                .unwrap(),
        );
    }
    let reference = format!("{}/{repo}:v1", registry.addr());
    notify_push(
        cluster.agents[0].api,
        registry.addr(),
        repo,
        "v1",
        &index_digest,
        "e1",
    )
    .await;
    for agent in &cluster.agents {
        wait_for_state(agent.api, &reference, "loaded", DEADLINE).await;
    }

    // The blobs' torrents name trackers spread over the agents (rendezvous hashing of the
    // digest), not all the origin: announces were served by more than one agent. A blob
    // whose tracker is the agent that has not started yet (its port refuses) is tracked by
    // the origin, the torrents' second tier: the flow above completed either way.
    let mut served = Vec::new();
    for agent in &cluster.agents {
        served.push(announces_served(agent.api).await);
    }
    assert!(
        served.iter().filter(|&&n| n > 0).count() >= 2,
        "announces served per agent: {served:?}"
    );
    println!("announces served per agent: {served:?}");

    // The registry served each distinct blob once, to the origin: 3 configs, the shared
    // base and 3 platform layers.
    assert_eq!(
        registry.blob_get_count() - pushed_gets,
        7,
        "{:?}",
        registry.blob_gets()
    );
    let image_of = |p: &Platform| match p.architecture {
        "amd64" => &images[0],
        "arm64" => &images[1],
        _ => &images[2],
    };
    for (i, (agent, p)) in cluster
        .agents
        .iter()
        .zip(&node_platforms)
        .enumerate()
        .skip(1)
    {
        let mut expected: Vec<String> = image_of(p)
            .blobs()
            .iter()
            .map(|b| b.digest.clone())
            .collect();
        expected.push(index_digest.clone());
        expected.push(image_of(p).digest.clone());
        expected.sort();
        assert_eq!(
            stored_blobs(&agent.data_dir),
            expected,
            "node {i} ({p}) holds other blobs"
        );
        let record = wait_for_state(agent.api, &reference, "loaded", DEADLINE).await;
        assert_eq!(record["blobs"]["total"], 3, "{record}");
        // `--runtime none` cannot pull from the endpoint: the fallback loaded a `docker save`
        // archive built from the store, naming this platform's config and layers.
        let archive = loaded_archive(&agent.data_dir);
        assert_eq!(
            archive["Config"],
            format!("{}.json", &image_of(p).config.digest["sha256:".len()..])
        );
        assert_eq!(archive["RepoTags"][0], reference.as_str());
        assert_eq!(archive["Layers"].as_array().unwrap().len(), 2);
        assert_eq!(record["image_id"], image_of(p).config.digest.as_str());
    }

    // A node's endpoint serves what it received: the index by tag (as the runtime resolves
    // it), its platform's manifest and blobs, byte for byte.
    let arm = endpoints[3];
    let reply = http::request(arm, "GET", &format!("/v2/{repo}/manifests/v1"), &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, index);
    for blob in images[2].blobs() {
        let reply = http::request(
            arm,
            "GET",
            &format!("/v2/{repo}/blobs/{}", blob.digest),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
        assert!(reply.body == blob.bytes, "blob {} differs", blob.digest);
    }
    let other = &images[1].layers[1];
    let reply = http::request(
        arm,
        "GET",
        &format!("/v2/{repo}/blobs/{}", other.digest),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 404, "an arm/v7 node serves an arm64 layer");

    // v2 of the arm64 image shares the base and its own layer: nothing but the new layer and
    // config moves, and only nodes of that platform fetch it.
    let extra = Blob::layer("v2.bin", 1 << 20, 99);
    let v2 = Image::new(
        "linux",
        "arm64",
        None,
        vec![base.clone(), images[1].layers[1].clone(), extra],
    );
    oci::push_image(reg_addr, repo, &v2).await.unwrap();
    oci::push_manifest(reg_addr, repo, "v2", oci::OCI_MANIFEST, &v2.manifest)
        .await
        .unwrap();
    let before = registry.blob_get_count();
    notify_push(
        cluster.agents[0].api,
        registry.addr(),
        repo,
        "v2",
        &v2.digest,
        "e2",
    )
    .await;
    let v2_ref = format!("{}/{repo}:v2", registry.addr());
    let arm64 = wait_for_state(cluster.agents[2].api, &v2_ref, "loaded", DEADLINE).await;
    assert_eq!(arm64["blobs"]["present"], 2, "{arm64}");
    assert_eq!(
        arm64["blobs"]["bytes_needed"].as_u64().unwrap(),
        (v2.config.bytes.len() + v2.layers[2].bytes.len()) as u64
    );
    assert_eq!(
        registry.blob_get_count() - before,
        2,
        "the origin had the base and the arm64 layer already: {:?}",
        registry.blob_gets()
    );
    // A node that joins late (a scale-out) catches up on both from the others' listings
    // (newest first, both at once): it takes its platform out of v1's index, and gets v2,
    // without the registry.
    let before = registry.blob_get_count();
    cluster
        .start_late(late.release().await, None)
        .await
        .unwrap();
    cluster
        .enable_blobs(4, 1 << 30, node_platforms[0], &[])
        .await
        .unwrap();
    let joiner = cluster.agents[4].api;
    let v1_late = wait_for_state(joiner, &reference, "loaded", DEADLINE).await;
    assert_eq!(v1_late["image_id"], images[0].config.digest.as_str());
    let v2_late = wait_for_state(joiner, &v2_ref, "loaded", DEADLINE).await;
    assert_eq!(v2_late["blobs"]["total"], 4, "{v2_late}");
    assert_eq!(v2_late["image_id"], v2.config.digest.as_str());
    assert_eq!(
        registry.blob_get_count(),
        before,
        "the late node read the registry"
    );
    cluster.shutdown().await;
}

/// A blob's torrents name the agent rendezvous hashing picks as their tracker, and the
/// origin as the second tier: when that agent is down (its port refuses every connection),
/// the blob's peers announce to the origin and the image still reaches every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_whose_tracker_agent_is_down_is_tracked_by_the_origin() {
    let registry = Registry::start_local().unwrap_or_else(|e| {
        panic!("the registry-native tests need Debian's docker-registry (apt-get install docker-registry): {e}")
    });
    let reg_addr: SocketAddr = registry.addr().parse().unwrap();
    let dir = TempDir::new("blob-tracker-down").unwrap();
    let policy = HostPolicy::naming([registry.addr()]);
    let source: std::sync::Arc<dyn imagewolf_agent::source::ImageSource> = std::sync::Arc::new(
        imagewolf_agent::registry::RegistrySource::new().with_policy(policy.clone()),
    );
    let (mut cluster, down) =
        LocalAgents::start(dir.path().to_path_buf(), vec![Some(source), None, None], 1)
            .await
            .unwrap();
    cluster.registry_policy = policy;
    let down = down.into_iter().next().unwrap();
    let down_addr = down.local_addr().unwrap();
    let _down = HeldPort::hold(down);
    let amd64 = Platform::parse("linux/amd64").unwrap();
    for i in 0..cluster.agents.len() {
        cluster
            .enable_blobs(i, 1 << 30, amd64, &[amd64])
            .await
            .unwrap();
    }
    // A layer whose tracker is the agent that is down (about one seed in four).
    let mut agents: Vec<SocketAddr> = cluster.agents.iter().map(|a| a.api).collect();
    agents.push(down_addr);
    let layer = (0..200)
        .map(|seed| Blob::layer("layer.bin", 2 << 20, 500 + seed))
        .find(|b| {
            imagewolf_agent::distributor::placement::tracker_for(&b.digest, &agents)
                == Some(down_addr)
        })
        .expect("some layer's tracker is the agent that is down");
    let image = Image::new("linux", "amd64", None, vec![layer]);
    oci::push_image(reg_addr, "team/down", &image)
        .await
        .unwrap();
    oci::push_manifest(
        reg_addr,
        "team/down",
        "v1",
        oci::OCI_MANIFEST,
        &image.manifest,
    )
    .await
    .unwrap();
    let reference = format!("{}/team/down:v1", registry.addr());
    let before = announces_served(cluster.agents[0].api).await;
    notify_push(
        cluster.agents[0].api,
        registry.addr(),
        "team/down",
        "v1",
        &image.digest,
        "e1",
    )
    .await;
    for agent in &cluster.agents {
        wait_for_state(agent.api, &reference, "loaded", DEADLINE).await;
    }
    // The origin tracked the layer's chunks for the others (they announced to it).
    let served = announces_served(cluster.agents[0].api).await - before;
    assert!(served >= 2, "the origin served {served} announces");
}
