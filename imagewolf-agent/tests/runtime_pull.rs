//! Runtimes pulling an image from the agent's registry endpoint
//! ([`ImageLoader::pull_from_endpoint`]), with real parts: two Debian `docker-registry`
//! (distribution 2.8) on 127.0.0.1, UPSTREAM (the real registry) and ENDPOINT (a stand-in
//! for the agent's endpoint: it speaks the same API), a builder `dockerd`, a fresh "node"
//! `dockerd`, and a private `containerd`. The registries' access logs count the blobs each
//! one served: the point of the design is that the node's runtime gets the layers from the
//! endpoint and still knows them by their registry digests, so a later ordinary pull of a
//! related image from UPSTREAM fetches only what is new.
//!
//! Needs root, `docker.io`, `docker-registry`, `containerd` and `skopeo`; without them the
//! tests fail with the install command, they never skip.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Instant;

use imagewolf::containerd::Containerd as ContainerdProcess;
use imagewolf::docker::{build_and_push, free_port, start_daemons, Dockerd, Registry};
use imagewolf::{require_tool, TempDir};
use imagewolf_agent::containerd::Containerd;
use imagewolf_agent::docker::Docker;
use imagewolf_agent::image::ImageRef;
use imagewolf_agent::loader::ImageLoader;

const REPO: &str = "imagewolf/rp";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies `repo:tag` from one registry to the other blob for blob, manifest unchanged.
fn copy_image(from: &Registry, to: &Registry, tag: &str) {
    let skopeo = require_tool("skopeo", "skopeo");
    run(Command::new(skopeo)
        .args(["copy", "--all", "--preserve-digests", "--quiet"])
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{}/{REPO}:{tag}", from.addr()))
        .arg(format!("docker://{}/{REPO}:{tag}", to.addr())));
}

/// The raw manifest of `repo:tag` (one manifest GET, no blob).
fn manifest(registry: &Registry, tag: &str) -> serde_json::Value {
    let skopeo = require_tool("skopeo", "skopeo");
    let raw = run(Command::new(skopeo)
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{REPO}:{tag}", registry.addr())));
    serde_json::from_str(&raw).unwrap()
}

/// The manifest digest `repo:tag` has in `registry` (from the Docker-Content-Digest of a
/// manifest HEAD-equivalent: skopeo's digest of the raw manifest).
fn manifest_digest(registry: &Registry, tag: &str) -> String {
    let skopeo = require_tool("skopeo", "skopeo");
    let out = run(Command::new(skopeo)
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{}/{REPO}:{tag}", registry.addr())));
    out.trim().to_owned()
}

/// Config digest and layer digests of a schema2 / OCI manifest.
fn blobs_of(manifest: &serde_json::Value) -> (String, Vec<String>) {
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    (config, layers)
}

/// Blob GETs answered 200 since the log had `since` blob GETs, by digest.
fn blob_gets_since(registry: &Registry, since: usize) -> Vec<String> {
    registry
        .blob_gets()
        .into_iter()
        .skip(since)
        .filter(|g| g.status == 200)
        .map(|g| g.digest)
        .collect()
}

/// Manifest requests (GET or HEAD) in the access log, as `METHOD URI`: the access-log
/// lines only (Apache format), so each request counts once.
fn manifest_requests(registry: &Registry) -> Vec<String> {
    fs::read_to_string(registry.log_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("] \"")?;
            let (request, _) = rest.split_once('"')?;
            let mut parts = request.split(' ');
            let (method, uri) = (parts.next()?, parts.next()?);
            (matches!(method, "GET" | "HEAD") && uri.contains("/manifests/"))
                .then(|| format!("{method} {uri}"))
        })
        .collect()
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Builds `UPSTREAM/REPO:to` as `UPSTREAM/REPO:from` plus one layer of `mib` MiB random
/// bytes, and pushes it (the layers of `from` are in UPSTREAM already: only the new layer
/// and the config go up).
fn build_on_top(builder: &Dockerd, upstream: &Registry, from: &str, to: &str, mib: usize) {
    let ctx = builder.dir().join("ctx-on-top");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("extra.bin"),
        imagewolf::random_payload(mib << 20, 99),
    )
    .unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/{REPO}:{from}\nCOPY extra.bin /extra.bin\n",
            upstream.addr()
        ),
    )
    .unwrap();
    let reference = format!("{}/{REPO}:{to}", upstream.addr());
    builder
        .run_cli(&["build", "-q", "-t", &reference, &ctx.to_string_lossy()])
        .unwrap();
    builder.run_cli(&["push", &reference]).unwrap();
    fs::remove_dir_all(&ctx).unwrap();
}

