//! Piece and block geometry: validated newtypes that stand between wire integers and the engine.
//!
//! A [`PieceIndex`] or [`BlockRef`] can only be made through a [`Lengths`], which checks it
//! against the torrent's size. Everything past the codec (picker, storage, choker) takes these
//! types, so an out-of-range index from a hostile peer is rejected once, at the boundary, and
//! can never reach an array index deeper in.

use std::fmt;

/// The block size used on the wire: 16 KiB. Every block is this long except, possibly, the
/// last block of a piece (and so of the whole torrent).
pub const BLOCK_LEN: u32 = 16 * 1024;

/// The largest piece length accepted from a `.torrent` file (64 MiB). Bounds the memory a
/// single piece verification can take.
pub const MAX_PIECE_LEN: u32 = 64 * 1024 * 1024;

/// A piece index known to be in range for one torrent's [`Lengths`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(u32);

impl PieceIndex {
    /// The index as the wire carries it.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The index for use as a slice index.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One block of one piece, known to lie inside that piece: `offset + len <= piece size`,
/// `0 < len <= BLOCK_LEN`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    piece: PieceIndex,
    offset: u32,
    len: u32,
}

impl BlockRef {
    /// The piece this block belongs to.
    pub fn piece(self) -> PieceIndex {
        self.piece
    }

    /// Byte offset of the block inside its piece.
    pub fn offset(self) -> u32 {
        self.offset
    }

    /// Length of the block in bytes (1..=[`BLOCK_LEN`]).
    pub fn len(self) -> u32 {
        self.len
    }

    /// Always false: a block has at least one byte. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The block's position in its piece when blocks are aligned to [`BLOCK_LEN`]
    /// (`offset / BLOCK_LEN`).
    pub fn index_in_piece(self) -> u32 {
        self.offset / BLOCK_LEN
    }
}

/// Why a [`Lengths`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LengthsError {
    /// The torrent has no bytes.
    #[error("total length is zero")]
    EmptyTorrent,
    /// The piece length is zero or above [`MAX_PIECE_LEN`].
    #[error("piece length {0} is out of range (1..={MAX_PIECE_LEN})")]
    BadPieceLength(u32),
    /// The torrent would have more than `u32::MAX` pieces.
    #[error("too many pieces")]
    TooManyPieces,
}

/// The size geometry of one torrent: total length, piece length, and everything derived.
///
/// ```
/// use imagewolf_bt::{Lengths, BLOCK_LEN};
/// let l = Lengths::new(100_000, 32_768).unwrap();
/// assert_eq!(l.num_pieces(), 4);
/// let last = l.piece(3).unwrap();
/// assert_eq!(l.piece_size(last), 100_000 - 3 * 32_768);
/// assert_eq!(l.blocks_in_piece(l.piece(0).unwrap()), 32_768 / BLOCK_LEN);
/// assert!(l.piece(4).is_none());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Lengths {
    total_len: u64,
    piece_len: u32,
    num_pieces: u32,
    last_piece_len: u32,
}

impl Lengths {
    /// Checks and builds the geometry of a torrent of `total_len` bytes cut into pieces of
    /// `piece_len` bytes (the last one possibly shorter).
    pub fn new(total_len: u64, piece_len: u32) -> Result<Self, LengthsError> {
        if total_len == 0 {
            return Err(LengthsError::EmptyTorrent);
        }
        if piece_len == 0 || piece_len > MAX_PIECE_LEN {
            return Err(LengthsError::BadPieceLength(piece_len));
        }
        let num_pieces = total_len.div_ceil(u64::from(piece_len));
        let num_pieces = u32::try_from(num_pieces).map_err(|_| LengthsError::TooManyPieces)?;
        let last_piece_len = (total_len - u64::from(num_pieces - 1) * u64::from(piece_len)) as u32;
        Ok(Self {
            total_len,
            piece_len,
            num_pieces,
            last_piece_len,
        })
    }

