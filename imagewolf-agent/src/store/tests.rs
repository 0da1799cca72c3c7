//! Tests of the store: verification, persistence across reopen, GC and waiting.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Digest, Store, StoreError};

/// A unique directory under the system temp dir, removed when dropped.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "imagewolf-store-{name}-{}-{seq}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes.
pub(super) fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Files in `dir/ingest` whose name ends with `suffix`.
pub(super) fn ingest_files(store: &Store, suffix: &str) -> Vec<PathBuf> {
    fs::read_dir(store.dir().join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect()
}

#[test]
fn digest_parse_accepts_only_lowercase_sha256() {
    let hex = "a".repeat(64);
    let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
    assert_eq!(d.hex(), hex);
    assert_eq!(d.as_str(), format!("sha256:{hex}"));
    assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    for bad in [
        format!("sha256:{}", "A".repeat(64)),
        format!("sha512:{}", "a".repeat(128)),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:../{}", "a".repeat(61)),
        format!("sha256:{}/", "a".repeat(63)),
        format!(" sha256:{hex}"),
        hex.clone(),
        String::new(),
    ] {
        assert!(
            matches!(Digest::parse(&bad), Err(StoreError::InvalidDigest { .. })),
            "{bad:?} accepted"
        );
    }
    assert_eq!(
        Digest::of(b"").as_str(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn digest_serde_is_the_validated_string() {
    let d = Digest::of(b"x");
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(json, format!("\"{d}\""));
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    assert!(serde_json::from_str::<Digest>("\"sha256:../../etc/passwd\"").is_err());
}

#[tokio::test]
async fn writer_commits_right_bytes() {
    let dir = TempDir::new("writer-ok");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = bytes(1, 100_000);
    let d = Digest::of(&data);
    let mut w = store.writer(&d, data.len() as u64).unwrap();
    let temp = w.path().to_owned();
    for chunk in data.chunks(7_000) {
        w.write_all(chunk).await.unwrap();
    }
    w.flush().await.unwrap();
    // Flushed ranges are readable through another handle before the commit.
    assert_eq!(fs::read(&temp).unwrap(), data);
    assert!(!store.contains(&d));
    w.commit().await.unwrap();
    assert!(!temp.exists());
    assert_eq!(store.len_of(&d), Some(data.len() as u64));
    let path = store.blob_path(&d).unwrap();
    assert_eq!(fs::read(&path).unwrap(), data);
    assert!(fs::metadata(&path).unwrap().permissions().readonly());
    let (_, len) = store.open_blob(&d).unwrap();
    assert_eq!(len, data.len() as u64);
    let stats = store.stats();
    assert_eq!((stats.commits, stats.blobs, stats.bytes), (1, 1, 100_000));
    assert_eq!((stats.hits, stats.rejected), (1, 0));
}

#[tokio::test]
async fn writer_refuses_wrong_bytes_and_leaves_nothing() {
    let dir = TempDir::new("writer-bad");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = bytes(2, 5_000);
    let d = Digest::of(&data);
    let mut corrupt = data.clone();
    corrupt[4_000] ^= 1;
    let mut w = store.writer(&d, data.len() as u64).unwrap();
    let temp = w.path().to_owned();
    w.write_all(&corrupt).await.unwrap();
    let err = w.commit().await.unwrap_err();
    let StoreError::DigestMismatch { expected, actual } = &err else {
        panic!("{err}");
    };
    assert_eq!((expected, actual), (&d, &Digest::of(&corrupt)));
    assert!(!store.contains(&d));
    assert!(store.open_blob(&d).is_none());
    assert!(store.blob_path(&d).is_none());
    assert!(!temp.exists());
    assert!(!store.dir().join("blobs/sha256").join(d.hex()).exists());
    assert_eq!(store.stats().rejected, 1);
    assert_eq!(store.stats().misses, 1);
    // The digest is free again.
    store.put_bytes(&d, &data).await.unwrap();
    assert!(store.contains(&d));
}

#[tokio::test]
async fn writer_refuses_too_few_and_too_many_bytes() {
    let dir = TempDir::new("writer-len");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = bytes(3, 1_000);
    let d = Digest::of(&data);

    let mut w = store.writer(&d, 1_000).unwrap();
    let temp = w.path().to_owned();
    w.write_all(&data[..999]).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Truncated {
                expected: 1_000,
                actual: 999,
                ..
            }
        ),
        "{err}"
    );
    assert!(!temp.exists());
    assert!(!store.contains(&d));

    let mut w = store.writer(&d, 1_000).unwrap();
    let temp = w.path().to_owned();
    w.write_all(&data[..600]).await.unwrap();
    let err = w.write_all(&data[..600]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Overflow {
                len: 1_000,
                attempted: 1_200,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(w.written(), 600);
    assert!(w.commit().await.is_err());
    assert!(!temp.exists());
    assert!(!store.contains(&d));
    assert_eq!(store.stats().rejected, 2);
    assert!(ingest_files(&store, ".tmp").is_empty());
}

#[tokio::test]
async fn writer_refusals_before_writing() {
    let dir = TempDir::new("writer-refuse");
    let store = Store::open(dir.path(), 1_000).unwrap();
    let d = Digest::of(b"big");
    let err = store.writer(&d, 1_001).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                len: 1_001,
                budget: 1_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(ingest_files(&store, ".tmp").is_empty());

    let first = store.writer(&d, 3).unwrap();
    assert!(matches!(store.writer(&d, 3), Err(StoreError::Busy { .. })));
    drop(first);
    assert!(ingest_files(&store, ".tmp").is_empty());
    store.writer(&d, 3).unwrap();
}

#[tokio::test]
async fn writer_is_an_async_write_sink_with_the_same_bound() {
    let dir = TempDir::new("writer-copy");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = bytes(4, 300_000);
    let d = Digest::of(&data);
    let mut w = store.writer(&d, data.len() as u64).unwrap();
    let copied = tokio::io::copy(&mut &data[..], &mut w).await.unwrap();
    assert_eq!(copied, data.len() as u64);
    w.commit().await.unwrap();
    assert_eq!(fs::read(store.blob_path(&d).unwrap()).unwrap(), data);

    let short = Digest::of(&data[..1_000]);
    let mut w = store.writer(&short, 1_000).unwrap();
    let err = tokio::io::copy(&mut &data[..], &mut w).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(w.written() <= 1_000);
    drop(w);
    assert!(!store.contains(&short));
}

#[tokio::test]
async fn read_small_enforces_its_limit() {
    let dir = TempDir::new("read-small");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = b"{\"schemaVersion\":2}".to_vec();
    let d = Digest::of(&data);
    assert!(store.read_small(&d, 100).unwrap().is_none());
    store.put_bytes(&d, &data).await.unwrap();
    assert_eq!(&store.read_small(&d, 100).unwrap().unwrap()[..], &data[..]);
    let err = store.read_small(&d, 5).unwrap_err();
    assert!(
        matches!(err, StoreError::ExceedsLimit { max: 5, .. }),
        "{err}"
    );
    let wrong = Digest::of(b"other");
    assert!(matches!(
        store.put_bytes(&wrong, &data).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(!store.contains(&wrong));
}

/// Writes `data` into `path` in pieces of `piece` bytes, in a scrambled order.
fn write_scrambled(path: &Path, data: &[u8], piece: usize) {
    let file = fs::File::create(path).unwrap();
    let pieces = data.len().div_ceil(piece);
    let mut order: Vec<usize> = (0..pieces).collect();
    let noise = bytes(99, pieces);
    order.sort_by_key(|&i| (noise[i], i));
    assert_ne!(order, (0..pieces).collect::<Vec<_>>());
    for i in order {
        let end = ((i + 1) * piece).min(data.len());
        file.write_all_at(&data[i * piece..end], (i * piece) as u64)
            .unwrap();
    }
}

#[tokio::test]
async fn commit_partial_verifies_and_moves() {
    let dir = TempDir::new("partial-ok");
    let store = Store::open(dir.path(), 1 << 22).unwrap();
    let data = bytes(5, 1_000_003);
    let d = Digest::of(&data);
    let partial = store.partial_path(&d);
    assert_eq!(
        partial,
        dir.path()
            .join("ingest")
            .join(format!("{}.partial", d.hex()))
    );
    write_scrambled(&partial, &data, 16 << 10);
    assert_eq!(store.stats().partial_bytes, data.len() as u64);
    store.commit_partial(&d, data.len() as u64).await.unwrap();
    assert!(!partial.exists());
    assert_eq!(fs::read(store.blob_path(&d).unwrap()).unwrap(), data);
    assert_eq!(store.stats().partial_bytes, 0);
    // Again: already present is fine.
    store.commit_partial(&d, data.len() as u64).await.unwrap();
}

#[tokio::test]
async fn commit_partial_refuses_corruption_and_wrong_length() {
    let dir = TempDir::new("partial-bad");
    let store = Store::open(dir.path(), 1 << 22).unwrap();
    let data = bytes(6, 200_000);
    let d = Digest::of(&data);
    let partial = store.partial_path(&d);
    let mut corrupt = data.clone();
    corrupt[123_456] ^= 0x80;
    write_scrambled(&partial, &corrupt, 16 << 10);
    let err = store
        .commit_partial(&d, data.len() as u64)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(!partial.exists());
    assert!(!store.contains(&d));
    assert!(store.open_blob(&d).is_none());

    fs::write(&partial, &data[..1_000]).unwrap();
    let err = store
        .commit_partial(&d, data.len() as u64)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Truncated { actual: 1_000, .. }),
        "{err}"
    );
    assert!(!partial.exists());

    let err = store
        .commit_partial(&d, data.len() as u64)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert_eq!(store.stats().rejected, 2);
    assert_eq!(store.stats().commits, 0);
}

#[tokio::test]
async fn commit_partial_refuses_a_symlink() {
    let dir = TempDir::new("partial-link");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = b"linked".to_vec();
    let d = Digest::of(&data);
    let target = dir.path().join("elsewhere");
    fs::write(&target, &data).unwrap();
    std::os::unix::fs::symlink(&target, store.partial_path(&d)).unwrap();
    let err = store
        .commit_partial(&d, data.len() as u64)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotRegularFile { .. }), "{err}");
    assert!(!store.contains(&d));
}

#[tokio::test]
async fn store_and_its_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<super::PinGuard>();
    let dir = TempDir::new("send");
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let data = bytes(7, 10);
    let d = Digest::of(&data);
    // Spawning requires every future (and the writer held across awaits) to be Send.
    let task = {
        let store = Arc::clone(&store);
        let d = d.clone();
        tokio::spawn(async move {
            let mut w = store.writer(&d, 10)?;
            w.write_all(&data).await?;
            w.commit().await?;
            store.commit_partial(&d, 10).await?;
            store.put_bytes(&d, &data).await
        })
    };
    task.await.unwrap().unwrap();
    assert!(store.contains(&d));
}
