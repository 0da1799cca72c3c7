//! Run 6 (`cold`): cold pulls through mirror mode, on containerd nodes, in one invocation so
//! that every ratio is between figures of the same run.
//!
//! 1. **Scale-out**: an S MiB image in 4 layers, pushed to the registry and announced to no
//!    agent, pulled by N containerd nodes at once (`ctr images pull`, run inside each node's
//!    namespace: in containerd 1.6 the ctr client does the fetching, so its traffic crosses
//!    the node's shaped link). Once straight from the registry (`--plain-http`: the herd),
//!    once through each node's agent (`--hosts-dir` with a `hosts.toml` naming the agent's
//!    endpoint as a mirror, the registry as `server`). Reported: every node's time from the
//!    common start until its `ctr` exits (fetched and unpacked, checked against the
//!    registry's manifest digest), and the registry's blob GETs per blob from its access log.
//! 2. **A lone cold pull**: one node pulls, no agent has the image (all N agents fresh and
//!    running): through the mirror against straight from the registry, alternated `repeat`
//!    times, the median of each compared.
//! 3. **A hit**: a `hit_mib` MiB blob already in node 0's store, read from the endpoint over
//!    loopback (`curl` in the node's namespace, body to /dev/null), next to ceilings measured
//!    right after: the same `curl` reading the store's file (`file://`), `cat` of it, and a
//!    loopback iperf3 stream in the namespace. Links are unshaped for this part (only to
//!    bring the blob in quicker; loopback is never shaped).
//!
//! Every pull starts cold: fresh containerds (own root, state and socket, stopped and
//! removed after each pull) and fresh agents (new data dirs) for each one. The registry runs
//! in its own namespace shaped to U like a node. Images are built and pushed with the links
//! unshaped (the pushes are not measured).

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use imagewolf::cluster::{Cluster, Node};
use imagewolf::containerd::Containerd;
use imagewolf::docker::{build_test_image, Dockerd, Registry};
use imagewolf::{http, ChildGuard};

use crate::docker_runs::wait_pulls;
use crate::measure::CpuMeter;
use crate::report::{lower_bound, quantile, RunResult};
use crate::swarm::{tail, QUIET_CORES, QUIET_WAIT};
use crate::{interrupted, Tools};

/// The agents' HTTP API port.
const API_PORT: u16 = 8000;
/// The agent's registry endpoint inside each node's namespace (its default).
const ENDPOINT: &str = "127.0.0.1:5055";
/// Loopback reads of the hit blob measured (the median is reported).
const HIT_READS: usize = 5;
/// Manifest types a pull accepts.
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

/// What the cold run needs.
pub struct ColdSetup<'a> {
    /// The topology (nodes `0..nodes` are used).
    pub cluster: &'a Cluster,
    /// N, the nodes pulling at once.
    pub nodes: usize,
    /// The daemon that builds and pushes the images.
    pub builder: &'a Dockerd,
    /// The namespace the registry runs in (shaped like a node).
    pub registry_node: &'a Node,
    /// `IP:PORT` of the registry.
    pub registry_addr: &'a str,
    /// Binaries.
    pub tools: &'a Tools,
    /// Logs directory.
    pub logs: &'a Path,
    /// Scratch directory (hosts dir, agents' data dirs).
    pub scratch: &'a Path,
    /// Link rate, Mbit/s.
    pub rate_mbit: u32,
    /// Image size, MiB.
    pub size_mib: u64,
    /// Layers of the image.
    pub layers: usize,
    /// Repetitions of the lone pull (each way).
    pub repeat: usize,
    /// Size of the hit blob, MiB (0: no hit measurement).
    pub hit_mib: u64,
    /// Runtime for HTTP requests to the agents and the registry.
    pub rt: &'a tokio::runtime::Runtime,
}

