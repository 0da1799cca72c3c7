//! Codec tests: exact encodings from the BEPs, hostile input, and property round trips.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::{InfoHash, Lengths, PeerId, BLOCK_LEN};

fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    assert_eq!(buf.len(), msg.encoded_len(), "encoded_len of {msg:?}");
    buf.to_vec()
}

/// Decodes `bytes` fed in one go; the buffer must be fully consumed.
fn decode_all(limits: DecoderLimits, bytes: &[u8]) -> Result<Vec<Message>, WireError> {
    let mut decoder = MessageDecoder::new(limits);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(msg) = decoder.decode(&mut buf)? {
        out.push(msg);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(out)
}

/// Decodes the first message from `bytes`, which may be incomplete.
fn decode_one(limits: DecoderLimits, bytes: &[u8]) -> Result<Option<Message>, WireError> {
    MessageDecoder::new(limits).decode(&mut BytesMut::from(bytes))
}

fn block(index: u32, begin: u32, length: u32) -> RawBlock {
    RawBlock {
        index,
        begin,
        length,
    }
}

#[test]
fn exact_encodings_from_the_beps() {
    let r = block(1, 0x4000, 0x4000);
    let raw = [0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0];
    let with = |prefix: &[u8], body: &[u8]| [prefix, body].concat();
    let cases: Vec<(Message, Vec<u8>)> = vec![
        (Message::KeepAlive, vec![0, 0, 0, 0]),
        (Message::Choke, vec![0, 0, 0, 1, 0]),
        (Message::Unchoke, vec![0, 0, 0, 1, 1]),
        (Message::Interested, vec![0, 0, 0, 1, 2]),
        (Message::NotInterested, vec![0, 0, 0, 1, 3]),
        (Message::Have(5), vec![0, 0, 0, 5, 4, 0, 0, 0, 5]),
        (
            Message::Bitfield(Bytes::from_static(&[0xFF, 0x80])),
            vec![0, 0, 0, 3, 5, 0xFF, 0x80],
        ),
        (Message::Request(r), with(&[0, 0, 0, 13, 6], &raw)),
        (
            Message::Piece {
                index: 1,
                begin: 2,
                data: Bytes::from_static(b"abc"),
            },
            vec![0, 0, 0, 12, 7, 0, 0, 0, 1, 0, 0, 0, 2, b'a', b'b', b'c'],
        ),
        (Message::Cancel(r), with(&[0, 0, 0, 13, 8], &raw)),
        (Message::Port(6881), vec![0, 0, 0, 3, 9, 0x1A, 0xE1]),
        (Message::Suggest(7), vec![0, 0, 0, 5, 13, 0, 0, 0, 7]),
        (Message::HaveAll, vec![0, 0, 0, 1, 14]),
        (Message::HaveNone, vec![0, 0, 0, 1, 15]),
        (Message::Reject(r), with(&[0, 0, 0, 13, 16], &raw)),
        (Message::AllowedFast(3), vec![0, 0, 0, 5, 17, 0, 0, 0, 3]),
        (
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"de"),
            },
            vec![0, 0, 0, 4, 20, 0, b'd', b'e'],
        ),
    ];
    for (msg, bytes) in cases {
        assert_eq!(encode(&msg), bytes, "encoding of {msg:?}");
        let decoded = decode_all(DecoderLimits::new(2), &bytes).unwrap();
        assert_eq!(decoded, vec![msg]);
    }
}

#[test]
fn piece_header_matches_full_encoding() {
    let data = Bytes::from(vec![7u8; BLOCK_LEN as usize]);
    let mut header = BytesMut::new();
    encode_piece_header(3, 0x8000, BLOCK_LEN, &mut header);
    assert_eq!(header.len(), PIECE_HEADER_LEN);
    header.extend_from_slice(&data);
    let full = encode(&Message::Piece {
        index: 3,
        begin: 0x8000,
        data,
    });
    assert_eq!(header.to_vec(), full);
}

