//! The streaming message decoder.

use bytes::{Buf, BytesMut};

use super::message::{id, Message, RawBlock};
use super::WireError;
use crate::{Lengths, BLOCK_LEN};

/// Default cap on an Extended message's payload (and on a skipped unknown message): 1 MiB,
/// the size above which libtorrent drops a peer.
pub const DEFAULT_MAX_EXTENDED_LEN: usize = 1024 * 1024;

/// Size limits the decoder enforces. Together they bound
/// [`MessageDecoder::max_frame_len`], the most a connection ever buffers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DecoderLimits {
    /// The exact length a Bitfield payload must have: `ceil(num_pieces / 8)` of the torrent
    /// (see [`Lengths::bitfield_len`]). 0 means the torrent's size is not known yet; then
    /// any Bitfield up to [`DecoderLimits::max_extended_len`] bytes is accepted.
    pub max_bitfield_len: usize,
    /// The largest Piece payload accepted: [`BLOCK_LEN`] (16 KiB), like libtorrent.
    pub max_block_len: u32,
    /// The largest Extended payload (after the extension id byte) accepted, and the largest
    /// body of an unknown message that is skipped rather than refused.
    /// [`DEFAULT_MAX_EXTENDED_LEN`] by default.
    pub max_extended_len: usize,
}

impl DecoderLimits {
    /// Default limits for a torrent whose bitfield is `bitfield_len` bytes (0 if unknown).
    pub fn new(bitfield_len: usize) -> Self {
        Self {
            max_bitfield_len: bitfield_len,
            max_block_len: BLOCK_LEN,
            max_extended_len: DEFAULT_MAX_EXTENDED_LEN,
        }
    }

    /// Default limits for a torrent of the given geometry.
    pub fn for_torrent(lengths: &Lengths) -> Self {
        Self::new(lengths.bitfield_len())
    }
}

impl Default for DecoderLimits {
    /// Default limits with the bitfield length unknown.
    fn default() -> Self {
        Self::new(0)
    }
}

/// What the decoder does with a frame whose header it has validated.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Frame {
    /// Buffer it whole, then parse it.
    Parse,
    /// Unknown id: drop its bytes as they arrive.
    Skip,
}

/// Streaming decoder for the message stream that follows the handshake.
///
/// The caller appends socket reads to a [`BytesMut`] and calls [`MessageDecoder::decode`]
/// until it returns `Ok(None)`. The decoder never allocates; it consumes whole frames from
/// the front of the buffer and leaves an incomplete one in place. Because every header is
/// validated before more of its frame is asked for, a buffer left after `Ok(None)` holds
/// fewer than [`MessageDecoder::max_frame_len`] bytes.
///
/// ```
/// use imagewolf_bt::wire::{BytesMut, DecoderLimits, Message, MessageDecoder};
///
/// let mut decoder = MessageDecoder::new(DecoderLimits::new(1));
/// let mut buf = BytesMut::new();
/// // What a socket read might append: a Have(5), then the prefix and id of a Piece
/// // message carrying a 16 KiB block.
/// buf.extend_from_slice(&[0, 0, 0, 5, 4, 0, 0, 0, 5, 0, 0, 0x40, 0x09, 7]);
/// assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Message::Have(5)));
/// assert_eq!(decoder.decode(&mut buf).unwrap(), None);
/// // The header was checked; size the next read so the whole block arrives in one go.
/// assert_eq!(decoder.bytes_needed(&buf), 8 + 16 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct MessageDecoder {
    limits: DecoderLimits,
    /// Largest length prefix any accepted frame can carry.
    max_body: usize,
    /// Bytes of an unknown frame still to drop.
    skip_remaining: usize,
    skipped_frames: u64,
    skipped_bytes: u64,
}

