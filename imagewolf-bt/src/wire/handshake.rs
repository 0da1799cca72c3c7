//! The fixed 68-byte handshake that opens every peer connection (BEP 3).

use super::WireError;
use crate::{InfoHash, PeerId};

/// `pstrlen` followed by `pstr`: the 20 bytes every BitTorrent handshake starts with.
const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";

/// BEP 10 extension protocol: `reserved[5] & 0x10`.
const EXTENDED_BYTE: usize = 5;
const EXTENDED_BIT: u8 = 0x10;
/// BEP 6 fast extension: `reserved[7] & 0x04`.
const FAST_BYTE: usize = 7;
const FAST_BIT: u8 = 0x04;

/// The 68-byte BitTorrent handshake: protocol string, 8 reserved (capability) bytes,
/// info-hash and peer id.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Capability bits. Unknown bits are kept as received and otherwise ignored.
    pub reserved: [u8; 8],
    /// The torrent this connection is for.
    pub info_hash: InfoHash,
    /// The sender's peer id.
    pub peer_id: PeerId,
}

impl Handshake {
    /// Length of a handshake on the wire.
    pub const LEN: usize = 68;

    /// The first byte of every plaintext handshake: the length of the protocol string. Any
    /// other first byte is not BitTorrent (an encrypted MSE/PE handshake starts with a
    /// random key), so a listener can tell at once.
    pub const PROTOCOL_LEN: u8 = PROTOCOL[0];

    /// Length of the part that identifies the torrent (protocol string, reserved bytes and
    /// info-hash). A listener reads this much, looks the torrent up and answers before the
    /// remote peer id arrives, as BEP 3 allows.
    pub const HEAD_LEN: usize = 48;

    /// Our handshake: advertises the extension protocol (BEP 10) and the fast extension
    /// (BEP 6). Not DHT: we never send PORT, and libtorrent expects one from peers that set
    /// that bit.
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        let mut reserved = [0u8; 8];
        reserved[EXTENDED_BYTE] |= EXTENDED_BIT;
        reserved[FAST_BYTE] |= FAST_BIT;
        Self {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// The handshake's wire bytes.
    pub fn encode(&self) -> [u8; 68] {
        let mut out = [0u8; 68];
        out[..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..].copy_from_slice(&self.peer_id.0);
        out
    }

    /// Parses a full handshake, checking the protocol string.
    pub fn decode(buf: &[u8; 68]) -> Result<Self, WireError> {
        let mut head = [0u8; 48];
        head.copy_from_slice(&buf[..48]);
        let (reserved, info_hash) = Self::decode_head(&head)?;
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(&buf[48..]);
        Ok(Self {
            reserved,
            info_hash,
            peer_id: PeerId(peer_id),
        })
    }

    /// [`Handshake::decode`] for a slice: the first 68 bytes are the handshake, anything
    /// after them is ignored (it belongs to the message stream).
    pub fn decode_slice(buf: &[u8]) -> Result<Self, WireError> {
        let head: &[u8; 68] = buf
            .get(..Self::LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::TruncatedHandshake { got: buf.len() })?;
        Self::decode(head)
    }

    /// Parses the first [`Handshake::HEAD_LEN`] bytes: returns the reserved bytes and the
    /// info-hash, so a listener can pick the torrent before the peer id arrives.
    pub fn decode_head(buf: &[u8; 48]) -> Result<([u8; 8], InfoHash), WireError> {
        if buf[..20] != PROTOCOL[..] {
            return Err(WireError::BadProtocol);
        }
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&buf[20..28]);
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&buf[28..48]);
        Ok((reserved, InfoHash(info_hash)))
    }

    /// Whether the sender supports the BEP 10 extension protocol.
    pub fn supports_extended(&self) -> bool {
        self.reserved[EXTENDED_BYTE] & EXTENDED_BIT != 0
    }

    /// Whether the sender supports the BEP 6 fast extension. Fast messages may only be
    /// used when both sides set this bit.
    pub fn supports_fast(&self) -> bool {
        self.reserved[FAST_BYTE] & FAST_BIT != 0
    }
}
