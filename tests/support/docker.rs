//! Real Docker engines and a real registry for end-to-end tests, started and torn down by the
//! test itself.
//!
//! - [`Dockerd`]: one `dockerd` with all of its state (socket, data-root, exec-root, pidfile,
//!   log) in a directory of its own, so several run side by side as "nodes". Started with
//!   `--bridge=none --iptables=false --ip6tables=false`: a test daemon must not touch the host's
//!   firewall (a dockerd with iptables sets FORWARD to DROP and breaks bridged test namespaces).
//! - [`Registry`]: Debian's `docker-registry` (distribution 2.8) with filesystem storage in its
//!   own directory, optional push notifications, and its access log kept so a test can count
//!   the blob downloads it served ([`Registry::blob_get_count`]).
//! - [`build_test_image`]: a multi-layer image of random bytes made without any pull (no
//!   internet here): `docker import` of a tar for the base layer, `docker build` with one
//!   `COPY` per further layer.
//!
//! Rules kept here, because a leaked daemon breaks every later test run on the machine:
//! processes are stopped by their own pid only (SIGTERM, then SIGKILL after a grace period;
//! never by name), dockerd's managed containerd is stopped with it, leftover mounts under a
//! daemon's directory are lazily unmounted before the directory is removed, and all of it
//! happens in `Drop`, so a failing (panicking) test cleans up too. Missing binaries or a
//! non-root user are errors with the install command in the message: tests fail, never skip.
//!
//! Readiness is polled (`GET /_ping`, `GET /v2/`) with a deadline: neither daemon offers an
//! event to wait for.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// How long a daemon may take to answer its first ping (they take ~1-6 s here).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest unix socket path the kernel accepts is 107 bytes; dockerd's own sockets under
/// exec-root are ~40 bytes longer than our directory.
const MAX_DIR_LEN: usize = 60;

pub(crate) fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Finds `name` on `PATH` (or in the sbin directories, which a non-login root shell may lack).
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn require_binary(name: &str, package: &str) -> io::Result<PathBuf> {
    find_binary(name).ok_or_else(|| {
        other(format!(
            "{name} not installed: apt-get install -y {package} (tests need it; they do not skip)"
        ))
    })
}

/// Effective uid from /proc (no libc dependency here).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub(crate) fn require_root(what: &str) -> io::Result<()> {
    match effective_uid() {
        Some(0) => Ok(()),
        Some(uid) => Err(other(format!(
            "{what} needs root (running as uid {uid}); run the tests as root"
        ))),
        None => Err(other(format!(
            "{what}: cannot read the effective uid from /proc"
        ))),
    }
}

/// The last `max` bytes of a log file, for error messages.
/// `docker-registry serve CONFIG` from `cmd` (the binary, possibly inside a node's
/// namespace), both output streams to `log`.
pub(crate) fn spawn_registry(mut cmd: Command, config: &Path, log: &Path) -> io::Result<Child> {
    let log_file = File::create(log)?;
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| other(format!("starting docker-registry: {e}")))
}

/// Ok while the registry process still runs; its exit status and log tail once it is gone
/// (a start-up check for [`wait_ready`]).
pub(crate) fn registry_running(child: &mut Child, addr: &str, log: &Path) -> io::Result<()> {
    match child.try_wait()? {
        Some(status) => Err(other(format!(
            "docker-registry on {addr} exited with {status}; log tail:\n{}",
            log_tail(log, 4000)
        ))),
        None => Ok(()),
    }
}

pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// Sends `signal` (e.g. "TERM") to `pid` with the `kill` utility: by pid, never by name.
fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops `child`: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; always reaped.
pub(crate) fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal_pid(child.id(), "TERM");
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether process `pid` is alive and its command line mentions `marker` (guards against
/// signalling a recycled pid).
fn pid_matches(pid: u32, marker: &str) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains(marker),
        Err(_) => false,
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes blanks as \040; our directories have none, so no unescaping.
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found.dedup();
    found
}