#[test]
fn piece_data_is_zero_copy() {
    let frame = encode(&Message::Piece {
        index: 0,
        begin: 0,
        data: Bytes::from(vec![1u8; 100]),
    });
    let mut buf = BytesMut::from(&frame[..]);
    let range = buf.as_ptr_range();
    let msg = MessageDecoder::new(DecoderLimits::default())
        .decode(&mut buf)
        .unwrap();
    let Some(Message::Piece { data, .. }) = msg else {
        panic!("not a piece: {msg:?}");
    };
    assert!(range.contains(&data.as_ptr()), "piece data was copied");
}

#[test]
fn handshake_layout_and_bits() {
    let hs = Handshake::new(InfoHash([0xAA; 20]), PeerId(*b"-IW0001-abcdefghijkl"));
    assert_eq!(hs.reserved, [0, 0, 0, 0, 0, 0x10, 0, 0x04]);
    assert!(hs.supports_extended() && hs.supports_fast());
    assert_eq!(hs.reserved[7] & 0x01, 0, "DHT bit must not be set");
    let bytes = hs.encode();
    assert_eq!(bytes[0], 19);
    assert_eq!(&bytes[1..20], b"BitTorrent protocol");
    assert_eq!(&bytes[28..48], &[0xAA; 20]);
    assert_eq!(&bytes[48..], b"-IW0001-abcdefghijkl");
    assert_eq!(Handshake::decode(&bytes), Ok(hs));

    let mut head = [0u8; Handshake::HEAD_LEN];
    head.copy_from_slice(&bytes[..48]);
    assert_eq!(
        Handshake::decode_head(&head),
        Ok((hs.reserved, hs.info_hash))
    );

    let plain = Handshake {
        reserved: [0xFF, 0, 0, 0, 0, 0, 0, 0x01],
        ..hs
    };
    assert!(!plain.supports_extended() && !plain.supports_fast());
    assert_eq!(Handshake::decode(&plain.encode()), Ok(plain));
}

#[test]
fn bad_handshakes_are_refused() {
    let good = Handshake::new(InfoHash([1; 20]), PeerId([2; 20])).encode();
    let mut wrong_len = good;
    wrong_len[0] = 18;
    assert_eq!(Handshake::decode(&wrong_len), Err(WireError::BadProtocol));
    let mut wrong_pstr = good;
    wrong_pstr[1] = b'b';
    assert_eq!(Handshake::decode(&wrong_pstr), Err(WireError::BadProtocol));
    assert_eq!(
        Handshake::decode(&[0; 68]),
        Err(WireError::BadProtocol),
        "all zeroes"
    );
    assert_eq!(
        Handshake::decode_slice(&good[..67]),
        Err(WireError::TruncatedHandshake { got: 67 })
    );
    assert_eq!(
        Handshake::decode_slice(&[]),
        Err(WireError::TruncatedHandshake { got: 0 })
    );
    // Bytes after the handshake belong to the message stream.
    let mut longer = good.to_vec();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert!(Handshake::decode_slice(&longer).is_ok());
}

#[test]
fn keep_alive_and_partial_headers() {
    let mut decoder = MessageDecoder::new(DecoderLimits::default());
    let mut buf = BytesMut::new();
    for byte in [0u8, 0, 0] {
        buf.extend_from_slice(&[byte]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.bytes_needed(&buf), 4 - buf.len());
    }
    buf.extend_from_slice(&[0]);
    assert_eq!(decoder.bytes_needed(&buf), 0);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Message::KeepAlive)));
    assert!(buf.is_empty());

    // A prefix without its id byte: the decoder waits, asking for exactly one more byte.
    buf.extend_from_slice(&[0, 0, 0x40, 9]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(decoder.bytes_needed(&buf), 1);
    buf.extend_from_slice(&[7]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(decoder.bytes_needed(&buf), 0x4009 + 4 - 5);
}

#[test]
fn huge_prefix_is_refused_without_allocating() {
    let mut decoder = MessageDecoder::new(DecoderLimits::default());
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let capacity = buf.capacity();
    let err = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        WireError::MessageTooLong {
            id: None,
            len: u32::MAX,
            max: decoder.max_frame_len() - 4,
        }
    );
    assert_eq!(buf.capacity(), capacity);
    assert_eq!(decoder.bytes_needed(&buf), 0);
    // Errors consume nothing and repeat.
    assert_eq!(buf.len(), 4);
    assert_eq!(decoder.decode(&mut buf), Err(err));
}