    /// Total payload length in bytes.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Nominal piece length (every piece but possibly the last).
    pub fn piece_len(&self) -> u32 {
        self.piece_len
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Checks a wire piece index.
    pub fn piece(&self, index: u32) -> Option<PieceIndex> {
        (index < self.num_pieces).then_some(PieceIndex(index))
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> + use<> {
        (0..self.num_pieces).map(PieceIndex)
    }

    /// Length of one piece in bytes.
    pub fn piece_size(&self, piece: PieceIndex) -> u32 {
        if piece.0 + 1 == self.num_pieces {
            self.last_piece_len
        } else {
            self.piece_len
        }
    }

    /// Offset of the first byte of `piece` in the whole payload.
    pub fn piece_offset(&self, piece: PieceIndex) -> u64 {
        u64::from(piece.0) * u64::from(self.piece_len)
    }

    /// Number of [`BLOCK_LEN`] blocks in `piece`.
    pub fn blocks_in_piece(&self, piece: PieceIndex) -> u32 {
        self.piece_size(piece).div_ceil(BLOCK_LEN)
    }

    /// The `index`-th aligned block of `piece`, if the piece has that many blocks.
    pub fn block(&self, piece: PieceIndex, index: u32) -> Option<BlockRef> {
        let size = self.piece_size(piece);
        let offset = index.checked_mul(BLOCK_LEN)?;
        if offset >= size {
            return None;
        }
        Some(BlockRef {
            piece,
            offset,
            len: (size - offset).min(BLOCK_LEN),
        })
    }

    /// Every aligned block of `piece`, in order.
    pub fn blocks(&self, piece: PieceIndex) -> impl Iterator<Item = BlockRef> + '_ {
        (0..self.blocks_in_piece(piece)).filter_map(move |i| self.block(piece, i))
    }

    /// Checks a `(piece, begin, length)` triple from the wire (a Request, Cancel, Reject or the
    /// header of a Piece message): the piece exists, the length is 1..=[`BLOCK_LEN`], and the
    /// range stays inside the piece. Alignment is not required: other clients may ask for
    /// unaligned ranges, and serving them is harmless.
    pub fn block_at(&self, index: u32, begin: u32, length: u32) -> Option<BlockRef> {
        let piece = self.piece(index)?;
        if length == 0 || length > BLOCK_LEN {
            return None;
        }
        let end = begin.checked_add(length)?;
        (end <= self.piece_size(piece)).then_some(BlockRef {
            piece,
            offset: begin,
            len: length,
        })
    }

    /// Offset of the block's first byte in the whole payload.
    pub fn block_offset(&self, block: BlockRef) -> u64 {
        self.piece_offset(block.piece) + u64::from(block.offset)
    }

    /// Number of bytes a bitfield for this torrent takes on the wire (`ceil(num_pieces / 8)`).
    pub fn bitfield_len(&self) -> usize {
        self.num_pieces.div_ceil(8) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_uneven_torrent() {
        let l = Lengths::new(3 * 65536 + 100, 65536).unwrap();
        assert_eq!(l.num_pieces(), 4);
        let last = l.piece(3).unwrap();
        assert_eq!(l.piece_size(last), 100);
        assert_eq!(l.blocks_in_piece(last), 1);
        assert_eq!(l.block(last, 0).unwrap().len(), 100);
        assert!(l.block(last, 1).is_none());
        assert_eq!(l.blocks(l.piece(0).unwrap()).count(), 4);
        assert_eq!(l.bitfield_len(), 1);
    }

    #[test]
    fn wire_triples_are_checked() {
        let l = Lengths::new(65536 + 10, 65536).unwrap();
        assert!(l.block_at(0, 0, BLOCK_LEN).is_some());
        assert!(l.block_at(0, 65536 - 1, 1).is_some());
        assert!(l.block_at(0, 65536 - 1, 2).is_none());
        assert!(l.block_at(1, 0, 11).is_none());
        assert!(l.block_at(2, 0, 1).is_none());
        assert!(l.block_at(0, 0, BLOCK_LEN + 1).is_none());
        assert!(l.block_at(0, 0, 0).is_none());
        assert!(l.block_at(0, u32::MAX, 2).is_none());
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert_eq!(Lengths::new(0, 1), Err(LengthsError::EmptyTorrent));
        assert_eq!(Lengths::new(1, 0), Err(LengthsError::BadPieceLength(0)));
        assert_eq!(Lengths::new(u64::MAX, 1), Err(LengthsError::TooManyPieces));
    }
}