/// Lazily unmounts (`umount -l`) every mount point at or below `dir`, deepest first: what a
/// daemon left there would keep its directory busy.
pub(crate) fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&mount)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A GET over HTTP/1.0 on an already connected stream; returns (status, body).
fn http_get<S: Read + Write>(mut stream: S, host: &str, path: &str) -> io::Result<(u16, String)> {
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| other(format!("not an HTTP response: {:?}", text.get(..80))))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `ready` every 100 ms until it returns true, `alive` reports the process gone, or
/// `timeout` passes.
pub(crate) fn wait_ready(
    what: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> io::Result<()>,
    mut ready: impl FnMut() -> bool,
) -> io::Result<Duration> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(start.elapsed());
        }
        alive()?;
        if start.elapsed() >= timeout {
            return Err(other(format!("{what} not ready after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Extra settings of a [`Dockerd`] ([`Dockerd::start_with`]).
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// `--insecure-registry` entries (`HOST:PORT`; 127.0.0.0/8 is always allowed).
    pub insecure_registries: Vec<String>,
    /// Further flags, e.g. `--registry-mirror http://127.0.0.1:5055`.
    pub args: Vec<String>,
    /// Environment of the daemon, e.g. `HTTPS_PROXY` or `SSL_CERT_FILE`.
    pub env: Vec<(String, String)>,
}

/// A private `dockerd`, stopped (by pid) and its directory removed on drop.
pub struct Dockerd {
    child: Child,
    name: String,
    socket: PathBuf,
    exec_root: PathBuf,
    log: PathBuf,
    options: DockerdOptions,
    startup: Duration,
    // Declared last: dropped (removed) after `Drop::drop` has stopped the daemon and
    // unmounted what it left.
    dir: TempDir,
}

impl Dockerd {
    /// Starts a dockerd named `name` (short: it goes into socket paths) that allows plain
    /// HTTP to each `insecure_registries` entry (`HOST:PORT`; 127.0.0.0/8 is always allowed),
    /// and waits until it answers `/_ping`.
    pub fn start(name: &str, insecure_registries: &[&str]) -> io::Result<Self> {
        Self::start_with(
            name,
            &DockerdOptions {
                insecure_registries: insecure_registries.iter().map(|r| r.to_string()).collect(),
                ..DockerdOptions::default()
            },
        )
    }

    /// Like [`Dockerd::start`], with `options` (extra flags such as `--registry-mirror`, and
    /// environment such as a proxy); [`Dockerd::restart`] uses them again.
    pub fn start_with(name: &str, options: &DockerdOptions) -> io::Result<Self> {
        require_root("dockerd")?;
        let dockerd = require_binary("dockerd", "docker.io")?;
        require_binary("docker", "docker.io")?;
        let short: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let dir = TempDir::new(&format!("d{short}"))?;
        if dir.path().as_os_str().len() > MAX_DIR_LEN {
            return Err(other(format!(
                "temp dir {} is too long for dockerd's unix sockets; set TMPDIR=/tmp",
                dir.path().display()
            )));
        }
        let socket = dir.path().join("docker.sock");
        let exec_root = dir.path().join("exec");
        let log = dir.path().join("dockerd.log");
        let child = spawn_dockerd(
            &dockerd,
            name,
            dir.path(),
            &socket,
            &exec_root,
            &log,
            options,
        )?;
        let mut d = Dockerd {
            child,
            name: name.to_owned(),
            socket,
            exec_root,
            log,
            options: options.clone(),
            startup: Duration::ZERO,
            dir,
        };
        d.startup = d.wait_started()?;
        Ok(d)
    }

    /// Waits until the daemon just spawned answers `/_ping`.
    fn wait_started(&mut self) -> io::Result<Duration> {
        let name = self.name.clone();
        let socket = self.socket.clone();
        let log = self.log.clone();
        let child = &mut self.child;
        wait_ready(
            &format!("dockerd {name}"),
            START_TIMEOUT,
            || match child.try_wait()? {
                Some(status) => Err(other(format!(
                    "dockerd {name} exited with {status} before answering; log tail:\n{}",
                    log_tail(&log, 4000)
                ))),
                None => Ok(()),
            },
            || ping_socket(&socket),
        )
        .map_err(|e| other(format!("{e}; log tail:\n{}", log_tail(&self.log, 4000))))
    }

    /// Stops the daemon (by pid: SIGTERM, SIGKILL after a grace period; its managed
    /// containerd too) but keeps its directory: socket path, data-root and images stay, so
    /// [`Dockerd::restart`] brings the same engine back. A node's dockerd being down.
    pub fn stop(&mut self) {
        self.stop_daemon();
    }

    /// Whether the daemon process is running (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts a stopped daemon again with the same socket, data-root and options, and waits
    /// until it answers `/_ping`. Its log goes on in the same file.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Err(other(format!("dockerd {} is still running", self.name)));
        }
        let dockerd = require_binary("dockerd", "docker.io")?;
        self.child = spawn_dockerd(
            &dockerd,
            &self.name,
            self.dir.path(),
            &self.socket,
            &self.exec_root,
            &self.log,
            &self.options,
        )?;
        self.startup = self.wait_started()?;
        Ok(())
    }

    /// Stops dockerd and, if it was SIGKILLed, its managed containerd.
    fn stop_daemon(&mut self) {
        // Read before stopping: dockerd removes the pidfile on a clean exit.
        let containerd_pid = fs::read_to_string(self.exec_root.join("containerd/containerd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        stop_child(&mut self.child);
        // A dockerd that had to be SIGKILLed leaves its managed containerd running: stop that
        // too, by pid, if it still is ours (its command line names our exec-root).
        if let Some(pid) = containerd_pid {
            let marker = self.exec_root.to_string_lossy().into_owned();
            if pid_matches(pid, &marker) {
                signal_pid(pid, "TERM");
                let deadline = Instant::now() + Duration::from_secs(5);
                while pid_matches(pid, &marker) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if pid_matches(pid, &marker) {
                    signal_pid(pid, "KILL");
                }
            }
        }
    }

    /// The daemon's API socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `unix:///...` for `DOCKER_HOST` / `-H`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's own directory (socket, data-root, exec-root, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The end of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 4000)
    }

    /// The process id of dockerd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long the daemon took to answer its first ping.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Whether it answers `/_ping` now.
    pub fn ping(&self) -> bool {
        ping_socket(&self.socket)
    }

    /// A `docker` CLI command aimed at this daemon (`-H` set; add the subcommand). It uses a
    /// private CLI config dir (no credential helpers, nothing of the host's ~/.docker) and the
    /// classic builder (`DOCKER_BUILDKIT=0`: no buildx plugin needed).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(self.docker_host())
            .env("DOCKER_CONFIG", self.dir.path().join("cli-config"))
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `docker -H ... ARGS`; returns its stdout, or an error with its stderr.
    pub fn run_cli(&self, args: &[&str]) -> io::Result<String> {
        let out = self.cli().args(args).output()?;
        if !out.status.success() {
            return Err(other(format!(
                "docker {} (daemon {}) failed with {}: {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The full id (`sha256:...`) of a local image, or an error if the daemon lacks it.
    pub fn image_id(&self, reference: &str) -> io::Result<String> {
        Ok(self
            .run_cli(&["image", "inspect", "--format", "{{.Id}}", reference])?
            .trim()
            .to_owned())
    }

    /// The registry's manifest digest (`sha256:...`) of `reference` (`HOST:PORT/REPO:TAG`)
    /// as this daemon pushed or pulled it: its `RepoDigests` entry for the reference's
    /// repository. An error if the daemon lacks the image or has no digest for that name.
    pub fn repo_digest(&self, reference: &str) -> io::Result<String> {
        let name = reference.rsplit_once(':').map_or(reference, |(n, _)| n);
        let digests = self.run_cli(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            reference,
        ])?;
        let list: Vec<String> = serde_json::from_str(digests.trim())
            .map_err(|e| other(format!("RepoDigests of {reference}: {e}: {digests}")))?;
        list.iter()
            .find_map(|d| d.strip_prefix(&format!("{name}@")).map(str::to_owned))
            .ok_or_else(|| other(format!("no digest of {reference} in {digests}")))
    }

    /// Whether the daemon has an image by this reference or id.
    pub fn has_image(&self, reference: &str) -> bool {
        self.image_id(reference).is_ok()
    }

    /// `GET path` on the daemon's API socket (e.g. `/v1.41/images/REF/json`); returns the
    /// status and body. Far cheaper than a `docker` CLI run, for polling many daemons often.
    pub fn api_get(&self, path: &str) -> io::Result<(u16, String)> {
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        http_get(stream, "docker", path)
    }

    /// Whether the daemon has an image by this reference or id, asked over the API socket
    /// (API 1.41: what Debian's dockerd 20.10 speaks). Errors only when the daemon does not
    /// answer.
    pub fn has_image_api(&self, reference: &str) -> io::Result<bool> {
        let (status, body) = self.api_get(&format!("/v1.41/images/{reference}/json"))?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(other(format!(
                "dockerd {}: image inspect answered {status}: {}",
                self.name,
                body.trim()
            ))),
        }
    }
}

/// `GET /_ping` on a docker socket answers 200 "OK".
fn ping_socket(socket: &Path) -> bool {
    let Ok(stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    matches!(http_get(stream, "docker", "/_ping"), Ok((200, body)) if body.trim() == "OK")
}

/// Spawns dockerd with all of its state under `dir`, appending to `log`.
fn spawn_dockerd(
    dockerd: &Path,
    name: &str,
    dir: &Path,
    socket: &Path,
    exec_root: &Path,
    log: &Path,
    options: &DockerdOptions,
) -> io::Result<Child> {
    let log_file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new(dockerd);
    cmd.arg("--host")
        .arg(format!("unix://{}", socket.display()))
        .arg("--data-root")
        .arg(dir.join("root"))
        .arg("--exec-root")
        .arg(exec_root)
        .arg("--pidfile")
        .arg(dir.join("docker.pid"))
        .args(["--bridge=none", "--iptables=false", "--ip6tables=false"]);
    for reg in &options.insecure_registries {
        cmd.arg("--insecure-registry").arg(reg);
    }
    cmd.args(&options.args);
    cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    cmd.spawn()
        .map_err(|e| other(format!("starting dockerd {name}: {e}")))
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop_daemon();
        unmount_under(self.dir.path());
        // `dir` is removed when the field drops, right after this.
    }
}

/// A push-notification endpoint for [`RegistryOptions`].
#[derive(Debug, Clone, Default)]
pub struct NotificationEndpoint {
    /// Where the registry POSTs event envelopes, e.g. `http://10.77.0.2:8000/registryNotifications`.
    pub url: String,
    /// Extra request headers, e.g. `("Authorization", "Bearer t0ken")`.
    pub headers: Vec<(String, String)>,
}

/// How to start a [`Registry`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Endpoints to notify of pushes and pulls (none by default).
    pub notifications: Vec<NotificationEndpoint>,
}

impl RegistryOptions {
    /// Options that notify one endpoint, `url` (e.g. an agent's
    /// `http://IP:PORT/registryNotifications`), without extra headers.
    pub fn notifying(url: impl Into<String>) -> Self {
        Self {
            notifications: vec![NotificationEndpoint {
                url: url.into(),
                headers: Vec::new(),
            }],
        }
    }
}

/// One blob download the registry logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobGet {
    /// Repository, e.g. `test/img`.
    pub repository: String,
    /// Blob digest, e.g. `sha256:...`.
    pub digest: String,
    /// HTTP status of the response.
    pub status: u16,
}

/// A private `docker-registry` (distribution 2.8), stopped by pid on drop.
pub struct Registry {
    child: Child,
    addr: String,
    log: PathBuf,
    startup: Duration,
    dir: TempDir,
}

/// Quotes a string for YAML (double-quoted style).
fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Registry {
    /// Starts a registry on `addr` (`IP:PORT`) without notifications.
    pub fn start(addr: &str) -> io::Result<Self> {
        Self::start_with(addr, &RegistryOptions::default())
    }

    /// Starts a registry on a free loopback port.
    pub fn start_local() -> io::Result<Self> {
        // The port is free when probed and may be taken before the registry binds it:
        // retry a few times rather than fail a test on that race.
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            match Self::start(&format!("127.0.0.1:{port}")) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| other("no registry started".into())))
    }

    /// Starts a registry on `addr` with `options`, and waits until `GET /v2/` answers 200.
    pub fn start_with(addr: &str, options: &RegistryOptions) -> io::Result<Self> {
        Self::spawn(None, addr, options)
    }

    /// Starts a registry inside `node`'s network namespace (so its traffic goes through the
    /// node's shaped veth, like a registry host's NIC), listening on `addr`, which must be
    /// the node's address (`IP:PORT`). Readiness is probed from the root namespace over the
    /// cluster bridge. `ip netns exec` execs the registry, so the pid stopped on drop is the
    /// registry's own.
    pub fn start_in(
        node: &crate::cluster::Node,
        addr: &str,
        options: &RegistryOptions,
    ) -> io::Result<Self> {
        Self::spawn(Some(node), addr, options)
    }

    fn spawn(
        node: Option<&crate::cluster::Node>,
        addr: &str,
        options: &RegistryOptions,
    ) -> io::Result<Self> {
        let bin = require_binary("docker-registry", "docker-registry")?;
        let sock_addr: SocketAddr = addr
            .parse()
            .map_err(|e| other(format!("registry address {addr:?}: {e}")))?;
        let dir = TempDir::new("registry")?;
        let config = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}\n  secret: imagewolf-test-secret\n",
            yaml_str(&dir.path().join("data").to_string_lossy()),
            yaml_str(addr),
        );
        if !options.notifications.is_empty() {
            yaml.push_str("notifications:\n  endpoints:\n");
            for (i, ep) in options.notifications.iter().enumerate() {
                yaml.push_str(&format!(
                    "    - name: imagewolf{i}\n      url: {}\n      timeout: 1s\n      threshold: 5\n      backoff: 1s\n",
                    yaml_str(&ep.url)
                ));
                if !ep.headers.is_empty() {
                    yaml.push_str("      headers:\n");
                    for (k, v) in &ep.headers {
                        yaml.push_str(&format!("        {}: [{}]\n", yaml_str(k), yaml_str(v)));
                    }
                }
            }
        }
        fs::write(&config, yaml)?;
        let cmd = match node {
            Some(node) => node.command(&bin),
            None => Command::new(&bin),
        };
        let child = spawn_registry(cmd, &config, &log)?;
        let mut r = Registry {
            child,
            addr: addr.to_owned(),
            log,
            startup: Duration::ZERO,
            dir,
        };
        let log = r.log.clone();
        let child = &mut r.child;
        let startup = wait_ready(
            &format!("registry on {addr}"),
            START_TIMEOUT,
            || registry_running(child, addr, &log),
            || {
                // Our own log must say we bound the port: with parallel tests, another
                // registry may hold it and answer the probe while ours failed to bind.
                let bound = fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"));
                bound
                    && TcpStream::connect_timeout(&sock_addr, Duration::from_secs(1))
                        .and_then(|s| {
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            http_get(s, addr, "/v2/")
                        })
                        .is_ok_and(|(status, _)| status == 200)
            },
        )?;
        r.startup = startup;
        Ok(r)
    }

    /// `IP:PORT` it listens on (what goes in image references).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The registry's directory (config, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file (logrus lines and Apache combined access-log lines, interleaved).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// How long it took to answer its first `GET /v2/`.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every blob GET in the access log so far (HEADs, manifests and uploads excluded).
    pub fn blob_gets(&self) -> Vec<BlobGet> {
        fs::read_to_string(&self.log)
            .map(|log| log.lines().filter_map(parse_blob_get).collect())
            .unwrap_or_default()
    }

    /// Every request in the access log so far ([`access_log`]).
    pub fn accesses(&self) -> Vec<Access> {
        access_log(&self.log)
    }

    /// How many blob downloads the registry served in full (`GET /v2/NAME/blobs/DIGEST`
    /// answered 200). Cluster tests use it to prove each layer left the registry once.
    pub fn blob_get_count(&self) -> usize {
        self.blob_gets().iter().filter(|g| g.status == 200).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Parses one distribution 2.8 access-log line (Apache combined format, written by gorilla's
/// logging handler once a response is complete):
/// `127.0.0.1 - - [27/Nov/2026:22:24:41 +0000] "GET /v2/test/img/blobs/sha256:ab.. HTTP/1.1" 200 7340032 "" "docker/20.10.24 ..."`.
/// The logrus "response completed" lines carry the same request; only the access-log line is
/// counted, so each request counts once.
pub fn parse_blob_get(line: &str) -> Option<BlobGet> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, after) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let (method, uri) = (parts.next()?, parts.next()?);
    if method != "GET" {
        return None;
    }
    let path = uri.split('?').next()?;
    let name_and_blob = path.strip_prefix("/v2/")?;
    let (repository, digest) = name_and_blob.rsplit_once("/blobs/")?;
    if repository.is_empty() || digest.is_empty() || digest.contains('/') {
        return None; // e.g. /blobs/uploads/...
    }
    let status = after.split_whitespace().next()?.parse().ok()?;
    Some(BlobGet {
        repository: repository.to_owned(),
        digest: digest.to_owned(),
        status,
    })
}

