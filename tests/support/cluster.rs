//! A cluster of "hosts" on this one machine: one network namespace per node, all joined by a
//! Linux bridge in the root namespace, each with its own IPv4 address and, optionally, a NIC
//! bandwidth emulated with `tc tbf`. End-to-end tests and the cluster benchmark run real
//! processes inside the nodes with [`Node::command`] / [`Node::spawn`].
//!
//! Layout (`T` is a random 6-hex-digit tag unique to one [`Cluster`], `S` its /24):
//! - bridge `iwTbr` in the root namespace with `S.1/24`, so processes in the root namespace
//!   (a registry next to the test's dockerds, say) are reachable from every node at `S.1`;
//! - namespace `iwT-nI` for node `I` (`iwT-xJ` for extra namespace `J`), reached through a veth
//!   pair `iwThK` (bridge end, root namespace) / `iwTnK` (inside), `K` the global index, with
//!   address `S.(K+2)/24`; `lo` is up.
//! - Interface names stay within Linux's 15 characters (`iw` + 6 + `h` + 3 digits = 12).
//!
//! Design decisions and invariants:
//! - Shaping: `tbf` on the namespace end shapes the node's upload, on the bridge end its
//!   download, like a full-duplex NIC. Burst is 256 KiB (or 10 ms at line rate, if larger: tbf
//!   needs at least rate/HZ), queues hold 100 ms, as measured in
//!   /work/shared/notes/test-cluster.md. The upload queue is a `pfifo_fast` (the kernel's
//!   default qdisc) under the tbf, so traffic marked as bulk yields as on a real host.
//! - No default route by default: this machine forwards IPv4 (`ip_forward=1`), so a default
//!   route via `S.1` would let a stray packet from a node leave the machine. Everything a test
//!   needs is on the bridge's /24, which is a connected route. The namespaces get an
//!   `unreachable default` instead, so such traffic fails at once; set
//!   [`ClusterBuilder::default_route`] to get `default via S.1` when a test really needs it.
//!   For the same reason each namespace has its own `resolv.conf` naming `127.0.0.1` (nothing
//!   listens there): a name missing from the hosts file fails fast instead of being sent to the
//!   machine's DNS server.
//! - Discovery: `ip netns exec` bind-mounts every file in `/etc/netns/NS/` over `/etc/`, so
//!   [`Cluster::write_hosts`] writes `/etc/netns/NS/hosts`. glibc returns every address of a
//!   name listed on several lines only with `multi on` in `host.conf` (checked: glibc 2.36 with
//!   `multi off` returns the first line only), so each namespace also gets a `host.conf` with
//!   `multi on` rather than relying on the machine's. The hosts file is rewritten in place
//!   (truncate + one write), not replaced by rename, because a bind mount pins the inode:
//!   processes already running in a namespace then see updates, as with a DNS record.
//!   getaddrinfo returns the addresses sorted by RFC 6724 (a node sees its own address
//!   first), not in file order: consumers must not rely on the order.
//! - Only the network (and, per `ip netns exec`, mount) namespace differs between nodes: the
//!   hostname, pid space and filesystem are shared, so a node's identity must come from its
//!   address or configuration, never from `gethostname`.
//! - Subnets: a random `10.B.C.0/24`, `B` in 77..=99, that overlaps no address or route of the
//!   root namespace and is claimed by an exclusive lock file under [`LOCK_DIR`] (holding the
//!   owner's pid and tag), so concurrent test processes never pick the same one.
//! - Teardown: [`Cluster`]'s `Drop` removes exactly what it created, by name, and runs during a
//!   panic's unwinding too. It first SIGKILLs (by pid) every process still inside its
//!   namespaces: only this cluster's user can have started them, and a lingering process would
//!   keep the namespace alive. Callers should still drop their [`ChildGuard`]s first (declare
//!   them after the cluster) so that those reap their children; dropping the cluster first is
//!   safe too (the guard then reaps an already killed process).
//! - Crash leftovers: when a test process dies without unwinding (SIGKILL, Ctrl-C), its lock
//!   file stays; the next [`ClusterBuilder::build`] on the machine sees the owner's pid gone and
//!   removes that tag's namespaces, links, files and firewall rule. Best effort: a reused pid
//!   keeps leftovers alive a while longer, which costs only a /24.
//! - Firewall: a dockerd started with iptables sets `FORWARD` to DROP and bridged frames go
//!   through iptables (br_netfilter), which silently cuts the nodes apart; so when `iptables`
//!   exists an `ACCEPT` rule for this bridge is inserted and that exact rule deleted on drop.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{ChildGuard, SYSTEM_PYTHON};

