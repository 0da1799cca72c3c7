//! Tests of the store over time: reopening, garbage collection, pins, waiting for commits.

use std::fs;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::tests::{bytes, ingest_files, TempDir};
use super::{Digest, Store};

/// Size of one blob in the GC tests; the budget is three of them.
const UNIT: usize = 1_000;

/// Stores a unit-sized blob made from `seed`.
async fn put(store: &Store, seed: u64) -> Digest {
    let data = bytes(seed, UNIT);
    let d = Digest::of(&data);
    store.put_bytes(&d, &data).await.unwrap();
    d
}

#[tokio::test]
async fn reopen_sees_blobs_tags_and_media_types() {
    let dir = TempDir::new("reopen");
    let (manifest, layer, partial, partial_len) = {
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let manifest = put(&store, 1).await;
        let layer = put(&store, 2).await;
        store.set_manifest_media_type(&manifest, "application/vnd.oci.image.manifest.v1+json");
        store.set_tag("registry.local:5000", "team/app", "v1", &layer);
        store.set_tag("registry.local:5000", "team/app", "v1", &manifest);
        store.set_tag("docker.io", "team/app", "latest", &layer);
        // A writer left behind by a crash, and a download in progress.
        let w = store.writer(&Digest::of(b"unfinished"), 10).unwrap();
        let temp = w.path().to_owned();
        std::mem::forget(w);
        assert!(temp.exists());
        let partial = Digest::of(b"downloading");
        fs::write(store.partial_path(&partial), b"down").unwrap();
        (manifest, layer, partial, 4)
    };
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(store.contains(&manifest) && store.contains(&layer));
    assert_eq!(store.len_of(&layer), Some(UNIT as u64));
    assert_eq!(
        store.read_small(&manifest, UNIT).unwrap().unwrap(),
        bytes(1, UNIT)
    );
    assert_eq!(
        store.manifest_media_type(&manifest).as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(store.manifest_media_type(&layer), None);
    assert_eq!(
        store.tag(Some("registry.local:5000"), "team/app", "v1"),
        Some(manifest.clone())
    );
    assert_eq!(store.tag(None, "team/app", "v1"), Some(manifest));
    assert_eq!(store.tag(None, "team/app", "latest"), Some(layer));
    assert_eq!(store.tag(Some("quay.io"), "team/app", "latest"), None);
    assert!(ingest_files(&store, ".tmp").is_empty());
    assert!(store.partial_path(&partial).exists());
    let stats = store.stats();
    assert_eq!((stats.blobs, stats.bytes), (2, 2 * UNIT as u64));
    assert_eq!(stats.partial_bytes, partial_len);
}

#[tokio::test]
async fn tag_without_registry_is_the_most_recently_set() {
    let dir = TempDir::new("tags");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    store.set_tag("one", "app", "v1", &a);
    store.set_tag("two", "app", "v1", &b);
    assert_eq!(store.tag(None, "app", "v1"), Some(b.clone()));
    store.set_tag("one", "app", "v1", &a);
    assert_eq!(store.tag(None, "app", "v1"), Some(a.clone()));
    drop(store);
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.tag(None, "app", "v1"), Some(a));
    assert_eq!(store.tag(Some("two"), "app", "v1"), Some(b));
}

#[tokio::test]
async fn gc_evicts_the_least_recently_used() {
    let dir = TempDir::new("gc-lru");
    let store = Store::open(dir.path(), 3 * UNIT as u64).unwrap();
    let a = put(&store, 1).await;
    let b = put(&store, 2).await;
    let c = put(&store, 3).await;
    store.set_manifest_media_type(&b, "m");
    // Using `a` makes `b` the least recently used.
    assert!(store.open_blob(&a).is_some());
    let d = put(&store, 4).await;
    assert!(!store.contains(&b));
    assert!(!store.dir().join("blobs/sha256").join(b.hex()).exists());
    assert_eq!(store.manifest_media_type(&b), None);
    for kept in [&a, &c, &d] {
        assert!(store.contains(kept));
    }
    let stats = store.stats();
    assert_eq!((stats.evictions, stats.evicted_bytes), (1, UNIT as u64));
    assert_eq!((stats.blobs, stats.bytes), (3, 3 * UNIT as u64));
    assert_eq!(store.collect_garbage(), 0);
}