/// One request in a registry's access log (Apache combined format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The client's address.
    pub client: String,
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request URI (path and query).
    pub path: String,
    /// The response status.
    pub status: u16,
    /// The client's User-Agent (`containerd/1.6.20...`, `docker/20.10.24 ...`).
    pub agent: String,
}

/// Every request in the registry log at `log` (its access-log lines; the logrus lines that
/// carry the same requests are skipped, so each request counts once).
pub fn access_log(log: &Path) -> Vec<Access> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (client, rest) = line.split_once(" - - [")?;
            let (_, rest) = rest.split_once("] \"")?;
            let (request, after) = rest.split_once('"')?;
            let mut parts = request.split(' ');
            let (method, path) = (parts.next()?, parts.next()?);
            let status = after.split_whitespace().next()?.parse().ok()?;
            let agent = after.rsplit('"').nth(1).unwrap_or_default();
            Some(Access {
                client: client.trim().to_owned(),
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                agent: agent.to_owned(),
            })
        })
        .collect()
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes `mib` MiB of fresh random bytes to `path` (1 MiB at a time).
fn write_random_file(path: &Path, mib: usize) -> io::Result<()> {
    let mut f = File::create(path)?;
    let seed: u64 = rand::random();
    for i in 0..mib.max(1) {
        f.write_all(&crate::random_payload(1 << 20, seed.wrapping_add(i as u64)))?;
    }
    f.sync_all()
}

