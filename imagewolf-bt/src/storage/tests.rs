use super::*;
use proptest::prelude::*;
use std::path::PathBuf;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "iw-storage-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn refuses_paths_outside_root() {
    let dir = temp_dir("escape");
    for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
        assert!(
            FileStorage::create(&dir, &[(PathBuf::from(bad), 1)]).is_err(),
            "{bad:?} was accepted"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_of_range_access_is_an_error_not_a_panic() {
    let m = MemoryStorage::new(10);
    assert!(m.write_at(8, b"abc").is_err());
    assert!(m.read_at(u64::MAX, &mut [0u8; 2]).is_err());
    let dir = temp_dir("range");
    let f = FileStorage::create(&dir, &[("a".into(), 10)]).unwrap();
    assert!(f.read_at(9, &mut [0u8; 2]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_existing_checks_lengths() {
    let dir = temp_dir("existing");
    std::fs::write(dir.join("a"), b"12345").unwrap();
    assert!(FileStorage::open_existing(&dir, &[("a".into(), 5)]).is_ok());
    assert!(FileStorage::open_existing(&dir, &[("a".into(), 6)]).is_err());
    assert!(FileStorage::open_existing(&dir, &[("missing".into(), 1)]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Multi-file storage reads and writes exactly like one flat buffer, whatever the file
    /// boundaries (zero-length files included).
    #[test]
    fn file_storage_behaves_like_flat_memory(
        lens in prop::collection::vec(0u64..300, 1..6),
        writes in prop::collection::vec((0u64..1500, prop::collection::vec(any::<u8>(), 1..200)), 1..20),
    ) {
        let total: u64 = lens.iter().sum();
        prop_assume!(total > 0);
        let dir = temp_dir("prop");
        let files: Vec<(PathBuf, u64)> = lens.iter().enumerate()
            .map(|(i, l)| (PathBuf::from(format!("d{i}/f{i}")), *l)).collect();
        let f = FileStorage::create(&dir, &files).unwrap();
        let m = MemoryStorage::new(total);
        for (off, data) in writes {
            let off = off % total;
            let data = &data[..data.len().min((total - off) as usize)];
            f.write_at(off, data).unwrap();
            m.write_at(off, data).unwrap();
        }
        let mut a = vec![0u8; total as usize];
        f.read_at(0, &mut a).unwrap();
        prop_assert_eq!(&a, &m.to_vec());
        // The files on disk hold the same bytes, end to end.
        let mut on_disk = Vec::new();
        for (rel, _) in &files {
            on_disk.extend(std::fs::read(dir.join(rel)).unwrap());
        }
        prop_assert_eq!(on_disk, a);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_planted_symlink_is_not_followed() {
    let dir = temp_dir("symlink");
    let outside = temp_dir("symlink-target");
    let precious = outside.join("precious");
    std::fs::write(&precious, b"do not touch me").unwrap();
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(downloads.join("t")).unwrap();
    // Where the torrent's file goes, and where one of its directories goes.
    std::os::unix::fs::symlink(&precious, downloads.join("t/a.bin")).unwrap();
    std::os::unix::fs::symlink(&outside, downloads.join("t/sub")).unwrap();
    for rel in ["t/a.bin", "t/sub/b.bin", "t/sub/precious"] {
        let files = [(PathBuf::from(rel), 4)];
        let err = FileStorage::create(&downloads, &files)
            .err()
            .unwrap_or_else(|| panic!("{rel} was opened through a symlink"));
        assert!(err.to_string().contains("symbolic link"), "{rel}: {err}");
        assert!(FileStorage::open_existing(&downloads, &files).is_err());
    }
    // The single-file constructors too, for the file itself.
    assert!(FileStorage::create_file(&downloads.join("t/a.bin"), 4).is_err());
    assert!(FileStorage::open_file(&downloads.join("t/a.bin"), 15).is_err());
    assert!(FileStorage::create_range(&downloads.join("t/a.bin"), 0, 4).is_err());
    assert!(FileStorage::open_range(&downloads.join("t/a.bin"), 0, 4).is_err());
    assert_eq!(std::fs::read(&precious).unwrap(), b"do not touch me");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "a file was created outside"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn an_existing_file_that_is_not_ours_is_not_truncated_nor_written() {
    let dir = temp_dir("not-ours");
    std::fs::write(dir.join("long"), b"0123456789").unwrap();
    let err = FileStorage::create(&dir, &[("long".into(), 4)])
        .err()
        .unwrap();
    assert!(err.to_string().contains("not truncating"), "{err}");
    assert_eq!(std::fs::read(dir.join("long")).unwrap(), b"0123456789");
    // A hard link to a file elsewhere would be written through.
    std::fs::write(dir.join("elsewhere"), b"abcd").unwrap();
    std::fs::hard_link(dir.join("elsewhere"), dir.join("linked")).unwrap();
    let err = FileStorage::create(&dir, &[("linked".into(), 4)])
        .err()
        .unwrap();
    assert!(err.to_string().contains("hard links"), "{err}");
    // Shorter (an interrupted download of ours) is extended, keeping what it holds.
    std::fs::write(dir.join("short"), b"ab").unwrap();
    let s = FileStorage::create(&dir, &[("short".into(), 4)]).unwrap();
    let mut buf = [9u8; 4];
    s.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"ab\0\0");
    // A FIFO where a file should be is refused rather than blocking.
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("fifo"))
        .status();
    if fifo.is_ok_and(|s| s.success()) {
        let err = FileStorage::open_existing(&dir, &[("fifo".into(), 0)])
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Descriptors this process holds on files below `dir` (other tests running at the same
/// time open their own directories, so they are not counted).
fn fds_below(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|target| target.starts_with(dir)))
        .count()
}

#[test]
fn thirty_thousand_files_are_stored_with_a_bounded_number_of_descriptors() {
    let dir = temp_dir("many").canonicalize().unwrap();
    let files: Vec<(PathBuf, u64)> = (0..30_000u64)
        .map(|i| (PathBuf::from(format!("t/d{}/f{i}", i % 100)), 1 + i % 3))
        .collect();
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let bound = MAX_OPEN_FILES + 1; // the open files and the directory
    let storage = FileStorage::create(&dir, &files).unwrap();
    let after_create = fds_below(&dir);
    assert!(
        after_create <= bound,
        "{after_create} descriptors after creating"
    );
    assert!(storage.open_files() <= MAX_OPEN_FILES);
    // Write the whole payload in pieces that cross many files, then read it back.
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    for (n, chunk) in payload.chunks(1000).enumerate() {
        storage.write_at(n as u64 * 1000, chunk).unwrap();
    }
    let after_write = fds_below(&dir);
    assert!(
        after_write <= bound,
        "{after_write} descriptors after writing"
    );
    let mut back = vec![0u8; total as usize];
    storage.read_at(0, &mut back).unwrap();
    assert!(back == payload);
    let after_read = fds_below(&dir);
    assert!(
        after_read <= bound,
        "{after_read} descriptors after reading"
    );
    // The bytes are in the right files.
    assert_eq!(std::fs::read(dir.join("t/d7/f7")).unwrap().len(), 2);
    let mut start = 0usize;
    for (i, (rel, len)) in files.iter().enumerate() {
        let len = *len as usize;
        if i % 997 == 0 {
            assert_eq!(
                std::fs::read(dir.join(rel)).unwrap(),
                &payload[start..start + len]
            );
        }
        start += len;
    }
    // Reopened read-only for seeding, also bounded.
    drop(storage);
    let seed = FileStorage::open_existing(&dir, &files).unwrap();
    let mut again = vec![0u8; total as usize];
    seed.read_at(0, &mut again).unwrap();
    assert!(again == payload);
    assert!(fds_below(&dir) <= bound);
    drop(seed);
    assert_eq!(fds_below(&dir), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
