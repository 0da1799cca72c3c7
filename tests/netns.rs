//! The multi-node harness itself ([`imagewolf::cluster`]): nodes in network namespaces reach
//! each other and the root namespace, a name resolves to every node, `tc` shaping gives the
//! configured rate in both directions, links can be cut and restored, processes run inside the
//! namespace with their own pid, and everything is gone after drop (also after a panic, and
//! with processes still inside). Needs root; fails (never skips) without it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imagewolf::cluster::{require_root_and_tools, Cluster, ClusterBuilder, Node, LOCK_DIR};

const RATE_MBIT: u32 = 50;
const PROBE: Duration = Duration::from_secs(1);

fn require() {
    if let Err(e) = require_root_and_tools() {
        panic!("{e}");
    }
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The names a cluster made, to check they are gone later.
struct Names {
    netns: Vec<String>,
    links: Vec<String>,
    lock: String,
}

fn names(cluster: &Cluster) -> Names {
    let all = cluster.nodes().iter().chain(cluster.extras());
    let mut links = vec![cluster.bridge().to_owned()];
    links.extend(all.clone().map(|n| n.host_veth.clone()));
    let subnet = cluster.subnet();
    Names {
        netns: all.map(|n| n.name.clone()).collect(),
        links,
        lock: format!("{LOCK_DIR}/{}", subnet.trim_end_matches(".0/24")),
    }
}

fn assert_gone(names: &Names) {
    let list = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for ns in &names.netns {
        let listed = list.split_whitespace().any(|n| n == ns);
        assert!(!listed, "namespace {ns} still listed: {list}");
        let etc = Path::new("/etc/netns").join(ns);
        assert!(!etc.exists(), "{} still exists", etc.display());
    }
    for link in &names.links {
        let status = Command::new("ip")
            .args(["link", "show", "dev", link])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "link {link} still exists");
    }
    assert!(
        !Path::new(&names.lock).exists(),
        "{} still exists",
        names.lock
    );
}

fn shaped(nodes: usize, extras: usize) -> Cluster {
    ClusterBuilder {
        nodes,
        rate_mbit: Some(RATE_MBIT),
        extras,
        ..ClusterBuilder::default()
    }
    .build()
    .unwrap()
}

#[test]
fn nodes_reach_each_other_and_the_bridge_and_links_can_be_cut() {
    require();
    let cluster = shaped(3, 0);
    let bridge_ip = cluster.bridge_ip();
    for from in cluster.nodes() {
        for to in cluster.node_ips().into_iter().chain([bridge_ip]) {
            assert!(
                from.reaches(to, PROBE).unwrap(),
                "{} cannot reach {to}",
                from.name
            );
        }
    }
    // No default route: nothing outside the cluster's /24 is routable (asked of the routing
    // table, so not even a probe leaves the cluster).
    let route = cluster
        .node(0)
        .command("ip")
        .args(["route", "get", "198.51.100.1"])
        .output()
        .unwrap();
    assert!(!route.status.success(), "{route:?}");

    let (n0, n1) = (cluster.node(0), cluster.node(1));
    n1.set_link(false).unwrap();
    assert!(!n0.reaches(n1.ip, PROBE).unwrap(), "cut link still carries");
    assert!(
        !n1.reaches(bridge_ip, PROBE).unwrap(),
        "cut link still carries"
    );
    assert!(n0.reaches(cluster.node(2).ip, PROBE).unwrap());
    n1.set_link(true).unwrap();
    eventually(Duration::from_secs(5), "link restored", || {
        n0.reaches(n1.ip, PROBE).unwrap() && n1.reaches(bridge_ip, PROBE).unwrap()
    });
}

