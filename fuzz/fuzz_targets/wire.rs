//! Fuzzes the peer wire codec.
//!
//! Input layout: byte 0 picks how many of the following bytes are chunk sizes (0..=15), those
//! bytes are the sizes of the reads fed to the decoder (cycled), the next 3 bytes pick the
//! decoder limits, and the rest is the message stream. The whole input is also tried as a
//! handshake and as an extension handshake.
//!
//! Checked: nothing panics; the receive buffer never holds more than `max_frame_len()` plus
//! one read; every accepted message re-encodes to exactly the bytes it was decoded from
//! (after any skipped unknown frames); an accepted extension handshake survives a
//! re-encode.

#![no_main]

use imagewolf_bt::wire::{BytesMut, DecoderLimits, ExtensionHandshake, Handshake, MessageDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hs) = Handshake::decode_slice(data) {
        assert_eq!(&hs.encode()[..], &data[..Handshake::LEN]);
    }
    if let Ok(ext) = ExtensionHandshake::decode(data) {
        let again = ExtensionHandshake::decode(&ext.encode()).expect("re-encoded handshake");
        assert_eq!(again, ext);
    }

    let Some((&n_chunks, rest)) = data.split_first() else {
        return;
    };
    let n_chunks = usize::from(n_chunks % 16);
    if rest.len() < n_chunks + 3 {
        return;
    }
    let (chunks, rest) = rest.split_at(n_chunks);
    let (limit_bytes, stream) = rest.split_at(3);
    // Small limits so the fuzzer can reach them with short inputs; one setting in four
    // keeps the real 16 KiB block limit.
    let limits = DecoderLimits {
        max_bitfield_len: usize::from(limit_bytes[0] % 8),
        max_block_len: if limit_bytes[1] % 4 == 0 {
            16 * 1024
        } else {
            u32::from(limit_bytes[1])
        },
        max_extended_len: usize::from(limit_bytes[2]),
    };
    let chunk_sizes: Vec<usize> = if chunks.is_empty() {
        vec![stream.len().max(1)]
    } else {
        chunks.iter().map(|&c| usize::from(c) + 1).collect()
    };

    let mut decoder = MessageDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut appended = 0usize;
    // Stream offset of the first byte not yet consumed by the decoder.
    let mut consumed = 0usize;
    let mut encoded = BytesMut::new();
    for &size in chunk_sizes.iter().cycle() {
        if appended == stream.len() {
            break;
        }
        let end = appended.saturating_add(size).min(stream.len());
        buf.extend_from_slice(&stream[appended..end]);
        let chunk_len = end - appended;
        appended = end;
        assert!(buf.len() <= decoder.max_frame_len() + chunk_len);
        loop {
            let skipped_before = decoder.skipped_bytes();
            let result = decoder.decode(&mut buf);
            let now_consumed = appended - buf.len();
            let skipped = (decoder.skipped_bytes() - skipped_before) as usize;
            match result {
                Ok(Some(msg)) => {
                    encoded.clear();
                    msg.encode(&mut encoded);
                    assert_eq!(encoded.len(), msg.encoded_len());
                    let start = consumed + skipped;
                    assert_eq!(start + encoded.len(), now_consumed, "{msg:?}");
                    assert_eq!(&encoded[..], &stream[start..now_consumed], "{msg:?}");
                    consumed = now_consumed;
                }
                Ok(None) => {
                    assert_eq!(consumed + skipped, now_consumed);
                    consumed = now_consumed;
                    assert!(buf.len() < decoder.max_frame_len());
                    break;
                }
                Err(_) => {
                    assert_eq!(consumed + skipped, now_consumed, "errors consume nothing");
                    return;
                }
            }
        }
    }
});
