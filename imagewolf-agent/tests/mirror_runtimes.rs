//! Mirror mode (issue 16, "Proof") with real runtimes: images nobody announced, pulled by
//! containerd and dockerd through their node's agent, and pulled still when the agent is
//! gone. Everything is started by the tests and stopped by pid, also when they fail; they
//! fail loudly, never skip, without root, containerd, dockerd or docker-registry
//! (`scripts/test` installs them).
//!
//! - `containerd_nodes_cold_pull_through_their_agents_and_fall_back_when_they_stop`: a
//!   netns cluster of containerd nodes, each with a `hosts.toml` naming its agent's endpoint
//!   as a mirror of Debian's docker-registry (no notification configured: the agents never
//!   hear of the image), all pulling at once with `ctr images pull --hosts-dir`.
//! - `dockerd_pulls_hub_images_through_its_agent_and_falls_back_to_the_hub_when_it_stops`:
//!   a dockerd with `--registry-mirror http://127.0.0.1:PORT` (its agent's endpoint) pulling
//!   short names (`mwa:1`, i.e. `docker.io/library/mwa:1`); the agent's `--hub-registry` is
//!   a TLS docker-registry with a certificate for `registry-1.docker.io` from a test CA, and
//!   dockerd's own way to Docker Hub (`HTTPS_PROXY` to a CONNECT proxy of the test, the CA in
//!   `SSL_CERT_FILE`) ends at that same registry: no traffic leaves the machine.
//!
//! What the runtimes do when the agent cannot serve a pull (observed here, Debian's
//! containerd 1.6.20 and dockerd 20.10.24):
//! - containerd: whether the `[host]` mirror refuses the connection (agent down) or answers
//!   404 (an image outside `--allow`), the pull goes on to `server` by itself, in the same
//!   `ctr images pull`; the manifest digest is the same.
//! - dockerd 20.10: `registry-mirrors` takes an `http://` URL on 127.0.0.0/8 without any
//!   `--insecure-registry`. With the mirror answering 404 (outside `--allow`) or refusing
//!   connections (agent down), the pull falls back to Docker Hub (`registry-1.docker.io`,
//!   the hard-wired hub endpoint; `--hub-registry` is the agent's notion only) in the same
//!   `docker pull`, and succeeds where the hub is reachable. With the agent down its log says `Error getting v2 registry: Get "http://127.0.0.1:PORT/v2/":
//!   ... connection refused`, then `Attempting next endpoint for pull after error`; the
//!   fallback costs no measurable time (both pulls took well under a second here).

use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagewolf::cluster::{require_root_and_tools, ClusterBuilder};
use imagewolf::containerd::{require_containerd, Containerd as ContainerdProcess};
use imagewolf::docker::{access_log, free_port, Access, Dockerd, DockerdOptions, Registry};
use imagewolf::mirror_nodes::{
    ctr_pull_in, mirror_counts, start_containerd_agent, write_hosts_toml, ConnectProxy,
    MirrorCounts, CLUSTER_SECRET, NODE_API_PORT,
};
use imagewolf::oci::{self, Blob, Image, OCI_MANIFEST};
use imagewolf::secure_registry::{
    push_image_to_storage, RegistryAuth, SecureOptions, SecureRegistry, TestCa,
};
use imagewolf::{http, log_tails, require_tool, ChildGuard, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");
/// The agents' endpoint in each node's namespace (the default `--endpoint-listen`).
const ENDPOINT_PORT: u16 = 5055;
const NODES: usize = 4;
const LAYERS: usize = 4;
const LAYER_BYTES: usize = 4 << 20;
/// How long one pull (all nodes at once) may take.
const PULL_BOUND: Duration = Duration::from_secs(180);

/// An image of `layers` uncompressed layers of `len` random bytes (distinct per `seed`).
fn image(seed: u64, layers: usize, len: usize) -> Image {
    let layers = (0..layers as u64)
        .map(|i| Blob::layer(&format!("data/l{seed}-{i}.bin"), len, seed * 100 + i))
        .collect();
    Image::new("linux", "amd64", None, layers)
}

/// Pushes `image` to `registry` as `repository:tag` (blobs, then the manifest under its
/// digest and the tag). No notification goes anywhere.
async fn push(registry: &str, repository: &str, tag: &str, image: &Image) {
    let addr: SocketAddr = registry.parse().unwrap();
    oci::push_image(addr, repository, image)
        .await
        .unwrap_or_else(|e| panic!("pushing {repository}: {e}"));
    oci::push_manifest(addr, repository, tag, OCI_MANIFEST, &image.manifest)
        .await
        .unwrap_or_else(|e| panic!("tagging {repository}:{tag}: {e}"));
}

/// Blob GETs answered 200 in `log`, for `digest`.
fn blob_gets<'a>(log: &'a [Access], digest: &str) -> Vec<&'a Access> {
    log.iter()
        .filter(|a| {
            a.method == "GET"
                && a.status == 200
                && a.path.split('?').next().unwrap_or("").ends_with(digest)
                && a.path.contains("/blobs/")
        })
        .collect()
}