#[test]
fn fixed_lengths_are_exact() {
    // (id, its only valid length)
    let fixed = [
        (0u8, 1u32),
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 5),
        (6, 13),
        (8, 13),
        (9, 3),
        (13, 5),
        (14, 1),
        (15, 1),
        (16, 13),
        (17, 5),
    ];
    for (id, len) in fixed {
        for wrong in [len - 1, len + 1, 1000] {
            if wrong == 0 {
                continue;
            }
            let mut frame = wrong.to_be_bytes().to_vec();
            frame.push(id);
            // Refused from the header alone: no payload byte has arrived.
            assert_eq!(
                decode_one(DecoderLimits::default(), &frame),
                Err(WireError::BadLength { id, len: wrong }),
                "id {id} length {wrong}"
            );
        }
    }
}

#[test]
fn bitfield_length_must_match_the_torrent() {
    let lengths = Lengths::new(10 * 16384, 16384).unwrap();
    let limits = DecoderLimits::for_torrent(&lengths);
    assert_eq!(limits.max_bitfield_len, 2);
    for bad in [1u32, 2, 4, 100_000] {
        let mut frame = bad.to_be_bytes().to_vec();
        frame.push(5);
        assert_eq!(
            decode_one(limits, &frame),
            Err(WireError::BadLength { id: 5, len: bad })
        );
    }
    assert_eq!(
        decode_all(limits, &[0, 0, 0, 3, 5, 0xFF, 0xC0]),
        Ok(vec![Message::Bitfield(Bytes::from_static(&[0xFF, 0xC0]))])
    );
    // Unknown torrent size: any length up to max_extended_len.
    let unknown = DecoderLimits::default();
    assert!(decode_all(unknown, &[0, 0, 0, 4, 5, 1, 2, 3]).is_ok());
    let too_long = (DEFAULT_MAX_EXTENDED_LEN as u32 + 2).to_be_bytes();
    assert!(matches!(
        decode_one(unknown, &[&too_long[..], &[5]].concat()),
        Err(WireError::MessageTooLong { id: Some(5), .. })
    ));
}

#[test]
fn piece_and_extended_bounds() {
    let limits = DecoderLimits::default();
    let frame = |len: u32, id: u8| [&len.to_be_bytes()[..], &[id]].concat();
    // 16 KiB + 1 of data: refused before any of it is buffered.
    assert_eq!(
        decode_one(limits, &frame(9 + BLOCK_LEN + 1, 7)),
        Err(WireError::MessageTooLong {
            id: Some(7),
            len: 9 + BLOCK_LEN + 1,
            max: 9 + BLOCK_LEN as usize,
        })
    );
    assert_eq!(decode_one(limits, &frame(9 + BLOCK_LEN, 7)), Ok(None));
    assert_eq!(
        decode_one(limits, &frame(8, 7)),
        Err(WireError::BadLength { id: 7, len: 8 })
    );
    assert_eq!(
        decode_one(limits, &frame(1, 20)),
        Err(WireError::BadLength { id: 20, len: 1 })
    );
    let ext_max = DEFAULT_MAX_EXTENDED_LEN as u32 + 2;
    assert_eq!(decode_one(limits, &frame(ext_max, 20)), Ok(None));
    assert!(matches!(
        decode_one(limits, &frame(ext_max + 1, 20)),
        Err(WireError::MessageTooLong { .. })
    ));
    // The prefix check alone: nothing can be longer than the largest allowed message.
    let decoder = MessageDecoder::new(limits);
    assert_eq!(decoder.max_frame_len(), 4 + 2 + DEFAULT_MAX_EXTENDED_LEN);
    let small = MessageDecoder::new(DecoderLimits {
        max_bitfield_len: 10,
        max_block_len: BLOCK_LEN,
        max_extended_len: 100,
    });
    assert_eq!(small.max_frame_len(), 4 + 9 + BLOCK_LEN as usize);
    assert!(matches!(
        decode_one(*small.limits(), &(9 + BLOCK_LEN + 1).to_be_bytes()),
        Err(WireError::MessageTooLong { id: None, .. })
    ));
}

