//! Memory of N agents as separate processes (issue 18: "agent RSS at N=48 within 64 MiB").
//! A measurement, ignored by default; run by hand:
//!
//! ```text
//! IW_NODES=48 IW_IMAGE_MIB=32 IW_IDLE_SECS=60 \
//!   cargo test --release -p imagewolf-agent --test rss_processes -- --ignored --nocapture
//! ```
//!
//! N `imagewolf-agent` processes on loopback (`--runtime none --distribution blobs`, a
//! static peer list of all of them, one cluster secret), a registry in the test process
//! serving three generated 4-layer images over the real registry API, each pushed to another
//! agent (the next one after the previous is loaded everywhere), then `IW_IDLE_SECS` idle.
//! Each process's VmRSS (now) and VmHWM (its peak) are read from `/proc/<pid>/status` after
//! the pushes and after the idle time; one markdown row per N.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagewolf::agent_api::notify_push;
use imagewolf::mem_registry::MemRegistry;
use imagewolf::oci::{Blob, Image};
use imagewolf::{http, ChildGuard, TempDir};
use imagewolf_agent::registry::manifest::host_platform;

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn wait_healthy(api: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http::request(api, "GET", "/healthz", &[], b"").await {
            if r.status == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "agent {api} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Agents whose /stats do not show `reference` loaded yet; panics on a failed one.
async fn not_loaded(apis: &[SocketAddr], reference: &str) -> usize {
    let mut missing = 0;
    for api in apis {
        let Ok(reply) = http::request(*api, "GET", "/stats", &[], b"").await else {
            missing += 1;
            continue;
        };
        let images: Vec<serde_json::Value> = serde_json::from_slice(&reply.body).unwrap();
        let state = images
            .iter()
            .find(|i| {
                i["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(reference))
            })
            .and_then(|i| i["state"].as_str().map(str::to_owned));
        assert_ne!(
            state.as_deref(),
            Some("failed"),
            "{api}: {reference} failed"
        );
        if state.as_deref() != Some("loaded") {
            missing += 1;
        }
    }
    missing
}

fn summary(label: &str, pids: &[u32]) -> String {
    let mem: Vec<(u64, u64)> = pids.iter().map(|p| memory_kib(*p)).collect();
    let mib = |k: u64| k as f64 / 1024.0;
    let rss: Vec<u64> = mem.iter().map(|m| m.0).collect();
    let hwm: Vec<u64> = mem.iter().map(|m| m.1).collect();
    format!(
        "{label}: RSS mean {:.1} MiB, max {:.1} MiB; peak (VmHWM) mean {:.1} MiB, max {:.1} MiB",
        mib(rss.iter().sum::<u64>() / rss.len() as u64),
        mib(rss.iter().copied().max().unwrap_or(0)),
        mib(hwm.iter().sum::<u64>() / hwm.len() as u64),
        mib(hwm.iter().copied().max().unwrap_or(0)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes of runtime; run by hand (see the module docs)"]
async fn rss_of_separate_agent_processes() {
    let n: usize = env("IW_NODES", 48);
    let mib: usize = env("IW_IMAGE_MIB", 32);
    let idle = Duration::from_secs(env("IW_IDLE_SECS", 60));
    let dir = TempDir::new("rss-processes").unwrap();
    let registry = MemRegistry::start(dir.path().join("registry"))
        .await
        .unwrap();
    let host = registry.addr().to_string();

    // Distinct API ports below the kernel's ephemeral range: a port from that range can be
    // taken, before its agent binds it, by another agent's port-0 listener or outgoing
    // connection (the agent then never becomes healthy).
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < n {
        ports.insert(imagewolf::clients::free_port());
    }
    let apis: Vec<SocketAddr> = ports
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let peers = format!(
        "static:{}",
        apis.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut agents = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let data = dir.path().join(format!("agent{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut cmd = Command::new(AGENT);
        cmd.env(
            "IMAGEWOLF_CLUSTER_SECRET",
            "imagewolf-rss-measurement-secret",
        )
        .env("RUST_LOG", "warn")
        .args(["--peers", &peers])
        .args(["--listen", &api.to_string()])
        .args(["--bt-listen", "127.0.0.1:0"])
        .args(["--endpoint-listen", "127.0.0.1:0"])
        .args(["--advertise-addr", "127.0.0.1"])
        .args(["--runtime", "none", "--distribution", "blobs"])
        .args(["--insecure-registry", &host])
        .args(["--allow", &format!("{host}/**")])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join(format!("agent{i}.log"))).unwrap());
        agents.push(ChildGuard::spawn(&format!("agent{i}"), &mut cmd).unwrap());
    }
    for api in &apis {
        wait_healthy(*api).await;
    }
    let pids: Vec<u32> = agents.iter().map(|a| a.id()).collect();
    println!("{}", summary(&format!("N={n}, started"), &pids));

    let arch = host_platform().architecture;
    let started = Instant::now();
    for i in 0..3u64 {
        let layers = (0..4)
            .map(|l| Blob::layer(&format!("layer{l}.bin"), (mib << 20) / 4, 1000 * i + l))
            .collect();
        let image = Image::new("linux", arch, None, layers);
        let repo = format!("team/app{i}");
        let digest = registry.push(&repo, "v1", &image).unwrap();
        notify_push(
            apis[i as usize % n],
            &host,
            &repo,
            "v1",
            &digest,
            &format!("event-{i}"),
        )
        .await;
        let reference = format!("{host}/{repo}:v1");
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let missing = not_loaded(&apis, &reference).await;
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{reference}: {missing} agents not loaded"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "{reference} ({mib} MiB) loaded on {n} agents at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    // Agents 0-2 were the origins (each read one image from the registry).
    let origins = n.min(3);
    let report = |when: &str| {
        println!("{}", summary(&format!("N={n}, {when}, all"), &pids));
        println!(
            "{}",
            summary(&format!("N={n}, {when}, origins"), &pids[..origins])
        );
        if n > origins {
            println!(
                "{}",
                summary(&format!("N={n}, {when}, receivers"), &pids[origins..])
            );
        }
    };
    report("after 3 pushes");
    tokio::time::sleep(idle).await;
    report(&format!("after {} s idle", idle.as_secs()));
    for (i, agent) in agents.iter_mut().enumerate() {
        if let Some(status) = agent.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join(format!("agent{i}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "agent {i} exited during the measurement ({status}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
