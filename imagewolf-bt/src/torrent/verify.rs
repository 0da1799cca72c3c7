//! Hashing a completed piece off the async runtime, storing it, and acting on the verdict.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::state::PieceJob;
use super::{Torrent, TorrentEvent};
use crate::metainfo::sha1;
use crate::peer::PeerLink;
use crate::picker::PeerKey;
use crate::wire::Message;
use crate::{BlockRef, PieceIndex};

/// What the blocking half found.
struct Verdict {
    ok: bool,
    /// The piece's buffer, handed back for reuse.
    data: Vec<u8>,
    /// SHA-1 of each block, by offset: of the bad data when the piece failed, of the good data
    /// when a previously failed piece passed (smart ban evidence); empty otherwise.
    block_digests: Vec<(u32, [u8; 20])>,
    write: std::io::Result<()>,
}

/// Hashes `job` on the blocking pool (at most `hashing_threads` at once), writes it to storage
/// when it passes, and updates the picker, peers and ban evidence.
pub(crate) async fn verify_and_store(torrent: Arc<Torrent>, job: PieceJob) {
    let backlog = job.data.len() as u64;
    torrent
        .verifying_bytes
        .fetch_add(backlog, Ordering::Relaxed);
    verify_inner(&torrent, job).await;
    torrent
        .verifying_bytes
        .fetch_sub(backlog, Ordering::Relaxed);
    torrent.verify_drained.notify_waiters();
}

async fn verify_inner(torrent: &Arc<Torrent>, job: PieceJob) {
    let Ok(_permit) = Arc::clone(&torrent.hashing).acquire_owned().await else {
        return;
    };
    let expected = torrent.metainfo.piece_hash(job.piece);
    let offset = torrent.lengths.piece_offset(job.piece);
    let storage = Arc::clone(&torrent.storage);
    let PieceJob {
        piece,
        data,
        senders,
        suspect,
    } = job;
    let blocks: Vec<_> = senders.iter().map(|(b, _)| *b).collect();
    let verdict = tokio::task::spawn_blocking(move || {
        let ok = sha1(&data) == expected;
        let block_digests = if !ok || suspect {
            blocks
                .iter()
                .map(|b| {
                    let start = b.offset() as usize;
                    (b.offset(), sha1(&data[start..start + b.len() as usize]))
                })
                .collect()
        } else {
            Vec::new()
        };
        let write = if ok {
            storage.write_at(offset, &data)
        } else {
            Ok(())
        };
        Verdict {
            ok,
            data,
            block_digests,
            write,
        }
    })
    .await;
    let verdict = match verdict {
        Ok(v) => v,
        Err(e) => Verdict {
            ok: false,
            data: Vec::new(),
            block_digests: Vec::new(),
            write: Err(std::io::Error::other(format!("hashing task failed: {e}"))),
        },
    };
    if let Err(e) = verdict.write {
        super::ticker::fail(torrent, format!("writing piece {piece}: {e}"));
        return;
    }
    let piece_len = u64::from(torrent.lengths.piece_size(piece));
    torrent.state().recycle_buffer(verdict.data);
    let (banned, complete) = if verdict.ok {
        passed(torrent, piece, &verdict.block_digests)
    } else {
        (
            failed(torrent, piece, &senders, &verdict.block_digests),
            false,
        )
    };
    if verdict.ok {
        torrent.emit(TorrentEvent::PieceVerified(piece));
    } else {
        super::Counters::add(&torrent.counters.wasted, piece_len);
        torrent.emit(TorrentEvent::HashFailed(piece));
    }
    for link in banned {
        link.close(crate::DisconnectReason::Banned);
        torrent.emit(TorrentEvent::PeerBanned {
            addr: link.addr,
            peer_id: link.peer_id,
        });
    }
    if complete {
        super::ticker::on_complete(torrent).await;
    } else {
        super::ticker::publish_stats(torrent);
    }
}

/// A piece passed: mark it, tell every peer, and ban whoever the smart ban now convicts.
/// Returns the peers to ban and whether the torrent is now complete.
fn passed(
    torrent: &Torrent,
    piece: PieceIndex,
    digests: &[(u32, [u8; 20])],
) -> (Vec<Arc<PeerLink>>, bool) {
    let mut state = torrent.state();
    state.piece_verified(piece);
    let liars = state.ban.piece_passed(piece, |off| {
        digests.iter().find(|(o, _)| *o == off).map(|(_, d)| *d)
    });
    let banned: Vec<_> = liars.into_iter().filter_map(|k| state.ban(k)).collect();
    let complete = state.is_complete();
    let num_pieces = torrent.lengths.num_pieces();
    for peer in state.peers.values() {
        peer.link.send(&Message::Have(piece.get()));
        if complete && peer.is_seed(num_pieces) {
            peer.link.close(crate::DisconnectReason::BothSeeds);
        }
        // Interest in the others is withdrawn by their readers, which find nothing left
        // to pick at their next refill.
    }
    (banned, complete)
}

/// A piece failed: its blocks go back to the picker, and the evidence is kept. Returns the
/// peers whose strikes ran out.
fn failed(
    torrent: &Torrent,
    piece: PieceIndex,
    senders: &[(BlockRef, PeerKey)],
    digests: &[(u32, [u8; 20])],
) -> Vec<Arc<PeerLink>> {
    let mut state = torrent.state();
    state.picker.piece_failed(piece);
    state.drop_buffer(piece);
    state.hash_failures += 1;
    let evidence = senders
        .iter()
        .filter_map(|(b, k)| {
            let d = digests.iter().find(|(o, _)| *o == b.offset())?.1;
            Some((*b, *k, d))
        })
        .collect();
    let struck_out = state.ban.record_failure(piece, evidence);
    struck_out
        .into_iter()
        .filter_map(|k| state.ban(k))
        .collect()
}

/// Hashes every piece in storage (on the blocking pool) and returns which pass: resuming a
/// download, or checking data before seeding it.
pub(crate) async fn check_storage(torrent: &Arc<Torrent>) -> std::io::Result<Vec<bool>> {
    let torrent = Arc::clone(torrent);
    tokio::task::spawn_blocking(move || {
        let lengths = torrent.lengths;
        let mut buf = vec![0u8; lengths.piece_len() as usize];
        let mut have = Vec::with_capacity(lengths.num_pieces() as usize);
        for piece in lengths.pieces() {
            if torrent.is_shutting_down() {
                break;
            }
            let data = &mut buf[..lengths.piece_size(piece) as usize];
            torrent.storage.read_at(lengths.piece_offset(piece), data)?;
            have.push(sha1(data) == torrent.metainfo.piece_hash(piece));
        }
        Ok(have)
    })
    .await
    .map_err(|e| std::io::Error::other(format!("check task failed: {e}")))?
}
