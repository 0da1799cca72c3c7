//! A real containerd (Debian's 1.6) for end-to-end tests, started and torn down by the test
//! itself.
//!
//! [`Containerd`] runs one `containerd` with a config of its own: its root, state, gRPC and
//! ttrpc sockets and log all in a directory of its own, so it never meets the host's
//! containerd (nor dockerd's managed one) and several run side by side. It runs in the root
//! namespace ([`Containerd::start`], [`Containerd::start_without_cri`]) or inside a cluster
//! node's network namespace ([`Containerd::start_in`]); either way its socket is a path, so
//! [`Containerd::ctr`] talks to it from here. Images go to the `k8s.io` namespace, where the
//! CRI plugin (what a Kubernetes node runs) and the agent's loader look.
//!
//! The rules of [`crate::docker`] hold here too: the daemon is stopped by its own pid only
//! (SIGTERM, then SIGKILL after a grace period; never by name), mounts left under its
//! directory (snapshots of an interrupted unpack) are lazily unmounted before the directory
//! is removed, and all of it happens in `Drop`, so a failing test cleans up too. Missing
//! binaries or a non-root user are errors with the install command: tests fail, never skip.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imagewolf_agent::containerd::ContainerdConfig;

use crate::cluster::Node;
use crate::docker::{
    log_tail, other, require_binary, require_root, stop_child, unmount_under, wait_ready,
};
use crate::TempDir;

/// How long containerd may take to answer `ctr version` (about a second here).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the log [`Containerd::log_tail`] returns.
const LOG_TAIL_BYTES: usize = 3000;
/// The containerd namespace the tests (and the kubelet, and the agent) use.
pub const NAMESPACE: &str = "k8s.io";

/// Checks that this process can run [`Containerd`]: root, and `containerd` and `ctr`
/// installed. Tests call this first and fail (never skip) on error; the message says what
/// to install.
pub fn require_containerd() -> Result<(), String> {
    require_root("containerd")
        .and_then(|()| require_binary("containerd", "containerd"))
        .and_then(|_| require_binary("ctr", "containerd"))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `ctr --connect-timeout 2s -a SOCKET -n k8s.io ARGS`: its stdout, or an error with its
/// stderr (and stdout, where some of ctr's words end up).
pub fn ctr(socket: &Path, args: &[&str]) -> io::Result<String> {
    let out = Command::new("ctr")
        .arg("--connect-timeout")
        .arg("2s")
        .arg("-a")
        .arg(socket)
        .args(["-n", NAMESPACE])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut msg = format!(
            "ctr {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if !stdout.trim().is_empty() {
            msg.push('\n');
            msg.push_str(stdout.trim());
        }
        return Err(other(msg));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private containerd, stopped (by pid) and its directory removed on drop.
pub struct Containerd {
    child: Child,
    name: String,
    socket: PathBuf,
    log: PathBuf,
    // Declared last: dropped (removed) after `Drop::drop` has stopped the daemon and
    // unmounted what it left.
    dir: TempDir,
}

impl Containerd {
    /// Starts a containerd in the root namespace with the CRI plugin on (a Kubernetes
    /// node), its directory named after `tag`, and waits until `ctr version` answers.
    pub fn start(tag: &str) -> io::Result<Self> {
        Self::spawn(tag, true, None)
    }

    /// Like [`Containerd::start`] with the CRI plugin disabled (a bare containerd: nothing
    /// records images under their id, a loader must find the id through the manifest).
    pub fn start_without_cri(tag: &str) -> io::Result<Self> {
        Self::spawn(tag, false, None)
    }

    /// Like [`Containerd::start`], inside `node`'s network namespace (with [`Node::command`]:
    /// `ip netns exec` execs containerd, so the pid is containerd's own). `ip netns exec`
    /// also gives it a mount namespace of its own (slave to ours): its snapshot mounts die
    /// with it.
    pub fn start_in(node: &Node, tag: &str) -> io::Result<Self> {
        Self::spawn(tag, true, Some(node))
    }

    fn spawn(tag: &str, cri: bool, node: Option<&Node>) -> io::Result<Self> {
        require_root("containerd")?;
        let containerd = require_binary("containerd", "containerd")?;
        require_binary("ctr", "containerd")?;
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
        let mut cmd = match node {
            Some(node) => node.command(&containerd),
            None => Command::new(&containerd),
        };
        let name = match node {
            Some(node) => format!("containerd {tag} (cri: {cri}, in {})", node.name),
            None => format!("containerd {tag} (cri: {cri})"),
        };
        let child = cmd
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| other(format!("starting {name}: {e}")))?;
        let mut c = Containerd {
            child,
            name,
            socket,
            log,
            dir,
        };
        let took = c.wait_started()?;
        eprintln!("{} ready in {took:?}", c.name);
        Ok(c)
    }

    /// Waits until the daemon just spawned answers `ctr version`.
    fn wait_started(&mut self) -> io::Result<Duration> {
        let (name, socket, log) = (&self.name, &self.socket, &self.log);
        let child = &mut self.child;
        wait_ready(
            name,
            START_TIMEOUT,
            || match child.try_wait()? {
                Some(status) => Err(other(format!(
                    "{name} exited with {status}; log tail:\n{}",
                    log_tail(log, LOG_TAIL_BYTES)
                ))),
                None => Ok(()),
            },
            || ctr(socket, &["version"]).is_ok(),
        )
        .map_err(|e| other(format!("{e}; log tail:\n{}", log_tail(log, LOG_TAIL_BYTES))))
    }

    /// Its gRPC socket (`--containerd-address`, `ctr -a`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its own directory (config, root, state, sockets, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, LOG_TAIL_BYTES)
    }

    /// `ctr -a SOCKET -n k8s.io ARGS` (see [`ctr`]).
    pub fn ctr(&self, args: &[&str]) -> io::Result<String> {
        ctr(&self.socket, args)
    }

    /// `ctr images ls` in k8s.io as (reference, target digest, whole line); empty when ctr
    /// fails.
    pub fn images(&self) -> Vec<(String, String, String)> {
        self.ctr(&["images", "ls"])
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let r = f.next()?.to_owned();
                let d = f.nth(1)?.to_owned();
                Some((r, d, l.to_owned()))
            })
            .collect()
    }

    /// The target digest of `reference` in k8s.io, if listed.
    pub fn digest_of(&self, reference: &str) -> Option<String> {
        self.images()
            .into_iter()
            .find(|(r, _, _)| r == reference)
            .map(|(_, d, _)| d)
    }

    /// The agent's loader configuration for this containerd (`ctr` from `PATH`, k8s.io).
    pub fn loader_config(&self) -> ContainerdConfig {
        ContainerdConfig {
            ctr: PathBuf::from("ctr"),
            address: self.socket.clone(),
            namespace: NAMESPACE.into(),
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        unmount_under(self.dir.path());
        // `dir` is removed when the field drops, right after this.
    }
}