#[test]
fn unknown_ids_are_skipped_without_buffering() {
    let mut stream = vec![0, 0, 0, 6, 99, 1, 2, 3, 4, 5];
    stream.extend_from_slice(&encode(&Message::Have(9)));
    // Byte by byte: the skipped frame never stays in the buffer.
    let mut decoder = MessageDecoder::new(DecoderLimits::default());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &byte in &stream {
        buf.extend_from_slice(&[byte]);
        while let Some(msg) = decoder.decode(&mut buf).unwrap() {
            got.push(msg);
        }
        assert!(buf.len() <= 9);
    }
    assert_eq!(got, vec![Message::Have(9)]);
    assert_eq!(decoder.skipped_frames(), 1);
    assert_eq!(decoder.skipped_bytes(), 10);

    // In one go, and a bytes_needed hint while skipping.
    assert_eq!(decode_all(DecoderLimits::default(), &stream), Ok(got));
    let mut decoder = MessageDecoder::new(DecoderLimits::default());
    let mut buf = BytesMut::from(&stream[..7]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
    assert_eq!(decoder.bytes_needed(&buf), 3 + 4);

    // Unknown and too long: refused.
    let limits = DecoderLimits {
        max_extended_len: 10,
        ..DecoderLimits::default()
    };
    assert!(decode_one(limits, &[0, 0, 0, 11, 99]).unwrap().is_none());
    assert!(matches!(
        decode_one(limits, &[0, 0, 0, 12, 99]),
        Err(WireError::MessageTooLong { id: Some(99), .. })
    ));
}

#[test]
fn extension_handshake_from_libtorrent() {
    // Sorted keys, several we do not know, as libtorrent 2.0 sends it.
    let payload = b"d12:complete_agoi1e1:ei0e4:ipv44:\x7f\x00\x00\x011:md11:lt_donthavei7e\
        10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee\
        13:metadata_sizei12345e1:pi6881e4:reqqi500e11:upload_onlyi1e1:v16:libtorrent 2.0.9\
        6:yourip4:\xc0\xa8\x01\x02e";
    let hs = ExtensionHandshake::decode(payload).unwrap();
    assert_eq!(hs.m.len(), 6);
    assert_eq!(hs.extension_id("ut_metadata"), Some(2));
    assert_eq!(hs.extension_id("nope"), None);
    assert_eq!(hs.p, Some(6881));
    assert_eq!(hs.reqq, Some(500));
    assert_eq!(hs.v.as_deref(), Some("libtorrent 2.0.9"));
    assert_eq!(hs.yourip, Some(vec![192, 168, 1, 2]));
}

#[test]
fn extension_handshake_encoding_is_canonical() {
    let hs = ExtensionHandshake {
        m: BTreeMap::from([("ut_pex".to_owned(), 1), ("lt_donthave".to_owned(), 0)]),
        v: Some("ImageWolf 0.1".to_owned()),
        p: Some(6881),
        reqq: Some(2000),
        yourip: Some(vec![10, 0, 0, 1]),
        metadata_size: None,
    };
    let bytes = hs.encode();
    assert_eq!(
        &bytes[..],
        &b"d1:md11:lt_donthavei0e6:ut_pexi1ee1:pi6881e4:reqqi2000e1:v13:ImageWolf 0.1\
           6:yourip4:\x0a\x00\x00\x01e"[..]
    );
    assert_eq!(ExtensionHandshake::decode(&bytes), Ok(hs));
    assert_eq!(&ExtensionHandshake::default().encode()[..], b"d1:mdee");
    assert_eq!(
        ExtensionHandshake::decode(b"de"),
        Ok(ExtensionHandshake::default())
    );
}

#[test]
fn extension_handshake_tolerates_wrong_types() {
    let hs =
        ExtensionHandshake::decode(b"d1:mli1ee1:p3:abc4:reqqi-5e1:vi3e6:yourip5:12345e").unwrap();
    assert_eq!(hs, ExtensionHandshake::default());
    let hs =
        ExtensionHandshake::decode(b"d1:md1:ai300e1:bi-1e1:c3:xyz1:di3e2:\xff\xffi4ee1:pi70000ee")
            .unwrap();
    assert_eq!(hs.m, BTreeMap::from([("d".to_owned(), 3)]));
    assert_eq!(hs.p, None);
    // Trailing bytes after the dictionary are ignored.
    assert!(ExtensionHandshake::decode(b"d4:reqqi5eejunk").is_ok());
}

#[test]
fn extension_handshake_garbage_is_refused() {
    let deep = [
        vec![b'd', b'1', b':', b'x'],
        vec![b'l'; 100],
        vec![b'e'; 101],
    ]
    .concat();
    let huge = [&b"d1:v"[..], b"70000:", &vec![b'a'; 70_000], b"e"].concat();
    let garbage: [&[u8]; 10] = [
        b"",
        b"i5e",
        b"4:spam",
        b"le",
        b"d",
        b"d1:mi1e",
        b"d1:pi1e1:mdee", // unsorted keys
        b"d1:x99999999999999999999:e",
        &deep,
        &huge,
    ];
    for input in garbage {
        assert!(
            matches!(
                ExtensionHandshake::decode(input),
                Err(WireError::BadExtensionHandshake(_))
            ),
            "{:?}",
            String::from_utf8_lossy(&input[..input.len().min(40)])
        );
    }
}

#[test]
fn bitfield_helpers() {
    assert_eq!(bitfield::byte_len(0), 0);
    assert_eq!(bitfield::byte_len(9), 2);
    assert!(bitfield::spare_bits_clear(&[0xFF, 0x80], 9));
    assert!(!bitfield::spare_bits_clear(&[0xFF, 0xC0], 9));
    assert!(!bitfield::spare_bits_clear(&[0xFF], 9));
    assert!(bitfield::spare_bits_clear(&[0xFF], 8));
    assert!(bitfield::spare_bits_clear(&[], 0));
    let mut bits = [0xFF, 0xFF, 0xFF];
    bitfield::mask_spare_bits(&mut bits, 9);
    assert_eq!(bits, [0xFF, 0x80, 0]);
    let clean = Bytes::from_static(&[0xA0]);
    let same = bitfield::masked(clean.clone(), 3);
    assert_eq!(
        same.as_ptr(),
        clean.as_ptr(),
        "clean bitfields are not copied"
    );
    assert_eq!(
        &bitfield::masked(Bytes::from_static(&[0xFF]), 3)[..],
        &[0xE0]
    );
    let mut bits = [0u8; 2];
    bitfield::set_piece(&mut bits, 0);
    bitfield::set_piece(&mut bits, 9);
    bitfield::set_piece(&mut bits, 16);
    assert_eq!(bits, [0x80, 0x40]);
    assert!(bitfield::has_piece(&bits, 9));
    assert!(!bitfield::has_piece(&bits, 8));
    assert!(!bitfield::has_piece(&bits, u32::MAX));
}

// ---- properties ----

/// Bytes of length `len` without generating each one: a pattern from a seed.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn arb_block() -> impl Strategy<Value = RawBlock> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(i, b, l)| block(i, b, l))
}