/// One inspect of `reference` on the node's engine, with the CLI.
fn inspect(node: &Dockerd, reference: &str) -> serde_json::Value {
    let out = node.run_cli(&["image", "inspect", reference]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The Docker node: pull through the endpoint, named as pushed, RepoDigest from UPSTREAM,
/// no blob from UPSTREAM; then an ordinary pull of v1 + one layer fetches only the new
/// layer and the config from UPSTREAM.
#[tokio::test(flavor = "multi_thread")]
async fn docker_pulls_from_the_endpoint_and_keeps_registry_digests() {
    require_tool("skopeo", "skopeo");
    let t0 = Instant::now();
    let upstream = Registry::start_local()
        .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let endpoint = Registry::start_local().unwrap();
    let [builder, node]: [Dockerd; 2] = start_daemons(&["rpbuild", "rpnode"])
        .try_into()
        .ok()
        .unwrap();

    let v1 = format!("{}/{REPO}:v1", upstream.addr());
    let (id1, d1) = build_and_push(&builder, &v1, 2, 2);
    copy_image(&upstream, &endpoint, "v1");
    assert_eq!(
        manifest_digest(&endpoint, "v1"),
        d1,
        "the endpoint must hold the same manifest"
    );
    let (config1, layers1) = blobs_of(&manifest(&endpoint, "v1"));
    assert_eq!(config1, id1);
    assert_eq!(layers1.len(), 2);
    eprintln!("setup done in {:?}", t0.elapsed());

    let docker = Docker::connect(&node.docker_host()).await.unwrap();
    assert!(docker.pulls_from_endpoint());
    let image = ImageRef {
        registry: upstream.addr().to_owned(),
        repository: REPO.to_owned(),
        tag: Some("v1".into()),
        digest: Some(d1.clone()),
    };

    // 1. Through the endpoint.
    let (up0, ep0) = (upstream.blob_gets().len(), endpoint.blob_gets().len());
    let up_manifests0 = manifest_requests(&upstream).len();
    let t = Instant::now();
    docker
        .pull_from_endpoint(endpoint.addr(), &image, &d1)
        .await
        .unwrap_or_else(|e| panic!("pull_from_endpoint: {e}\n{}", node.log_tail()));
    eprintln!("pull_from_endpoint took {:?}", t.elapsed());
    let up_gets = blob_gets_since(&upstream, up0);
    let ep_gets = blob_gets_since(&endpoint, ep0);
    eprintln!(
        "blob GETs: upstream {} {up_gets:?}, endpoint {} {ep_gets:?}",
        up_gets.len(),
        ep_gets.len()
    );
    assert!(up_gets.is_empty(), "UPSTREAM served blobs: {up_gets:?}");
    let mut expected: Vec<String> = layers1.clone();
    expected.push(config1.clone());
    assert_eq!(
        sorted(&ep_gets),
        sorted(&expected),
        "ENDPOINT serves each layer and the config once"
    );
    let info = inspect(&node, &v1);
    assert_eq!(info["Id"].as_str().unwrap(), id1);
    let tags = strings(&info["RepoTags"]);
    let digests = strings(&info["RepoDigests"]);
    eprintln!("RepoTags {tags:?} RepoDigests {digests:?}");
    assert_eq!(tags, vec![v1.clone()]);
    assert_eq!(digests, vec![format!("{}/{REPO}@{d1}", upstream.addr())]);
    assert!(
        !node.has_image(&format!("{}/{REPO}@{d1}", endpoint.addr())),
        "the endpoint's name is gone"
    );
    // UPSTREAM saw the manifest request of step 2 and nothing else.
    let seen = manifest_requests(&upstream);
    let seen = &seen[up_manifests0..];
    eprintln!("UPSTREAM manifest requests during pull_from_endpoint: {seen:?}");
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|r| r.ends_with(&format!("/v2/{REPO}/manifests/{d1}"))),
        "{seen:?}"
    );

    // 2. THE property: v2 = v1 + one layer, an ordinary `docker pull` from UPSTREAM.
    build_on_top(&builder, &upstream, "v1", "v2", 1);
    let (config2, layers2) = blobs_of(&manifest(&upstream, "v2"));
    assert_eq!(layers2.len(), 3);
    assert_eq!(layers2[..2], layers1[..]);
    let up0 = upstream.blob_gets().len();
    node.run_cli(&["pull", &format!("{}/{REPO}:v2", upstream.addr())])
        .unwrap();
    let up_gets = blob_gets_since(&upstream, up0);
    eprintln!(
        "docker pull v2: upstream served {} blobs {up_gets:?}",
        up_gets.len()
    );
    assert_eq!(
        sorted(&up_gets),
        sorted(&[layers2[2].clone(), config2]),
        "only the new layer and the config come from UPSTREAM"
    );

    // 3. Pulling v1 by digest from UPSTREAM: nothing to fetch.
    let up0 = upstream.blob_gets().len();
    node.run_cli(&["pull", &format!("{}/{REPO}@{d1}", upstream.addr())])
        .unwrap();
    assert!(blob_gets_since(&upstream, up0).is_empty());

    // 4. A registry that cannot confirm the digest: the image is still there and tagged,
    // without a RepoDigest, and the endpoint's name is gone.
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    let unreachable = ImageRef {
        registry: dead.clone(),
        tag: Some("moved".into()),
        ..image.clone()
    };
    let ep0 = endpoint.blob_gets().len();
    docker
        .pull_from_endpoint(endpoint.addr(), &unreachable, &d1)
        .await
        .unwrap();
    assert!(
        blob_gets_since(&endpoint, ep0).is_empty(),
        "the node had every blob"
    );
    let info = inspect(&node, &format!("{dead}/{REPO}:moved"));
    assert_eq!(info["Id"].as_str().unwrap(), id1);
    assert!(!strings(&info["RepoDigests"])
        .iter()
        .any(|d| d.starts_with(&dead)));
    assert!(!strings(&info["RepoTags"])
        .iter()
        .chain(strings(&info["RepoDigests"]).iter())
        .any(|n| n.starts_with(endpoint.addr())));

    // 5. Failures say what failed.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let e = docker
        .pull_from_endpoint(endpoint.addr(), &image, &unknown)
        .await
        .unwrap_err();
    eprintln!("unknown manifest: {e}");
    assert!(e.message.contains("agent's registry endpoint"), "{e}");
    assert!(
        e.message.contains("manifest unknown") || e.message.contains("not found"),
        "{e}"
    );
    let e = docker
        .pull_from_endpoint(&dead, &image, &d1)
        .await
        .unwrap_err();
    eprintln!("endpoint down: {e}");
    assert!(e.message.contains("connection refused"), "{e}");
    let e = docker
        .pull_from_endpoint("127.0.0.1:1/../x", &image, &d1)
        .await
        .unwrap_err();
    assert!(e.message.contains("invalid"), "{e}");
    eprintln!("docker test done in {:?}", t0.elapsed());
}