/// `getent ahostsv4 NAME` (getaddrinfo) in `node`: success, and the addresses sorted (glibc
/// sorts getaddrinfo results by RFC 6724, e.g. the node's own address first, not file order).
fn resolve(node: &Node, name: &str) -> (bool, Vec<Ipv4Addr>) {
    let out = node
        .command("getent")
        .args(["ahostsv4", name])
        .output()
        .unwrap();
    let ips = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("STREAM"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect::<BTreeSet<_>>();
    (out.status.success(), ips.into_iter().collect())
}

#[test]
fn a_name_resolves_to_every_node_in_every_namespace() {
    require();
    let cluster = ClusterBuilder {
        nodes: 3,
        extras: 1,
        ..ClusterBuilder::default()
    }
    .build()
    .unwrap();
    let ips = cluster.node_ips(); // ascending
    let early = cluster.node(0);
    cluster.write_hosts("imagewolf", &ips).unwrap();
    cluster
        .write_hosts("registry", &[cluster.extra(0).ip])
        .unwrap();
    for ns in cluster.nodes().iter().chain(cluster.extras()) {
        assert_eq!(
            resolve(ns, "imagewolf"),
            (true, ips.clone()),
            "in {}",
            ns.name
        );
        assert_eq!(resolve(ns, "registry"), (true, vec![cluster.extra(0).ip]));
    }
    // Python's getaddrinfo (what a Rust agent's resolver calls too) sees all of them.
    let out = early
        .command(imagewolf::SYSTEM_PYTHON)
        .args([
            "-c",
            "import socket; print(' '.join(a[4][0] for a in socket.getaddrinfo('imagewolf', 1, socket.AF_INET, socket.SOCK_STREAM)))",
        ])
        .output()
        .unwrap();
    let mut seen: Vec<Ipv4Addr> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, ips);

    // Replacing one name leaves the other; unknown names fail fast (no DNS server is asked).
    cluster.write_hosts("imagewolf", &ips[..2]).unwrap();
    assert_eq!(resolve(early, "imagewolf"), (true, ips[..2].to_vec()));
    assert_eq!(resolve(early, "registry").1, vec![cluster.extra(0).ip]);
    let started = Instant::now();
    assert!(!resolve(early, "nosuchname.invalid").0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(cluster.write_hosts("bad name", &ips).is_err());
}

#[test]
fn running_processes_pick_up_hosts_updates() {
    require();
    let cluster = ClusterBuilder::new(2).build().unwrap();
    let ips = cluster.node_ips();
    let script = [
        "import socket, sys, time",
        "deadline = time.time() + 10",
        "while time.time() < deadline:",
        "    try:",
        "        a = socket.getaddrinfo('late', 1, socket.AF_INET, socket.SOCK_STREAM)",
        "        if len(a) == 2: print(' '.join(sorted(x[4][0] for x in a))); sys.exit(0)",
        "    except socket.gaierror: pass",
        "    time.sleep(0.05)",
        "sys.exit(1)",
    ]
    .join("\n");
    let mut child = imagewolf::ChildGuard::spawn(
        "resolver",
        cluster
            .node(1)
            .command(imagewolf::SYSTEM_PYTHON)
            .args(["-c", &script])
            .stdout(Stdio::piped()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let it start with the old file
    cluster.write_hosts("late", &ips).unwrap();
    let status = child.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out.trim(), format!("{} {}", ips[0], ips[1]));
}

/// Runs an iperf3 test from `client` to the server in `server` (`reverse`: server sends) and
/// returns the receiver's goodput in Mbit/s.
fn iperf(server: &Node, client: &Node, reverse: bool) -> f64 {
    let direction: &[&str] = if reverse { &["-R"] } else { &[] };
    iperf_with(server, client, 5201, direction)
}

/// [`iperf`] on `port` with extra client arguments (two can run at once on distinct ports).
fn iperf_with(server: &Node, client: &Node, port: u16, extra: &[&str]) -> f64 {
    let ip = server.ip.to_string();
    let port_arg = port.to_string();
    let _srv = imagewolf::ChildGuard::spawn(
        "iperf3 server",
        server
            .command("iperf3")
            .args(["-s", "-1", "-B", &ip, "-p", &port_arg])
            .stdout(Stdio::null()),
    )
    .unwrap();
    server.wait_listening(port, Duration::from_secs(5)).unwrap();
    let mut cmd = client.command("iperf3");
    cmd.args(["-c", &ip, "-p", &port_arg, "-t", "2", "-J"]);
    cmd.args(extra);
    let out = cmd.output().unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 failed: {json}");
    let sum = &json[json.find("\"sum_received\"").expect("sum_received")..];
    let bps = &sum[sum.find("\"bits_per_second\":").expect("bits_per_second") + 18..];
    let end = bps.find([',', '\n', '}']).unwrap();
    bps[..end].trim().parse::<f64>().unwrap() / 1e6
}

#[test]
fn shaping_limits_upload_and_download_to_the_rate() {
    require();
    // Three shaped nodes and one unshaped namespace, to see each direction on its own.
    let cluster = shaped(3, 1);
    let (n0, n1, n2, free) = (
        cluster.node(0),
        cluster.node(1),
        cluster.node(2),
        cluster.extra(0),
    );
    let runs = [
        ("node1 -> node0 (both ends)", iperf(n0, n1, false)),
        ("node2 -> unshaped (upload)", iperf(free, n2, false)),
        ("unshaped -> node2 (download)", iperf(free, n2, true)),
    ];
    let rate = f64::from(RATE_MBIT);
    for (what, mbit) in runs {
        eprintln!(
            "{what}: {mbit:.1} Mbit/s of {rate} ({:.0}%)",
            mbit / rate * 100.0
        );
        assert!(
            (0.40 * rate..=1.05 * rate).contains(&mbit),
            "{what}: {mbit:.1} Mbit/s is outside 40%-105% of {rate}"
        );
    }
}

/// A node's upload queue is the kernel's default qdisc under the rate limit, so traffic
/// marked as bulk yields to the node's other traffic, as on a real host (the agents' peer
/// connections are marked so; `imagewolf_bt::SessionConfig::bulk_traffic`). Two uploads at
/// once from one node: one marked bulk (TOS "throughput", which Linux maps to
/// `TC_PRIO_BULK`), one not. With a single FIFO they would share the link about evenly.
#[test]
fn bulk_marked_uploads_yield_to_other_traffic() {
    require();
    let cluster = shaped(1, 1);
    let (node, free) = (cluster.node(0), cluster.extra(0));
    let (plain, bulk) = std::thread::scope(|s| {
        let plain = s.spawn(|| iperf_with(free, node, 5301, &[]));
        let bulk = s.spawn(|| iperf_with(free, node, 5302, &["-S", "0x08"]));
        (plain.join().unwrap(), bulk.join().unwrap())
    });
    let rate = f64::from(RATE_MBIT);
    eprintln!("best effort {plain:.1} Mbit/s, bulk {bulk:.1} Mbit/s, of {rate}");
    assert!(
        plain > 3.0 * bulk && plain > 0.6 * rate,
        "best effort {plain:.1} Mbit/s did not get ahead of bulk {bulk:.1} Mbit/s on a {rate} Mbit/s uplink"
    );
}

#[test]
fn spawned_processes_run_inside_the_namespace_under_their_own_pid() {
    require();
    let cluster = ClusterBuilder::new(1).build().unwrap();
    let node = cluster.node(0);
    let guard = node.spawn("sleeper", "sleep", ["30"]).unwrap();
    let pid = guard.id();
    let netns_ino = std::fs::metadata(Path::new("/run/netns").join(&node.name))
        .unwrap()
        .ino();
    eventually(
        Duration::from_secs(5),
        "sleep exec'd in the namespace",
        || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap_or_default();
            comm.trim() == "sleep" && ns.to_string_lossy() == format!("net:[{netns_ino}]")
        },
    );
    drop(guard);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn drop_removes_everything_even_with_processes_inside_or_after_a_panic() {
    require();
    let cluster = shaped(2, 1);
    cluster
        .write_hosts("imagewolf", &cluster.node_ips())
        .unwrap();
    let made = names(&cluster);
    // A grandchild the guard does not know about; the cluster must kill it to free the netns.
    let mut guard = cluster
        .node(1)
        .spawn("shell", "sh", ["-c", "sleep 60 & sleep 60"])
        .unwrap();
    drop(cluster);
    assert_gone(&made);
    guard.wait_timeout(Duration::from_secs(5)).unwrap();

    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let cluster = shaped(2, 0);
        *seen.lock().unwrap() = Some(names(&cluster));
        panic!("test failure while the cluster is up");
    });
    assert!(result.is_err());
    assert_gone(seen.lock().unwrap().as_ref().unwrap());
}