/// `ctr ... content get DIGEST` from containerd at `socket`: the bytes it holds.
fn content_bytes(socket: &Path, digest: &str) -> Vec<u8> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .args(["-n", "k8s.io", "content", "get", digest])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr content get {digest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Node `i`'s containerd has `reference` under the registry's manifest digest, complete and
/// unpacked (`ctr images check`), and holds every blob byte for byte.
fn assert_node_has(i: usize, c: &ContainerdProcess, reference: &str, image: &Image) {
    assert_eq!(
        c.digest_of(reference).as_deref(),
        Some(image.digest.as_str()),
        "node {i}: {:?}",
        c.images()
    );
    let check = c.ctr(&["images", "check"]).unwrap();
    let line = check
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("node {i}: {reference} not in ctr images check:\n{check}"));
    let counts = line
        .split("complete (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|r| r.split_once('/'))
        .unwrap_or_else(|| panic!("node {i}: {reference} not complete: {line}"));
    assert_eq!(counts.0, counts.1, "node {i}: {line}");
    assert!(
        line.split_whitespace().last() == Some("true"),
        "node {i}: {reference} not unpacked: {line}"
    );
    for blob in image.blobs() {
        assert!(
            content_bytes(c.socket(), &blob.digest) == blob.bytes,
            "node {i}: blob {} differs from what was pushed",
            blob.digest
        );
    }
}

/// Starts `ctr images pull` of `reference` on every node at once; waits for all. Returns
/// how long the slowest took; panics with the ctr outputs and the logs when one fails.
fn pull_everywhere(
    cluster: &imagewolf::cluster::Cluster,
    containerds: &[ContainerdProcess],
    hosts: &[std::path::PathBuf],
    reference: &str,
    dir: &Path,
) -> Duration {
    let started = Instant::now();
    let logs: Vec<_> = (0..containerds.len())
        .map(|i| dir.join(format!("ctr-pull{i}-{:08x}.out", rand::random::<u32>())))
        .collect();
    let mut pulls: Vec<ChildGuard> = containerds
        .iter()
        .enumerate()
        .map(|(i, c)| ctr_pull_in(cluster.node(i), c.socket(), &hosts[i], reference, &logs[i]))
        .collect::<Result<_, _>>()
        .unwrap();
    let mut failed = Vec::new();
    for (i, pull) in pulls.iter_mut().enumerate() {
        let bound = PULL_BOUND.saturating_sub(started.elapsed());
        match pull.wait_timeout(bound) {
            Ok(status) if status.success() => {}
            other => failed.push(format!(
                "node {i}: {other:?}\n{}",
                fs::read_to_string(&logs[i]).unwrap_or_default()
            )),
        }
    }
    let took = started.elapsed();
    if !failed.is_empty() {
        let mut detail = failed.join("\n");
        for (i, c) in containerds.iter().enumerate() {
            detail.push_str(&format!("\n--- containerd of node {i}\n{}", c.log_tail()));
        }
        panic!("pulling {reference}:\n{detail}\n{}", log_tails(dir, 30));
    }
    took
}

/// A containerd cluster pulls an image nobody announced through its agents, all nodes at
/// once: the registry serves each blob once (to one agent), every node gets the registry's
/// manifest digest and the pushed bytes, and containerd never talks to the registry. An
/// image the agents may not read (outside `--allow`) pulls through containerd's fallback to
/// the `server` of its hosts.toml, the agents reading nothing; and with every agent killed,
/// the next image pulls through that fallback too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_nodes_cold_pull_through_their_agents_and_fall_back_when_they_stop() {
    require_root_and_tools().unwrap_or_else(|e| panic!("{e}"));
    require_containerd().unwrap_or_else(|e| panic!("{e}"));
    require_tool("docker-registry", "docker-registry");
    let dir = TempDir::new("mirror-ctrd").unwrap();
    let cluster = ClusterBuilder::new(NODES).build().unwrap();
    let ips = cluster.node_ips();
    cluster.write_hosts("imagewolf", &ips).unwrap();
    let registry_addr = format!("{}:{}", cluster.bridge_ip(), free_port().unwrap());
    let registry = Registry::start(&registry_addr)
        .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let containerds: Vec<ContainerdProcess> = (0..NODES)
        .map(|i| {
            ContainerdProcess::start_in(cluster.node(i), &format!("mirror-ctrd{i}"))
                .unwrap_or_else(|e| panic!("containerd did not start: {e}"))
        })
        .collect();
    // The agents may read `cold/*` only (step 2 pulls something else).
    let allow = format!("{registry_addr}/cold/**");
    let agent_flags = ["--allow", &allow, "--insecure-registry", &registry_addr];
    let mut agents: Vec<ChildGuard> = (0..NODES)
        .map(|i| {
            start_containerd_agent(
                Path::new(AGENT),
                &cluster,
                i,
                containerds[i].socket(),
                dir.path(),
                &agent_flags,
            )
        })
        .collect();
    for (i, node) in cluster.nodes().iter().enumerate() {
        node.wait_listening(ENDPOINT_PORT, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("node {i}'s endpoint: {e}\n{}", log_tails(dir.path(), 25)));
    }
    // What a node's setup (or the kubelet's `config_path`) holds: the agent in front of the
    // registry.
    let mirror = format!("http://127.0.0.1:{ENDPOINT_PORT}");
    let hosts: Vec<_> = (0..NODES)
        .map(|i| {
            let hosts = dir.path().join(format!("hosts{i}"));
            write_hosts_toml(&hosts, &registry_addr, &mirror).unwrap();
            hosts
        })
        .collect();

    // 1. A cold pull on every node at once, of an image the agents never heard of.
    let v1 = image(1, LAYERS, LAYER_BYTES);
    push(&registry_addr, "cold/app", "v1", &v1).await;
    let before = registry.accesses().len();
    let reference = format!("{registry_addr}/cold/app:v1");
    let took = pull_everywhere(&cluster, &containerds, &hosts, &reference, dir.path());
    eprintln!(
        "cold pull of {} MiB ({LAYERS} layers) on {NODES} containerd nodes at once through their agents: {:.2} s",
        (LAYERS * LAYER_BYTES) >> 20,
        took.as_secs_f64()
    );
    let log: Vec<Access> = registry.accesses().split_off(before);
    for blob in v1.blobs() {
        let gets = blob_gets(&log, &blob.digest);
        assert_eq!(
            gets.len(),
            1,
            "the registry served {} {} times for {NODES} nodes: {gets:?}",
            blob.digest,
            gets.len()
        );
        assert!(
            ips.iter().any(|ip| ip.to_string() == gets[0].client),
            "{gets:?}"
        );
    }
    let by_containerd: Vec<&Access> = log
        .iter()
        .filter(|a| a.agent.contains("containerd"))
        .collect();
    assert!(
        by_containerd.is_empty(),
        "containerd went to the registry although its mirror was up: {by_containerd:?}"
    );
    for (i, c) in containerds.iter().enumerate() {
        assert_node_has(i, c, &reference, &v1);
    }
    // The nodes' own counts: one upstream read per blob in the whole cluster, the rest over
    // the swarm, nothing fell back.
    let mut total = MirrorCounts::default();
    for (i, ip) in ips.iter().enumerate() {
        let m = mirror_counts(SocketAddr::from((*ip, NODE_API_PORT))).await;
        eprintln!("node {i}: {m:?}");
        assert!(m.manifests_upstream >= 1, "node {i}: {m:?}");
        total.blobs_upstream += m.blobs_upstream;
        total.blobs_from_peers += m.blobs_from_peers;
        total.peer_fallbacks += m.peer_fallbacks;
    }
    let blobs = v1.blobs().len() as u64;
    assert_eq!(total.blobs_upstream, blobs, "{total:?}");
    assert_eq!(
        total.blobs_from_peers,
        blobs * (NODES as u64 - 1),
        "{total:?}"
    );
    assert_eq!(total.peer_fallbacks, 0, "{total:?}");

    // 2. An image outside the agents' --allow, agents up: each mirror answers "unknown" at
    //    once and containerd goes on to the `server` of its hosts.toml by itself.
    let mut counts = Vec::new();
    for ip in &ips {
        counts.push(mirror_counts(SocketAddr::from((*ip, NODE_API_PORT))).await);
    }
    let other = image(3, 2, 1 << 20);
    push(&registry_addr, "other/app", "v1", &other).await;
    let before = registry.accesses().len();
    let reference = format!("{registry_addr}/other/app:v1");
    let took = pull_everywhere(&cluster, &containerds, &hosts, &reference, dir.path());
    eprintln!(
        "outside --allow, agents up: {NODES} nodes pulled through containerd's fallback in {:.2} s",
        took.as_secs_f64()
    );
    let log: Vec<Access> = registry.accesses().split_off(before);
    for blob in other.blobs() {
        assert_eq!(blob_gets(&log, &blob.digest).len(), NODES, "{log:?}");
    }
    let by_agents: Vec<&Access> = log
        .iter()
        .filter(|a| !a.agent.contains("containerd"))
        .collect();
    assert!(
        by_agents.is_empty(),
        "an agent read an image outside its --allow: {by_agents:?}"
    );
    for (i, (ip, c)) in ips.iter().zip(&containerds).enumerate() {
        assert_node_has(i, c, &reference, &other);
        let m = mirror_counts(SocketAddr::from((*ip, NODE_API_PORT))).await;
        let was = counts[i];
        assert_eq!(
            (m.manifests_upstream, m.blobs_upstream, m.blobs_from_peers),
            (
                was.manifests_upstream,
                was.blobs_upstream,
                was.blobs_from_peers
            ),
            "node {i}: {m:?}"
        );
    }

    // 3. Every agent killed (by pid): the next image pulls on every node all the same,
    //    containerd going to the `server` of its hosts.toml.
    for agent in &mut agents {
        agent.child.kill().unwrap();
        agent.child.wait().unwrap();
    }
    for (i, node) in cluster.nodes().iter().enumerate() {
        let probe = node
            .probe_tcp(
                SocketAddrV4::new([127, 0, 0, 1].into(), ENDPOINT_PORT),
                Duration::from_secs(2),
            )
            .unwrap();
        assert!(
            matches!(probe, imagewolf::cluster::Probe::Refused),
            "node {i}: the endpoint still answers: {probe:?}"
        );
    }
    let v2 = image(2, LAYERS, LAYER_BYTES);
    push(&registry_addr, "cold/app", "v2", &v2).await;
    let before = registry.accesses().len();
    let reference = format!("{registry_addr}/cold/app:v2");
    let took = pull_everywhere(&cluster, &containerds, &hosts, &reference, dir.path());
    eprintln!(
        "agents down: the same pull on {NODES} nodes through containerd's fallback: {:.2} s",
        took.as_secs_f64()
    );
    let log: Vec<Access> = registry.accesses().split_off(before);
    for blob in v2.blobs() {
        let gets = blob_gets(&log, &blob.digest);
        assert_eq!(gets.len(), NODES, "{}: {gets:?}", blob.digest);
        assert!(
            gets.iter().all(|a| a.agent.contains("containerd")),
            "{gets:?}"
        );
    }
    for (i, c) in containerds.iter().enumerate() {
        assert_node_has(i, c, &reference, &v2);
    }
}