/// Any message; Bitfields are `bitfield_len` long (any short length if 0).
fn arb_message(bitfield_len: usize) -> impl Strategy<Value = Message> {
    let bitfield = if bitfield_len > 0 {
        (Just(bitfield_len), any::<u8>()).boxed()
    } else {
        (0usize..40, any::<u8>()).boxed()
    };
    let piece_len = prop_oneof![0usize..64, Just(BLOCK_LEN as usize), 0..=BLOCK_LEN as usize];
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        any::<u32>().prop_map(Message::Have),
        bitfield.prop_map(|(n, seed)| Message::Bitfield(pattern(n, seed))),
        arb_block().prop_map(Message::Request),
        (any::<u32>(), any::<u32>(), piece_len, any::<u8>()).prop_map(|(index, begin, n, s)| {
            Message::Piece {
                index,
                begin,
                data: pattern(n, s),
            }
        }),
        arb_block().prop_map(Message::Cancel),
        any::<u16>().prop_map(Message::Port),
        any::<u32>().prop_map(Message::Suggest),
        Just(Message::HaveAll),
        Just(Message::HaveNone),
        arb_block().prop_map(Message::Reject),
        any::<u32>().prop_map(Message::AllowedFast),
        (any::<u8>(), 0usize..300, any::<u8>()).prop_map(|(id, n, s)| Message::Extended {
            id,
            payload: pattern(n, s),
        }),
    ]
}