/// The containerd node: pull through the endpoint (hosts dir), named as pushed with the
/// registry's manifest digest, no blob from UPSTREAM; with the endpoint down, containerd
/// falls back to UPSTREAM by itself.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_from_the_endpoint_with_registry_digests() {
    require_tool("skopeo", "skopeo");
    let t0 = Instant::now();
    let upstream = Registry::start_local()
        .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let endpoint = Registry::start_local().unwrap();
    let builder = Dockerd::start("rpctrb", &[])
        .unwrap_or_else(|e| panic!("dockerd did not start (apt-get install -y docker.io): {e}"));
    let node = ContainerdProcess::start("rp-ctrd")
        .unwrap_or_else(|e| panic!("containerd did not start: {e}"));
    let v1 = format!("{}/{REPO}:v1", upstream.addr());
    let (id1, d1) = build_and_push(&builder, &v1, 2, 2);
    copy_image(&upstream, &endpoint, "v1");
    assert_eq!(manifest_digest(&endpoint, "v1"), d1);
    let (config1, layers1) = blobs_of(&manifest(&endpoint, "v1"));
    drop(builder);
    eprintln!("setup done in {:?}", t0.elapsed());

    let work = TempDir::new("rp-hosts").unwrap();
    let hosts = work.path().join("hosts");
    let loader = Containerd::connect(node.loader_config())
        .await
        .unwrap()
        .with_hosts_dir(hosts.clone());
    assert!(loader.pulls_from_endpoint());
    let image = ImageRef {
        registry: upstream.addr().to_owned(),
        repository: REPO.to_owned(),
        tag: Some("v1".into()),
        digest: Some(d1.clone()),
    };
    let (up0, ep0) = (upstream.blob_gets().len(), endpoint.blob_gets().len());
    let up_manifests0 = manifest_requests(&upstream).len();
    let t = Instant::now();
    loader
        .pull_from_endpoint(endpoint.addr(), &image, &d1)
        .await
        .unwrap_or_else(|e| panic!("pull_from_endpoint: {e}\n{}", node.log_tail()));
    eprintln!("pull_from_endpoint took {:?}", t.elapsed());
    let hosts_toml = fs::read_to_string(hosts.join(upstream.addr()).join("hosts.toml")).unwrap();
    eprintln!("hosts.toml:\n{hosts_toml}");
    let up_gets = blob_gets_since(&upstream, up0);
    let ep_gets = blob_gets_since(&endpoint, ep0);
    eprintln!(
        "blob GETs: upstream {} {up_gets:?}, endpoint {} {ep_gets:?}",
        up_gets.len(),
        ep_gets.len()
    );
    assert!(up_gets.is_empty(), "UPSTREAM served blobs: {up_gets:?}");
    assert_eq!(
        manifest_requests(&upstream).len(),
        up_manifests0,
        "containerd resolved through the endpoint"
    );
    let mut expected = layers1.clone();
    expected.push(config1);
    assert_eq!(sorted(&ep_gets), sorted(&expected));
    // containerd tells the mirror which registry it stands for.
    let requests = manifest_requests(&endpoint);
    eprintln!("ENDPOINT manifest requests: {requests:?}");
    let ns = [
        format!("ns={}", upstream.addr()),
        format!("ns={}", upstream.addr().replace(':', "%3A")),
    ];
    assert!(
        requests
            .iter()
            .any(|l| ns.iter().any(|ns| l.contains(ns.as_str()))),
        "no ?{} in the endpoint's log: {requests:?}",
        ns[0]
    );

    let listing = node.images();
    for (r, d, line) in &listing {
        eprintln!("ctr images ls: {line}");
        let _ = (r, d);
    }
    assert!(
        listing.iter().any(|(r, d, _)| *r == v1 && *d == d1),
        "{v1} with {d1} not listed: {listing:?}"
    );
    let by_digest = format!("{}/{REPO}@{d1}", upstream.addr());
    assert!(listing.iter().any(|(r, d, _)| *r == by_digest && *d == d1));
    assert!(
        !listing
            .iter()
            .any(|(r, _, _)| r.starts_with(endpoint.addr())),
        "no image named after the endpoint"
    );
    assert!(loader.has_image(&id1).await.unwrap());
    let snapshots = node.ctr(&["snapshots", "ls"]).unwrap();
    assert!(snapshots.lines().count() > 2, "not unpacked:\n{snapshots}");

    // The endpoint down: containerd falls back to the registry in `server` by itself.
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    node.ctr(&["images", "rm", "--sync", &v1, &by_digest])
        .unwrap();
    let up_manifests0 = manifest_requests(&upstream).len();
    loader
        .pull_from_endpoint(&dead, &image, &d1)
        .await
        .unwrap_or_else(|e| panic!("fallback pull: {e}\n{}", node.log_tail()));
    assert!(manifest_requests(&upstream).len() > up_manifests0);
    assert!(node.images().iter().any(|(r, d, _)| *r == v1 && *d == d1));

    // An unknown digest fails with containerd's words.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let e = loader
        .pull_from_endpoint(endpoint.addr(), &image, &unknown)
        .await
        .unwrap_err();
    eprintln!("unknown manifest: {e}");
    assert!(e.message.contains("ctr images pull failed"), "{e}");
    eprintln!("containerd test done in {:?}", t0.elapsed());
}
