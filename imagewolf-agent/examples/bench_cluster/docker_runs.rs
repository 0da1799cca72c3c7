//! Runs 3 and 4: the registry herd and ImageWolf end to end, on real dockerds.
//!
//! Topology: the registry runs inside an extra namespace whose veth is shaped to U like a
//! node's NIC; the dockerds run in the root namespace (dockerd cannot start under
//! `ip netns exec`), so a pull from a dockerd crosses only the registry's shaped link: the
//! registry's upload U is the herd's bottleneck, as a registry host's NIC is in a real scale
//! out. The agents run inside the node namespaces (their BitTorrent traffic is shaped at both
//! ends) and reach their node's dockerd through its unix socket.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use imagewolf::cluster::{Cluster, Node};
use imagewolf::docker::{Dockerd, NotificationEndpoint, Registry, RegistryOptions};
use imagewolf::{http, ChildGuard};

use crate::measure::{peak_rss_mib, rss_mib, CpuMeter};
use crate::report::{quantile, RunResult};
use crate::swarm::{tail, QUIET_CORES, QUIET_WAIT};
use crate::{interrupted, Tools};

/// The agents' HTTP API port.
const API_PORT: u16 = 8000;

/// Run 3: every daemon in `dockerds` pulls `reference` at the same moment.
pub fn herd(
    dockerds: &[&Dockerd],
    registry: &Registry,
    reference: &str,
    rate_mbit: u32,
    size_mib: u64,
    logs: &Path,
    timeout: Duration,
) -> anyhow::Result<RunResult> {
    let n = dockerds.len();
    eprintln!("== registry herd: {n} dockerds pull {reference} ({size_mib} MiB) at once");
    let gets_before = registry.blob_get_count();
    let mut pids: Vec<u32> = dockerds.iter().map(|d| d.pid()).collect();
    pids.push(registry.pid());
    let background = crate::measure::wait_quiet(QUIET_CORES, QUIET_WAIT);
    let meter = CpuMeter::start(&pids);
    let t0 = Instant::now();
    let mut pulls = Vec::with_capacity(n);
    for (i, d) in dockerds.iter().enumerate() {
        let log = logs.join(format!("herd{n}-node{i}.log"));
        let file = File::create(&log)?;
        let mut cmd = d.cli();
        cmd.args(["pull", reference])
            .stdout(file.try_clone()?)
            .stderr(file);
        let guard = ChildGuard::spawn(&format!("docker pull on node{i}"), &mut cmd)?;
        pulls.push((guard, log, None::<(f64, bool)>));
    }
    wait_pulls(&mut pulls, t0, t0 + timeout)?;
    let active = meter.read();
    let mut times = Vec::new();
    let mut failed = 0;
    for (guard, _, done) in &mut pulls {
        if done.is_none() {
            let _ = guard.child.kill();
        }
        let _ = guard.child.wait();
        match done {
            Some((t, true)) => times.push(*t),
            _ => failed += 1,
        }
    }
    let mut cpu = meter.read();
    cpu.wall = active.wall;
    cpu.machine_cores = active.machine_cores;
    times.sort_by(f64::total_cmp);
    let served = registry.blob_get_count().saturating_sub(gets_before);
    let result = RunResult {
        name: format!("registry herd (N={n})"),
        nodes: n,
        rate_mbit,
        size_mib,
        times,
        failed,
        cpu,
        peak_rss_mib: None,
        memory_only: false,
        notes: busy_note(background).into_iter().chain([format!(
            "the registry served {served} blob downloads ({n} x the image's blobs); its shaped upload is the bottleneck, so the ideal herd finishes at N x S/U = {:.0} s",
            n as f64 * crate::report::lower_bound(size_mib, rate_mbit)
        )]).collect(),
    };
    eprintln!(
        "   done: p50 {:.1} s, max {} ({:.2} x S/U)",
        result.quantile(0.5).unwrap_or(f64::NAN),
        result
            .max()
            .map_or(format!("{failed} failed"), |m| format!("{m:.1} s")),
        result.max().unwrap_or(f64::NAN) / result.bound()
    );
    Ok(result)
}

