//! The distributor's bounds (issue 5), with real BitTorrent sessions on loopback and, where
//! the HTTP API is the entry point, through it: records stay bounded under a flood of
//! unsigned announcements while recent ones are still deduplicated, webhooks beyond the
//! working limit get 503 and the registry's resend is taken, and a download nobody can finish
//! fails after the stall timeout, frees its slot and keeps its verified part for a later run.

use crate::tarball::hex;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use futures::future::BoxFuture;
use imagewolf::http;
use imagewolf::local_agents::registry_push_envelope;
use imagewolf::TempDir;
use imagewolf_bt::metainfo::{Metainfo, TorrentBuilder};
use imagewolf_bt::storage::MemoryStorage;
use imagewolf_bt::{AddTorrent, PeerId, StartFrom};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use super::tests::{
    announced_hash, config, distribution, image, record, start, wait_until, GatedSource,
};
use super::*;
use crate::api::ApiConfig;
use crate::image::{Distribution, ImageRef};
use crate::loader::LoaderError;
use crate::source::NoSource;
use crate::stats::ImageState;

/// A runtime that has exactly the images in `present`; loads succeed and are counted.
#[derive(Default)]
struct SetLoader {
    present: Mutex<HashSet<String>>,
    loads: std::sync::atomic::AtomicU32,
}

impl ImageLoader for SetLoader {
    // Test payloads are random bytes, not archives: nothing registers names here.
    fn registers_names(&self) -> bool {
        false
    }

    fn has_image<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, LoaderError>> {
        let present = self.present.lock().unwrap().contains(id);
        Box::pin(async move { Ok(present) })
    }

    fn load<'a>(&'a self, _: &'a std::path::Path) -> BoxFuture<'a, Result<(), LoaderError>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

/// Serves the distributor's HTTP API on loopback until the returned sender is dropped.
async fn serve(d: &Arc<Distributor>) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(crate::api::serve(
        listener,
        Arc::new(DistributorApi(Arc::clone(d))),
        ApiConfig::default(),
        stopped,
    ));
    (addr, stop)
}

