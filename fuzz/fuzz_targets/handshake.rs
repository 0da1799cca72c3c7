//! Fuzzes the 68-byte BitTorrent handshake and the BEP 10 extension handshake on their own:
//! never a panic; whatever is accepted re-encodes to the same bytes (handshake) or to a
//! dictionary that decodes to the same value (extension handshake).

#![no_main]

use imagewolf_bt::wire::{ExtensionHandshake, Handshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hs) = Handshake::decode_slice(data) {
        assert_eq!(&hs.encode()[..], &data[..Handshake::LEN]);
        let _ = (hs.supports_extended(), hs.supports_fast());
    }
    if let Ok(ext) = ExtensionHandshake::decode(data) {
        let again = ExtensionHandshake::decode(&ext.encode()).expect("re-encoded extension handshake");
        assert_eq!(again, ext);
    }
});
