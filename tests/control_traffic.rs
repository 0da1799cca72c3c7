//! The control plane's cost, measured (ignored by default; run by hand, see README
//! "Thousands of nodes: control traffic"):
//!
//! ```text
//! IW_NODES=8,16,32 IW_IMAGE_MIB=32 IW_IDLE_SECS=90 \
//!   cargo test -p imagewolf --test control_traffic -- --ignored --nocapture
//! ```
//!
//! For each N: N agents in this process on loopback (`--runtime none`), three images pushed
//! to three origins one after the other (each loaded everywhere before the next), then
//! `IW_IDLE_SECS` of idle. Everything is counted by the agents' own API servers (their
//! /metrics: requests, request and response body bytes by route, connections accepted),
//! so the same harness measures any version that has those counters. Agent-to-agent routes
//! and the tracker count as control traffic; a typical request and response head (370
//! bytes) is added per request. Prints one markdown row per N.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagewolf::generated_image::GeneratedImage;
use imagewolf::http;
use imagewolf::local_agents::{registry_push_envelope, LocalAgents};
use imagewolf::TempDir;
use imagewolf_agent::source::ImageSource;
use imagewolf_agent::stats::ImageState;

const EVENTS: &str = "application/vnd.docker.distribution.events.v1+json";
/// A typical request head (request line, host, content headers, the cluster signature) plus
/// a response head.
const HEADS: u64 = 370;
/// The routes whose traffic is the control plane's (agent to agent, and the tracker).
const ANNOUNCE_ROUTES: [&str; 2] = ["/v1/distributions", "/v1/gossip"];
const CONTROL_ROUTES: [&str; 6] = [
    "/v1/distributions",
    "/v1/distributions/<id>",
    "/v1/gossip",
    "/v1/digest",
    "/v1/torrents",
    "/announce",
];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One agent's counters: by route (requests, request body bytes, response body bytes), and
/// connections accepted.
#[derive(Debug, Default, Clone)]
struct Counters {
    routes: BTreeMap<String, [u64; 3]>,
    accepted: u64,
}

impl Counters {
    fn minus(&self, earlier: &Counters) -> Counters {
        let mut routes = self.routes.clone();
        for (route, then) in &earlier.routes {
            let now = routes.entry(route.clone()).or_default();
            for i in 0..3 {
                now[i] = now[i].saturating_sub(then[i]);
            }
        }
        Counters {
            routes,
            accepted: self.accepted.saturating_sub(earlier.accepted),
        }
    }

    fn route(&self, route: &str) -> [u64; 3] {
        self.routes.get(route).copied().unwrap_or_default()
    }

    /// Bytes on `routes`: bodies both ways plus heads.
    fn bytes(&self, routes: &[&str]) -> u64 {
        routes
            .iter()
            .map(|r| {
                let [n, req, resp] = self.route(r);
                req + resp + n * HEADS
            })
            .sum()
    }
}

fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

async fn scrape(api: SocketAddr) -> Counters {
    let reply = http::request(api, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics");
    let mut c = Counters::default();
    for line in reply.text().lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        let slot = if series.starts_with("imagewolf_http_requests_total{") {
            0
        } else if series.starts_with("imagewolf_http_request_bytes_total{") {
            1
        } else if series.starts_with("imagewolf_http_response_bytes_total{") {
            2
        } else {
            if series == "imagewolf_http_connections_accepted_total" {
                c.accepted = value;
            }
            continue;
        };
        if let Some(path) = label(series, "path") {
            c.routes.entry(path.to_owned()).or_default()[slot] += value;
        }
    }
    c
}

async fn scrape_all(apis: &[SocketAddr]) -> Vec<Counters> {
    futures::future::join_all(apis.iter().map(|a| scrape(*a))).await
}

