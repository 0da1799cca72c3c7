//! Peer messages and their encoding.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Message ids (BEP 3, BEP 6, BEP 10).
pub(super) mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 13;
    pub const HAVE_ALL: u8 = 14;
    pub const HAVE_NONE: u8 = 15;
    pub const REJECT: u8 = 16;
    pub const ALLOWED_FAST: u8 = 17;
    pub const EXTENDED: u8 = 20;
}

/// Length of a Piece message's header: 4-byte prefix, id, index, begin.
pub const PIECE_HEADER_LEN: usize = 13;

/// An unchecked `(piece, begin, length)` triple as carried by Request, Cancel and Reject.
/// The torrent validates it with `Lengths::block_at` before using it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawBlock {
    /// Piece index.
    pub index: u32,
    /// Byte offset inside the piece.
    pub begin: u32,
    /// Number of bytes.
    pub length: u32,
}

impl From<crate::BlockRef> for RawBlock {
    fn from(b: crate::BlockRef) -> Self {
        Self {
            index: b.piece().get(),
            begin: b.offset(),
            length: b.len(),
        }
    }
}

/// One peer wire message. Numbers are passed through unchecked; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// Zero-length frame, sent to keep an idle connection open.
    KeepAlive,
    /// The sender will not serve our requests.
    Choke,
    /// The sender will serve our requests.
    Unchoke,
    /// The sender wants pieces we have.
    Interested,
    /// The sender wants nothing from us.
    NotInterested,
    /// The sender has completed (and verified) this piece.
    Have(u32),
    /// The sender's pieces, MSB first. Spare bits are as received; see [`super::bitfield`].
    Bitfield(Bytes),
    /// A request for one block.
    Request(RawBlock),
    /// One block of data. `data` is a slice of the receive buffer (no copy).
    Piece {
        /// Piece index.
        index: u32,
        /// Byte offset of the block inside the piece.
        begin: u32,
        /// The block's bytes.
        data: Bytes,
    },
    /// Withdraws an earlier request.
    Cancel(RawBlock),
    /// The sender's DHT port.
    Port(u16),
    /// BEP 6: the sender suggests we download this piece.
    Suggest(u32),
    /// BEP 6: the sender has every piece (instead of a Bitfield).
    HaveAll,
    /// BEP 6: the sender has no piece (instead of a Bitfield).
    HaveNone,
    /// BEP 6: the sender will not serve this request.
    Reject(RawBlock),
    /// BEP 6: we may request this piece even while choked.
    AllowedFast(u32),
    /// BEP 10: an extension message. `id` 0 ([`super::EXTENDED_HANDSHAKE_ID`]) is the
    /// extension handshake; other ids are the ones we advertised in our `m` dictionary.
    Extended {
        /// The extension message id.
        id: u8,
        /// The message body (bencoded, for the handshake).
        payload: Bytes,
    },
}

/// Length of a frame body (id byte and everything after it) as the 4-byte prefix carries
/// it. Panics on bodies over 4 GiB, which no valid message has; encoding one would
/// silently corrupt the stream instead.
fn body_len(fixed: usize, payload: usize) -> u32 {
    fixed
        .checked_add(payload)
        .and_then(|n| u32::try_from(n).ok())
        .expect("message body longer than u32::MAX bytes")
}

impl Message {
    /// The message id, `None` for a keep-alive.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have(_) => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request(_) => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel(_) => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::Suggest(_) => id::SUGGEST,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::Reject(_) => id::REJECT,
            Message::AllowedFast(_) => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
        })
    }

    /// The value of the length prefix: id byte plus body, 0 for a keep-alive.
    fn body_len(&self) -> u32 {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have(_) | Message::Suggest(_) | Message::AllowedFast(_) => 5,
            Message::Port(_) => 3,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 13,
            Message::Bitfield(bits) => body_len(1, bits.len()),
            Message::Piece { data, .. } => body_len(9, data.len()),
            Message::Extended { payload, .. } => body_len(2, payload.len()),
        }
    }

    /// Number of bytes [`Message::encode`] appends, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self.body_len() as usize
    }

    /// Appends the length-prefixed frame to `dst`.
    ///
    /// For Piece messages on the hot path prefer [`encode_piece_header`], which lets the
    /// block bytes go to the socket without being copied into `dst`.
    ///
    /// # Panics
    ///
    /// If a payload is longer than `u32::MAX` minus the header, which no valid message is.
    pub fn encode(&self, dst: &mut BytesMut) {
        let body = self.body_len();
        dst.reserve(4 + body as usize);
        dst.put_u32(body);
        let Some(id) = self.id() else { return };
        dst.put_u8(id);
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => {}
            Message::Have(i) | Message::Suggest(i) | Message::AllowedFast(i) => dst.put_u32(*i),
            Message::Bitfield(bits) => dst.put_slice(bits),
            Message::Request(b) | Message::Cancel(b) | Message::Reject(b) => {
                dst.put_u32(b.index);
                dst.put_u32(b.begin);
                dst.put_u32(b.length);
            }
            Message::Piece { index, begin, data } => {
                dst.put_u32(*index);
                dst.put_u32(*begin);
                dst.put_slice(data);
            }
            Message::Port(p) => dst.put_u16(*p),
            Message::Extended { id, payload } => {
                dst.put_u8(*id);
                dst.put_slice(payload);
            }
        }
    }
}

/// Writes only the 13-byte header of a Piece message (length prefix, id 7, index, begin)
/// for a block of `len` bytes, so the sender can write the block straight after it without
/// copying it into a frame.
///
/// # Panics
///
/// If `len > u32::MAX - 9` (blocks are at most 16 KiB).
pub fn encode_piece_header(index: u32, begin: u32, len: u32, dst: &mut BytesMut) {
    let body = len
        .checked_add(9)
        .expect("block longer than u32::MAX - 9 bytes");
    dst.reserve(PIECE_HEADER_LEN);
    dst.put_u32(body);
    dst.put_u8(id::PIECE);
    dst.put_u32(index);
    dst.put_u32(begin);
}

// Hand-written so a Piece or Bitfield does not dump kilobytes into logs and test failures.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::KeepAlive => f.write_str("KeepAlive"),
            Message::Choke => f.write_str("Choke"),
            Message::Unchoke => f.write_str("Unchoke"),
            Message::Interested => f.write_str("Interested"),
            Message::NotInterested => f.write_str("NotInterested"),
            Message::Have(i) => f.debug_tuple("Have").field(i).finish(),
            Message::Bitfield(b) => write!(f, "Bitfield({} bytes)", b.len()),
            Message::Request(b) => f.debug_tuple("Request").field(b).finish(),
            Message::Piece { index, begin, data } => f
                .debug_struct("Piece")
                .field("index", index)
                .field("begin", begin)
                .field("len", &data.len())
                .finish(),
            Message::Cancel(b) => f.debug_tuple("Cancel").field(b).finish(),
            Message::Port(p) => f.debug_tuple("Port").field(p).finish(),
            Message::Suggest(i) => f.debug_tuple("Suggest").field(i).finish(),
            Message::HaveAll => f.write_str("HaveAll"),
            Message::HaveNone => f.write_str("HaveNone"),
            Message::Reject(b) => f.debug_tuple("Reject").field(b).finish(),
            Message::AllowedFast(i) => f.debug_tuple("AllowedFast").field(i).finish(),
            Message::Extended { id, payload } => f
                .debug_struct("Extended")
                .field("id", id)
                .field("len", &payload.len())
                .finish(),
        }
    }
}