#[test]
fn concurrent_clusters_get_distinct_names_and_subnets() {
    require();
    let clusters: Vec<Cluster> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| ClusterBuilder::new(2).build().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let subnets: BTreeSet<String> = clusters.iter().map(Cluster::subnet).collect();
    let bridges: BTreeSet<&str> = clusters.iter().map(Cluster::bridge).collect();
    assert_eq!((subnets.len(), bridges.len()), (4, 4));
    for c in &clusters {
        assert!(c.bridge().len() <= 15 && c.node(1).host_veth.len() <= 15);
        // Each cluster's nodes see their own bridge, not another cluster's.
        assert!(c.node(0).reaches(c.node(1).ip, PROBE).unwrap());
    }
    assert!(ClusterBuilder::new(0).build().is_err());
    assert!(ClusterBuilder::new(254).build().is_err());
}

/// Whether anything named after cluster tag `tag` still exists.
fn tag_leftovers(tag: &str) -> Vec<String> {
    let prefix = format!("iw{tag}");
    let mut found = Vec::new();
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        let out = Command::new("ip").args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        found.extend(
            text.split(|c: char| c.is_whitespace() || c == ':' || c == '@')
                .filter(|w| w.starts_with(&prefix))
                .map(str::to_owned),
        );
    }
    if let Ok(dirs) = std::fs::read_dir("/etc/netns") {
        found.extend(
            dirs.flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix)),
        );
    }
    found
}