mod lease;

use lease::{claim_subnet, sweep_stale_clusters, teardown, write_lock, Created};

/// Where subnet claims live. Not necessarily tmpfs (on this machine /run is on the root disk):
/// claims that outlive a reboot name dead pids and are swept like any crash leftover.
pub const LOCK_DIR: &str = "/run/imagewolf-cluster";

/// Most namespaces one cluster can have: `.2` to `.254` of its /24.
pub const MAX_NAMESPACES: usize = 253;

/// Errors from building, using or probing a cluster.
#[derive(Debug)]
pub enum ClusterError {
    /// A command (`ip`, `tc`, ...) failed.
    Command {
        /// The command line.
        cmd: String,
        /// Its exit code, if it exited.
        status: Option<i32>,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A file operation or process start failed.
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// Every candidate /24 in 10.77-10.99 was in use or claimed.
    NoFreeSubnet,
    /// The request cannot be honoured (e.g. too many nodes, a bad host name).
    Invalid(String),
    /// Something did not happen before its deadline.
    Timeout(String),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command {
                cmd,
                status,
                stderr,
            } => write!(f, "`{cmd}` failed (exit {status:?}): {}", stderr.trim()),
            Self::Io { what, source } => write!(f, "{what}: {source}"),
            Self::NoFreeSubnet => write!(f, "no free /24 in 10.77.0.0-10.99.255.0"),
            Self::Invalid(msg) => write!(f, "invalid cluster request: {msg}"),
            Self::Timeout(msg) => write!(f, "timed out: {msg}"),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Runs `program args` to completion; its stdout on success.
fn run(program: &str, args: &[&str]) -> Result<String, ClusterError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running `{cmd}`")))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            cmd,
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Teardown step: failures are reported, not fatal (the rest must still be removed).
fn run_logged(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        eprintln!("cluster teardown: {e}");
    }
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Checks that this process can build a cluster: root, and `ip`, `tc` and `ss` (iproute2)
/// runnable. Tests call this first and fail (never skip) on error.
pub fn require_root_and_tools() -> Result<(), String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => {
            return Err(format!(
                "cluster tests need root (network namespaces, bridges, tc); running as uid {uid}"
            ))
        }
        None => return Err("cannot read the effective uid from /proc/self/status".into()),
    }
    for (tool, arg) in [("ip", "-V"), ("tc", "-V"), ("ss", "-V")] {
        run(tool, &[arg]).map_err(|e| {
            format!("`{tool}` is needed for cluster tests (apt-get install iproute2): {e}")
        })?;
    }
    Ok(())
}

fn iptables_present() -> bool {
    Command::new("iptables")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn forward_rule(bridge: &str) -> [&str; 8] {
    ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT", "-w"]
}

/// What to build. Fields are public so callers write `ClusterBuilder { nodes: 16, ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    /// Number of nodes (namespaces `.2` onwards).
    pub nodes: usize,
    /// Each node's NIC speed in both directions, in Mbit/s; `None` leaves links unshaped.
    pub rate_mbit: Option<u32>,
    /// Extra namespaces after the nodes (e.g. one for a registry), at the next addresses.
    pub extras: usize,
    /// NIC speed of the extra namespaces; `None` (the default) leaves them unshaped.
    pub extra_rate_mbit: Option<u32>,
    /// Give every namespace `default via S.1` instead of `unreachable default` (see the module
    /// doc: with IPv4 forwarding on, stray traffic could then leave the machine).
    pub default_route: bool,
    /// Give every node an unshaped host-local link to the root namespace ([`Node::local_ip`],
    /// in [`HOST_LINKS_CIDR`]).
    pub host_links: bool,
}

/// The addresses of the host-local links ([`ClusterBuilder::host_links`]): a /30 per node
/// out of the shared address space, derived from the cluster's own /24 and the node's index,
/// so concurrent clusters never overlap. Tell a test dockerd `--insecure-registry` this.
pub const HOST_LINKS_CIDR: &str = "100.64.0.0/10";

/// The root end and the node end of node `k`'s host-local link in the cluster `10.b.c.0/24`.
fn host_link_ips(subnet: [u8; 3], k: usize) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let b = u32::from(subnet[1].checked_sub(77).filter(|b| *b < 32)?);
    let k = u32::try_from(k).ok().filter(|k| *k < 64)?;
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0))
        | (((b << 14) | (u32::from(subnet[2]) << 6) | k) << 2);
    Some((Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)))
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            nodes: 3,
            rate_mbit: None,
            extras: 0,
            extra_rate_mbit: None,
            default_route: false,
            host_links: false,
        }
    }
}