fn diff(now: &[Counters], then: &[Counters]) -> Vec<Counters> {
    now.iter().zip(then).map(|(n, t)| n.minus(t)).collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_loaded(cluster: &LocalAgents, reference: &str, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let missing = cluster
            .agents
            .iter()
            .filter(|a| {
                !a.distributor
                    .images()
                    .iter()
                    .any(|i| i.reference.starts_with(reference) && i.state == ImageState::Loaded)
            })
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{reference}: {missing} agents not loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes of runtime; run by hand (see the module docs)"]
async fn control_traffic_per_agent() {
    let nodes: Vec<usize> = std::env::var("IW_NODES")
        .unwrap_or_else(|_| "8,16,32".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let mib: usize = env("IW_IMAGE_MIB", 32);
    let idle = Duration::from_secs(env("IW_IDLE_SECS", 90));
    let dir = TempDir::new("control-traffic").unwrap();
    let images: Vec<Arc<GeneratedImage>> = (0..3)
        .map(|i| {
            let sub = dir.path().join(format!("image-{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let reference = format!("10.1.2.3:5000/team/app{i}:v1");
            // Sizes apart by a few KiB: the images differ from their first bytes (the same
            // content would be the same torrents).
            let size = (mib << 20) + i * (16 << 10);
            Arc::new(GeneratedImage::build(&sub, &reference, size).unwrap())
        })
        .collect();
    println!(
        "| N | idle control B/s per agent (mean) | busiest agent B/s out | tracker announces/s (cluster) | \
         new conns/s per agent (mean / max) | announce B per receiver per push (JSON bodies / with heads) | \
         delta+fetch B per receiver per push | RSS per agent (in-process) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in nodes {
        let base_rss = rss_kib();
        let mut sources: Vec<Option<Arc<dyn ImageSource>>> = vec![None; n];
        for (i, image) in images.iter().enumerate() {
            sources[i] = Some(Arc::clone(image) as Arc<dyn ImageSource>);
        }
        let (cluster, _) = LocalAgents::start(dir.path().join(format!("n{n}")), sources, 0)
            .await
            .unwrap();
        let apis: Vec<SocketAddr> = cluster.agents.iter().map(|a| a.api).collect();
        let mut pushes = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let before = scrape_all(&apis).await;
            let envelope = registry_push_envelope(
                "10.1.2.3:5000",
                &format!("team/app{i}"),
                Some("v1"),
                &format!("sha256:{}", format!("{i:02x}").repeat(32)),
                &format!("event-{i}"),
            );
            let reply = http::request(
                apis[i],
                "POST",
                "/registryNotifications",
                &[("Content-Type", EVENTS)],
                envelope.as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text());
            wait_loaded(&cluster, &image.reference, Duration::from_secs(600)).await;
            pushes.push(diff(&scrape_all(&apis).await, &before));
        }
        let start = scrape_all(&apis).await;
        tokio::time::sleep(idle).await;
        let window = diff(&scrape_all(&apis).await, &start);
        let rss = rss_kib().saturating_sub(base_rss);
        let secs = idle.as_secs_f64();
        let total: u64 = window.iter().map(|c| c.bytes(&CONTROL_ROUTES)).sum();
        // Each agent's own responses plus its share of requests; the busiest by responses.
        let busiest = window
            .iter()
            .map(|c| {
                CONTROL_ROUTES
                    .iter()
                    .map(|r| c.route(r)[2] + c.route(r)[0] * 110)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        let announces: u64 = window.iter().map(|c| c.route("/announce")[0]).sum();
        // The closing scrape's own connection is not the agent's.
        let conns: Vec<u64> = window
            .iter()
            .map(|c| c.accepted.saturating_sub(1))
            .collect();
        let receivers = (n - 1) as f64;
        let per_push = |f: &dyn Fn(&Counters) -> u64| -> f64 {
            pushes
                .iter()
                .map(|p| p.iter().map(f).sum::<u64>() as f64)
                .sum::<f64>()
                / pushes.len() as f64
                / receivers
        };
        // Announcement bodies: a whole announcement's POST (before), a rumor's offers and
        // wants (after); POST /v1/distributions bodies only (its GETs are listings).
        let announce_json = per_push(&|c| {
            c.route("/v1/distributions")[1] + c.route("/v1/gossip")[1] + c.route("/v1/gossip")[2]
        });
        let announce_heads =
            per_push(&|c| c.bytes(&ANNOUNCE_ROUTES[1..]) + c.route("/v1/distributions")[1]);
        let deltas = per_push(&|c| c.bytes(&["/v1/distributions/<id>"]));
        println!(
            "| {n} | {:.0} | {:.0} | {:.1} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} | {:.1} MiB |",
            total as f64 / n as f64 / secs,
            busiest as f64 / secs,
            announces as f64 / secs,
            conns.iter().sum::<u64>() as f64 / n as f64 / secs,
            conns.iter().max().copied().unwrap_or(0) as f64 / secs,
            announce_json,
            announce_heads,
            deltas,
            rss as f64 / 1024.0 / n as f64,
        );
        for route in ANNOUNCE_ROUTES
            .iter()
            .chain(&["/v1/distributions/<id>", "/v1/torrents"])
        {
            println!(
                "    per push per receiver {route}: {:.2} requests, {:.0} B bodies",
                per_push(&|c| c.route(route)[0]),
                per_push(&|c| c.route(route)[1] + c.route(route)[2]),
            );
        }
        for (route, [req, reqb, respb]) in
            window
                .iter()
                .fold(BTreeMap::<String, [u64; 3]>::new(), |mut m, c| {
                    for (r, v) in &c.routes {
                        let e = m.entry(r.clone()).or_default();
                        for i in 0..3 {
                            e[i] += v[i];
                        }
                    }
                    m
                })
        {
            if CONTROL_ROUTES.contains(&route.as_str()) {
                println!("    idle {route}: {req} requests, {reqb} B in, {respb} B out (cluster)");
            }
        }
        cluster.shutdown().await;
    }
}
