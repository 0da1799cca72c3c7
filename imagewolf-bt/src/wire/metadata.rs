//! BEP 9 metadata exchange (`ut_metadata`), sans-IO: the messages, and the assembler that
//! collects a torrent's info dict from 16 KiB pieces and checks it against the info-hash.
//!
//! A message is an Extended message whose payload is a bencoded dict (`msg_type`, `piece`,
//! and for data `total_size`), followed, for data, by the piece's raw bytes. The dict is
//! parsed by hand: it holds only integers (and, from some clients, short strings), and
//! the data that follows it is found only by knowing where the dict ends.

use bytes::{BufMut, Bytes, BytesMut};

use super::WireError;
use crate::metainfo::{sha1, MAX_METAINFO_LEN};
use crate::InfoHash;

/// The extension's name in the BEP 10 handshake's `m` dict.
pub const UT_METADATA: &str = "ut_metadata";
/// The id under which we receive `ut_metadata` messages (what our handshake's `m` says).
pub const OUR_UT_METADATA_ID: u8 = 3;
/// Metadata travels in pieces of this size; only the last one is shorter.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;
/// The largest info dict we fetch (the bound on what a peer can make us buffer): what
/// still fits a `.torrent` of [`MAX_METAINFO_LEN`] around it.
pub const MAX_METADATA_SIZE: usize = MAX_METAINFO_LEN - 16;
/// Longest dict prefix of a `ut_metadata` message we parse.
const MAX_DICT_LEN: usize = 512;

/// One `ut_metadata` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataMessage {
    /// Asks for piece `piece` (msg_type 0).
    Request {
        /// The piece, counted in 16 KiB units.
        piece: u32,
    },
    /// Piece `piece` of an info dict of `total_size` bytes (msg_type 1).
    Data {
        /// The piece.
        piece: u32,
        /// The whole info dict's size.
        total_size: u64,
        /// The piece's bytes.
        data: Bytes,
    },
    /// The sender will not send piece `piece` (msg_type 2).
    Reject {
        /// The piece.
        piece: u32,
    },
}

impl MetadataMessage {
    /// The Extended payload (to send under the peer's id for [`UT_METADATA`]).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        let (msg_type, piece) = match self {
            MetadataMessage::Request { piece } => (0, piece),
            MetadataMessage::Data { piece, .. } => (1, piece),
            MetadataMessage::Reject { piece } => (2, piece),
        };
        out.put_slice(format!("d8:msg_typei{msg_type}e5:piecei{piece}e").as_bytes());
        if let MetadataMessage::Data {
            total_size, data, ..
        } = self
        {
            out.put_slice(format!("10:total_sizei{total_size}ee").as_bytes());
            out.put_slice(data);
        } else {
            out.put_u8(b'e');
        }
        out.freeze()
    }

    /// Parses an Extended payload received under our [`OUR_UT_METADATA_ID`].
    pub fn decode(payload: &Bytes) -> Result<Self, WireError> {
        let bad = |what: &str| WireError::BadMetadataMessage(what.to_owned());
        let (fields, end) = parse_int_dict(payload).ok_or_else(|| bad("malformed dict"))?;
        let get = |key: &[u8]| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let piece = get(b"piece")
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| bad("no valid piece"))?;
        match get(b"msg_type") {
            Some(0) => Ok(MetadataMessage::Request { piece }),
            Some(1) => {
                let total_size = get(b"total_size")
                    .and_then(|t| u64::try_from(t).ok())
                    .ok_or_else(|| bad("data without total_size"))?;
                Ok(MetadataMessage::Data {
                    piece,
                    total_size,
                    data: payload.slice(end..),
                })
            }
            Some(2) => Ok(MetadataMessage::Reject { piece }),
            _ => Err(bad("unknown msg_type")),
        }
    }
}

/// A dict key and its integer value.
type IntField = (Vec<u8>, i64);