/// Builds image `name` (a full reference, e.g. `127.0.0.1:5000/test/img:v1`) in `dockerd`
/// with exactly `layers` layers of `layer_mib` MiB of random bytes each, without pulling
/// anything, and returns its image id (`sha256:...`). Every call makes a distinct image.
///
/// Layer 1 is a `docker import` of a tar of one random file; each further layer is a
/// `COPY` of another random file in a classic-builder `docker build`.
pub fn build_test_image(
    dockerd: &Dockerd,
    name: &str,
    layers: usize,
    layer_mib: usize,
) -> io::Result<String> {
    if layers == 0 {
        return Err(other(
            "build_test_image: an image needs at least one layer".into(),
        ));
    }
    let ctx = dockerd
        .dir()
        .join(format!("build-{:08x}", rand::random::<u32>()));
    let result = build_in(dockerd, &ctx, name, layers, layer_mib);
    let _ = fs::remove_dir_all(&ctx);
    result
}

/// Builds `name` in `dockerd` as `base` (an image `dockerd` has) plus one layer of
/// `layer_mib` MiB of random bytes (a `COPY` in a classic-builder build, nothing pulled);
/// returns its image id. The everyday update: a new version sharing every earlier layer.
pub fn extend_test_image(
    dockerd: &Dockerd,
    base: &str,
    name: &str,
    layer_mib: usize,
) -> io::Result<String> {
    let ctx = dockerd
        .dir()
        .join(format!("build-{:08x}", rand::random::<u32>()));
    let result = (|| {
        fs::create_dir_all(&ctx)?;
        let file = format!("update-{:08x}.bin", rand::random::<u32>());
        write_random_file(&ctx.join(&file), layer_mib)?;
        fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {base}\nCOPY {file} /{file}\n"),
        )?;
        dockerd.run_cli(&["build", "-q", "-t", name, &ctx.to_string_lossy()])?;
        dockerd.image_id(name)
    })();
    let _ = fs::remove_dir_all(&ctx);
    result
}

