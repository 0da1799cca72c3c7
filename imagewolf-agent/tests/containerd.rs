//! The containerd loader against a real containerd (Debian's `containerd` 1.6) started by the
//! test with a config of its own, and a tarball made by a real `dockerd` with `docker save`.
//! Needs root, `containerd` (with `ctr`) and `docker.io`; without them the test fails with
//! the install command, it never skips.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagewolf::containerd::Containerd as ContainerdProcess;
use imagewolf::docker::{build_test_image, free_port, Dockerd, Registry, RegistryOptions};
use imagewolf::{ChildGuard, TempDir};
use imagewolf_agent::containerd::{Containerd, ContainerdConfig};
use imagewolf_agent::loader::ImageLoader;

/// The flow a node goes through, against one containerd: not there -> import -> listed by
/// `ctr` in k8s.io -> there; and failures carry ctr's words.
async fn check_loader(node: &ContainerdProcess, tarball: &Path, reference: &str, image_id: &str) {
    let loader = Containerd::connect(node.loader_config())
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}\n{}", node.log_tail()));
    assert!(!loader.has_image(image_id).await.unwrap());

    let t = Instant::now();
    loader
        .load(tarball)
        .await
        .unwrap_or_else(|e| panic!("import failed: {e}\n{}", node.log_tail()));
    eprintln!("imported {reference} in {:?}", t.elapsed());

    let listing = node.ctr(&["images", "ls"]).unwrap();
    assert!(
        listing.lines().any(|l| l.starts_with(reference)),
        "ctr -n k8s.io images ls does not show {reference}:\n{listing}"
    );
    assert!(
        loader.has_image(image_id).await.unwrap(),
        "has_image({image_id}) false after import; images:\n{listing}\ncontent:\n{}",
        node.ctr(&["content", "ls"]).unwrap_or_default()
    );
    assert!(loader
        .image_refs()
        .await
        .unwrap()
        .iter()
        .any(|r| r == reference));
    let other_id = format!("sha256:{}", "0".repeat(64));
    assert!(!loader.has_image(&other_id).await.unwrap());
    // Importing again is harmless (a retried distribution does that).
    loader.load(tarball).await.unwrap();

    // The image was unpacked into the snapshotter: the kubelet can start it at once.
    let snapshots = node.ctr(&["snapshots", "ls"]).unwrap();
    assert!(
        snapshots.lines().count() > 1,
        "no snapshots after import:\n{snapshots}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_imports_docker_save_tarballs() {
    let dockerd = Dockerd::start("ctrd", &[])
        .unwrap_or_else(|e| panic!("dockerd did not start (apt-get install -y docker.io): {e}"));
    let reference = "127.0.0.1:5000/imagewolf/ctrd-app:v1";
    let image_id = build_test_image(&dockerd, reference, 3, 2)
        .unwrap_or_else(|e| panic!("building {reference}: {e}\n{}", dockerd.log_tail()));
    let work = TempDir::new("ctrd-tar").unwrap();
    let tarball = work.path().join("app.tar");
    dockerd
        .run_cli(&["save", "-o", &tarball.to_string_lossy(), reference])
        .unwrap();
    drop(dockerd);

    // A Kubernetes node (CRI plugin on) and a bare containerd (CRI off).
    for cri in [true, false] {
        let node = if cri {
            ContainerdProcess::start("ctrd-cri")
        } else {
            ContainerdProcess::start_without_cri("ctrd-bare")
        };
        let node = node.unwrap_or_else(|e| panic!("containerd did not start: {e}"));
        check_loader(&node, &tarball, reference, &image_id).await;
    }

    // Failures: ctr's own words come back as a LoaderError.
    let node = ContainerdProcess::start_without_cri("ctrd-bad").unwrap();
    let loader = Containerd::connect(node.loader_config()).await.unwrap();
    let corrupt = work.path().join("corrupt.tar");
    let bytes = fs::read(&tarball).unwrap();
    fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();
    let e = loader.load(&corrupt).await.unwrap_err();
    assert!(e.message.contains("ctr images import failed"), "{e}");
    // Where the cut lands decides ctr's words: inside a layer (a tar error) or before the
    // index it looks for (an unrecognized format).
    assert!(
        e.message.contains("unexpected EOF")
            || e.message.contains("tar")
            || e.message.contains("unrecognized image format"),
        "{e}"
    );
    let garbage = work.path().join("garbage.tar");
    fs::write(&garbage, imagewolf::random_payload(10_000, 7)).unwrap();
    let e = loader.load(&garbage).await.unwrap_err();
    assert!(e.message.contains("invalid tar header"), "{e}");
    let e = loader
        .load(&work.path().join("missing.tar"))
        .await
        .unwrap_err();
    assert!(e.message.contains("missing.tar"), "{e}");
    assert!(node.ctr(&["images", "ls", "-q"]).unwrap().trim().is_empty());

    // A socket nobody listens on fails at connect, in seconds.
    let t = Instant::now();
    let e = Containerd::connect(ContainerdConfig {
        address: node.dir().join("nobody.sock"),
        ..node.loader_config()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("nobody.sock"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");

/// Starts the agent binary on loopback with `args` after the common ones, logging to `log`.
fn start_agent(name: &str, api: u16, bt: u16, dir: &Path, args: &[&str]) -> ChildGuard {
    let log = fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(AGENT);
    // Every agent of the test cluster shares one secret (the agent refuses to start without).
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", "imagewolf-test-cluster-secret");
    cmd.args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--bt-listen", &format!("127.0.0.1:{bt}")])
        .args(["--advertise-addr", "127.0.0.1", "--resolve-seconds", "1"])
        // Two agents on this host: each its own registry endpoint port.
        .args(["--endpoint-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join(name))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let agent = ChildGuard::spawn(name, &mut cmd).unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} did not listen:\n{}",
            fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent
}

/// A mixed cluster as on Kubernetes with one Docker node: the registry notifies the Docker
/// node's agent, which pulls once and seeds; the agent started with `--runtime containerd`
/// downloads over BitTorrent and imports into containerd's k8s.io namespace.
#[tokio::test(flavor = "multi_thread")]
async fn agent_with_runtime_containerd_receives_a_pushed_image() {
    let dir = TempDir::new("ctrd-e2e").unwrap();
    let [api0, api1, bt0, bt1] = [(); 4].map(|_| free_port().unwrap());
    let registry = Registry::start_with(
        &format!("127.0.0.1:{}", free_port().unwrap()),
        &RegistryOptions::notifying(format!("http://127.0.0.1:{api0}/registryNotifications")),
    )
    .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let dockerd = Dockerd::start("ctrde2e", &[])
        .unwrap_or_else(|e| panic!("dockerd did not start (apt-get install -y docker.io): {e}"));
    let node = ContainerdProcess::start("ctrd-node").unwrap();
    let peers = format!("static:127.0.0.1:{api0},127.0.0.1:{api1}");
    // The registry is on 127.0.0.1, which a notification may name only when --allow does.
    let allow = format!("{}/**", registry.addr());
    let _docker_agent = start_agent(
        "docker-agent",
        api0,
        bt0,
        dir.path(),
        &[
            "--peers",
            &peers,
            "--docker-host",
            &dockerd.docker_host(),
            "--allow",
            &allow,
        ],
    );
    let address = node.socket().to_string_lossy().into_owned();
    let _containerd_agent = start_agent(
        "containerd-agent",
        api1,
        bt1,
        dir.path(),
        &[
            "--peers",
            &peers,
            "--runtime",
            "containerd",
            "--containerd-address",
            &address,
        ],
    );

    let reference = format!("{}/imagewolf/e2e:v1", registry.addr());
    let image_id = build_test_image(&dockerd, &reference, 2, 4).unwrap();
    dockerd.run_cli(&["push", &reference]).unwrap();
    let started = Instant::now();
    loop {
        let listing = node.ctr(&["images", "ls", "-q"]).unwrap();
        if listing.lines().any(|l| l.trim() == reference) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{reference} never reached containerd; images: {listing}\n{}\n{}",
            fs::read_to_string(dir.path().join("docker-agent.log")).unwrap_or_default(),
            fs::read_to_string(dir.path().join("containerd-agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "{reference} in containerd {:?} after the push",
        started.elapsed()
    );
    let loader = Containerd::connect(node.loader_config()).await.unwrap();
    assert!(loader.has_image(&image_id).await.unwrap());
}