fn arb_stream() -> impl Strategy<Value = (usize, Vec<Message>)> {
    (0usize..40).prop_flat_map(|bf| (Just(bf), prop::collection::vec(arb_message(bf), 1..12)))
}

/// Feeds `stream` to a decoder in chunks of the given sizes (cycled), checking the memory
/// bound after every chunk; returns the messages and whether an error stopped it.
fn feed(
    limits: DecoderLimits,
    stream: &[u8],
    chunks: &[usize],
) -> (Vec<Message>, Option<WireError>) {
    let mut decoder = MessageDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(msg)) => out.push(msg),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        assert!(buf.len() < decoder.max_frame_len());
    }
    (out, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn messages_round_trip_in_any_split(
        (bf, msgs) in arb_stream(),
        chunks in prop::collection::vec(1usize..200, 1..8),
    ) {
        let mut stream = BytesMut::new();
        for m in &msgs {
            m.encode(&mut stream);
        }
        let (decoded, err) = feed(DecoderLimits::new(bf), &stream, &chunks);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&decoded, &msgs);
        let mut again = BytesMut::new();
        for m in &decoded {
            m.encode(&mut again);
        }
        prop_assert_eq!(again, stream);
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded(
        stream in prop::collection::vec(any::<u8>(), 0..400),
        chunks in prop::collection::vec(1usize..50, 1..8),
        bf in 0usize..8,
    ) {
        let limits = DecoderLimits { max_extended_len: 64, ..DecoderLimits::new(bf) };
        let (msgs, _) = feed(limits, &stream, &chunks);
        // Whatever was accepted re-encodes to a prefix of the input (minus skipped frames).
        let encoded: usize = msgs.iter().map(Message::encoded_len).sum();
        prop_assert!(encoded <= stream.len());
    }

    #[test]
    fn handshakes_round_trip(reserved in any::<[u8; 8]>(), ih in any::<[u8; 20]>(), id in any::<[u8; 20]>()) {
        let hs = Handshake { reserved, info_hash: InfoHash(ih), peer_id: PeerId(id) };
        prop_assert_eq!(Handshake::decode(&hs.encode()), Ok(hs));
    }

    #[test]
    fn extension_handshakes_round_trip(
        m in prop::collection::btree_map("[a-z_]{1,20}", any::<u8>(), 0..8),
        v in proptest::option::of("[ -~]{0,40}"),
        p in proptest::option::of(1u16..),
        reqq in proptest::option::of(any::<u32>()),
        yourip in proptest::option::of(prop_oneof![
            prop::collection::vec(any::<u8>(), 4),
            prop::collection::vec(any::<u8>(), 16),
        ]),
    ) {
        let hs = ExtensionHandshake { m, v, p, reqq, yourip, metadata_size: None };
        prop_assert_eq!(ExtensionHandshake::decode(&hs.encode()), Ok(hs));
    }

    #[test]
    fn extension_handshake_garbage_never_panics(input in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut with_dict = b"d1:m".to_vec();
        with_dict.extend_from_slice(&input);
        for payload in [&input, &with_dict] {
            if let Ok(hs) = ExtensionHandshake::decode(payload) {
                prop_assert_eq!(ExtensionHandshake::decode(&hs.encode()), Ok(hs));
            }
        }
    }

    #[test]
    fn lossy_client_names_are_stable(v in prop::collection::vec(any::<u8>(), 0..400)) {
        let payload = [format!("d1:v{}:", v.len()).as_bytes(), &v, b"e"].concat();
        let hs = ExtensionHandshake::decode(&payload).unwrap();
        prop_assert!(hs.v.as_ref().is_some_and(|v| v.len() <= 256));
        prop_assert_eq!(ExtensionHandshake::decode(&hs.encode()), Ok(hs));
    }
}
