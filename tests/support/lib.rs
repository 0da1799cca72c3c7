//! Shared support for the project's end-to-end tests, examples and benchmarks: temporary
//! directories and child processes that clean up after themselves (even when a test fails),
//! deterministic payloads, and the reference BitTorrent client used for interoperability.

pub mod agent_api;
pub mod clients;
pub mod cluster;
pub mod containerd;
pub mod docker;

pub mod generated_image;
pub mod http;
pub mod local_agents;
pub mod mem_registry;
pub mod mirror_nodes;
pub mod oci;
pub mod secure_registry;
pub mod token_issuer;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{RngExt, SeedableRng};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    pub fn new(tag: &str) -> io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "imagewolf-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its pid, never by name) and reaped on drop.
pub struct ChildGuard {
    /// The process.
    pub child: Child,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd`, naming it `name` in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<Self> {
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {name}: {e}")))?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its status, or an
    /// error if it is still running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} still running after {timeout:?}", self.name),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `len` pseudo-random bytes from `seed` (incompressible, reproducible).
pub fn random_payload(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

/// The Python that sees Debian's `python3-libtorrent` (the pyenv `python3` on PATH does not).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Checks that libtorrent's Python bindings are importable, with a message saying how to get
/// them when they are not. Tests call this and fail (never skip) on error.
pub fn require_libtorrent() -> Result<String, String> {
    let out = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import libtorrent; print(libtorrent.__version__)"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{SYSTEM_PYTHON} not runnable ({e}); install python3-libtorrent (apt-get install python3-libtorrent)"))?;
    if !out.status.success() {
        return Err(format!(
            "python3-libtorrent is missing: apt-get install python3-libtorrent ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The path of program `name` (on `PATH` or in the sbin directories); panics with the
/// install command (`apt-get install -y PACKAGE`) when it is missing: tests fail, never skip.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    docker::require_binary(name, package).unwrap_or_else(|e| panic!("{e}"))
}

/// The last `lines` lines of every `*.log` file directly in `dir`, each under a `--- PATH`
/// header: the agents' (and daemons') logs for a failure message.
pub fn log_tails(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        if entry.file_name().to_string_lossy().ends_with(".log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {}\n", entry.path().display()));
            out.extend(tail.into_iter().rev().map(|l| format!("{l}\n")));
        }
    }
    out
}

/// Path of a file shipped with the tests (e.g. the libtorrent driver script).
pub fn test_asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("assets")
        .join(name)
}

/// Path of a binary built from this workspace's examples (`cargo build --example NAME`
/// puts it next to the test binaries).
pub fn example_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // deps/
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join(name)
}

/// Builds the root package's examples `names` (a no-op when they are up to date), so a test
/// that runs them never picks up a stale binary.
pub fn build_examples(names: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.arg("build").current_dir(env!("CARGO_MANIFEST_DIR"));
    for name in names {
        cmd.args(["--example", name]);
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building the examples {names:?} failed");
}

/// A loopback [`imagewolf_bt::Session`] seeding `payload` (held in memory) as a one-file
/// torrent named `name`: a stand-in for "another agent" or a seed in flow tests.
pub async fn seed_in_memory(
    name: &str,
    payload: Vec<u8>,
) -> (
    imagewolf_bt::Session,
    imagewolf_bt::metainfo::Metainfo,
    imagewolf_bt::TorrentHandle,
) {
    use imagewolf_bt::storage::MemoryStorage;
    use imagewolf_bt::{AddTorrent, Session, SessionConfig, StartFrom};
    let meta = imagewolf_bt::metainfo::TorrentBuilder::new(name)
        .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())
        .expect("building a torrent from memory");
    let session = Session::new(SessionConfig {
        listen_addr: "127.0.0.1:0".parse().expect("literal address"),
        ..SessionConfig::default()
    })
    .await
    .expect("binding a loopback session");
    let handle = session
        .add_torrent(AddTorrent::new(
            meta.clone(),
            std::sync::Arc::new(MemoryStorage::from_vec(payload)),
            StartFrom::Complete,
        ))
        .await
        .expect("adding the torrent");
    (session, meta, handle)
}

/// Raises this process's soft limit of open files to its hard limit if the soft one is
/// below `need` (with `prlimit(1)`, on our own pid); children started afterwards inherit it.
/// Fails clearly if even the hard limit is too low.
pub fn ensure_fd_limit(need: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let (soft, hard) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            let mut v = l["Max open files".len()..].split_whitespace();
            let parse = |s: Option<&str>| match s {
                Some("unlimited") => Some(u64::MAX),
                s => s?.parse().ok(),
            };
            Some((parse(v.next())?, parse(v.next())?))
        })
        .expect("reading RLIMIT_NOFILE from /proc/self/limits");
    if soft >= need {
        return;
    }
    assert!(
        hard >= need,
        "this test needs {need} descriptors, the hard limit is {hard}"
    );
    let hard = if hard == u64::MAX {
        "unlimited".into()
    } else {
        hard.to_string()
    };
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("running prlimit");
    assert!(
        status.success(),
        "prlimit could not raise RLIMIT_NOFILE to {hard}"
    );
}