/// One row of the cold table.
#[derive(Debug, Clone)]
pub struct ColdRow {
    /// Times, CPU and notes.
    pub result: RunResult,
    /// Blob GETs (any status) the registry answered during the row, per blob of the image
    /// (config first, then the layers), summed over the row's repetitions.
    pub gets_per_blob: Vec<usize>,
    /// Repetitions summed in `gets_per_blob`.
    pub repetitions: usize,
}

/// The hit measurement: GB/s (10^9 bytes per second) of each read.
#[derive(Debug, Clone, Default)]
pub struct Hit {
    /// Size of the blob, bytes.
    pub bytes: u64,
    /// The first read, a miss: the agent fetched the blob from the upstream (unshaped).
    pub miss_s: Option<f64>,
    /// `curl` from the endpoint over loopback, the blob in the store.
    pub endpoint: Vec<f64>,
    /// `curl file://` of the store's file (the client's own ceiling, no HTTP).
    pub curl_file: Vec<f64>,
    /// `cat FILE > /dev/null` (the page cache's).
    pub cat: Vec<f64>,
    /// One loopback iperf3 TCP stream in the node's namespace, 3 s.
    pub iperf: Option<f64>,
}

impl Hit {
    /// Median of some reads.
    pub fn median(v: &[f64]) -> Option<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        quantile(&v, 0.5)
    }
}

/// Everything the cold run measured.
#[derive(Debug, Clone, Default)]
pub struct ColdReport {
    /// Herd, mirror scale-out, lone direct pull, lone mirror pull.
    pub rows: Vec<ColdRow>,
    /// The hit measurement, if made.
    pub hit: Option<Hit>,
    /// Ratios against the targets, and observations.
    pub notes: Vec<String>,
}

/// The image under test: its reference, the registry's manifest digest and its blobs.
struct TestImage {
    reference: String,
    repository: String,
    digest: String,
    blobs: Vec<String>,
}

