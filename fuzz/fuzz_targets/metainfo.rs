//! `Metainfo::from_bytes` on arbitrary bytes never panics, and whatever it accepts writes back
//! to bytes that parse to the same torrent (same info-hash, same `info`).
#![no_main]
use imagewolf_bt::metainfo::{sha1, Metainfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = Metainfo::from_bytes(data) else {
        return;
    };
    assert_eq!(sha1(parsed.info_bytes()), parsed.info_hash().0);
    let written = parsed.to_bytes();
    let again = Metainfo::from_bytes(&written).expect("our own output must parse");
    assert_eq!(again.info_hash(), parsed.info_hash());
    assert_eq!(again.info(), parsed.info());
    assert_eq!(again.to_bytes(), written, "writing must be stable");
});
