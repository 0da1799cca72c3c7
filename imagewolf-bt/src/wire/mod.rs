//! The peer wire protocol (BEP 3, BEP 6 fast extension, BEP 10 extension protocol), sans-IO.
//!
//! Everything here is a pure function over byte buffers: no sockets, no async runtime. The
//! connection task reads from its socket into a [`BytesMut`], hands that buffer to
//! [`MessageDecoder::decode`] until it returns `Ok(None)`, and writes what
//! [`Message::encode`] / [`encode_piece_header`] append to its send buffer. This keeps the
//! codec drivable by fuzzers and property tests, and keeps the parsing rules in one place.
//!
//! # Design decisions
//!
//! * **Length before buffering.** A frame's declared length is checked against the exact size
//!   its message id allows (e.g. Have is exactly 5, a Piece carries at most
//!   [`DecoderLimits::max_block_len`] bytes) as soon as the 4-byte prefix and the id byte are
//!   present, before the decoder asks for a single byte more. A prefix that no message could
//!   have (0xFFFF_FFFF) is refused from the 4 prefix bytes alone. The decoder never allocates
//!   or reserves: the caller does, guided by [`MessageDecoder::bytes_needed`], so a buffer
//!   never holds more than [`MessageDecoder::max_frame_len`] bytes of an incomplete frame
//!   (plus whatever the caller's last read appended).
//! * **Zero-copy payloads.** Piece data, a Bitfield and an Extended payload are
//!   `BytesMut::split_to(..).freeze()` slices of the receive buffer. The flip side: a block
//!   kept alive (e.g. queued for the disk) pins the receive allocation it came from. Blocks
//!   are written out promptly, so this costs far less than a copy per block.
//! * **Unchecked numbers.** The codec checks sizes, never meaning: a Request's
//!   [`RawBlock`] or a Have's index is passed up as received, and the torrent checks it
//!   (`Lengths::block_at`, `Lengths::piece`). Whether a message is allowed at this point
//!   of the connection (a Bitfield only first, fast messages only when both sides set the
//!   bit) is the session's business too.
//! * **Unknown message ids are skipped, not fatal.** A frame with an id this codec does not
//!   know is discarded as it streams in (it is never buffered), provided its body is no
//!   longer than [`DecoderLimits::max_extended_len`]; a longer one is
//!   [`WireError::MessageTooLong`]. libtorrent disconnects on unknown ids, but skipping
//!   costs nothing, keeps us compatible with future or vendor messages, and
//!   [`MessageDecoder::skipped_frames`] lets the session apply its own policy.
//! * **Bitfield length is exact.** When the torrent's size is known,
//!   [`DecoderLimits::max_bitfield_len`] is `ceil(num_pieces / 8)` and any other length is
//!   [`WireError::BadLength`]. Spare bits in the last byte are *not* checked by the decoder;
//!   masking them (see [`bitfield::masked`]) is the caller's job, as BEP 3 only says they
//!   "should" be zero and some clients leave garbage there.
//!
//! # Errors
//!
//! Every [`WireError`] is fatal for the connection: after one, the stream position is
//! unknown (for decoder errors) or the peer is not speaking BitTorrent. The decoder does not
//! consume the offending frame, so calling it again returns the same error.
//! [`WireError::BadExtensionHandshake`] is the one a session may choose to soften: treating
//! it as "this peer supports no extensions" keeps the connection usable.

mod decoder;
mod extension;
mod handshake;
mod message;

pub mod bitfield;
pub mod metadata;

#[cfg(test)]
mod tests;

pub use bytes::{Bytes, BytesMut};
pub use decoder::{DecoderLimits, MessageDecoder, DEFAULT_MAX_EXTENDED_LEN};
pub use extension::{ExtensionHandshake, EXTENDED_HANDSHAKE_ID, MAX_EXTENSION_HANDSHAKE_LEN};
pub use handshake::Handshake;
pub use message::{encode_piece_header, Message, RawBlock, PIECE_HEADER_LEN};

/// Why a handshake or message could not be decoded. Every variant is fatal for the
/// connection (see the [module docs](self#errors)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The handshake does not start with `\x13BitTorrent protocol`: not a BitTorrent peer,
    /// or an encrypted (MSE) stream, which we do not speak.
    #[error("not a BitTorrent handshake (bad protocol string)")]
    BadProtocol,
    /// Fewer than the 68 handshake bytes (or 48 for the head) were given.
    #[error("truncated handshake: {got} bytes")]
    TruncatedHandshake {
        /// How many bytes there were.
        got: usize,
    },
    /// A message's declared length is not one its id allows (e.g. a Have that is not 5
    /// bytes, a Bitfield that is not exactly `ceil(num_pieces / 8)` bytes, or an Extended
    /// message without its sub-id byte).
    #[error("message id {id} has invalid length {len}")]
    BadLength {
        /// The message id.
        id: u8,
        /// The declared length (id byte included, prefix excluded).
        len: u32,
    },
    /// A message's declared length is above the configured limit. `id` is `None` when the
    /// prefix alone was already larger than any message could be.
    #[error("message (id {id:?}) of length {len} exceeds the limit of {max}")]
    MessageTooLong {
        /// The message id, when it was already received.
        id: Option<u8>,
        /// The declared length (id byte included, prefix excluded).
        len: u32,
        /// The largest length accepted for this id.
        max: usize,
    },
    /// The BEP 10 handshake payload is not a bencoded dictionary (or is too large).
    #[error("bad extension handshake: {0}")]
    BadExtensionHandshake(String),
    /// A BEP 9 `ut_metadata` message is malformed.
    #[error("bad ut_metadata message: {0}")]
    BadMetadataMessage(String),
}