/// Runs the whole cold measurement (see the module docs).
pub fn run(setup: &ColdSetup<'_>) -> anyhow::Result<ColdReport> {
    let n = setup.nodes;
    let registry = Registry::start_in(
        setup.registry_node,
        setup.registry_addr,
        &Default::default(),
    )?;
    let layer_mib = (setup.size_mib / setup.layers as u64).max(1) as usize;
    let (image, hit_image) = {
        setup.cluster.set_rate(None, None)?;
        let built = build_images(setup, layer_mib);
        setup
            .cluster
            .set_rate(Some(setup.rate_mbit), Some(setup.rate_mbit))?;
        built?
    };
    let hosts_dir = setup.scratch.join("hosts");
    write_hosts_dir(&hosts_dir, setup.registry_addr)?;
    let bound = lower_bound(setup.size_mib, setup.rate_mbit);
    let herd_timeout = Duration::from_secs_f64(120.0 + 4.0 * n as f64 * bound);
    let lone_timeout = Duration::from_secs_f64(60.0 + 10.0 * bound);
    let mut report = ColdReport::default();

    // 1. The scale-out: the herd, then through the mirrors.
    let herd = pull_round(
        setup,
        &registry,
        &image,
        &Round {
            name: format!("containerd herd, straight from the registry (N={n})"),
            tag: "herd".into(),
            pullers: n,
            mirror: None,
            timeout: herd_timeout,
        },
    )?;
    let mirror = pull_round(
        setup,
        &registry,
        &image,
        &Round {
            name: format!("ImageWolf mirror, image never announced (N={n})"),
            tag: "mirror".into(),
            pullers: n,
            mirror: Some(&hosts_dir),
            timeout: herd_timeout,
        },
    )?;

    // 2. The lone pull, alternated.
    let mut direct_reps = Vec::new();
    let mut mirror_reps = Vec::new();
    let mut direct_gets = vec![0; image.blobs.len()];
    let mut mirror_gets = vec![0; image.blobs.len()];
    for rep in 0..setup.repeat.max(1) {
        for via_mirror in [false, true] {
            let row = pull_round(
                setup,
                &registry,
                &image,
                &Round {
                    name: if via_mirror {
                        "lone cold pull through the mirror (N agents up, none has it)".into()
                    } else {
                        "lone cold pull straight from the registry".into()
                    },
                    tag: format!(
                        "lone-{}-{rep}",
                        if via_mirror { "mirror" } else { "direct" }
                    ),
                    pullers: 1,
                    mirror: via_mirror.then_some(hosts_dir.as_path()),
                    timeout: lone_timeout,
                },
            )?;
            let (reps, gets) = if via_mirror {
                (&mut mirror_reps, &mut mirror_gets)
            } else {
                (&mut direct_reps, &mut direct_gets)
            };
            for (sum, g) in gets.iter_mut().zip(&row.gets_per_blob) {
                *sum += g;
            }
            reps.push(row.result);
        }
    }
    let reps = direct_reps.len();
    let lone_direct = ColdRow {
        result: crate::median_run(direct_reps),
        gets_per_blob: direct_gets,
        repetitions: reps,
    };
    let lone_mirror = ColdRow {
        result: crate::median_run(mirror_reps),
        gets_per_blob: mirror_gets,
        repetitions: reps,
    };

    // 3. The hit.
    if let Some(hit_image) = &hit_image {
        setup.cluster.set_rate(None, None)?;
        let hit = measure_hit(setup, hit_image);
        setup
            .cluster
            .set_rate(Some(setup.rate_mbit), Some(setup.rate_mbit))?;
        report.hit = Some(hit?);
    }
    drop(registry);

    // Ratios against the targets.
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    match (herd.result.max(), mirror.result.max()) {
        (Some(h), Some(m)) => report.notes.push(format!(
            "Cold pull by N={n} containerd nodes at once: herd's slowest node / mirror's slowest node = {:.2} ({h:.1} s / {m:.1} s; target >= 4: {})",
            h / m,
            verdict(h / m >= 4.0)
        )),
        _ => report.notes.push(format!(
            "Cold pull by N={n} containerd nodes at once: a pull failed ({} herd, {} mirror), no ratio",
            herd.result.failed, mirror.result.failed
        )),
    }
    report.notes.push(format!(
        "Registry blob GETs per blob (config, then layers) in the mirror scale-out: {:?} (target 1 each: {}); in the herd: {:?}",
        mirror.gets_per_blob,
        verdict(mirror.gets_per_blob.iter().all(|g| *g == 1)),
        herd.gets_per_blob
    ));
    match (lone_direct.result.max(), lone_mirror.result.max()) {
        (Some(d), Some(m)) => report.notes.push(format!(
            "Lone cold pull, no peer has the image: mirror / direct = {:.3} ({m:.2} s / {d:.2} s, the median of {reps} alternated pulls each; target <= 1.1: {})",
            m / d,
            verdict(m / d <= 1.1)
        )),
        _ => report
            .notes
            .push("Lone cold pull: a pull failed, no ratio".into()),
    }
    if let Some(hit) = &report.hit {
        if let Some(e) = Hit::median(&hit.endpoint) {
            let vs = |name: &str, v: Option<f64>| {
                v.map(|v| format!("{:.2} x {name} ({v:.2} GB/s)", e / v))
            };
            let ceilings: Vec<String> = [
                vs("curl file://", Hit::median(&hit.curl_file)),
                vs("cat", Hit::median(&hit.cat)),
                vs("loopback iperf3", hit.iperf),
            ]
            .into_iter()
            .flatten()
            .collect();
            report.notes.push(format!(
                "Mirror hit: a {} MiB blob in the store read from the endpoint over loopback at {e:.2} GB/s (median of {HIT_READS}; target >= 1 GB/s: {}), = {}",
                hit.bytes >> 20,
                verdict(e >= 1.0),
                ceilings.join(", ")
            ));
        }
    }
    report.rows = vec![herd, mirror, lone_direct, lone_mirror];
    Ok(report)
}

