//! imagewolf-bt: a BitTorrent engine tuned for fast LANs.
//!
//! (crate docs: written once the public API settles)

#![warn(missing_docs)]

mod geometry;
mod id;

pub use geometry::{BlockRef, Lengths, LengthsError, PieceIndex, BLOCK_LEN, MAX_PIECE_LEN};
pub use id::{InfoHash, PeerId};