const CHILD_ENV: &str = "IMAGEWOLF_NETNS_CRASH_CHILD";

#[test]
fn leftovers_of_a_killed_process_are_swept_by_the_next_build() {
    require();
    if std::env::var_os(CHILD_ENV).is_some() {
        // The "crashing" process: build, report, and wait to be SIGKILLed (no unwinding).
        let cluster = shaped(2, 1);
        cluster
            .write_hosts("imagewolf", &cluster.node_ips())
            .unwrap();
        println!("READY {} {}", cluster.tag(), names(&cluster).lock);
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let mut child = imagewolf::ChildGuard::spawn(
        "crashing cluster owner",
        Command::new(std::env::current_exe().unwrap())
            .args([
                "leftovers_of_a_killed_process_are_swept_by_the_next_build",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let stdout = std::io::BufReader::new(child.child.stdout.take().unwrap());
    let line = std::io::BufRead::lines(stdout)
        .map(Result::unwrap)
        .find(|l| l.starts_with("READY "))
        .expect("child reported its cluster");
    let mut words = line.split_whitespace().skip(1);
    let (tag, lock) = (words.next().unwrap().to_owned(), words.next().unwrap());
    drop(child); // SIGKILL: the child's Cluster never runs its Drop
    assert!(!tag_leftovers(&tag).is_empty(), "nothing left to sweep?");
    assert!(Path::new(lock).exists());

    let _next = ClusterBuilder::new(1).build().unwrap();
    // Another test's build may be the one sweeping it, still at work: poll.
    eventually(Duration::from_secs(10), "leftovers swept", || {
        tag_leftovers(&tag).is_empty() && !Path::new(lock).exists()
    });
}

/// A `FORWARD` rule this test added, deleted on drop (also when the test fails).
struct IptablesRule(Vec<String>);

impl IptablesRule {
    fn append(spec: &[&str]) -> Self {
        let rule: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        let ok = Command::new("iptables")
            .args(["-w", "-A"])
            .args(&rule)
            .status()
            .unwrap()
            .success();
        assert!(ok, "iptables -A {rule:?}");
        Self(rule)
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-D"])
            .args(&self.0)
            .status();
    }
}

fn iptables(args: &[&str]) -> bool {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("iptables is needed for this test (apt-get install iptables)")
        .success()
}

#[test]
fn a_forward_drop_rule_does_not_cut_the_nodes_apart() {
    require();
    let cluster = ClusterBuilder::new(2).build().unwrap();
    let bridge = cluster.bridge().to_owned();
    let accept = ["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"];
    assert!(iptables(&[&["-C"][..], &accept].concat()), "no ACCEPT rule");
    // What a dockerd with iptables does to the FORWARD chain, limited to this bridge so the
    // machine's other traffic is untouched; it comes after the cluster's inserted ACCEPT.
    let _drop = IptablesRule::append(&["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "DROP"]);
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    assert!(
        n0.reaches(n1.ip, PROBE).unwrap(),
        "the ACCEPT rule does not work"
    );
    // Without the ACCEPT rule the frames vanish (br_netfilter): the rule is what helps.
    if iptables(&[&["-D"][..], &accept].concat()) {
        let cut = !n0.reaches(n1.ip, PROBE).unwrap();
        assert!(iptables(&[&["-I"][..], &accept].concat()));
        assert!(
            cut,
            "bridged traffic bypasses iptables here; the test proves nothing"
        );
    }
    drop(cluster);
    assert!(
        !iptables(&[&["-C"][..], &accept].concat()),
        "ACCEPT rule left behind"
    );
}