#[tokio::test]
async fn gc_never_evicts_pinned_blobs() {
    let dir = TempDir::new("gc-pin");
    let store = Store::open(dir.path(), 3 * UNIT as u64).unwrap();
    let a = put(&store, 1).await;
    let b = put(&store, 2).await;
    let c = put(&store, 3).await;
    let pin_a = store.pin([a.clone()]);
    let pin_a_again = store.pin([a.clone()]);
    put(&store, 4).await;
    assert!(store.contains(&a), "pinned, though the oldest");
    assert!(!store.contains(&b));

    // Everything pinned: the store goes over budget rather than evict a pinned blob; the
    // blob just committed is spared by its commit's sweep.
    let pin_all = store.pin([c.clone(), Digest::of(&bytes(4, UNIT))]);
    let e = put(&store, 5).await;
    assert!(store.contains(&e));
    assert_eq!(store.stats().bytes, 4 * UNIT as u64);
    assert_eq!(store.collect_garbage(), UNIT as u64, "e is not pinned");
    assert!(!store.contains(&e));
    drop(pin_all);
    drop(pin_a);
    put(&store, 6).await;
    assert!(store.contains(&a), "still pinned by the second guard");
    assert!(!store.contains(&c));
    drop(pin_a_again);
    put(&store, 7).await;
    assert!(!store.contains(&a));
    assert_eq!(store.stats().evictions, 4);
}

#[tokio::test]
async fn gc_deletes_unpinned_partials_when_over_budget() {
    let dir = TempDir::new("gc-partial");
    let store = Store::open(dir.path(), 3 * UNIT as u64).unwrap();
    let (p, q) = (Digest::of(b"p"), Digest::of(b"q"));
    fs::write(store.partial_path(&p), bytes(8, UNIT)).unwrap();
    fs::write(store.partial_path(&q), bytes(9, UNIT)).unwrap();
    let _pin = store.pin([q.clone()]);
    put(&store, 1).await;
    assert!(store.partial_path(&p).exists() && store.partial_path(&q).exists());
    put(&store, 2).await;
    assert!(!store.partial_path(&p).exists(), "unpinned partial deleted");
    assert!(store.partial_path(&q).exists(), "pinned partial kept");
    assert_eq!(store.stats().partial_bytes, UNIT as u64);
}

#[tokio::test]
async fn lru_order_survives_reopen_through_mtimes() {
    let dir = TempDir::new("gc-mtime");
    let (a, b, c) = {
        let store = Store::open(dir.path(), 3 * UNIT as u64).unwrap();
        (
            put(&store, 1).await,
            put(&store, 2).await,
            put(&store, 3).await,
        )
    };
    // Oldest to newest on disk: b, a, c.
    let base = SystemTime::now() - Duration::from_secs(3_600);
    for (d, age) in [(&b, 0), (&a, 10), (&c, 20)] {
        let path = dir.path().join("blobs/sha256").join(d.hex());
        let file = fs::File::open(path).unwrap();
        file.set_modified(base + Duration::from_secs(age)).unwrap();
    }
    let store = Store::open(dir.path(), 3 * UNIT as u64).unwrap();
    put(&store, 4).await;
    assert!(!store.contains(&b));
    assert!(store.contains(&a) && store.contains(&c));

    // open_blob refreshes the mtime (the first use since opening), so `a` is newest on disk.
    assert!(store.open_blob(&a).is_some());
    let mtime = |d: &Digest| {
        let path = dir.path().join("blobs/sha256").join(d.hex());
        fs::metadata(path).unwrap().modified().unwrap()
    };
    assert!(mtime(&a) > mtime(&c));
}

#[tokio::test]
async fn reopen_with_a_smaller_budget_collects() {
    let dir = TempDir::new("gc-shrink");
    {
        let store = Store::open(dir.path(), 3 * UNIT as u64).unwrap();
        for seed in 1..=3 {
            put(&store, seed).await;
        }
    }
    let store = Store::open(dir.path(), UNIT as u64).unwrap();
    assert_eq!(store.stats().blobs, 1);
}

#[tokio::test]
async fn wait_for_wakes_on_commit() {
    let dir = TempDir::new("wait");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = bytes(1, 500);
    let d = Digest::of(&data);
    let waiter = {
        let (store, d) = (Arc::clone(&store), d.clone());
        tokio::spawn(async move { store.wait_for(&d, Duration::from_secs(60)).await })
    };
    tokio::task::yield_now().await;
    // Another commit wakes it without satisfying it: it goes back to waiting.
    put(&store, 2).await;
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    store.put_bytes(&d, &data).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter).await;
    assert!(woken.expect("woken by the commit").unwrap());
    assert!(store.wait_for(&d, Duration::ZERO).await);
}

#[tokio::test]
async fn wait_for_times_out() {
    let dir = TempDir::new("wait-timeout");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let absent = Digest::of(b"never");
    let started = std::time::Instant::now();
    assert!(!store.wait_for(&absent, Duration::from_millis(50)).await);
    assert!(started.elapsed() >= Duration::from_millis(50));
}