/// Builds and pushes the image under test and (if asked) the hit image.
fn build_images(
    setup: &ColdSetup<'_>,
    layer_mib: usize,
) -> anyhow::Result<(TestImage, Option<TestImage>)> {
    let reference = format!("{}/bench/cold:v1", setup.registry_addr);
    eprintln!(
        "building and pushing {reference} ({} x {layer_mib} MiB)",
        setup.layers
    );
    build_test_image(setup.builder, &reference, setup.layers, layer_mib)?;
    setup.builder.run_cli(&["push", &reference])?;
    let image = describe(setup, &reference, "bench/cold")?;
    let hit = if setup.hit_mib > 0 {
        let reference = format!("{}/bench/hit:v1", setup.registry_addr);
        eprintln!(
            "building and pushing {reference} (1 x {} MiB)",
            setup.hit_mib
        );
        build_test_image(setup.builder, &reference, 1, setup.hit_mib as usize)?;
        setup.builder.run_cli(&["push", &reference])?;
        let hit = describe(setup, &reference, "bench/hit")?;
        let _ = setup.builder.run_cli(&["rmi", "-f", &reference]);
        Some(hit)
    } else {
        None
    };
    Ok((image, hit))
}

/// The registry's manifest digest and blobs of `reference`.
fn describe(setup: &ColdSetup<'_>, reference: &str, repository: &str) -> anyhow::Result<TestImage> {
    let digest = setup.builder.repo_digest(reference)?;
    let addr: SocketAddr = setup.registry_addr.parse()?;
    let reply = setup.rt.block_on(http::request(
        addr,
        "GET",
        &format!("/v2/{repository}/manifests/{digest}"),
        &[("Accept", ACCEPT)],
        b"",
    ))?;
    anyhow::ensure!(
        reply.status == 200,
        "manifest of {reference}: {}",
        reply.status
    );
    let doc: serde_json::Value = serde_json::from_slice(&reply.body)?;
    let mut blobs = vec![doc["config"]["digest"]
        .as_str()
        .context("manifest without a config")?
        .to_owned()];
    for l in doc["layers"].as_array().into_iter().flatten() {
        blobs.push(l["digest"].as_str().context("layer digest")?.to_owned());
    }
    Ok(TestImage {
        reference: reference.to_owned(),
        repository: repository.to_owned(),
        digest,
        blobs,
    })
}

