//! Block states of a piece that is being downloaded, with the counters the picker needs in
//! O(1): how many blocks are free, requested, received, and still open to an endgame
//! duplicate.

use super::PeerKey;

/// `open_at` value of a partial piece that has no free block.
pub(super) const NOT_OPEN: u32 = u32::MAX;

/// The state of one block of a piece that is not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Block {
    /// Nobody has been asked for it.
    Free,
    /// Asked from exactly one peer: the common case, kept allocation-free.
    Requested(PeerKey),
    /// Asked from two or more distinct peers (endgame).
    Shared(Vec<PeerKey>),
    /// Stored; waiting for the rest of the piece and its hash check.
    Received,
}

impl Block {
    /// The peers this block is requested from (empty unless requested).
    pub(super) fn requesters(&self) -> &[PeerKey] {
        match self {
            Block::Requested(p) => std::slice::from_ref(p),
            Block::Shared(v) => v,
            Block::Free | Block::Received => &[],
        }
    }

    /// Adds `peer` as a requester. Only called for free or requested blocks not yet asked
    /// from `peer`.
    pub(super) fn add_requester(&mut self, peer: PeerKey) {
        *self = match std::mem::replace(self, Block::Free) {
            Block::Free => Block::Requested(peer),
            Block::Requested(first) => Block::Shared(vec![first, peer]),
            Block::Shared(mut v) => {
                v.push(peer);
                Block::Shared(v)
            }
            Block::Received => Block::Received,
        };
    }

    /// Drops `peer` from the requesters; the block is free again when nobody is left.
    pub(super) fn remove_requester(&mut self, peer: PeerKey) {
        *self = match std::mem::replace(self, Block::Free) {
            Block::Requested(p) if p == peer => Block::Free,
            Block::Shared(mut v) => {
                v.retain(|&p| p != peer);
                match v.as_slice() {
                    [] => Block::Free,
                    [one] => Block::Requested(*one),
                    _ => Block::Shared(v),
                }
            }
            other => other,
        };
    }
}

/// What a block counts towards. Compared before and after every change to keep counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Class {
    pub free: bool,
    pub requested: bool,
    pub received: bool,
    /// Requested, but by fewer peers than the endgame allows: may get a duplicate.
    pub underfull: bool,
}

impl Class {
    pub(super) fn of(block: &Block, max_requesters: u32) -> Self {
        match block {
            Block::Free => Class {
                free: true,
                ..Class::default()
            },
            Block::Received => Class {
                received: true,
                ..Class::default()
            },
            Block::Requested(_) | Block::Shared(_) => Class {
                requested: true,
                underfull: (block.requesters().len() as u64) < u64::from(max_requesters),
                ..Class::default()
            },
        }
    }
}

/// A piece with at least one block requested or received, not yet verified.
#[derive(Clone, Debug)]
pub(super) struct Partial {
    pub blocks: Vec<Block>,
    pub free: u32,
    pub requested: u32,
    pub received: u32,
    pub underfull: u32,
    /// No free block below this index: lets a large piece be handed out in slices without
    /// rescanning its head each time.
    pub first_free: u32,
    /// Index in the picker's `open` list, or [`NOT_OPEN`].
    pub open_at: u32,
    /// Index in the picker's `active` list.
    pub active_at: u32,
}

impl Partial {
    pub(super) fn new(num_blocks: u32, active_at: u32) -> Self {
        Self {
            blocks: vec![Block::Free; num_blocks as usize],
            free: num_blocks,
            requested: 0,
            received: 0,
            underfull: 0,
            first_free: 0,
            open_at: NOT_OPEN,
            active_at,
        }
    }

    /// Every block received: the piece is waiting for its hash check.
    pub(super) fn is_complete(&self) -> bool {
        self.received as usize == self.blocks.len()
    }

    /// No block requested or received: the piece is as good as untouched.
    pub(super) fn is_untouched(&self) -> bool {
        self.requested == 0 && self.received == 0
    }

    /// Moves counters from `before` to `after` for block `idx`.
    pub(super) fn retally(&mut self, idx: usize, before: Class, after: Class) {
        fn step(counter: &mut u32, before: bool, after: bool) {
            match (before, after) {
                (false, true) => *counter += 1,
                (true, false) => *counter -= 1,
                _ => {}
            }
        }
        step(&mut self.free, before.free, after.free);
        step(&mut self.requested, before.requested, after.requested);
        step(&mut self.received, before.received, after.received);
        step(&mut self.underfull, before.underfull, after.underfull);
        if after.free && (idx as u32) < self.first_free {
            self.first_free = idx as u32;
        }
    }

    /// Recomputes the counters from the blocks and compares them with the stored ones.
    pub(super) fn check(&self, max_requesters: u32) -> Result<(), String> {
        let mut want = (0u32, 0u32, 0u32, 0u32);
        for (i, b) in self.blocks.iter().enumerate() {
            let c = Class::of(b, max_requesters);
            want.0 += u32::from(c.free);
            want.1 += u32::from(c.requested);
            want.2 += u32::from(c.received);
            want.3 += u32::from(c.underfull);
            if c.free && (i as u32) < self.first_free {
                return Err(format!(
                    "free block {i} below first_free {}",
                    self.first_free
                ));
            }
            let req = b.requesters();
            if matches!(b, Block::Shared(_)) && req.len() < 2 {
                return Err(format!("shared block {i} with {} requesters", req.len()));
            }
            if req.iter().enumerate().any(|(j, p)| req[..j].contains(p)) {
                return Err(format!("block {i} requested twice from one peer: {req:?}"));
            }
        }
        let have = (self.free, self.requested, self.received, self.underfull);
        if want != have {
            return Err(format!(
                "counters (free, requested, received, underfull) {have:?} != {want:?}"
            ));
        }
        if self.is_untouched() {
            return Err("partial piece with nothing requested or received".into());
        }
        Ok(())
    }
}