/// Polls `GET path` on `addr` until it answers 200, up to `bound` (the agent offers no
/// readiness event).
async fn wait_ok(addr: SocketAddr, path: &str, bound: Duration, logs: &Path) {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            http::request(addr, "GET", path, &[], b""),
        )
        .await
        {
            if r.status == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{addr}{path} not answering 200 after {bound:?}\n{}",
            log_tails(logs, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// dockerd with `registry-mirrors` at its agent pulls Docker Hub short names through it (the
/// agent reading its `--hub-registry`, a TLS registry standing in for Docker Hub); for an
/// image outside the agent's `--allow`, and with the agent killed, dockerd falls back to
/// Docker Hub itself and the pull still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_hub_images_through_its_agent_and_falls_back_to_the_hub_when_it_stops() {
    require_tool("dockerd", "docker.io");
    require_tool("docker", "docker.io");
    require_tool("docker-registry", "docker-registry");
    let work = TempDir::new("mirror-docker").unwrap();
    let logs = work.path().join("logs");
    fs::create_dir_all(&logs).unwrap();

    // "Docker Hub": a TLS registry whose certificate (from a CA of this test) names
    // registry-1.docker.io and 127.0.0.1, holding two images nobody announced.
    let ca = TestCa::new("imagewolf mirror test CA").unwrap();
    let ca_file = work.path().join("ca.pem");
    fs::write(&ca_file, ca.pem()).unwrap();
    let cert = ca.issue(&["registry-1.docker.io", "127.0.0.1"]).unwrap();
    let storage = work.path().join("hub");
    let (mwa, mwb, mwc) = (
        image(11, 3, 2 << 20),
        image(12, 3, 2 << 20),
        image(13, 3, 2 << 20),
    );
    push_image_to_storage(&storage, "library/mwa", "1", &mwa)
        .await
        .unwrap();
    push_image_to_storage(&storage, "library/mwb", "1", &mwb)
        .await
        .unwrap();
    push_image_to_storage(&storage, "library/mwc", "1", &mwc)
        .await
        .unwrap();
    let hub = SecureRegistry::start(
        &storage,
        &SecureOptions {
            tls: Some(cert),
            auth: RegistryAuth::None,
        },
    )
    .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let hub_addr: SocketAddr = hub.addr().parse().unwrap();
    // dockerd's way to the internet: only registry-1.docker.io:443, and it ends at `hub`.
    let proxy = ConnectProxy::start(vec![("registry-1.docker.io:443".into(), hub_addr)])
        .await
        .unwrap();

    let (api, endpoint, bt) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let node = Dockerd::start_with(
        "mirrornode",
        &DockerdOptions {
            args: vec![
                "--registry-mirror".into(),
                format!("http://127.0.0.1:{endpoint}"),
            ],
            env: vec![
                env("HTTPS_PROXY", &proxy.url()),
                env("https_proxy", &proxy.url()),
                env("NO_PROXY", "127.0.0.1"),
                env("no_proxy", "127.0.0.1"),
                env("SSL_CERT_FILE", &ca_file.to_string_lossy()),
            ],
            ..DockerdOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("dockerd did not start (apt-get install -y docker.io): {e}"));

    let log = fs::File::create(logs.join("agent.log")).unwrap();
    let mut cmd = Command::new(AGENT);
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", CLUSTER_SECRET)
        .args(["--peers", &format!("static:127.0.0.1:{api}")])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--bt-listen", &format!("127.0.0.1:{bt}")])
        .args(["--advertise-addr", "127.0.0.1"])
        .arg("--data-dir")
        .arg(work.path().join("agent"))
        .args(["--runtime", "docker", "--docker-host", &node.docker_host()])
        .args(["--distribution", "blobs"])
        .args(["--endpoint-listen", &format!("127.0.0.1:{endpoint}")])
        .args(["--hub-registry", hub.addr()])
        .arg("--registry-ca")
        .arg(&ca_file)
        // The agent may read `mwa` only (step 2 pulls another image).
        .args(["--allow", &format!("{}/library/mwa", hub.addr())])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut agent = ChildGuard::spawn("agent", &mut cmd).unwrap();
    let api_addr = SocketAddr::from(([127, 0, 0, 1], api));
    wait_ok(api_addr, "/healthz", Duration::from_secs(30), &logs).await;
    wait_ok(
        SocketAddr::from(([127, 0, 0, 1], endpoint)),
        "/v2/",
        Duration::from_secs(30),
        &logs,
    )
    .await;

    // 1. `docker pull mwa:1` (docker.io/library/mwa:1) goes through the agent.
    let t = Instant::now();
    node.run_cli(&["pull", "mwa:1"]).unwrap_or_else(|e| {
        panic!(
            "{e}\n--- dockerd\n{}\n{}",
            node.log_tail(),
            log_tails(&logs, 30)
        )
    });
    eprintln!(
        "docker pull mwa:1 through the agent: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(node.image_id("mwa:1").unwrap(), mwa.config.digest);
    assert_eq!(node.repo_digest("mwa:1").unwrap(), mwa.digest);
    let m = mirror_counts(api_addr).await;
    eprintln!("agent: {m:?}");
    assert!(m.manifests_upstream >= 1, "{m:?}");
    assert_eq!(m.blobs_upstream, mwa.blobs().len() as u64, "{m:?}");
    let served = access_log(hub.log_path());
    for blob in mwa.blobs() {
        let gets = blob_gets(&served, &blob.digest);
        assert_eq!(gets.len(), 1, "{}: {gets:?}", blob.digest);
        assert!(
            !gets[0].agent.starts_with("docker/"),
            "dockerd read a blob from the hub: {gets:?}"
        );
    }
    assert!(
        proxy.requests().is_empty(),
        "dockerd went to Docker Hub although its mirror answered: {:?}",
        proxy.requests()
    );

    // 2. An image outside the agent's --allow, agent up: the mirror answers "unknown" and
    //    dockerd falls back to Docker Hub by itself; the agent reads nothing.
    let t = Instant::now();
    node.run_cli(&["pull", "mwb:1"])
        .unwrap_or_else(|e| panic!("{e}\n--- dockerd\n{}", node.log_tail()));
    eprintln!(
        "docker pull mwb:1 outside --allow, agent up: {:.2} s, proxy saw {:?}",
        t.elapsed().as_secs_f64(),
        proxy.requests()
    );
    assert_hub_pull(&node, &hub, &proxy, 0, "mwb:1", &mwb);
    let after = mirror_counts(api_addr).await;
    assert_eq!(
        (after.manifests_upstream, after.blobs_upstream),
        (m.manifests_upstream, m.blobs_upstream),
        "the agent read mwb: {after:?}"
    );
    let connects = proxy.requests().len();

    // 3. The agent killed (by pid): dockerd falls back to Docker Hub by itself.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let t = Instant::now();
    let pulled = node.run_cli(&["pull", "mwc:1"]);
    let fallback = t.elapsed();
    let mirror_lines: Vec<String> = fs::read_to_string(node.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("mwc") || l.contains(&format!("127.0.0.1:{endpoint}")))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "docker pull mwc:1 with the agent down: {:?} in {:.2} s; dockerd said:\n{}",
        pulled.as_ref().map(|_| "ok"),
        fallback.as_secs_f64(),
        mirror_lines.join("\n")
    );
    pulled.unwrap_or_else(|e| panic!("{e}\n--- dockerd\n{}", node.log_tail()));
    assert_hub_pull(&node, &hub, &proxy, connects, "mwc:1", &mwc);
}

/// `reference` came from "Docker Hub": the proxy saw a `CONNECT registry-1.docker.io:443`
/// after its first `since` requests, the hub served each blob of `image` once, to dockerd,
/// and the node has the image under its id and manifest digest.
fn assert_hub_pull(
    node: &Dockerd,
    hub: &SecureRegistry,
    proxy: &ConnectProxy,
    since: usize,
    reference: &str,
    image: &Image,
) {
    let requests = proxy.requests();
    assert!(
        requests[since.min(requests.len())..]
            .iter()
            .any(|r| r == "CONNECT registry-1.docker.io:443"),
        "{reference}: dockerd did not go to Docker Hub: {requests:?}"
    );
    assert_eq!(node.image_id(reference).unwrap(), image.config.digest);
    assert_eq!(node.repo_digest(reference).unwrap(), image.digest);
    let served = access_log(hub.log_path());
    for blob in image.blobs() {
        let gets = blob_gets(&served, &blob.digest);
        assert_eq!(gets.len(), 1, "{reference} {}: {gets:?}", blob.digest);
        assert!(gets[0].agent.starts_with("docker/"), "{gets:?}");
    }
}