/// containerd's hosts dir for the registry: the agent's endpoint as a mirror (pull and
/// resolve), the registry itself as `server` (what containerd falls back to).
fn write_hosts_dir(dir: &Path, registry: &str) -> anyhow::Result<()> {
    let host = dir.join(registry);
    fs::create_dir_all(&host)?;
    fs::write(
        host.join("hosts.toml"),
        format!(
            "server = \"http://{registry}\"\n\n[host.\"http://{ENDPOINT}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    Ok(())
}

/// One measured pull round.
struct Round<'a> {
    name: String,
    /// File-name tag for logs and scratch.
    tag: String,
    /// Nodes `0..pullers` pull; every node of `0..nodes` runs a containerd (and an agent
    /// with `mirror`).
    pullers: usize,
    /// The hosts dir pointing at the agents (`None`: straight from the registry).
    mirror: Option<&'a Path>,
    timeout: Duration,
}

/// Fresh containerds (and agents, through the mirror), `round.pullers` nodes pulling at once.
fn pull_round(
    setup: &ColdSetup<'_>,
    registry: &Registry,
    image: &TestImage,
    round: &Round<'_>,
) -> anyhow::Result<ColdRow> {
    let n = setup.nodes;
    // Containerds only where someone pulls straight from the registry; on every node when
    // the agents run (each agent next to its node's runtime, as deployed).
    let runtimes = if round.mirror.is_some() {
        n
    } else {
        round.pullers
    };
    eprintln!("== cold: {} ({} pulling)", round.name, round.pullers);
    let containerds = start_containerds(setup.cluster, runtimes, &format!("cold-{}", round.tag))?;
    let scratch = setup.scratch.join(&round.tag);
    fs::create_dir_all(&scratch)?;
    let agents = match round.mirror {
        Some(_) => {
            let ips: Vec<Ipv4Addr> = setup.cluster.node_ips().into_iter().take(n).collect();
            setup.cluster.write_hosts("imagewolf", &ips)?;
            let agents = (0..n)
                .map(|i| start_agent(setup, i, &containerds[i], &scratch, &round.tag))
                .collect::<anyhow::Result<Vec<_>>>()?;
            wait_known(setup, &ips)?;
            agents
        }
        None => Vec::new(),
    };
    let mut pids: Vec<u32> = containerds
        .iter()
        .filter_map(|c| pid_running(&c.dir().join("config.toml")))
        .collect();
    pids.push(registry.pid());
    pids.extend(agents.iter().map(ChildGuard::id));
    let gets_before = registry.blob_gets().len();
    let background = crate::measure::wait_quiet(QUIET_CORES, QUIET_WAIT);
    let meter = CpuMeter::start(&pids);
    // Every node's link, and the registry's last.
    let mut links: Vec<Node> = setup.cluster.nodes()[..n].to_vec();
    links.push(setup.registry_node.clone());
    let sampler = crate::netlog::NetSampler::start(&links);
    let t0 = Instant::now();
    let offset = t0.duration_since(sampler.started).as_secs_f64();
    let mut pulls = Vec::with_capacity(round.pullers);
    for (i, c) in containerds.iter().enumerate().take(round.pullers) {
        let log = setup.logs.join(format!("cold-{}-ctr{i}.log", round.tag));
        let file = File::create(&log)?;
        let mut cmd = setup.cluster.node(i).command("ctr");
        cmd.args(["--connect-timeout", "2s", "-a"])
            .arg(c.socket())
            .args(["-n", "k8s.io", "images", "pull"]);
        match round.mirror {
            Some(dir) => cmd.arg("--hosts-dir").arg(dir),
            None => cmd.arg("--plain-http"),
        };
        cmd.arg(&image.reference)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let guard = ChildGuard::spawn(&format!("ctr pull on node{i}"), &mut cmd)?;
        pulls.push((guard, log, None::<(f64, bool)>));
    }
    wait_pulls(&mut pulls, t0, t0 + round.timeout)?;
    let active = meter.read();
    let net = sampler.finish();
    let mut times = Vec::new();
    let mut failed = 0;
    let mut wrong = Vec::new();
    for (i, (guard, _, done)) in pulls.iter_mut().enumerate() {
        if done.is_none() {
            let _ = guard.child.kill();
        }
        let _ = guard.child.wait();
        match done {
            Some((t, true)) => {
                // Fetched, unpacked and named after the registry's manifest digest.
                let got = containerds[i].digest_of(&image.reference);
                if got.as_deref() == Some(image.digest.as_str()) {
                    times.push(*t);
                } else {
                    failed += 1;
                    wrong.push(format!("node{i}: {got:?}"));
                }
            }
            _ => failed += 1,
        }
    }
    let mut cpu = meter.read();
    cpu.wall = active.wall;
    cpu.machine_cores = active.machine_cores;
    times.sort_by(f64::total_cmp);
    let gets: Vec<imagewolf::docker::BlobGet> =
        registry.blob_gets().into_iter().skip(gets_before).collect();
    let gets_per_blob: Vec<usize> = image
        .blobs
        .iter()
        .map(|b| {
            gets.iter()
                .filter(|g| g.repository == image.repository && g.digest == *b)
                .count()
        })
        .collect();
    let mut notes = Vec::new();
    if background >= QUIET_CORES {
        notes.push(format!(
            "other work kept {background:.2} cores busy just before the start (shared machine)"
        ));
    }
    if !wrong.is_empty() {
        notes.push(format!(
            "pull succeeded without the registry's manifest digest {}: {}",
            image.digest,
            wrong.join(", ")
        ));
    }
    let non_200: Vec<u16> = gets
        .iter()
        .filter(|g| g.status != 200)
        .map(|g| g.status)
        .collect();
    if !non_200.is_empty() {
        notes.push(format!("registry blob GETs not answered 200: {non_200:?}"));
    }
    let csv = setup.logs.join(format!("cold-{}-net.csv", round.tag));
    if let Err(e) = net.write_csv(&csv) {
        eprintln!("   writing {}: {e}", csv.display());
    }
    if let Some((up, down)) = net.moved(offset, offset + times.last().copied().unwrap_or(0.0)) {
        let mib = |v: &[f64]| {
            v.iter()
                .map(|b| (b / 1048576.0).round() as u64)
                .collect::<Vec<_>>()
        };
        notes.push(format!(
            "link bytes until the last node finished (frames, MiB): nodes uploaded {:?}, downloaded {:?}; the registry uploaded {} (per-100 ms rates in {})",
            mib(&up[..n]),
            mib(&down[..n]),
            mib(&up[n..]).first().copied().unwrap_or(0),
            csv.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())
        ));
    }
    if round.mirror.is_some() {
        let counts: Vec<MirrorCounts> = setup
            .cluster
            .node_ips()
            .into_iter()
            .take(n)
            .map(|ip| mirror_counts(setup.rt, ip))
            .collect();
        let sum = |f: fn(&MirrorCounts) -> u64| counts.iter().map(f).sum::<u64>();
        notes.push(format!(
            "agents' mirror counters (all nodes): {} blobs read from the upstream (per node {:?}), {} fetched from peers over BitTorrent, {} peer fetches fell back to the upstream, {} pulls not served (runtime went to the registry), {} manifests resolved upstream",
            sum(|c| c.blobs_upstream),
            counts.iter().map(|c| c.blobs_upstream).collect::<Vec<_>>(),
            sum(|c| c.blobs_from_peers),
            sum(|c| c.peer_fallbacks),
            sum(|c| c.misses),
            sum(|c| c.manifests_upstream),
        ));
    }
    let result = RunResult {
        name: round.name.clone(),
        nodes: round.pullers,
        rate_mbit: setup.rate_mbit,
        size_mib: setup.size_mib,
        times,
        failed,
        cpu,
        peak_rss_mib: agents
            .iter()
            .filter_map(|a| crate::measure::peak_rss_mib(a.id()))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        notes,
        memory_only: false,
    };
    eprintln!(
        "   done: p50 {:.1} s, max {} ({:.2} x S/U); registry blob GETs per blob {gets_per_blob:?}",
        result.quantile(0.5).unwrap_or(f64::NAN),
        result
            .max()
            .map_or(format!("{failed} failed"), |m| format!("{m:.2} s")),
        result.max().unwrap_or(f64::NAN) / result.bound()
    );
    drop(agents);
    drop(containerds);
    let _ = fs::remove_dir_all(&scratch);
    Ok(ColdRow {
        result,
        gets_per_blob,
        repetitions: 1,
    })
}

