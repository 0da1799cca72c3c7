//! The distributor's gates with real BitTorrent sessions on loopback: `--allow` refusals,
//! `--max-torrents` queueing, and load retries that outlast a runtime outage. Sources and
//! loaders are small recording implementations of the traits so a test can hold a pull or
//! fail a load at will; the HTTP path and real runtimes are covered by tests/agent_flow.rs
//! and tests/docker.rs.

use std::sync::atomic::{AtomicU32, Ordering};

use futures::future::BoxFuture;
use imagewolf::TempDir;
use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::storage::MemoryStorage;
use imagewolf_bt::PeerId;

use std::time::Instant;

use base64::Engine;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::{AddTorrent, StartFrom};
use sha2::{Digest, Sha256};

use super::*;
use crate::image::{Distribution, ImageRef};
use crate::loader::LoaderError;
use crate::source::{NoSource, PulledImage, SourceError, Tarball};
use crate::stats::{ImageState, ImageStats};

pub(super) const DEADLINE: Duration = Duration::from_secs(30);

/// A source whose pulls each wait for a permit of `gate`, then fail permanently (which ends
/// the flow and frees its slot). Counts pulls started.
pub(super) struct GatedSource {
    pub(super) gate: Semaphore,
    pub(super) started: AtomicU32,
}

impl Default for GatedSource {
    fn default() -> Self {
        GatedSource {
            gate: Semaphore::new(0),
            started: AtomicU32::new(0),
        }
    }
}

impl ImageSource for GatedSource {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("gate open").forget();
            Err(SourceError {
                message: format!("released {image}"),
                retryable: false,
            })
        })
    }

    fn export<'a>(&'a self, _: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async { unreachable!("pulls never succeed here") })
    }
}

/// A loader that fails its first `failures` loads ("daemon down"), then succeeds. Counts
/// `has_image` calls and loads.
#[derive(Default)]
pub(super) struct FlakyLoader {
    failures: AtomicU32,
    loads: AtomicU32,
    has_image_calls: AtomicU32,
}

impl ImageLoader for FlakyLoader {
    // Test payloads are random bytes, not archives: nothing registers names here.
    fn registers_names(&self) -> bool {
        false
    }

    fn has_image<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool, LoaderError>> {
        self.has_image_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(false) })
    }

    fn load<'a>(&'a self, path: &'a std::path::Path) -> BoxFuture<'a, Result<(), LoaderError>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        Box::pin(async move {
            if !path.exists() {
                return Err(LoaderError {
                    message: format!("{} is gone", path.display()),
                });
            }
            if fail {
                Err(LoaderError {
                    message: "Cannot connect to the Docker daemon: connection refused".into(),
                })
            } else {
                Ok(())
            }
        })
    }
}

pub(super) fn config(dir: &TempDir) -> DistributorConfig {
    DistributorConfig {
        data_dir: dir.path().to_owned(),
        advertise: "127.0.0.1".parse().unwrap(),
        api_port: 1,
        bt_listen: "127.0.0.1:0".parse().unwrap(),
        seed_time: Duration::from_secs(600),
        cluster_secret: None,
        allow: Allowlist::allow_all(),
        max_torrents: 16,
        retry: RetryPolicy::default(),
        stall_timeout: DEFAULT_STALL_TIMEOUT,
    }
}

pub(super) async fn start(
    config: DistributorConfig,
    source: Arc<dyn ImageSource>,
    loader: Arc<dyn ImageLoader>,
) -> Arc<Distributor> {
    let (_tx, agents) = watch::channel(Vec::new());
    Distributor::start(config, source, loader, agents)
        .await
        .expect("distributor starts")
}

pub(super) fn image(registry: &str, repository: &str, tag: &str) -> ImageRef {
    ImageRef {
        registry: registry.into(),
        repository: repository.into(),
        tag: Some(tag.into()),
        digest: None,
    }
}