async fn post(api: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> http::Reply {
    http::request(api, "POST", path, &[("Content-Type", content_type)], body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

async fn announce(api: SocketAddr, d: &Distribution) -> http::Reply {
    post(
        api,
        "/v1/distributions",
        "application/json",
        &serde_json::to_vec(d).unwrap(),
    )
    .await
}

fn json(reply: &http::Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.text()))
}

fn tarballs(dir: &TempDir) -> usize {
    std::fs::read_dir(dir.path().join("images"))
        .unwrap()
        .count()
}

/// Announcement `i` of the flood: a distinct image and torrent, no seeders.
fn flood_item(i: usize) -> Distribution {
    let payload = imagewolf::random_payload(16 << 10, i as u64);
    let mut d = distribution(
        image("reg:5000", &format!("flood/n{i}"), "v1"),
        &payload,
        vec![],
    );
    d.image_id = format!("sha256:{i:064x}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unsigned_announcements_keeps_records_bounded_and_recent_ones_deduplicated() {
    const FLOOD: usize = 1000;
    let dir = TempDir::new("dist-flood").unwrap();
    let mut cfg = config(&dir);
    cfg.max_torrents = 4;
    cfg.stall_timeout = Duration::from_millis(200);
    let loader = Arc::new(SetLoader::default());
    // Seven in eight are already in the runtime (done at once); every eighth has no seeder
    // anywhere and stalls, holding a slot for the stall timeout.
    let stalls = |i: usize| i.is_multiple_of(8);
    {
        let mut present = loader.present.lock().unwrap();
        for i in (0..FLOOD).filter(|&i| !stalls(i)) {
            present.insert(format!("sha256:{i:064x}"));
        }
    }
    let d = start(cfg, Arc::new(NoSource), loader.clone()).await;
    let (api, _stop) = serve(&d).await;
    let max_working = d.max_working();
    assert_eq!(max_working, 16);
    let bound = FINISHED_KEPT + max_working + SEEDING_PER_SLOT * 4;

    let started = Instant::now();
    let mut busy_answers = 0u32;
    let mut peak = d.record_counts();
    for i in 0..FLOOD {
        let item = flood_item(i);
        loop {
            let reply = announce(api, &item).await;
            if reply.status == 503 {
                // Like a registry (or the origin's catch-up): the same announcement again
                // once there is room.
                busy_answers += 1;
                let why = json(&reply)["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    why.contains("busy") && why.contains("--max-torrents"),
                    "{why}"
                );
                wait_until("room for more work", || {
                    d.record_counts().working < max_working
                })
                .await;
                continue;
            }
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(json(&reply)["status"], "started", "announcement {i}");
            break;
        }
        let c = d.record_counts();
        assert!(c.working <= max_working, "{c:?}");
        assert!(c.records <= bound, "announcement {i}: {c:?}");
        assert!(c.ids <= c.records, "{c:?}");
        assert!(c.forgotten <= FORGOTTEN_KEPT, "{c:?}");
        if c.records > peak.records {
            peak = c;
        }
    }
    wait_until("every stalled download has failed", || {
        d.record_counts().working == 0
    })
    .await;
    let flood_secs = started.elapsed().as_secs_f64();
    let c = d.record_counts();
    assert_eq!(c.records, FINISHED_KEPT, "{c:?}");
    assert_eq!(c.forgotten, FLOOD - FINISHED_KEPT, "{c:?}");
    assert_eq!(c.ids, FINISHED_KEPT, "{c:?}");
    assert_eq!(d.images().len(), FINISHED_KEPT);
    assert!(d.distributions().len() <= FINISHED_KEPT);
    // Only the kept failed records keep their partial files; forgotten ones took theirs.
    let failed_kept = d
        .images()
        .iter()
        .filter(|i| i.state == ImageState::Failed)
        .count();
    assert!(failed_kept > 0 && failed_kept < FLOOD / 8, "{failed_kept}");
    wait_until("tarballs of forgotten records deleted", || {
        tarballs(&dir) == failed_kept
    })
    .await;
    let m = d.distribution_metrics();
    assert!(
        busy_answers > 0,
        "the flood never reached the working limit"
    );
    assert_eq!(m.busy_announcements, u64::from(busy_answers), "{m:?}");
    assert_eq!(m.stalled, (FLOOD / 8) as u64, "{m:?}");
    assert_eq!((m.slots_busy, m.working), (0, 0), "{m:?}");
    let metrics = http::request(api, "GET", "/metrics", &[], b"")
        .await
        .unwrap()
        .text();
    for line in [
        format!("imagewolf_busy_total{{source=\"announcement\"}} {busy_answers}"),
        format!("imagewolf_records {FINISHED_KEPT}"),
        format!("imagewolf_downloads_stalled_total {}", FLOOD / 8),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    eprintln!(
        "flood: {FLOOD} announcements in {flood_secs:.1} s, {busy_answers} answered 503, \
         peak {peak:?}, end {c:?}, {} tarballs on disk",
        tarballs(&dir)
    );

    // Deduplication: a recent announcement (kept record) and an old one (tombstone) again.
    for i in [FLOOD - 1, 1] {
        let reply = announce(api, &flood_item(i)).await;
        assert_eq!(json(&reply)["status"], "known", "announcement {i} again");
    }
    // A forgotten download that stalled keeps its run count: restarted until its third run,
    // then given up (and its partial file deleted).
    let first = flood_item(0);
    let reference = first.image.to_string();
    let tarball = d.received_tarball(&first.id);
    assert!(
        record(&d, &reference).is_none(),
        "announcement 0 not forgotten"
    );
    for run in 2..=MAX_RUNS {
        let reply = announce(api, &first).await;
        assert_eq!(json(&reply)["status"], "started", "run {run}");
        wait_until("the run stalls", || {
            record(&d, &reference).is_some_and(|r| r.state == ImageState::Failed)
        })
        .await;
        let error = record(&d, &reference).unwrap().error.unwrap_or_default();
        if run < MAX_RUNS {
            assert!(
                error.contains("stalled") && error.contains("kept"),
                "{error}"
            );
            assert!(tarball.exists(), "run {run}: partial file not kept");
        } else {
            assert!(error.contains("gave up on it after 3 runs"), "{error}");
            wait_until("the last run's file deleted", || !tarball.exists()).await;
        }
    }
    let reply = announce(api, &first).await;
    assert_eq!(json(&reply)["status"], "known", "restarted after giving up");
    d.shutdown().await;
}

#[tokio::test]
async fn webhooks_beyond_the_working_limit_get_503_and_the_registrys_resend_is_taken() {
    let dir = TempDir::new("dist-busy").unwrap();
    let mut cfg = config(&dir);
    cfg.max_torrents = 1;
    let source = Arc::new(GatedSource::default());
    let d = start(cfg, source.clone(), Arc::new(SetLoader::default())).await;
    let (api, _stop) = serve(&d).await;
    assert_eq!(d.max_working(), ACTIVE_PER_SLOT);
    let envelope = |n: usize| {
        registry_push_envelope(
            "reg:5000",
            &format!("team/app{n}"),
            Some("v1"),
            &format!("sha256:{n:064x}"),
            &format!("event-{n}"),
        )
    };
    let webhook = |n: usize| {
        let body = envelope(n);
        async move {
            post(
                api,
                "/registryNotifications",
                "application/vnd.docker.distribution.events.v1+json",
                body.as_bytes(),
            )
            .await
        }
    };

    // One pull holds the slot, three wait for it: the working limit (4 x 1 slot).
    for n in 0..ACTIVE_PER_SLOT {
        let reply = webhook(n).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(json(&reply)["accepted"], 1);
    }
    // The next push is refused for now, with the reason; the registry sends it again, and
    // it is refused again (its event id was not taken as seen).
    for _ in 0..2 {
        let reply = webhook(ACTIVE_PER_SLOT).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        let why = json(&reply)["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(why.contains("busy") && why.contains("retry later"), "{why}");
    }
    // A resend of an accepted event is still a duplicate, not a refusal; so is the same
    // image pushed again under a new event id.
    let reply = webhook(0).await;
    assert_eq!(
        (reply.status, json(&reply)["duplicates"].clone()),
        (200, 1.into())
    );
    let again = registry_push_envelope(
        "reg:5000",
        "team/app0",
        Some("v1"),
        &format!("sha256:{:064x}", 0),
        "event-0-again",
    );
    let reply = post(
        api,
        "/registryNotifications",
        "application/vnd.docker.distribution.events.v1+json",
        again.as_bytes(),
    )
    .await;
    assert_eq!(
        (reply.status, json(&reply)["duplicates"].clone()),
        (200, 1.into())
    );
    let metrics = http::request(api, "GET", "/metrics", &[], b"")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("imagewolf_busy_total{source=\"push\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("imagewolf_distributions_working 4"));
    assert_eq!(source.started.load(Ordering::SeqCst), 1);

    // A pull ends (it fails): there is room, and the registry's next resend is taken.
    source.gate.add_permits(1);
    wait_until("room for one more", || {
        d.record_counts().working < ACTIVE_PER_SLOT
    })
    .await;
    let reply = webhook(ACTIVE_PER_SLOT).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(json(&reply)["accepted"], 1);
    let reply = webhook(ACTIVE_PER_SLOT).await;
    assert_eq!(json(&reply)["duplicates"], 1);
    source.gate.add_permits(ACTIVE_PER_SLOT);
    wait_until("every pull ended", || d.record_counts().working == 0).await;
    assert_eq!(
        source.started.load(Ordering::SeqCst),
        ACTIVE_PER_SLOT as u32 + 1
    );
    d.shutdown().await;
}

/// A seeding session for `payload` under `meta`; with `have_prefix`, it has only the pieces
/// that lie within the first `have_prefix` bytes (the rest of its copy is garbage).
async fn seeder(meta: Metainfo, payload: &[u8], have_prefix: Option<usize>) -> Session {
    let session = Session::new(SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::default()
    })
    .await
    .unwrap();
    let (data, from) = match have_prefix {
        None => (payload.to_vec(), StartFrom::Complete),
        Some(n) => {
            let mut data = payload.to_vec();
            data[n..].iter_mut().for_each(|b| *b = !*b);
            (data, StartFrom::Check)
        }
    };
    session
        .add_torrent(AddTorrent::new(
            meta,
            Arc::new(MemoryStorage::from_vec(data)),
            from,
        ))
        .await
        .unwrap();
    session
}

fn distribution_with_pieces(
    image: ImageRef,
    payload: &[u8],
    piece: u32,
    seeders: &[&Session],
) -> (Distribution, Metainfo) {
    let meta = TorrentBuilder::new("image.tar")
        .piece_length(piece)
        .build_from_reader(payload, payload.len() as u64, std::io::sink())
        .unwrap();
    let d = Distribution::single(
        image,
        format!("sha256:{}", hex(&Sha256::digest(payload))),
        &meta,
        hex(&Sha256::digest(payload)),
        seeders
            .iter()
            .map(|s| s.listen_addr().to_string())
            .collect(),
        now_secs() as u64,
    );
    (d, meta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_fails_frees_its_slot_and_a_later_run_reuses_its_verified_part() {
    const STALL: Duration = Duration::from_secs(1);
    let dir = TempDir::new("dist-stall").unwrap();
    let mut cfg = config(&dir);
    cfg.max_torrents = 1;
    cfg.stall_timeout = STALL;
    let loader = Arc::new(SetLoader::default());
    let d = start(cfg, Arc::new(NoSource), loader.clone()).await;

    // X: 2 MiB in 32 pieces; the only peer has the first half, then nobody has the rest.
    let payload = imagewolf::random_payload(2 << 20, 11);
    let half = payload.len() / 2;
    let probe =
        distribution_with_pieces(image("reg:5000", "team/x", "v1"), &payload, 64 << 10, &[]).1;
    let partial = seeder(probe.clone(), &payload, Some(half)).await;
    let (x, _) = distribution_with_pieces(
        image("reg:5000", "team/x", "v1"),
        &payload,
        64 << 10,
        &[&partial],
    );
    // Y: a small image with a full seeder, announced after X: it waits for X's slot.
    let y_payload = imagewolf::random_payload(256 << 10, 12);
    let y_probe =
        distribution_with_pieces(image("reg:5000", "team/y", "v1"), &y_payload, 64 << 10, &[]).1;
    let y_seeder = seeder(y_probe, &y_payload, None).await;
    let (y, _) = distribution_with_pieces(
        image("reg:5000", "team/y", "v1"),
        &y_payload,
        64 << 10,
        &[&y_seeder],
    );
    let (x_ref, y_ref) = (x.image.to_string(), y.image.to_string());
    let state = |r: &str| record(&d, r).map(|s| s.state);

    assert_eq!(d.on_distribution(x.clone()), Accepted::Started);
    wait_until("X holds the slot", || {
        d.session.torrent(&announced_hash(&x)).is_some()
    })
    .await;
    assert_eq!(d.on_distribution(y.clone()), Accepted::Started);
    wait_until("Y queued behind X", || {
        state(&y_ref) == Some(ImageState::Queued)
    })
    .await;
    wait_until("X has the partial peer's half", || {
        d.session
            .torrent(&announced_hash(&x))
            .is_some_and(|t| t.stats().have_bytes == half as u64)
    })
    .await;
    let stuck_since = Instant::now();
    wait_until("X fails as stalled", || {
        state(&x_ref) == Some(ImageState::Failed)
    })
    .await;
    let failed_after = stuck_since.elapsed();
    let error = record(&d, &x_ref).unwrap().error.unwrap_or_default();
    assert!(
        error.contains("download stalled") && error.contains("1048576 of 2097152 bytes verified"),
        "{error}"
    );
    assert!(error.contains("kept for a later run"), "{error}");
    assert!(
        failed_after >= STALL / 2 && failed_after < STALL * 10,
        "failed {failed_after:?} after its last progress (stall timeout {STALL:?})"
    );
    assert!(
        d.session.torrent(&announced_hash(&x)).is_none(),
        "X's torrent still runs"
    );
    // Its slot went to Y, which completes and loads.
    wait_until("Y loaded", || state(&y_ref) == Some(ImageState::Loaded)).await;
    assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
    assert_eq!(d.distribution_metrics().stalled, 1);
    // The verified half is on disk.
    let kept = std::fs::read(d.received_tarball(&x.id)).unwrap();
    assert_eq!(&kept[..half], &payload[..half]);

    // Later a full seeder exists and X is announced again (as catch-up would): the second
    // run checks the kept half and fetches only the rest.
    let full = seeder(probe, &payload, None).await;
    let mut again = x.clone();
    again.seeders = vec![full.listen_addr().to_string()];
    assert_eq!(d.on_distribution(again), Accepted::Started);
    wait_until("X loaded on its second run", || {
        state(&x_ref) == Some(ImageState::Loaded)
    })
    .await;
    let sent = full.torrents()[0].stats().uploaded;
    assert!(
        sent >= (payload.len() - half) as u64 && sent < (payload.len() - half) as u64 * 3 / 2,
        "the full seeder sent {sent} bytes; {} were missing",
        payload.len() - half
    );
    assert_eq!(loader.loads.load(Ordering::SeqCst), 2);
    assert_eq!(record(&d, &x_ref).unwrap().attempts, 1);
    wait_until("no slot held", || d.distribution_metrics().slots_busy == 0).await;
    eprintln!(
        "stall: X failed {failed_after:?} after its last progress; second run fetched {sent} bytes"
    );
    for s in [partial, y_seeder, full] {
        s.shutdown().await;
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_seeding_limit_the_oldest_torrents_stop_seeding_early() {
    const IMAGES: usize = SEEDING_PER_SLOT + 2;
    let dir = TempDir::new("dist-seeding").unwrap();
    let mut cfg = config(&dir);
    cfg.max_torrents = 1;
    cfg.seed_time = Duration::from_secs(600);
    let loader = Arc::new(SetLoader::default());
    let d = start(cfg, Arc::new(NoSource), loader.clone()).await;
    let origin = Session::new(SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::default()
    })
    .await
    .unwrap();
    let mut announced = Vec::new();
    for i in 0..IMAGES {
        let payload = imagewolf::random_payload(128 << 10, 100 + i as u64);
        let (x, meta) = distribution_with_pieces(
            image("reg:5000", &format!("team/s{i}"), "v1"),
            &payload,
            32 << 10,
            &[&origin],
        );
        origin
            .add_torrent(AddTorrent::new(
                meta,
                Arc::new(MemoryStorage::from_vec(payload)),
                StartFrom::Complete,
            ))
            .await
            .unwrap();
        // One at a time, so the seeding order is the announcement order.
        assert_eq!(d.on_distribution(x.clone()), Accepted::Started);
        let reference = x.image.to_string();
        wait_until("loaded", || {
            record(&d, &reference).is_some_and(|r| r.state == ImageState::Loaded)
        })
        .await;
        announced.push(x);
    }
    // Everything loaded, but only the newest SEEDING_PER_SLOT x 1 still seed; the oldest two
    // stopped early and deleted their tarballs.
    wait_until("the oldest stop seeding", || {
        d.session.torrents().len() == SEEDING_PER_SLOT
    })
    .await;
    for (i, x) in announced.iter().enumerate() {
        let seeding = d.session.torrent(&announced_hash(x)).is_some();
        assert_eq!(seeding, i >= 2, "image {i}");
        let tarball = d.received_tarball(&x.id);
        wait_until("tarball kept only while seeding", || {
            tarball.exists() == seeding
        })
        .await;
    }
    let c = d.record_counts();
    assert_eq!(
        (c.seeding, c.working, c.records),
        (SEEDING_PER_SLOT, 0, IMAGES)
    );
    assert_eq!(d.distribution_metrics().seeding_stopped_early, 2);
    assert_eq!(loader.loads.load(Ordering::SeqCst), IMAGES as u32);
    origin.shutdown().await;
    d.shutdown().await;
}

#[tokio::test]
async fn records_holding_large_announcements_are_forgotten_sooner_and_listings_stay_small() {
    let dir = TempDir::new("dist-bytes").unwrap();
    let loader = Arc::new(SetLoader::default());
    let d = start(config(&dir), Arc::new(NoSource), loader.clone()).await;
    // Announcements whose (never decoded: the image is present) torrent field is as large as
    // a request body allows.
    let big = "A".repeat(1000 << 10);
    for i in 0..100 {
        let mut x = flood_item(10_000 + i);
        x.segments[0].torrent = big.clone();
        loader.present.lock().unwrap().insert(x.image_id.clone());
        assert_eq!(d.on_distribution(x), Accepted::Started);
        wait_until("done", || d.record_counts().working == 0).await;
    }
    let c = d.record_counts();
    assert_eq!(c.records, FINISHED_BYTES_KEPT / big.len(), "{c:?}");
    assert_eq!(c.forgotten, 100 - c.records, "{c:?}");
    let listing = d.distributions();
    let listed: usize = listing.iter().map(|x| x.segments[0].torrent.len()).sum();
    assert!(listed <= LISTING_BYTES_MAX, "{listed}");
    assert_eq!(listing.len(), LISTING_BYTES_MAX / big.len());
    assert!(
        listing.windows(2).all(|w| w[0].created >= w[1].created),
        "not newest first"
    );
    d.shutdown().await;
}