/// Starts a fresh containerd in each of nodes `0..n` at once.
fn start_containerds(cluster: &Cluster, n: usize, tag: &str) -> anyhow::Result<Vec<Containerd>> {
    let started: Vec<std::io::Result<Containerd>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let node = cluster.node(i);
                let tag = format!("{tag}-node{i}");
                s.spawn(move || Containerd::start_in(node, &tag))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("containerd start panicked")))
            })
            .collect()
    });
    // Keep the ones that started (stopped on drop) and report the first error.
    let mut out = Vec::with_capacity(n);
    let mut first_err = None;
    for r in started {
        match r {
            Ok(c) => out.push(c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(out),
    }
}

/// The pid of the running process whose command line names `config` (a containerd started
/// with `--config CONFIG`), for CPU accounting only.
fn pid_running(config: &Path) -> Option<u32> {
    let needle = config.to_string_lossy().into_owned();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.contains(&needle) && cmdline.contains("containerd")).then_some(pid)
    })
}

/// Starts node `i`'s agent, next to its containerd, mirror mode on (the default), its
/// endpoint on 127.0.0.1:5055 in the node's namespace.
fn start_agent(
    setup: &ColdSetup<'_>,
    i: usize,
    containerd: &Containerd,
    scratch: &Path,
    tag: &str,
) -> anyhow::Result<ChildGuard> {
    let node = setup.cluster.node(i);
    let log_path = setup.logs.join(format!("cold-{tag}-agent{i}.log"));
    let log = File::create(&log_path)?;
    let mut cmd = node.command(&setup.tools.agent);
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", "imagewolf-test-cluster-secret");
    cmd.args(["--peers", &format!("dns:imagewolf:{API_PORT}")])
        .args(["--listen", &format!("{}:{API_PORT}", node.ip)])
        .args(["--bt-listen", &format!("{}:6000", node.ip)])
        .args(["--advertise-addr", &node.ip.to_string()])
        .arg("--data-dir")
        .arg(scratch.join(format!("agent{i}")))
        .args(["--runtime", "containerd", "--containerd-address"])
        .arg(containerd.socket())
        // Mirror mode is on by default (`--mirror` takes no value in this build).
        .args(["--distribution", "blobs"])
        .args(["--allow", &format!("{}/**", setup.registry_addr)])
        .args(["--insecure-registry", setup.registry_addr])
        .args(["--seed-seconds", "600", "--resolve-seconds", "1"])
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

/// `/metrics` of the agent at `ip`, or empty.
fn metrics(rt: &tokio::runtime::Runtime, ip: Ipv4Addr) -> String {
    rt.block_on(http::request(
        SocketAddr::from((ip, API_PORT)),
        "GET",
        "/metrics",
        &[],
        b"",
    ))
    .map(|r| r.text())
    .unwrap_or_default()
}

/// An unlabelled sample of Prometheus text.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (up to 20 s) until every agent knows all the others, so that they agree on each
/// blob's coordinator.
fn wait_known(setup: &ColdSetup<'_>, ips: &[Ipv4Addr]) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let known: Vec<u64> = ips
            .iter()
            .map(|ip| sample(&metrics(setup.rt, *ip), "imagewolf_known_agents").unwrap_or(0))
            .collect();
        if known.iter().all(|k| *k + 1 >= ips.len() as u64) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) || interrupted() {
            bail!("the agents do not all know each other: known agents {known:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The mirror counters of one agent.
#[derive(Debug, Default)]
struct MirrorCounts {
    manifests_upstream: u64,
    blobs_upstream: u64,
    blobs_from_peers: u64,
    peer_fallbacks: u64,
    misses: u64,
}

fn mirror_counts(rt: &tokio::runtime::Runtime, ip: Ipv4Addr) -> MirrorCounts {
    let text = metrics(rt, ip);
    let get = |name: &str| sample(&text, name).unwrap_or(0);
    MirrorCounts {
        manifests_upstream: get("imagewolf_mirror_manifests_upstream_total"),
        blobs_upstream: get("imagewolf_mirror_blobs_upstream_total"),
        blobs_from_peers: get("imagewolf_mirror_blobs_from_peers_total"),
        peer_fallbacks: get("imagewolf_mirror_peer_fallbacks_total"),
        misses: get("imagewolf_mirror_misses_total"),
    }
}

/// The hit (see the module docs): one agent on node 0 (no peers), its containerd fresh.
fn measure_hit(setup: &ColdSetup<'_>, image: &TestImage) -> anyhow::Result<Hit> {
    eprintln!(
        "== cold: mirror hit, {} MiB blob over loopback",
        setup.hit_mib
    );
    let node = setup.cluster.node(0);
    let containerds = start_containerds(setup.cluster, 1, "cold-hit")?;
    let scratch = setup.scratch.join("hit");
    fs::create_dir_all(&scratch)?;
    setup.cluster.write_hosts("imagewolf", &[node.ip])?;
    let agent = start_agent(setup, 0, &containerds[0], &scratch, "hit")?;
    let blob = image.blobs.last().context("hit image without a layer")?;
    let query = format!("?ns={}", setup.registry_addr);
    let base = format!("http://{ENDPOINT}/v2/{}", image.repository);
    // The manifest by tag (as a runtime resolves it), then the layer: a miss, fetched.
    curl(
        node,
        &format!("{base}/manifests/v1{query}"),
        &["-H", &format!("Accept: {ACCEPT}")],
    )?;
    let blob_url = format!("{base}/blobs/{blob}{query}");
    let miss = curl(node, &blob_url, &[])?;
    let mut hit = Hit {
        bytes: miss.bytes,
        miss_s: Some(miss.seconds),
        ..Hit::default()
    };
    let file = find_blob(&scratch.join("agent0"), blob)
        .with_context(|| format!("{blob} not in node 0's store after the miss"))?;
    let _ = crate::measure::wait_quiet(QUIET_CORES, QUIET_WAIT);
    for _ in 0..HIT_READS {
        let r = curl(node, &blob_url, &[])?;
        anyhow::ensure!(r.bytes == hit.bytes, "short read: {} bytes", r.bytes);
        hit.endpoint.push(r.gbps());
    }
    let file_url = format!("file://{}", file.display());
    for _ in 0..3 {
        hit.curl_file.push(curl(node, &file_url, &[])?.gbps());
        let started = Instant::now();
        let status = Command::new("cat")
            .arg(&file)
            .stdout(File::create("/dev/null")?)
            .status()?;
        anyhow::ensure!(status.success(), "cat {}", file.display());
        hit.cat
            .push(hit.bytes as f64 / started.elapsed().as_secs_f64() / 1e9);
    }
    hit.iperf = loopback_iperf(node).ok();
    eprintln!(
        "   endpoint {:?} GB/s; curl file:// {:?}; cat {:?}; iperf3 {:?}",
        hit.endpoint, hit.curl_file, hit.cat, hit.iperf
    );
    drop(agent);
    drop(containerds);
    let _ = fs::remove_dir_all(&scratch);
    Ok(hit)
}

/// One `curl` transfer, body to /dev/null.
struct Transfer {
    bytes: u64,
    seconds: f64,
}

impl Transfer {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
}

/// `curl` of `url` inside `node`'s namespace, body discarded; fails unless it succeeds.
fn curl(node: &Node, url: &str, extra: &[&str]) -> anyhow::Result<Transfer> {
    let out = node
        .command("curl")
        .args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
        ])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    let bytes = f.next().and_then(|v| v.parse().ok()).context("curl size")?;
    let seconds = f.next().and_then(|v| v.parse().ok()).context("curl time")?;
    Ok(Transfer { bytes, seconds })
}

/// The file of blob `digest` under an agent's data dir (`.../blobs/sha256/<hex>`).
fn find_blob(dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()) == Some(hex)
                && p.parent()
                    .and_then(Path::file_name)
                    .and_then(|n| n.to_str())
                    == Some("sha256")
            {
                return Some(p);
            }
        }
    }
    None
}

/// GB/s of one loopback TCP stream in `node`'s namespace (iperf3, 3 s).
fn loopback_iperf(node: &Node) -> anyhow::Result<f64> {
    let mut server = node.command("iperf3");
    server
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", "5299"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = ChildGuard::spawn("loopback iperf3 server", &mut server)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = node
        .command("iperf3")
        .args(["-c", "127.0.0.1", "-p", "5299", "-t", "3", "-J"])
        .stdin(Stdio::null())
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 8.0 / 1e9)
        .context("iperf3 gave no rate")
}