/// A distribution of `payload` (a real torrent; seeded by whoever is in `seeders`).
pub(super) fn distribution(image: ImageRef, payload: &[u8], seeders: Vec<String>) -> Distribution {
    let meta = TorrentBuilder::new("image.tar")
        .build_from_reader(payload, payload.len() as u64, std::io::sink())
        .unwrap();
    Distribution::single(
        image,
        format!("sha256:{}", "0a".repeat(32)),
        &meta,
        Sha256::digest(payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        seeders,
        now_secs() as u64,
    )
}

pub(super) fn record(d: &Distributor, reference: &str) -> Option<ImageStats> {
    d.images().into_iter().find(|i| i.reference == reference)
}

/// Polls `cond` every 20 ms until it holds or [`DEADLINE`] passes.
pub(super) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_allowlist_refuses_pushes_and_signed_announcements_before_any_work() {
    let dir = TempDir::new("dist-allow").unwrap();
    let mut cfg = config(&dir);
    cfg.allow = Allowlist::parse(["reg:5000/team/*", "*/library/nginx"]).unwrap();
    cfg.cluster_secret = Some(b"cluster secret".to_vec());
    let source = Arc::new(GatedSource::default());
    let loader = Arc::new(FlakyLoader::default());
    let d = start(cfg, source.clone(), loader.clone()).await;

    // A push (webhook or poll: both call on_push) outside the list: refused, never pulled.
    let other = image("reg:5000", "other/app", "v1");
    let outcome = d.on_push(other.clone(), Some("e1".into()));
    assert!(
        matches!(&outcome, Accepted::Refused(why) if why.contains("--allow")),
        "{outcome:?}"
    );
    // A new event for the same image is refused again and counted again.
    assert!(matches!(
        d.on_push(other.clone(), Some("e2".into())),
        Accepted::Refused(_)
    ));
    // The registry retrying event e1 is a duplicate, as before the allowlist.
    assert_eq!(
        d.on_push(other.clone(), Some("e1".into())),
        Accepted::Duplicate
    );
    // `*` stays within one segment: a nested repository under team/ is not allowed.
    assert!(matches!(
        d.on_push(image("reg:5000", "team/sub/app", "v1"), None),
        Accepted::Refused(_)
    ));
    let refused = record(&d, &other.to_string()).expect("refused record in /stats");
    assert_eq!(refused.state, ImageState::Refused);
    assert_eq!(refused.attempts, 2, "{refused:?}");
    assert!(refused.error.as_deref().unwrap().contains("--allow"));

    // A correctly signed announcement of a repository outside the list: still refused.
    let mut announced = distribution(image("reg:5000", "evil/app", "v1"), b"payload", vec![]);
    announced.sign(b"cluster secret");
    assert!(announced.verify(b"cluster secret"));
    assert!(matches!(
        d.on_distribution(announced.clone()),
        Accepted::Refused(_)
    ));
    // Catch-up offers it again every 30 s: refused, but counted once.
    assert!(matches!(
        d.on_distribution(announced.clone()),
        Accepted::Refused(_)
    ));
    let refused = record(&d, &announced.image.to_string()).unwrap();
    assert_eq!(refused.state, ImageState::Refused);
    assert_eq!(refused.id.as_deref(), Some(announced.id.as_str()));
    assert!(
        d.distributions().is_empty(),
        "a refused image is offered on"
    );
    assert!(d.session.torrent(&announced_hash(&announced)).is_none());

    let m = d.distribution_metrics();
    assert_eq!((m.refused_pushes, m.refused_announcements), (3, 1), "{m:?}");
    assert_eq!(m.slots_busy, 0);

    // Nothing was pulled, asked of the runtime, or written.
    assert_eq!(source.started.load(Ordering::SeqCst), 0);
    assert_eq!(loader.has_image_calls.load(Ordering::SeqCst), 0);
    let files = std::fs::read_dir(dir.path().join("images"))
        .unwrap()
        .count();
    assert_eq!(files, 0, "a refused image left data");

    // Allowed ones do go through: the push reaches the source, the announcement the loader.
    assert_eq!(
        d.on_push(image("reg:5000", "team/app", "v1"), None),
        Accepted::Started
    );
    let mut hub = distribution(
        image("docker.io", "library/nginx", "1.27"),
        b"nginx",
        vec![],
    );
    hub.sign(b"cluster secret");
    assert_eq!(d.on_distribution(hub), Accepted::Started);
    wait_until("the allowed push is pulled", || {
        source.started.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("the allowed announcement is checked", || {
        loader.has_image_calls.load(Ordering::SeqCst) == 1
    })
    .await;

    // The table /stats shows stays bounded whatever is thrown at it.
    for i in 0..REFUSED_KEPT + 50 {
        let _ = d.on_push(image("reg:5000", &format!("spam/n{i}"), "v1"), None);
    }
    let kept = d
        .images()
        .iter()
        .filter(|i| i.state == ImageState::Refused)
        .count();
    assert_eq!(kept, REFUSED_KEPT);
    assert_eq!(
        d.distribution_metrics().refused_pushes,
        3 + REFUSED_KEPT as u64 + 50
    );
    source.gate.add_permits(1);
    d.shutdown().await;
}

pub(super) fn announced_hash(d: &Distribution) -> imagewolf_bt::InfoHash {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&d.segments[0].torrent)
        .unwrap();
    Metainfo::from_bytes(&bytes).unwrap().info_hash()
}

#[tokio::test]
async fn beyond_max_torrents_distributions_queue_in_order_and_announcements_count_too() {
    let dir = TempDir::new("dist-slots").unwrap();
    let mut cfg = config(&dir);
    cfg.max_torrents = 2;
    let source = Arc::new(GatedSource::default());
    let loader = Arc::new(FlakyLoader::default());
    let d = start(cfg, source.clone(), loader.clone()).await;
    let refs: Vec<ImageRef> = ["a", "b", "c"]
        .iter()
        .map(|n| image("reg:5000", &format!("team/{n}"), "v1"))
        .collect();
    let state = |r: &ImageRef| record(&d, &r.to_string()).map(|s| s.state);

    for r in &refs[..2] {
        assert_eq!(d.on_push(r.clone(), None), Accepted::Started);
    }
    wait_until("two pulls hold the two slots", || {
        source.started.load(Ordering::SeqCst) == 2
    })
    .await;
    // The third push waits for a slot; it is not dropped and not pulled yet.
    assert_eq!(d.on_push(refs[2].clone(), None), Accepted::Started);
    wait_until("the third push is queued", || {
        state(&refs[2]) == Some(ImageState::Queued)
    })
    .await;
    // An announcement from another agent needs a slot too and queues behind it.
    let payload = imagewolf::random_payload(64 << 10, 1);
    let announced = distribution(image("reg:5000", "team/d", "v1"), &payload, vec![]);
    let d_ref = announced.image.clone();
    assert_eq!(d.on_distribution(announced.clone()), Accepted::Started);
    wait_until("the announcement is queued", || {
        state(&d_ref) == Some(ImageState::Queued)
    })
    .await;
    let m = d.distribution_metrics();
    assert_eq!((m.slots, m.slots_busy, m.queued), (2, 2, 2), "{m:?}");
    // The runtime was asked whether it has the image (no slot needed for that) but nothing
    // was downloaded.
    assert_eq!(loader.has_image_calls.load(Ordering::SeqCst), 1);
    assert!(d.session.torrent(&announced_hash(&announced)).is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        source.started.load(Ordering::SeqCst),
        2,
        "pulled past the cap"
    );

    // A slot frees (a pull ends): the first in line, the third push, starts.
    source.gate.add_permits(1);
    wait_until("the third push gets the freed slot", || {
        source.started.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(state(&refs[2]), Some(ImageState::Pulling));
    assert_eq!(state(&d_ref), Some(ImageState::Queued));

    // Another frees: the announcement starts downloading (no seeder here: it stays so,
    // holding its slot).
    source.gate.add_permits(1);
    wait_until("the announcement gets a slot", || {
        state(&d_ref) == Some(ImageState::Downloading)
            && d.session.torrent(&announced_hash(&announced)).is_some()
    })
    .await;
    let m = d.distribution_metrics();
    assert_eq!((m.slots_busy, m.queued), (2, 0), "{m:?}");
    let failed = d
        .images()
        .iter()
        .filter(|i| i.state == ImageState::Failed)
        .count();
    assert_eq!(
        failed, 2,
        "the two released pulls failed as the source said"
    );

    // The last pull ends: its slot is free again.
    source.gate.add_permits(1);
    wait_until("one slot free", || d.distribution_metrics().slots_busy == 1).await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_failing_load_is_retried_past_the_old_cap_and_the_data_is_kept_until_it_loads() {
    let dir = TempDir::new("dist-load").unwrap();
    let mut cfg = config(&dir);
    cfg.retry = RetryPolicy {
        first_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
        pull_attempts: 8,
    };
    cfg.seed_time = Duration::from_millis(300);
    let loader = Arc::new(FlakyLoader {
        failures: AtomicU32::new(20), // the agent used to give up after 8
        ..FlakyLoader::default()
    });
    let d = start(cfg, Arc::new(NoSource), loader.clone()).await;

    let payload = imagewolf::random_payload(1 << 20, 7);
    let seeder = Session::new(SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::default()
    })
    .await
    .unwrap();
    let announced = distribution(
        image("reg:5000", "team/app", "v1"),
        &payload,
        vec![seeder.listen_addr().to_string()],
    );
    let meta = Metainfo::from_bytes(
        &base64::engine::general_purpose::STANDARD
            .decode(&announced.segments[0].torrent)
            .unwrap(),
    )
    .unwrap();
    let seeding = seeder
        .add_torrent(AddTorrent::new(
            meta,
            Arc::new(MemoryStorage::from_vec(payload.clone())),
            StartFrom::Complete,
        ))
        .await
        .unwrap();
    let reference = announced.image.to_string();
    let tarball = dir
        .path()
        .join("images")
        .join(format!("{}.tar", announced.id));
    assert_eq!(d.on_distribution(announced), Accepted::Started);

    // While loads fail: `loading`, the error and the attempt count in /stats, the verified
    // tarball on disk.
    wait_until("several failed loads", || {
        loader.loads.load(Ordering::SeqCst) >= 3
    })
    .await;
    let during = record(&d, &reference).unwrap();
    assert_eq!(during.state, ImageState::Loading, "{during:?}");
    let error = during.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("load: ")
            && error.contains("connection refused")
            && error.contains("retrying"),
        "{error}"
    );
    assert!(during.attempts >= 3, "{during:?}");
    assert_eq!(std::fs::read(&tarball).unwrap(), payload);

    // It loads after 21 attempts, never marked failed, without downloading again.
    wait_until("loaded", || {
        let r = record(&d, &reference).expect("record");
        assert_ne!(r.state, ImageState::Failed, "the node gave up: {r:?}");
        r.state == ImageState::Loaded
    })
    .await;
    let after = record(&d, &reference).unwrap();
    assert_eq!(after.attempts, 21, "{after:?}");
    assert!(after.error.is_none(), "{after:?}");
    assert_eq!(loader.loads.load(Ordering::SeqCst), 21);
    let uploaded = seeding.stats().uploaded;
    assert!(
        uploaded >= payload.len() as u64 && uploaded < 2 * payload.len() as u64,
        "the seeder sent {uploaded} bytes for {}",
        payload.len()
    );
    assert_eq!(
        d.distribution_metrics().slots_busy,
        0,
        "slot kept after loading"
    );
    // Then the normal seeding rules: after --seed-seconds the tarball is deleted.
    wait_until("tarball removed after seeding", || !tarball.exists()).await;
    seeder.shutdown().await;
    d.shutdown().await;
}