/// One namespace of a [`Cluster`]: a node, or an extra namespace.
#[derive(Debug, Clone)]
pub struct Node {
    /// The network namespace's name (for `ip netns exec`).
    pub name: String,
    /// Its address on the cluster bridge.
    pub ip: Ipv4Addr,
    /// The veth end on the bridge, in the root namespace (its egress is the node's download).
    pub host_veth: String,
    /// The veth end inside the namespace (its egress is the node's upload).
    pub ns_veth: String,
    /// With [`ClusterBuilder::host_links`]: the node's end of an unshaped link to the root
    /// namespace. A node's dockerd runs in the root namespace (it cannot start inside one),
    /// so this is the path from the node's runtime to a service of the node (the agent's
    /// registry endpoint), as loopback is on a real host: it never crosses the node's NIC.
    pub local_ip: Option<Ipv4Addr>,
}

impl Node {
    /// A command that runs `program` inside this namespace. `ip netns exec` execs the program,
    /// so the child's pid is the program's, and environment, working directory and stdio
    /// set on the returned `Command` reach the program.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Starts `program args` in this namespace as a [`ChildGuard`] (killed by pid on drop).
    /// For stdio or environment settings build it with [`Node::command`] and
    /// [`ChildGuard::spawn`] instead.
    pub fn spawn<I, S>(&self, name: &str, program: &str, args: I) -> io::Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        ChildGuard::spawn(name, self.command(program).args(args))
    }

    /// Cuts (`false`) or restores (`true`) the node's link by taking the bridge end of its veth
    /// down or up. The namespace's addresses, routes and qdiscs stay as they are, so restoring
    /// needs nothing else; inside, the link shows NO-CARRIER meanwhile.
    pub fn set_link(&self, up: bool) -> Result<(), ClusterError> {
        let state = if up { "up" } else { "down" };
        run("ip", &["link", "set", "dev", &self.host_veth, state]).map(drop)
    }

    /// Waits until something in this namespace listens on TCP `port` (checked with `ss`, so
    /// the listener sees no probe connection).
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> Result<(), ClusterError> {
        wait_listening(Some(&self.name), port, timeout)
    }

    /// Tries a TCP connection from this namespace to `addr` (with [`SYSTEM_PYTHON`]).
    pub fn probe_tcp(&self, addr: SocketAddrV4, timeout: Duration) -> Result<Probe, ClusterError> {
        const SCRIPT: &str = "import socket,sys\n\
s=socket.socket(); s.settimeout(float(sys.argv[3]))\n\
try:\n  s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n\
except ConnectionRefusedError: print('refused')\n\
except OSError as e: print('unreachable', e)\n";
        let out = self
            .command(SYSTEM_PYTHON)
            .args(["-c", SCRIPT])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(timeout.as_secs_f64().to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("running {SYSTEM_PYTHON} in {}", self.name)))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.split_whitespace().next() {
            Some("connected") => Ok(Probe::Connected),
            Some("refused") => Ok(Probe::Refused),
            Some("unreachable") => Ok(Probe::Unreachable(stdout.trim().to_owned())),
            _ => Err(ClusterError::Command {
                cmd: format!("{SYSTEM_PYTHON} TCP probe in {}", self.name),
                status: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
        }
    }

    /// Whether a TCP SYN from this namespace to `ip` gets an answer within `timeout` (a refusal
    /// counts: the RST proves the round trip). Probes the discard port, 9, where nothing listens.
    pub fn reaches(&self, ip: Ipv4Addr, timeout: Duration) -> Result<bool, ClusterError> {
        Ok(self
            .probe_tcp(SocketAddrV4::new(ip, 9), timeout)?
            .answered())
    }
}

/// Outcome of [`Node::probe_tcp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Something accepted the connection.
    Connected,
    /// The peer answered with a reset: reachable, nothing listening.
    Refused,
    /// No answer (timeout, no route, link down), with the error text.
    Unreachable(String),
}

impl Probe {
    /// Whether the peer answered at all.
    pub fn answered(&self) -> bool {
        !matches!(self, Self::Unreachable(_))
    }
}