/// Removes `reference` from every daemon (so a later run pulls it again).
pub fn remove_image(dockerds: &[&Dockerd], reference: &str) {
    std::thread::scope(|s| {
        for d in dockerds {
            s.spawn(move || {
                let _ = d.run_cli(&["rmi", "-f", reference]);
            });
        }
    });
}

/// What the end-to-end run needs.
pub struct E2eSetup<'a> {
    /// The topology (nodes `0..dockerds.len()` are used).
    pub cluster: &'a Cluster,
    /// One daemon per node.
    pub dockerds: &'a [&'a Dockerd],
    /// The daemon that pushes.
    pub builder: &'a Dockerd,
    /// The namespace the registry runs in.
    pub registry_node: &'a Node,
    /// `IP:PORT` of the registry (the registry node's IP).
    pub registry_addr: &'a str,
    /// Binaries.
    pub tools: &'a Tools,
    /// Logs directory.
    pub logs: &'a Path,
    /// Scratch directory (agents' data dirs).
    pub scratch: &'a Path,
    /// Link rate, Mbit/s (report only).
    pub rate_mbit: u32,
    /// Image size, MiB (report only).
    pub size_mib: u64,
    /// Blobs in the image (layers + config), to check the registry served it once.
    pub blobs: usize,
    /// Give up after this long.
    pub timeout: Duration,
    /// Runtime for HTTP requests to the agents.
    pub rt: &'a tokio::runtime::Runtime,
    /// Name in the report.
    pub name: String,
    /// Run the agents with `--distribution blobs` (their endpoint on the node's host-local
    /// link, which the dockerds allow as plain http).
    pub registry_native: bool,
}

impl E2eSetup<'_> {
    /// The run's name as a file-name prefix for its logs.
    fn log_tag(&self) -> String {
        self.name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect()
    }
}

