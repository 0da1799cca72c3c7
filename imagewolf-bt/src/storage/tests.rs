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
