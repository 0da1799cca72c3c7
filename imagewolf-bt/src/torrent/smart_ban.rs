//! Finding the peer that sent bad data, exactly, without trusting anyone.
//!
//! When a piece fails its SHA-1 check we cannot tell which of its blocks were bad. Blaming every
//! contributor would ban honest peers that happened to share a piece with a liar. Instead we
//! remember, per block of the failed piece, who sent it and a SHA-1 of what they sent (a few
//! dozen bytes per block, not the data). When the piece later passes, each remembered block is
//! compared with the good data: whoever sent different bytes is proven to have lied and is
//! banned. This is libtorrent's "smart ban" idea.
//!
//! A peer can also be banned on strikes alone ([`SmartBan::record_failure`] counts pieces a
//! peer contributed to that failed) as a backstop when the piece never passes (for example when
//! the liar is the only source).

use std::collections::HashMap;

use crate::picker::PeerKey;
use crate::{BlockRef, PieceIndex};

/// Strikes (failed pieces contributed to, without any passing piece to clear them) after which
/// a peer is banned even without proof.
pub const MAX_STRIKES: u32 = 8;

/// Remembered evidence about failed pieces; see the module docs.
#[derive(Default, Debug)]
pub struct SmartBan {
    /// For each failed, not yet re-verified piece: (block offset, sender, SHA-1 of its data).
    suspects: HashMap<PieceIndex, Vec<(u32, PeerKey, [u8; 20])>>,
    strikes: HashMap<PeerKey, u32>,
}

impl SmartBan {
    /// Records a failed piece: `blocks` says who sent each block and the digest of what they
    /// sent. Returns the peers whose strikes reached [`MAX_STRIKES`].
    pub fn record_failure(
        &mut self,
        piece: PieceIndex,
        blocks: Vec<(BlockRef, PeerKey, [u8; 20])>,
    ) -> Vec<PeerKey> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for (_, peer, _) in &blocks {
            if seen.contains(peer) {
                continue;
            }
            seen.push(*peer);
            let strikes = self.strikes.entry(*peer).or_insert(0);
            *strikes += 1;
            if *strikes == MAX_STRIKES {
                out.push(*peer);
            }
        }
        // Keep the first failure's evidence if the piece fails again: it is just as good.
        self.suspects.entry(piece).or_insert_with(|| {
            blocks
                .into_iter()
                .map(|(b, p, d)| (b.offset(), p, d))
                .collect()
        });
        out
    }

    /// True if `piece` failed before, so its good data should be checked against the evidence.
    pub fn is_suspect(&self, piece: PieceIndex) -> bool {
        self.suspects.contains_key(&piece)
    }

    /// The piece passed; `block_digest(offset)` gives the SHA-1 of the good block at that
    /// offset. Returns the peers proven to have sent something else.
    pub fn piece_passed(
        &mut self,
        piece: PieceIndex,
        mut block_digest: impl FnMut(u32) -> Option<[u8; 20]>,
    ) -> Vec<PeerKey> {
        let Some(evidence) = self.suspects.remove(&piece) else {
            return Vec::new();
        };
        let mut liars = Vec::new();
        for (offset, peer, digest) in evidence {
            if block_digest(offset) != Some(digest) && !liars.contains(&peer) {
                liars.push(peer);
            } else if let Some(s) = self.strikes.get_mut(&peer) {
                // An honest block from this peer in a failed piece: that failure was not its fault.
                *s = s.saturating_sub(1);
            }
        }
        liars
    }

    /// Forgets a peer that left (its key is never reused).
    pub fn forget_peer(&mut self, peer: PeerKey) {
        self.strikes.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lengths;

    #[test]
    fn the_liar_is_found_and_the_honest_peer_is_not() {
        let l = Lengths::new(4 * 16384, 4 * 16384).unwrap();
        let p = l.piece(0).unwrap();
        let good = |o: u32| Some([o as u8; 20]);
        let (honest, liar) = (PeerKey(1), PeerKey(2));
        let evidence = l
            .blocks(p)
            .map(|b| {
                if b.offset() == 16384 {
                    (b, liar, [0xee; 20])
                } else {
                    (b, honest, good(b.offset()).unwrap())
                }
            })
            .collect();
        let mut ban = SmartBan::default();
        assert!(ban.record_failure(p, evidence).is_empty());
        assert!(ban.is_suspect(p));
        assert_eq!(ban.piece_passed(p, good), vec![liar]);
        assert!(!ban.is_suspect(p));
    }

    #[test]
    fn strikes_ban_a_peer_that_is_never_disproved() {
        let l = Lengths::new(100 * 16384, 16384).unwrap();
        let mut ban = SmartBan::default();
        let mut banned = Vec::new();
        for i in 0..MAX_STRIKES {
            let p = l.piece(i).unwrap();
            let b = l.block(p, 0).unwrap();
            banned.extend(ban.record_failure(p, vec![(b, PeerKey(7), [0; 20])]));
        }
        assert_eq!(banned, vec![PeerKey(7)]);
    }
}
