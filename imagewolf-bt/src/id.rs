//! The two 20-byte identities of BitTorrent: a torrent's info-hash and a peer's id.

use std::fmt;

/// SHA-1 of a torrent's bencoded `info` dictionary, exactly as it appears in the `.torrent` file.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

/// A peer's 20-byte id. Ours follow BEP 20: `-IW0001-` then 12 random bytes.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// The BEP 20 client prefix of every peer id this library makes.
    pub const PREFIX: &'static [u8; 8] = b"-IW0001-";

    /// Whether the id carries an ImageWolf client prefix (`-IW`, any version): the peer
    /// runs this engine, so it trades pieces the way initial seeding counts on.
    pub(crate) fn is_imagewolf(&self) -> bool {
        self.0.starts_with(&Self::PREFIX[..3])
    }

    /// "Make one per session": the default of [`crate::SessionConfig::peer_id`]. A session
    /// whose config holds it generates a fresh id when it starts, so sessions built from
    /// one config (or its clones) never share an id. Never sent on the wire.
    pub const PER_SESSION: PeerId = PeerId([0; 20]);

    /// A fresh random peer id with our client prefix.
    pub fn generate() -> Self {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(Self::PREFIX);
        let tail: [u8; 12] = rand::random();
        id[8..].copy_from_slice(&tail);
        Self(id)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl InfoHash {
    /// Lower-case hex, as magnet links and tools print it.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printable client prefix when there is one (e.g. `-lt20A0-`), hex for the rest.
        let prefix = self
            .0
            .iter()
            .take_while(|b| b.is_ascii_graphic())
            .count()
            .min(8);
        f.write_str(&String::from_utf8_lossy(&self.0[..prefix]))?;
        write_hex(f, &self.0[prefix..])
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}
