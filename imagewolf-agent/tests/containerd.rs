//! The containerd loader against a real containerd (Debian's `containerd` 1.6) started by the
//! test with a config of its own, and a tarball made by a real `dockerd` with `docker save`.
//! Needs root, `containerd` (with `ctr`) and `docker.io`; without them the test fails with
//! the install command, it never skips.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imagewolf::docker::{
    build_test_image, free_port, Dockerd, NotificationEndpoint, Registry, RegistryOptions,
};
use imagewolf::{ChildGuard, TempDir};
use imagewolf_agent::containerd::{Containerd, ContainerdConfig};
use imagewolf_agent::loader::ImageLoader;

/// A private containerd, stopped by pid (SIGTERM, then SIGKILL) and its directory removed on
/// drop.
struct ContainerdProcess {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    // Dropped after `Drop::drop` stopped the daemon and unmounted what it left.
    dir: TempDir,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn require(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} not installed: apt-get install -y containerd (this test does not skip)")
    })
}

impl ContainerdProcess {
    /// Starts containerd; `cri` keeps the CRI plugin (what a Kubernetes node runs) or
    /// disables it (then nothing records images under their id, and `has_image` must find
    /// the id through the manifest).
    fn start(tag: &str, cri: bool) -> io::Result<Self> {
        assert_eq!(euid(), 0, "containerd needs root (run the tests as root)");
        let containerd = require("containerd");
        require("ctr");
        let dir = TempDir::new(tag)?;
        let socket = dir.path().join("containerd.sock");
        let log = dir.path().join("containerd.log");
        let disabled = if cri {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n{disabled}\
             [grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
        );
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, config)?;
        let log_file = fs::File::create(&log)?;
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        let mut c = ContainerdProcess {
            child,
            socket,
            log,
            dir,
        };
        let start = Instant::now();
        loop {
            if c.ctr(&["version"]).is_ok() {
                eprintln!("containerd (cri: {cri}) ready in {:?}", start.elapsed());
                return Ok(c);
            }
            if let Some(status) = c.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "containerd exited with {status}: {}",
                    c.log_tail()
                )));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(io::Error::other(format!(
                    "containerd not ready after 30 s: {}",
                    c.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        text.get(start..).unwrap_or(&text).to_owned()
    }

    /// `ctr -a SOCKET -n k8s.io ARGS`: stdout, or an error with stderr.
    fn ctr(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new("ctr")
            .arg("--connect-timeout")
            .arg("2s")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ctr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn loader(&self) -> ContainerdConfig {
        ContainerdConfig {
            ctr: PathBuf::from("ctr"),
            address: self.socket.clone(),
            namespace: "k8s.io".into(),
        }
    }
}

impl Drop for ContainerdProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Snapshot mounts left by an interrupted unpack would keep the directory busy.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

/// The effective uid, from /proc (no libc dependency).
fn euid() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// The flow a node goes through, against one containerd: not there -> import -> listed by
/// `ctr` in k8s.io -> there; and failures carry ctr's words.
async fn check_loader(node: &ContainerdProcess, tarball: &Path, reference: &str, image_id: &str) {
    let loader = Containerd::connect(node.loader())
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
        let node = ContainerdProcess::start(if cri { "ctrd-cri" } else { "ctrd-bare" }, cri)
            .unwrap_or_else(|e| panic!("containerd did not start: {e}"));
        check_loader(&node, &tarball, reference, &image_id).await;
    }

    // Failures: ctr's own words come back as a LoaderError.
    let node = ContainerdProcess::start("ctrd-bad", false).unwrap();
    let loader = Containerd::connect(node.loader()).await.unwrap();
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
        address: node.dir.path().join("nobody.sock"),
        ..node.loader()
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
        &RegistryOptions {
            notifications: vec![NotificationEndpoint {
                url: format!("http://127.0.0.1:{api0}/registryNotifications"),
                headers: Vec::new(),
            }],
        },
    )
    .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let dockerd = Dockerd::start("ctrde2e", &[])
        .unwrap_or_else(|e| panic!("dockerd did not start (apt-get install -y docker.io): {e}"));
    let node = ContainerdProcess::start("ctrd-node", true).unwrap();
    let peers = format!("static:127.0.0.1:{api0},127.0.0.1:{api1}");
    let _docker_agent = start_agent(
        "docker-agent",
        api0,
        bt0,
        dir.path(),
        &["--peers", &peers, "--docker-host", &dockerd.docker_host()],
    );
    let address = node.socket.to_string_lossy().into_owned();
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
    let loader = Containerd::connect(node.loader()).await.unwrap();
    assert!(loader.has_image(&image_id).await.unwrap());
}