/// Starts one daemon per name at once (each takes ~1-6 s to answer its first ping). Panics
/// if one does not start (a test helper).
pub fn start_daemons(names: &[&str]) -> Vec<Dockerd> {
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let n = n.to_string();
            std::thread::spawn(move || Dockerd::start(&n, &[]))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .expect("dockerd start thread panicked")
                .unwrap_or_else(|e| panic!("dockerd did not start: {e}"))
        })
        .collect()
}

/// [`build_test_image`], then `docker push`; returns (image id, manifest digest). Panics
/// with the daemon's log on failure (a test helper).
pub fn build_and_push(
    builder: &Dockerd,
    reference: &str,
    layers: usize,
    layer_mib: usize,
) -> (String, String) {
    let id = build_test_image(builder, reference, layers, layer_mib)
        .unwrap_or_else(|e| panic!("building {reference}: {e}\n{}", builder.log_tail()));
    builder
        .run_cli(&["push", reference])
        .unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
    let repo_digest = builder
        .run_cli(&[
            "image",
            "inspect",
            "--format",
            "{{index .RepoDigests 0}}",
            reference,
        ])
        .expect("repo digest after push");
    let digest = repo_digest
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .expect("RepoDigests entry has an @digest");
    (id, digest)
}

fn build_in(
    dockerd: &Dockerd,
    ctx: &Path,
    name: &str,
    layers: usize,
    layer_mib: usize,
) -> io::Result<String> {
    let base_dir = ctx.join("base");
    fs::create_dir_all(&base_dir)?;
    write_random_file(&base_dir.join("layer0.bin"), layer_mib)?;
    let base_tar = ctx.join("base.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&base_dir)
        .arg("-cf")
        .arg(&base_tar)
        .arg(".")
        .output()?;
    if !tar.status.success() {
        return Err(other(format!(
            "tar of the base layer failed: {}",
            String::from_utf8_lossy(&tar.stderr)
        )));
    }
    if layers == 1 {
        dockerd.run_cli(&["import", &base_tar.to_string_lossy(), name])?;
        return dockerd.image_id(name);
    }
    let base = format!("imagewolf-test-base-{:08x}:latest", rand::random::<u32>());
    dockerd.run_cli(&["import", &base_tar.to_string_lossy(), &base])?;
    fs::remove_dir_all(&base_dir)?;
    fs::remove_file(&base_tar)?;
    let mut dockerfile = format!("FROM {base}\n");
    for i in 1..layers {
        write_random_file(&ctx.join(format!("layer{i}.bin")), layer_mib)?;
        dockerfile.push_str(&format!("COPY layer{i}.bin /layer{i}.bin\n"));
    }
    fs::write(ctx.join("Dockerfile"), dockerfile)?;
    dockerd.run_cli(&["build", "-q", "-t", name, &ctx.to_string_lossy()])?;
    // Untag the base so only the image under test carries a name (its layers stay, shared).
    let _ = dockerd.run_cli(&["rmi", &base]);
    dockerd.image_id(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_log_blob_gets() {
        let line = r#"127.0.0.1 - - [27/Nov/2026:22:24:41 +0000] "GET /v2/test/img/blobs/sha256:c9d7 HTTP/1.1" 200 7340032 "" "docker/20.10.24""#;
        assert_eq!(
            parse_blob_get(line),
            Some(BlobGet {
                repository: "test/img".into(),
                digest: "sha256:c9d7".into(),
                status: 200
            })
        );
        let head = r#"127.0.0.1 - - [27/Nov/2026:22:24:41 +0000] "HEAD /v2/test/img/blobs/sha256:c9d7 HTTP/1.1" 200 0 "" "docker""#;
        assert_eq!(parse_blob_get(head), None);
        let upload = r#"127.0.0.1 - - [27/Nov/2026:22:24:41 +0000] "GET /v2/test/img/blobs/uploads/abc HTTP/1.1" 204 0 "" "docker""#;
        assert_eq!(parse_blob_get(upload), None);
        let logrus = r#"time="2026-11-27T22:24:41Z" level=info msg="response completed" http.request.method=GET http.request.uri=/v2/test/img/blobs/sha256:c9d7 http.response.status=200"#;
        assert_eq!(parse_blob_get(logrus), None);
    }

    #[test]
    fn yaml_quoting() {
        assert_eq!(yaml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