impl MessageDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: DecoderLimits) -> Self {
        let bitfield = if limits.max_bitfield_len > 0 {
            limits.max_bitfield_len
        } else {
            limits.max_extended_len
        };
        let max_body = 13
            .max((limits.max_block_len as usize).saturating_add(9))
            .max(bitfield.saturating_add(1))
            .max(limits.max_extended_len.saturating_add(2));
        Self {
            limits,
            max_body,
            skip_remaining: 0,
            skipped_frames: 0,
            skipped_bytes: 0,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &DecoderLimits {
        &self.limits
    }

    /// The memory bound: 4 + the largest message the limits allow. A buffer holding an
    /// incomplete frame is always shorter than this.
    pub fn max_frame_len(&self) -> usize {
        self.max_body.saturating_add(4)
    }

    /// How many frames with an unknown id were skipped so far.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }

    /// How many bytes (prefixes included) of unknown frames were skipped so far.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Checks a frame header: `len` is the prefix value (id byte included), `len > 0`.
    fn check(&self, msg_id: u8, len: u32) -> Result<Frame, WireError> {
        let len_usize = len as usize;
        let bad_length = || WireError::BadLength { id: msg_id, len };
        let too_long = |max: usize| WireError::MessageTooLong {
            id: Some(msg_id),
            len,
            max,
        };
        let exact = |want: u32| {
            if len == want {
                Ok(Frame::Parse)
            } else {
                Err(bad_length())
            }
        };
        match msg_id {
            id::CHOKE
            | id::UNCHOKE
            | id::INTERESTED
            | id::NOT_INTERESTED
            | id::HAVE_ALL
            | id::HAVE_NONE => exact(1),
            id::HAVE | id::SUGGEST | id::ALLOWED_FAST => exact(5),
            id::PORT => exact(3),
            id::REQUEST | id::CANCEL | id::REJECT => exact(13),
            id::BITFIELD if self.limits.max_bitfield_len > 0 => {
                if len_usize - 1 == self.limits.max_bitfield_len {
                    Ok(Frame::Parse)
                } else {
                    Err(bad_length())
                }
            }
            id::BITFIELD => {
                let max = self.limits.max_extended_len.saturating_add(1);
                if len_usize <= max {
                    Ok(Frame::Parse)
                } else {
                    Err(too_long(max))
                }
            }
            id::PIECE => {
                let max = (self.limits.max_block_len as usize).saturating_add(9);
                if len < 9 {
                    Err(bad_length())
                } else if len_usize > max {
                    Err(too_long(max))
                } else {
                    Ok(Frame::Parse)
                }
            }
            id::EXTENDED => {
                let max = self.limits.max_extended_len.saturating_add(2);
                if len < 2 {
                    Err(bad_length())
                } else if len_usize > max {
                    Err(too_long(max))
                } else {
                    Ok(Frame::Parse)
                }
            }
            _ => {
                let max = self.limits.max_extended_len.saturating_add(1);
                if len_usize <= max {
                    Ok(Frame::Skip)
                } else {
                    Err(too_long(max))
                }
            }
        }
    }

    /// Reads the frame header at the front of `buf`: `None` if incomplete, else the prefix
    /// value and, unless it is a keep-alive, the id and what to do with the frame.
    #[allow(clippy::type_complexity)]
    fn header(&self, buf: &[u8]) -> Result<Option<(u32, Option<(u8, Frame)>)>, WireError> {
        let Some(&prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix);
        if len == 0 {
            return Ok(Some((0, None)));
        }
        if len as usize > self.max_body {
            return Err(WireError::MessageTooLong {
                id: None,
                len,
                max: self.max_body,
            });
        }
        let Some(&msg_id) = buf.get(4) else {
            return Ok(None);
        };
        Ok(Some((len, Some((msg_id, self.check(msg_id, len)?)))))
    }

    /// Decodes the next message from the front of `buf`, consuming its bytes.
    ///
    /// `Ok(None)` means more bytes are needed (see [`MessageDecoder::bytes_needed`]); frames
    /// with unknown ids are skipped silently. An error is fatal for the connection and
    /// consumes nothing.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
        loop {
            if self.skip_remaining > 0 {
                let n = self.skip_remaining.min(buf.len());
                buf.advance(n);
                self.skip_remaining -= n;
                self.skipped_bytes += n as u64;
                if self.skip_remaining > 0 {
                    return Ok(None);
                }
            }
            let Some((len, rest)) = self.header(buf)? else {
                return Ok(None);
            };
            let Some((msg_id, frame)) = rest else {
                buf.advance(4);
                return Ok(Some(Message::KeepAlive));
            };
            let total = 4 + len as usize;
            if frame == Frame::Skip {
                self.skip_remaining = total;
                self.skipped_frames += 1;
                continue;
            }
            if buf.len() < total {
                return Ok(None);
            }
            // The frame is complete and its length matches its id (checked above), so the
            // `get_*` calls below cannot run out of bytes.
            buf.advance(5);
            let body = len as usize - 1;
            let raw_block = |buf: &mut BytesMut| RawBlock {
                index: buf.get_u32(),
                begin: buf.get_u32(),
                length: buf.get_u32(),
            };
            let msg = match msg_id {
                id::CHOKE => Message::Choke,
                id::UNCHOKE => Message::Unchoke,
                id::INTERESTED => Message::Interested,
                id::NOT_INTERESTED => Message::NotInterested,
                id::HAVE => Message::Have(buf.get_u32()),
                id::BITFIELD => Message::Bitfield(buf.split_to(body).freeze()),
                id::REQUEST => Message::Request(raw_block(buf)),
                id::PIECE => Message::Piece {
                    index: buf.get_u32(),
                    begin: buf.get_u32(),
                    data: buf.split_to(body - 8).freeze(),
                },
                id::CANCEL => Message::Cancel(raw_block(buf)),
                id::PORT => Message::Port(buf.get_u16()),
                id::SUGGEST => Message::Suggest(buf.get_u32()),
                id::HAVE_ALL => Message::HaveAll,
                id::HAVE_NONE => Message::HaveNone,
                id::REJECT => Message::Reject(raw_block(buf)),
                id::ALLOWED_FAST => Message::AllowedFast(buf.get_u32()),
                id::EXTENDED => Message::Extended {
                    id: buf.get_u8(),
                    payload: buf.split_to(body - 1).freeze(),
                },
                // `check` skips every other id before it is buffered; were one to get here,
                // skipping it is still the right thing to do.
                _ => {
                    buf.advance(body);
                    self.skipped_frames += 1;
                    self.skipped_bytes += total as u64;
                    continue;
                }
            };
            return Ok(Some(msg));
        }
    }

    /// How many more bytes must be appended to `buf` before [`MessageDecoder::decode`] can
    /// return a message (or an error); 0 if it can now. Size the next read with it so a
    /// whole block arrives in one go. Never more than [`MessageDecoder::max_frame_len`]
    /// for a frame that will be buffered.
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        if self.skip_remaining > 0 {
            // The rest of the skipped frame, then at least a keep-alive's prefix.
            return (self.skip_remaining + 4).saturating_sub(buf.len());
        }
        match self.header(buf) {
            Ok(None) => {
                if buf.len() < 4 {
                    4 - buf.len()
                } else {
                    1
                }
            }
            Ok(Some((_, None))) | Err(_) => 0,
            Ok(Some((len, Some((_, Frame::Parse))))) => {
                (4 + len as usize).saturating_sub(buf.len())
            }
            Ok(Some((len, Some((_, Frame::Skip))))) => (8 + len as usize).saturating_sub(buf.len()),
        }
    }
}