/// Waits until something in namespace `netns` (`None`: the root namespace) listens on TCP
/// `port`, polling `ss` every 20 ms.
pub fn wait_listening(
    netns: Option<&str>,
    port: u16,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let filter = format!("sport = :{port}");
    let mut args = vec!["-Hltn", filter.as_str()];
    if let Some(ns) = netns {
        args.splice(0..0, ["-N", ns]);
    }
    let deadline = Instant::now() + timeout;
    loop {
        if !run("ss", &args)?.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout(format!(
                "nothing listens on TCP port {port} in {} after {timeout:?}",
                netns.unwrap_or("the root namespace")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running cluster; dropping it tears everything down (see the module doc).
#[derive(Debug)]
pub struct Cluster {
    tag: String,
    subnet: [u8; 3],
    nodes: Vec<Node>,
    extras: Vec<Node>,
    hosts: Mutex<BTreeMap<String, Vec<Ipv4Addr>>>,
    created: Created,
}

impl ClusterBuilder {
    /// A builder for `nodes` unshaped nodes and no extra namespaces.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            ..Self::default()
        }
    }

    /// Creates the bridge, namespaces, links and shaping. On error, whatever was already
    /// created is removed again.
    pub fn build(&self) -> Result<Cluster, ClusterError> {
        let total = self.nodes.saturating_add(self.extras);
        if total == 0 || total > MAX_NAMESPACES {
            return Err(ClusterError::Invalid(format!(
                "{total} namespaces requested; a cluster has 1 to {MAX_NAMESPACES}"
            )));
        }
        for rate in [self.rate_mbit, self.extra_rate_mbit].into_iter().flatten() {
            if rate == 0 {
                return Err(ClusterError::Invalid("a rate of 0 Mbit/s".into()));
            }
        }
        require_root_and_tools().map_err(ClusterError::Invalid)?;
        sweep_stale_clusters();

        let mut cluster = Cluster {
            tag: String::new(),
            subnet: [10, 0, 0],
            nodes: Vec::new(),
            extras: Vec::new(),
            hosts: Mutex::new(BTreeMap::new()),
            created: Created::default(),
        };
        // The tag must be known before the lock is written (the sweep needs it), and it is
        // proven unique when the bridge named after it is created.
        for attempt in 0.. {
            let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
            let bridge = format!("iw{tag}br");
            if cluster.created.lock.is_none() {
                let (subnet, lock) = claim_subnet(&tag)?;
                cluster.subnet = subnet;
                cluster.created.lock = Some(lock);
            } else if let Some(lock) = &cluster.created.lock {
                write_lock(lock, &tag)?;
            }
            match run("ip", &["link", "add", &bridge, "type", "bridge"]) {
                Ok(_) => {
                    cluster.tag = tag;
                    cluster.created.bridge = Some(bridge);
                    break;
                }
                Err(e) if attempt < 5 => eprintln!("cluster: retrying with another tag: {e}"),
                Err(e) => return Err(e),
            }
        }
        let bridge = cluster.bridge().to_owned();
        let bridge_cidr = format!("{}/24", cluster.bridge_ip());
        run("ip", &["addr", "add", &bridge_cidr, "dev", &bridge])?;
        run("ip", &["link", "set", "dev", &bridge, "up"])?;
        if iptables_present() {
            let mut args = vec!["-I"];
            args.extend(forward_rule(&bridge));
            run("iptables", &args)?;
            cluster.created.forward_rule = Some(bridge.clone());
        }

        for k in 0..total {
            let extra = k >= self.nodes;
            let name = if extra {
                format!("iw{}-x{}", cluster.tag, k - self.nodes)
            } else {
                format!("iw{}-n{k}", cluster.tag)
            };
            let rate = if extra {
                self.extra_rate_mbit
            } else {
                self.rate_mbit
            };
            let mut node = cluster.add_namespace(name, k, rate, self.default_route)?;
            if self.host_links && !extra {
                node.local_ip = Some(cluster.add_host_link(&node, k)?);
            }
            if extra {
                cluster.extras.push(node);
            } else {
                cluster.nodes.push(node);
            }
        }
        Ok(cluster)
    }
}

impl Cluster {
    /// Creates namespace `name` as global index `k` (address `.k+2`), recording each step.
    fn add_namespace(
        &mut self,
        name: String,
        k: usize,
        rate_mbit: Option<u32>,
        default_route: bool,
    ) -> Result<Node, ClusterError> {
        let host_octet =
            u8::try_from(k + 2).map_err(|_| ClusterError::Invalid(format!("index {k}")))?;
        let [a, b, c] = self.subnet;
        let node = Node {
            ip: Ipv4Addr::new(a, b, c, host_octet),
            host_veth: format!("iw{}h{k}", self.tag),
            ns_veth: format!("iw{}n{k}", self.tag),
            name,
            local_ip: None,
        };
        let ns = node.name.as_str();
        run("ip", &["netns", "add", ns])?;
        self.created.netns.push(node.name.clone());

        // Before anything runs in the namespace, so every process sees these files.
        let etc = Path::new("/etc/netns").join(ns);
        fs::create_dir_all(&etc).map_err(io_err(format!("creating {}", etc.display())))?;
        self.created.etc_dirs.push(etc.clone());
        let files = [
            ("host.conf", "multi on\n".to_owned()),
            (
                "resolv.conf",
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n".to_owned(),
            ),
            ("hosts", self.hosts_file()),
        ];
        for (file, text) in files {
            let path = etc.join(file);
            fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        }

        let (host, inner) = (node.host_veth.as_str(), node.ns_veth.as_str());
        run(
            "ip",
            &[
                "link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns,
            ],
        )?;
        self.created.host_veths.push(node.host_veth.clone());
        run("ip", &["link", "set", "dev", host, "master", self.bridge()])?;
        run("ip", &["link", "set", "dev", host, "up"])?;
        let cidr = format!("{}/24", node.ip);
        run("ip", &["-n", ns, "addr", "add", &cidr, "dev", inner])?;
        run("ip", &["-n", ns, "link", "set", "dev", inner, "up"])?;
        run("ip", &["-n", ns, "link", "set", "dev", "lo", "up"])?;
        let gateway = self.bridge_ip().to_string();
        if default_route {
            run(
                "ip",
                &["-n", ns, "route", "add", "default", "via", &gateway],
            )?;
        } else {
            run("ip", &["-n", ns, "route", "add", "unreachable", "default"])?;
        }
        if rate_mbit.is_some() {
            shape(&node, rate_mbit)?;
        }
        Ok(node)
    }

    /// Adds node `k`'s unshaped host-local link (see [`ClusterBuilder::host_links`]); returns
    /// the node's address on it. Named like the bridge veths (`iwThKl` / `iwTnKl`), so
    /// teardown and the crash-leftover sweep remove it with them.
    fn add_host_link(&mut self, node: &Node, k: usize) -> Result<Ipv4Addr, ClusterError> {
        let (root_ip, node_ip) = host_link_ips(self.subnet, k)
            .ok_or_else(|| ClusterError::Invalid(format!("no host-local address for node {k}")))?;
        let host = format!("{}l", node.host_veth);
        let inner = format!("{}l", node.ns_veth);
        let ns = node.name.as_str();
        run(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", &inner, "netns", ns,
            ],
        )?;
        self.created.host_veths.push(host.clone());
        run(
            "ip",
            &["addr", "add", &format!("{root_ip}/30"), "dev", &host],
        )?;
        run("ip", &["link", "set", "dev", &host, "up"])?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{node_ip}/30"),
                "dev",
                &inner,
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", "dev", &inner, "up"])?;
        Ok(node_ip)
    }

    /// Changes node `i`'s NIC speed (Mbit/s, both directions; `None` removes the shaping),
    /// e.g. to give one node a faster link than the rest. Errors if there is no such node.
    pub fn set_node_rate(&self, i: usize, rate_mbit: Option<u32>) -> Result<(), ClusterError> {
        if rate_mbit == Some(0) {
            return Err(ClusterError::Invalid("a rate of 0 Mbit/s".into()));
        }
        let node = self
            .nodes
            .get(i)
            .ok_or_else(|| ClusterError::Invalid(format!("no node {i}")))?;
        shape(node, rate_mbit)
    }

    /// Changes the NIC speed of every node to `nodes` and of every extra namespace to
    /// `extras` (Mbit/s, both directions; `None` removes the shaping), as if the cluster had
    /// been built with those rates. Running processes keep their connections; the new rate
    /// applies from the next packet. Lets one topology be measured at several rates.
    pub fn set_rate(&self, nodes: Option<u32>, extras: Option<u32>) -> Result<(), ClusterError> {
        for rate in [nodes, extras].into_iter().flatten() {
            if rate == 0 {
                return Err(ClusterError::Invalid("a rate of 0 Mbit/s".into()));
            }
        }
        for node in &self.nodes {
            shape(node, nodes)?;
        }
        for node in &self.extras {
            shape(node, extras)?;
        }
        Ok(())
    }

    /// Node `i` (0-based). Panics if there is no such node, like slice indexing.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Extra namespace `j` (0-based). Panics if there is no such namespace.
    pub fn extra(&self, j: usize) -> &Node {
        &self.extras[j]
    }

    /// All extra namespaces, in order.
    pub fn extras(&self) -> &[Node] {
        &self.extras
    }

    /// The nodes' addresses, in order.
    pub fn node_ips(&self) -> Vec<Ipv4Addr> {
        self.nodes.iter().map(|n| n.ip).collect()
    }

    /// The 6-hex-digit tag in every name this cluster created.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The bridge's name (in the root namespace).
    pub fn bridge(&self) -> &str {
        self.created.bridge.as_deref().unwrap_or("")
    }

    /// The bridge's address, `S.1`: the root namespace as the nodes see it.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The cluster's network, `S.0/24`, as text.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// Makes `name` resolve to all of `ips` (in that order) in every namespace of the cluster,
    /// replacing what an earlier call gave for `name` (an empty list removes it); other names
    /// stay. Processes already running in the namespaces see the change on their next lookup.
    pub fn write_hosts(&self, name: &str, ips: &[Ipv4Addr]) -> Result<(), ClusterError> {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(ClusterError::Invalid(format!("host name {name:?}")));
        }
        // Held while writing, so concurrent callers cannot leave an older text behind.
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if ips.is_empty() {
            hosts.remove(name);
        } else {
            hosts.insert(name.to_owned(), ips.to_vec());
        }
        let text = render_hosts(&hosts);
        for dir in &self.created.etc_dirs {
            let path = dir.join("hosts");
            // In place, one write: the bind mount in running processes pins this inode.
            let mut file = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(io_err(format!("opening {}", path.display())))?;
            file.write_all(text.as_bytes())
                .map_err(io_err(format!("writing {}", path.display())))?;
        }
        Ok(())
    }

    fn hosts_file(&self) -> String {
        render_hosts(&self.hosts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Shapes both ends of `node`'s veth to `rate_mbit`, or removes the shaping.
///
/// Download (the bridge end, a switch port): tbf, whose own FIFO holds 100 ms. Upload (the
/// namespace end, the node's NIC): tbf with `pfifo_fast` under it, holding 100 ms per band,
/// because that is where a real host queues what its NIC cannot send yet: in its default
/// qdisc, whose bands let traffic marked as bulk (`SO_PRIORITY`) yield to the rest. A single
/// FIFO here would make every host's ACKs wait behind its own bulk uploads, which no real
/// host does.
fn shape(node: &Node, rate_mbit: Option<u32>) -> Result<(), ClusterError> {
    let (host, inner, ns) = (
        node.host_veth.as_str(),
        node.ns_veth.as_str(),
        node.name.as_str(),
    );
    let Some(mbit) = rate_mbit else {
        // Deleting a root qdisc that is already the default fails; that is "unshaped" too.
        let _ = run("tc", &["qdisc", "del", "dev", host, "root"]);
        let _ = run("tc", &["-n", ns, "qdisc", "del", "dev", inner, "root"]);
        return Ok(());
    };
    let rate = format!("{mbit}mbit");
    let bytes_per_second = u64::from(mbit) * 1_000_000 / 8;
    // tbf needs a bucket of at least one timer tick's worth of bytes.
    let burst = format!("{}b", (bytes_per_second / 100).max(256 * 1024));
    let tbf = [
        "handle", "1:", "root", "tbf", "rate", &rate, "burst", &burst, "latency", "100ms",
    ];
    let mut args = vec!["qdisc", "replace", "dev", host];
    args.extend(tbf);
    run("tc", &args)?;
    let mut args = vec!["-n", ns, "qdisc", "replace", "dev", inner];
    args.extend(tbf);
    run("tc", &args)?;
    // pfifo_fast holds `txqueuelen` packets per band: 100 ms of full-size frames.
    let packets = (bytes_per_second / 10 / 1514).max(16).to_string();
    run(
        "ip",
        &[
            "-n",
            ns,
            "link",
            "set",
            "dev",
            inner,
            "txqueuelen",
            &packets,
        ],
    )?;
    run(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "replace",
            "dev",
            inner,
            "parent",
            "1:",
            "pfifo_fast",
        ],
    )?;
    Ok(())
}

fn render_hosts(names: &BTreeMap<String, Vec<Ipv4Addr>>) -> String {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ips) in names {
        for ip in ips {
            text.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    text
}

impl Drop for Cluster {
    fn drop(&mut self) {
        teardown(&self.created);
    }
}