fn start_agent(setup: &E2eSetup<'_>, i: usize) -> anyhow::Result<ChildGuard> {
    let node = setup.cluster.node(i);
    let log_path = setup.logs.join(format!("{}-agent{i}.log", setup.log_tag()));
    let log = File::create(&log_path)?;
    let data = setup.scratch.join(format!("agent{i}"));
    let mut cmd = node.command(&setup.tools.agent);
    // Every agent of the test cluster shares one secret (the agent refuses to start without).
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", "imagewolf-test-cluster-secret");
    cmd.args(["--peers", &format!("dns:imagewolf:{API_PORT}")])
        .args(["--listen", &format!("{}:{API_PORT}", node.ip)])
        .args(["--bt-listen", &format!("{}:6000", node.ip)])
        .args(["--advertise-addr", &node.ip.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--docker-host", &setup.dockerds[i].docker_host()])
        .args(["--seed-seconds", "600", "--resolve-seconds", "1"]);
    if setup.registry_native {
        let local = node
            .local_ip
            .context("--distribution blobs needs the cluster's host-local links")?;
        cmd.args(["--distribution", "blobs"])
            .args(["--endpoint-listen", &format!("{local}:5055")]);
    } else {
        cmd.args(["--distribution", "tarball"]);
    }
    cmd
        // BENCH_AGENT_LOG (a RUST_LOG filter) for diagnosis, e.g. `info,imagewolf_agent=debug`.
        .env(
            "RUST_LOG",
            std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null());
    let agent = ChildGuard::spawn(&format!("agent{i}"), &mut cmd)?;
    node.wait_listening(API_PORT, Duration::from_secs(30))
        .with_context(|| format!("agent{i} did not listen: {}", tail(&log_path)))?;
    Ok(agent)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Run 4: agents in the first `dockerds.len()` nodes, a registry notifying node 0's agent,
/// `docker push` from the builder; each node's time is from the end of the push (when the
/// registry notifies) until its dockerd has the image.
pub fn end_to_end(setup: &E2eSetup<'_>, reference: &str) -> anyhow::Result<RunResult> {
    let (registry, agents) = start_registry_and_agents(setup)?;
    let result = measure_push(
        setup,
        &registry,
        &agents,
        reference,
        &setup.name,
        setup.size_mib,
    );
    drop(agents);
    drop(registry);
    result
}

/// A registry notifying node 0's agent, and an agent on each node (they know each other).
pub fn start_registry_and_agents(
    setup: &E2eSetup<'_>,
) -> anyhow::Result<(Registry, Vec<ChildGuard>)> {
    let n = setup.dockerds.len();
    let ips: Vec<Ipv4Addr> = setup.cluster.node_ips().into_iter().take(n).collect();
    eprintln!("== {}: {n} agents", setup.name);
    let registry = Registry::start_in(
        setup.registry_node,
        setup.registry_addr,
        &RegistryOptions {
            notifications: vec![NotificationEndpoint {
                url: format!("http://{}:{API_PORT}/registryNotifications", ips[0]),
                headers: Vec::new(),
            }],
        },
    )?;
    setup.cluster.write_hosts("imagewolf", &ips)?;
    let agents: Vec<ChildGuard> = (0..n)
        .map(|i| start_agent(setup, i))
        .collect::<anyhow::Result<_>>()?;
    // Let every agent resolve the others (it re-resolves every second).
    std::thread::sleep(Duration::from_secs(3));
    Ok((registry, agents))
}

/// Pushes `reference` and waits until every node's dockerd has it; each node's time is from
/// the end of the push. Reported as `name`, an image of `size_mib` (the S of S/U).
pub fn measure_push(
    setup: &E2eSetup<'_>,
    registry: &Registry,
    agents: &[ChildGuard],
    reference: &str,
    name: &str,
    size_mib: u64,
) -> anyhow::Result<RunResult> {
    let check_blobs = setup.registry_native;
    let n = setup.dockerds.len();
    let ips: Vec<Ipv4Addr> = setup.cluster.node_ips().into_iter().take(n).collect();
    eprintln!("   {name}: push {reference}");
    let served_before = registry.blob_get_count();
    let mut pids: Vec<u32> = setup.dockerds.iter().map(|d| d.pid()).collect();
    pids.push(registry.pid());
    pids.extend(agents.iter().map(ChildGuard::id));
    let _ = &ips;
    let background = crate::measure::wait_quiet(QUIET_CORES, QUIET_WAIT);
    let meter = CpuMeter::start(&pids);
    let pushed_at = Instant::now();
    setup
        .builder
        .run_cli(&["push", reference])
        .context("docker push")?;
    let push_secs = pushed_at.elapsed().as_secs_f64();
    // Every node's link, and the registry's as the last column pair.
    let mut links: Vec<Node> = setup.cluster.nodes()[..n].to_vec();
    links.push(setup.registry_node.clone());
    let sampler = crate::netlog::NetSampler::start(&links);
    let t0 = Instant::now();
    let t0_unix = unix_now();
    eprintln!("   push took {push_secs:.1} s; waiting for every node's dockerd to have it");
    let mut done: Vec<Option<f64>> = vec![None; n];
    // Each agent's largest sampled VmRSS and when, to tell which phase the peak belongs to.
    let mut rss_peak: Vec<(f64, f64)> = vec![(0.0, 0.0); n];
    let deadline = t0 + setup.timeout;
    let mut last_progress = Instant::now();
    while done.iter().any(Option::is_none) {
        for (i, d) in setup.dockerds.iter().enumerate() {
            if done[i].is_none() && d.has_image_api(reference).unwrap_or(false) {
                done[i] = Some(t0.elapsed().as_secs_f64());
            }
        }
        for (i, a) in agents.iter().enumerate() {
            if let Some(mib) = rss_mib(a.id()) {
                if mib > rss_peak[i].0 {
                    rss_peak[i] = (mib, t0.elapsed().as_secs_f64());
                }
            }
        }
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            eprintln!("   not everywhere after {:?}", setup.timeout);
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "   t={:>5.1}s  {} of {n} loaded",
                t0.elapsed().as_secs_f64(),
                done.iter().flatten().count()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut cpu = meter.read();
    let rss: Vec<Option<f64>> = agents.iter().map(|a| peak_rss_mib(a.id())).collect();
    let stats: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| agent_record(setup.rt, *ip, reference))
        .collect();
    let served = registry.blob_get_count() - served_before;
    let tag: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    let csv = setup.logs.join(format!("{tag}-net.csv"));
    if let Err(e) = sampler.finish().write_csv(&csv) {
        eprintln!("   writing {}: {e}", csv.display());
    }

    let mut times: Vec<f64> = done.iter().flatten().copied().collect();
    times.sort_by(f64::total_cmp);
    let failed = n - times.len();
    cpu.wall = times.last().copied().unwrap_or(cpu.wall);
    let mut notes = vec![format!(
        "times are from the end of the `docker push` (when the registry notifies); the push itself took {push_secs:.1} s; the registry served {served} blob downloads (the image has {} blobs)",
        setup.blobs
    )];
    notes.push(phases(&stats, t0_unix));
    if check_blobs {
        let needed: Vec<u64> = stats
            .iter()
            .skip(1)
            .filter_map(|s| s["blobs"]["bytes_needed"].as_u64())
            .collect();
        let down: Vec<u64> = stats
            .iter()
            .skip(1)
            .filter_map(|s| s["bytes_down"].as_u64())
            .collect();
        notes.push(format!(
            "registry-native path: each receiver needed {:?} MiB of blobs its store lacked and received {:?} MiB over BitTorrent",
            needed.iter().map(|b| (*b as f64 / 1048576.0 * 10.0).round() / 10.0).collect::<Vec<_>>(),
            down.iter().map(|b| (*b as f64 / 1048576.0 * 10.0).round() / 10.0).collect::<Vec<_>>()
        ));
    }
    notes.extend(busy_note(background));
    let peak = rss
        .iter()
        .flatten()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    if let Some(origin) = rss.first().copied().flatten() {
        let others: Vec<f64> = rss.iter().skip(1).flatten().copied().collect();
        let (sampled, at) =
            rss_peak
                .iter()
                .skip(1)
                .copied()
                .fold((0.0, 0.0), |m, v| if v.0 > m.0 { v } else { m });
        notes.push(format!(
            "agent peak RSS (VmHWM): origin {origin:.1} MiB, others max {:.1} MiB; largest VmRSS sampled every 0.1 s on a non-origin agent: {sampled:.1} MiB at t = {at:.1} s",
            others.iter().copied().fold(0.0, f64::max)
        ));
    }
    let result = RunResult {
        name: name.to_owned(),
        nodes: n,
        rate_mbit: setup.rate_mbit,
        size_mib,
        times,
        failed,
        cpu,
        peak_rss_mib: peak,
        notes,
        memory_only: false,
    };
    eprintln!(
        "   done: p50 {:.1} s, max {} ({:.2} x S/U), agent peak RSS {:.1} MiB",
        result.quantile(0.5).unwrap_or(f64::NAN),
        result
            .max()
            .map_or(format!("{failed} failed"), |m| format!("{m:.1} s")),
        result.max().unwrap_or(f64::NAN) / result.bound(),
        peak.unwrap_or(f64::NAN)
    );
    Ok(result)
}

/// The agent's /stats record for `reference`, or `null`.
fn agent_record(rt: &tokio::runtime::Runtime, ip: Ipv4Addr, reference: &str) -> serde_json::Value {
    let reply = rt.block_on(http::request(
        SocketAddr::from((ip, API_PORT)),
        "GET",
        "/stats",
        &[],
        b"",
    ));
    let Ok(reply) = reply else {
        return serde_json::Value::Null;
    };
    let list: Vec<serde_json::Value> = serde_json::from_slice(&reply.body).unwrap_or_default();
    list.into_iter()
        .find(|r| {
            r["reference"]
                .as_str()
                .is_some_and(|s| s.starts_with(reference))
        })
        .unwrap_or(serde_json::Value::Null)
}

/// One line on where the time went, from the agents' own timestamps.
fn phases(stats: &[serde_json::Value], t0_unix: f64) -> String {
    let rel = |v: &serde_json::Value, key: &str| v[key].as_f64().map(|t| t - t0_unix);
    let origin = stats.iter().find(|s| s["origin"] == true);
    let mut parts = Vec::new();
    if let Some(o) = origin {
        if let (Some(s), Some(c)) = (rel(o, "started_at"), rel(o, "completed_at")) {
            parts.push(format!(
                "origin heard the push at {s:.1} s and had read the image from the registry \
                 into segments (seeded as each was written) by {c:.1} s"
            ));
        }
        if let Some(l) = rel(o, "loaded_at") {
            parts.push(format!("origin loaded it into its own dockerd by {l:.1} s"));
        }
    }
    let others: Vec<&serde_json::Value> = stats.iter().filter(|s| s["origin"] != true).collect();
    let mut downloaded: Vec<f64> = others
        .iter()
        .filter_map(|s| rel(s, "completed_at"))
        .collect();
    let mut loads: Vec<f64> = others
        .iter()
        .filter_map(|s| s["load_seconds"].as_f64())
        .collect();
    downloaded.sort_by(f64::total_cmp);
    loads.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (downloaded.first(), downloaded.last()) {
        parts.push(format!(
            "swarm downloads complete between {first:.1} s and {last:.1} s"
        ));
    }
    let mut loaded: Vec<f64> = others.iter().filter_map(|s| rel(s, "loaded_at")).collect();
    loaded.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (loaded.first(), loaded.last()) {
        parts.push(format!("loaded between {first:.1} s and {last:.1} s"));
    }
    if let Some(p50) = quantile(&loads, 0.5) {
        parts.push(format!(
            "docker load (streamed from the first segment on, so it includes the download) took p50 {p50:.1} s, max {:.1} s",
            loads.last().copied().unwrap_or(p50)
        ));
    }
    if parts.is_empty() {
        "no phase timestamps from the agents".into()
    } else {
        format!("phases: {}", parts.join("; "))
    }
}

/// A fresh scratch dir path under `base` (created).
pub fn scratch_dir(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(name);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A note when other work was running as a run started.
fn busy_note(background: f64) -> Option<String> {
    (background >= QUIET_CORES).then(|| {
        format!("other work kept {background:.2} cores busy just before the start (shared machine)")
    })
}

/// A pull process, its log, and when it ended (seconds from the start, and success).
pub type Pull = (ChildGuard, PathBuf, Option<(f64, bool)>);

/// Waits for `pulls` to end, until `deadline`, reporting progress every 10 s; pulls still
/// running at the deadline are left for the caller to stop.
pub fn wait_pulls(pulls: &mut [Pull], t0: Instant, deadline: Instant) -> anyhow::Result<()> {
    let n = pulls.len();
    let mut last_progress = Instant::now();
    loop {
        let mut pending = 0;
        for (i, (guard, log, done)) in pulls.iter_mut().enumerate() {
            if done.is_some() {
                continue;
            }
            match guard.child.try_wait()? {
                Some(status) => {
                    *done = Some((t0.elapsed().as_secs_f64(), status.success()));
                    if !status.success() {
                        eprintln!("   node{i} pull FAILED ({status}): {}", tail(log));
                    }
                }
                None => pending += 1,
            }
        }
        if pending == 0 {
            return Ok(());
        }
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            eprintln!("   {pending} pulls still running at the deadline; stopping them");
            return Ok(());
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "   t={:>5.1}s  {} of {n} pulled",
                t0.elapsed().as_secs_f64(),
                n - pending
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
