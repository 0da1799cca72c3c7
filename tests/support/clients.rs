//! Other BitTorrent clients as test peers: aria2 (`aria2c`), Transmission (`transmission-cli`)
//! and libtorrent (through `tests/assets/lt_client.py`). Each runs as a child process with
//! its own directory, port and log, killed by its pid when dropped; everything that would
//! reach outside the test (DHT, local peer discovery, peer exchange, port mapping, uTP) is
//! off. Completion is what the client itself reports: aria2's and Transmission's
//! download-complete hooks touch a marker file, libtorrent prints a `complete` line.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{require_libtorrent, require_tool, test_asset, ChildGuard, SYSTEM_PYTHON};

/// What the client is asked to do with the torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Download into its directory, then report completion.
    Download,
    /// Seed the payload already in its directory.
    Seed,
}

/// How a client tells us it completed.
enum Done {
    /// This file appears (a completion hook touched it).
    Marker(PathBuf),
    /// A line of its log contains this.
    LogLine(&'static str),
}

/// A running client (see the module docs).
pub struct Client {
    /// Which client, for messages.
    pub name: &'static str,
    /// The process.
    pub guard: ChildGuard,
    /// Where it reads the payload from (seeding) or writes it to (downloading).
    pub dir: PathBuf,
    /// The port it accepts peers on, on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    done: Done,
}

/// A port on 127.0.0.1 that was free a moment ago (for clients that need one named),
/// below the kernel's ephemeral range: a port the kernel hands out (bind to port 0) may be
/// taken as the source port of an outgoing connection of a test running alongside before
/// the client binds it, and Transmission then runs without listening (seen once in CI-like
/// runs: "transmission not listening after 90s").
pub fn free_port() -> u16 {
    use rand::RngExt;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(10_000..low.max(10_001));
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

impl Client {
    /// aria2 1.36 (`apt-get install -y aria2`). Downloads exit once complete
    /// (`--seed-time=0`); seeds serve the files in `dir` without checking them first
    /// (`--bt-seed-unverified`) until killed (`--seed-ratio=0.0`).
    pub fn aria2(role: Role, torrent: &Path, dir: &Path) -> Client {
        let bin = require_tool("aria2c", "aria2");
        let port = free_port();
        let log = dir.join("aria2.log");
        let marker = dir.join("aria2.done");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--dir={}", dir.display()))
            .arg(format!("--listen-port={port}"))
            .args([
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--file-allocation=none",
                "--summary-interval=0",
                "--console-log-level=notice",
                "--check-certificate=false",
            ]);
        match role {
            Role::Download => {
                let hook = completion_hook(dir, &marker);
                cmd.arg("--seed-time=0")
                    .arg(format!("--on-bt-download-complete={}", hook.display()));
            }
            Role::Seed => {
                cmd.args(["--seed-ratio=0.0", "--bt-seed-unverified=true"]);
            }
        }
        cmd.arg(torrent);
        Self::start("aria2", cmd, dir, port, log, Done::Marker(marker))
    }

    /// Transmission 3.00's `transmission-cli` (`apt-get install -y transmission-cli`), with
    /// a config directory of its own (RPC off, so two can run at once). It seeds once it
    /// has verified the files in `dir`, and keeps seeding after a download, until killed.
    pub fn transmission(role: Role, torrent: &Path, dir: &Path) -> Client {
        let bin = require_tool("transmission-cli", "transmission-cli");
        let port = free_port();
        let config = dir.join("transmission-config");
        std::fs::create_dir_all(&config).expect("creating Transmission's config dir");
        let settings = serde_json::json!({
            "dht-enabled": false,
            "lpd-enabled": false,
            "pex-enabled": false,
            "utp-enabled": false,
            "port-forwarding-enabled": false,
            "rpc-enabled": false,
            "peer-port": port,
            "peer-port-random-on-start": false,
            "download-dir": dir,
            "incomplete-dir-enabled": false,
            "speed-limit-down-enabled": false,
            "speed-limit-up-enabled": false,
            "alt-speed-enabled": false,
            "ratio-limit-enabled": false,
            "idle-seeding-limit-enabled": false,
            "blocklist-enabled": false,
            "message-level": 2,
        });
        std::fs::write(config.join("settings.json"), settings.to_string())
            .expect("writing Transmission's settings");
        let log = dir.join("transmission.log");
        let marker = dir.join("transmission.done");
        let mut cmd = Command::new(bin);
        cmd.arg("-g").arg(&config).arg("-w").arg(dir).args([
            "-p",
            &port.to_string(),
            "-M",
            "-D",
            "-U",
        ]);
        if role == Role::Download {
            cmd.arg("-f").arg(completion_hook(dir, &marker));
        }
        cmd.arg(torrent);
        Self::start("transmission", cmd, dir, port, log, Done::Marker(marker))
    }

    /// libtorrent 2.0 (`apt-get install -y python3-libtorrent`) through the shared driver
    /// script: its high-performance seeding preset, TCP only. It dials `peers` right after
    /// it logs its `listening` line ([`Client::wait_log`]).
    pub fn libtorrent(role: Role, torrent: &Path, dir: &Path, peers: &[SocketAddr]) -> Client {
        require_libtorrent().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let log = dir.join("libtorrent.log");
        let mut cmd = Command::new(SYSTEM_PYTHON);
        cmd.arg(test_asset("lt_client.py"))
            .arg(match role {
                Role::Download => "download",
                Role::Seed => "seed",
            })
            .arg(torrent)
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        for peer in peers {
            cmd.arg("--peer").arg(peer.to_string());
        }
        Self::start(
            "libtorrent",
            cmd,
            dir,
            port,
            log,
            Done::LogLine("\"complete\""),
        )
    }

    fn start(
        name: &'static str,
        mut cmd: Command,
        dir: &Path,
        port: u16,
        log: PathBuf,
        done: Done,
    ) -> Client {
        let out = std::fs::File::create(&log).expect("creating the client's log");
        let err = out.try_clone().expect("cloning the log handle");
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let guard = ChildGuard::spawn(name, &mut cmd).unwrap_or_else(|e| panic!("{e}"));
        Client {
            name,
            guard,
            dir: dir.to_owned(),
            port,
            log,
            done,
        }
    }

    /// The address it accepts peers on.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text).replace('\r', "\n");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until its port accepts connections (and, for libtorrent, until it logged that
    /// its torrent is added: it accepts connections before, and turns a handshake for a
    /// torrent it does not know yet away). Panics (with its log) on timeout or if the
    /// process exits first.
    pub async fn wait_listening(&mut self, timeout: Duration) {
        if self.name == "libtorrent" {
            self.wait_log("\"listening\"", timeout).await;
        }
        let addr = self.addr();
        self.poll(timeout, "listening", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })
        .await;
    }

    /// Waits until it reports its download complete; returns when that was seen. Panics
    /// (with its log) on timeout or if the process exits without reporting it.
    pub async fn wait_done(&mut self, timeout: Duration) -> Instant {
        let check: Box<dyn Fn() -> bool> = match &self.done {
            Done::Marker(path) => {
                let path = path.clone();
                Box::new(move || path.exists())
            }
            Done::LogLine(needle) => {
                let (log, needle) = (self.log.clone(), *needle);
                Box::new(move || {
                    std::fs::read(&log)
                        .map(|t| String::from_utf8_lossy(&t).contains(needle))
                        .unwrap_or(false)
                })
            }
        };
        self.poll(timeout, "complete", check).await;
        Instant::now()
    }

    /// Waits until a line of its log contains `needle`; returns when that was seen.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> Instant {
        let log = self.log.clone();
        self.poll(timeout, &format!("logging {needle:?}"), || {
            std::fs::read(&log)
                .map(|t| String::from_utf8_lossy(&t).contains(needle))
                .unwrap_or(false)
        })
        .await;
        Instant::now()
    }

    /// Checks `ready` every 10 ms until it holds.
    async fn poll(&mut self, timeout: Duration, what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.guard.child.try_wait() {
                // It may have reported just before exiting (aria2 exits once complete).
                if ready() {
                    return;
                }
                panic!(
                    "{} exited ({status}) before it was {what}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not {what} after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A shell script that touches `marker` (a client's download-complete hook).
fn completion_hook(dir: &Path, marker: &Path) -> PathBuf {
    let path = dir.join("on-complete.sh");
    let quoted = marker.display().to_string().replace('\'', r"'\''");
    std::fs::write(&path, format!("#!/bin/sh\ntouch '{quoted}'\n")).expect("writing the hook");
    let mut perms = std::fs::metadata(&path)
        .expect("hook metadata")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).expect("making the hook executable");
    path
}