/// Parses a bencoded dict at the start of `buf` whose values are integers or short byte
/// strings (strings are skipped), returning the integer fields and where the dict ended.
/// Nested lists and dicts are refused: `ut_metadata` has none.
fn parse_int_dict(buf: &[u8]) -> Option<(Vec<IntField>, usize)> {
    let buf = buf.get(..buf.len().min(MAX_DICT_LEN))?;
    let mut pos = 0;
    let mut fields = Vec::new();
    if *buf.get(pos)? != b'd' {
        return None;
    }
    pos += 1;
    loop {
        match *buf.get(pos)? {
            b'e' => return Some((fields, pos + 1)),
            b'0'..=b'9' => {
                let (key, next) = parse_string(buf, pos)?;
                pos = next;
                match *buf.get(pos)? {
                    b'i' => {
                        let end = pos + buf.get(pos..)?.iter().position(|&b| b == b'e')?;
                        let text = std::str::from_utf8(buf.get(pos + 1..end)?).ok()?;
                        fields.push((key.to_vec(), text.parse().ok()?));
                        pos = end + 1;
                    }
                    b'0'..=b'9' => pos = parse_string(buf, pos)?.1,
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
}

/// A bencoded byte string at `pos`: its bytes and the position after it.
fn parse_string(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let colon = pos + buf.get(pos..)?.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(buf.get(pos..colon)?)
        .ok()?
        .parse()
        .ok()?;
    let end = colon.checked_add(1)?.checked_add(len)?;
    Some((buf.get(colon + 1..end)?, end))
}

/// The number of metadata pieces of an info dict of `size` bytes.
pub fn metadata_pieces(size: usize) -> u32 {
    u32::try_from(size.div_ceil(METADATA_PIECE_LEN)).unwrap_or(u32::MAX)
}

/// Piece `piece` of `metadata` as a Data message, or a Reject when out of range.
pub fn serve_metadata(metadata: &[u8], piece: u32) -> MetadataMessage {
    let start = piece as usize * METADATA_PIECE_LEN;
    match metadata.get(start..metadata.len().min(start + METADATA_PIECE_LEN)) {
        Some(data) if start < metadata.len() => MetadataMessage::Data {
            piece,
            total_size: metadata.len() as u64,
            data: Bytes::copy_from_slice(data),
        },
        _ => MetadataMessage::Reject { piece },
    }
}

/// Why metadata from a peer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The announced size is 0 or above [`MAX_METADATA_SIZE`].
    #[error("metadata size {0} is out of range")]
    BadSize(u64),
    /// A data message disagrees with the size, or the piece number or length is wrong.
    #[error("bad metadata piece {0}")]
    BadPiece(u32),
    /// The peer refused a piece.
    #[error("peer rejected metadata piece {0}")]
    Rejected(u32),
    /// The assembled info dict does not hash to the info-hash.
    #[error("metadata does not match the info-hash")]
    HashMismatch,
}

/// Collects an info dict of a known size from metadata pieces.
#[derive(Debug)]
pub struct MetadataAssembler {
    buf: Vec<u8>,
    /// Per piece: received.
    received: Vec<bool>,
    /// The next piece never asked for.
    next_request: u32,
    missing: u32,
}

impl MetadataAssembler {
    /// For an info dict of `size` bytes (from the peer's extension handshake), refused when
    /// 0 or above [`MAX_METADATA_SIZE`]: that much is all a peer can make us hold.
    pub fn new(size: u64) -> Result<Self, MetadataError> {
        let len = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0 && s <= MAX_METADATA_SIZE)
            .ok_or(MetadataError::BadSize(size))?;
        let pieces = metadata_pieces(len);
        Ok(Self {
            buf: vec![0; len],
            received: vec![false; pieces as usize],
            next_request: 0,
            missing: pieces,
        })
    }

    /// The next piece to ask for, each once.
    pub fn next_request(&mut self) -> Option<u32> {
        let piece = self.next_request;
        if (piece as usize) < self.received.len() {
            self.next_request += 1;
            Some(piece)
        } else {
            None
        }
    }

    /// Takes a Data message. Returns whether every piece is in.
    pub fn on_data(
        &mut self,
        piece: u32,
        total_size: u64,
        data: &[u8],
    ) -> Result<bool, MetadataError> {
        let start = piece as usize * METADATA_PIECE_LEN;
        let expected = self.buf.len().saturating_sub(start).min(METADATA_PIECE_LEN);
        if total_size != self.buf.len() as u64
            || piece as usize >= self.received.len()
            || data.len() != expected
        {
            return Err(MetadataError::BadPiece(piece));
        }
        if !self.received[piece as usize] {
            self.received[piece as usize] = true;
            self.missing -= 1;
            self.buf[start..start + expected].copy_from_slice(data);
        }
        Ok(self.missing == 0)
    }

    /// Every piece is in: the info dict, if it hashes to `info_hash`.
    pub fn finish(self, info_hash: &InfoHash) -> Result<Vec<u8>, MetadataError> {
        if self.missing != 0 || sha1(&self.buf) != info_hash.0 {
            return Err(MetadataError::HashMismatch);
        }
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_data_follows_the_dict() {
        for msg in [
            MetadataMessage::Request { piece: 7 },
            MetadataMessage::Reject { piece: 0 },
            MetadataMessage::Data {
                piece: 2,
                total_size: 40_000,
                data: Bytes::from(vec![b'e'; 100]),
            },
        ] {
            assert_eq!(MetadataMessage::decode(&msg.encode()).unwrap(), msg);
        }
        // libtorrent's order and a string value are fine.
        let raw = Bytes::from_static(b"d8:msg_typei1e5:piecei0e1:x3:abc10:total_sizei3eeXYZ");
        assert_eq!(
            MetadataMessage::decode(&raw).unwrap(),
            MetadataMessage::Data {
                piece: 0,
                total_size: 3,
                data: Bytes::from_static(b"XYZ")
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for raw in [
            &b""[..],
            b"d",
            b"d8:msg_typei0e",
            b"d8:msg_typei0ee",
            b"d8:msg_typei9e5:piecei0ee",
            b"d5:piecei-1e8:msg_typei0ee",
            b"d5:piecel1:ae8:msg_typei0ee",
            b"d99999999999999999999:x",
            b"d8:msg_typei1e5:piecei0ee",
            b"l1:ae",
        ] {
            assert!(
                MetadataMessage::decode(&Bytes::copy_from_slice(raw)).is_err(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn serving_rejects_pieces_out_of_range() {
        let meta = vec![1u8; METADATA_PIECE_LEN + 10];
        assert!(
            matches!(serve_metadata(&meta, 1), MetadataMessage::Data { ref data, .. } if data.len() == 10)
        );
        assert_eq!(
            serve_metadata(&meta, 2),
            MetadataMessage::Reject { piece: 2 }
        );
        assert_eq!(
            serve_metadata(&meta, u32::MAX),
            MetadataMessage::Reject { piece: u32::MAX }
        );
    }

    #[test]
    fn the_assembler_checks_sizes_pieces_and_the_hash() {
        assert_eq!(
            MetadataAssembler::new(0).unwrap_err(),
            MetadataError::BadSize(0)
        );
        let huge = MAX_METADATA_SIZE as u64 + 1;
        assert_eq!(
            MetadataAssembler::new(huge).unwrap_err(),
            MetadataError::BadSize(huge)
        );
        let info: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let hash = InfoHash(sha1(&info));
        let mut a = MetadataAssembler::new(info.len() as u64).unwrap();
        let pieces: Vec<u32> = std::iter::from_fn(|| a.next_request()).collect();
        assert_eq!(pieces, [0, 1, 2]);
        let piece = |i: u32| match serve_metadata(&info, i) {
            MetadataMessage::Data { data, .. } => data,
            _ => unreachable!(),
        };
        assert!(a.on_data(3, 40_000, b"x").is_err());
        assert!(a.on_data(0, 39_999, &piece(0)).is_err());
        assert!(
            a.on_data(2, 40_000, &piece(1)).is_err(),
            "wrong length for the last piece"
        );
        assert!(!a.on_data(2, 40_000, &piece(2)).unwrap());
        assert!(!a.on_data(0, 40_000, &piece(0)).unwrap());
        assert!(a.on_data(1, 40_000, &piece(1)).unwrap());
        assert_eq!(a.finish(&hash).unwrap(), info);
        let mut b = MetadataAssembler::new(3).unwrap();
        assert!(b.on_data(0, 3, b"abc").unwrap());
        assert_eq!(b.finish(&hash).unwrap_err(), MetadataError::HashMismatch);
    }
}
