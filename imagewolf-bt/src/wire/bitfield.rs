//! Helpers for Bitfield payloads: MSB first, piece 0 is `0x80` of byte 0, exactly
//! `ceil(num_pieces / 8)` bytes.
//!
//! The decoder checks a received Bitfield's length but leaves its spare bits (past the last
//! piece) as received. BEP 3 says senders should clear them; not all do. Receivers should
//! [`masked`] them rather than drop the peer, and senders must send clean ones.

use bytes::Bytes;

/// The length in bytes of a bitfield for `num_pieces` pieces.
pub fn byte_len(num_pieces: u32) -> usize {
    num_pieces.div_ceil(8) as usize
}

/// The mask of the bits of the last byte that stand for real pieces.
fn last_byte_mask(num_pieces: u32) -> u8 {
    match num_pieces % 8 {
        0 => 0xFF,
        used => !(0xFFu8 >> used),
    }
}

/// Whether `bits` has the right length for `num_pieces` and all its spare bits are zero.
pub fn spare_bits_clear(bits: &[u8], num_pieces: u32) -> bool {
    bits.len() == byte_len(num_pieces)
        && bits
            .last()
            .is_none_or(|&last| last & !last_byte_mask(num_pieces) == 0)
}

/// Clears the spare bits of `bits` in place. Bytes past [`byte_len`] are zeroed too.
pub fn mask_spare_bits(bits: &mut [u8], num_pieces: u32) {
    let len = byte_len(num_pieces);
    if let Some(extra) = bits.get_mut(len..) {
        extra.fill(0);
    }
    if let Some(last) = len.checked_sub(1).and_then(|i| bits.get_mut(i)) {
        *last &= last_byte_mask(num_pieces);
    }
}

/// A received bitfield with its spare bits cleared. Returns `bits` itself (no copy) when
/// they are already clear, as they are from well-behaved clients.
pub fn masked(bits: Bytes, num_pieces: u32) -> Bytes {
    if spare_bits_clear(&bits, num_pieces) {
        return bits;
    }
    let mut copy = bits.to_vec();
    mask_spare_bits(&mut copy, num_pieces);
    Bytes::from(copy)
}

/// Whether `bits` has piece `index` set. Out-of-range indices are `false`.
pub fn has_piece(bits: &[u8], index: u32) -> bool {
    bits.get((index / 8) as usize)
        .is_some_and(|byte| byte & (0x80 >> (index % 8)) != 0)
}

/// Sets piece `index` in `bits`; out-of-range indices are ignored.
pub fn set_piece(bits: &mut [u8], index: u32) {
    if let Some(byte) = bits.get_mut((index / 8) as usize) {
        *byte |= 0x80 >> (index % 8);
    }
}
