//! A discrete-event swarm simulator for ImageWolf: every node runs the engine's real sans-IO
//! [`imagewolf_bt::picker::Picker`] (downloaders) or [`imagewolf_bt::picker::SeedSpreader`]
//! (the initial seed, the origin) over a network model, so 100-10,000-node swarms can be
//! measured on one machine. Validated against the 16-node netns cluster bench
//! (`scripts/bench-cluster`); see the README's "Swarm simulator" section for the figures.
//!
//! # What is modelled
//!
//! - **Links.** Each node has an uplink and a downlink rate (payload bytes/s = Mbit/s x
//!   `goodput`, the share TCP/IP and framing leave; the bench measures 0.95 with iperf3).
//!   Links can be heterogeneous (a slow fraction, a uniform spread). A link's one-way
//!   latency is the sum of its two ends' access latencies.
//! - **Sharing an uplink.** A node sends one unit (see granularity) at a time at its full
//!   uplink rate, round robin over the connections that have requests queued: per-flow
//!   equal shares over any interval longer than a few units, work-conserving, recomputed at
//!   every unit. The receiver's downlink is a second server: a unit's last byte arrives when
//!   both the uplink has sent it and the downlink has drained everything given to it before
//!   (cut-through, `net::through_downlink`). A sender skips a receiver whose downlink is
//!   backed up by more than `max(queue_ms, 2 units)` and serves its other peers meanwhile,
//!   the way TCP's congestion control slows a flow into a congested port: this gives
//!   approximately max-min fair rates without a global computation.
//! - **Control messages.** Requests, HAVEs, cancels, the seed's shown pieces travel with the
//!   link's latency, plus `queue_ms` when the sender's uplink is busy (they queue behind
//!   data in the NIC, as on the bench's tbf). A connection is usable after the TCP and
//!   BitTorrent handshakes (3 one-way latencies), the bitfield (1) and interested/unchoke
//!   (2): unchoke-all, as the engine on a LAN.
//! - **The engine's logic.** Downloaders pick with `Picker` (partial pieces first,
//!   rarest-first, strict endgame, the piece-memory cap of `set_max_active`) and keep
//!   requests outstanding per connection with a copy of the engine's rate-based pipeline
//!   (`peer::pipeline` is private to `imagewolf-bt`: slow start from 16 blocks, then 1 s of
//!   the measured rate, 4..=500 blocks), clamped as the engine clamps it to an equal share
//!   of the piece-memory budget among the peers that have a piece it lacks
//!   (`Picker::request_share`; off with `request_share: false`). A piece is verified `piece_len / hash rate` after its
//!   last unit, then announced with a HAVE to every peer. The seed runs `SeedSpreader`
//!   exactly as `torrent::state` drives it: HaveNone, `top_up` after each message batch of a
//!   peer, its 0.5 s tick (stall release), the alone rule, and when every piece is out, the
//!   remaining HAVEs to everyone. A window's shows are also suggestions (BEP 6), which the
//!   receiver's picker may start past its piece-memory cap (`Picker::suggested`; off with
//!   `suggest: false`). The run reports when every piece had gone out once and the
//!   origin's uplink use per second.
//! - **Peers.** A bounded random graph: each node dials `numwant` others (a tracker reply:
//!   the peers the tracker handed out least often, ties at random, as
//!   `imagewolf_bt::tracker::Swarms` does; or a uniform sample with
//!   `balanced_tracker: false`); a node at `max_peers` refuses more. Downloaders start at `start_s` plus a
//!   uniform jitter. Nodes fail (leave) at a given time: their peers see the connection
//!   close one latency later, outstanding requests go back to the picker, a unit the leaver
//!   had not finished sending is lost. With `leave_on_complete` a node leaves as soon as it
//!   completes (what the bench's `download` example does); otherwise it keeps seeding.
//!
//! # Approximations (and why they are acceptable)
//!
//! - **Granularity.** A simulated transfer is a *unit* of `unit_blocks` 16 KiB blocks (a
//!   power of two up to one piece). The picker is given a scaled geometry in which each of
//!   its blocks stands for one unit, so it still picks, counts availability and runs endgame
//!   on the real piece boundaries. With one block per unit (the 16-node validation) this is
//!   the engine's own granularity; large runs use bigger units so that nodes x units stays
//!   within `unit_budget` (10,000 nodes x 1 GiB: 256 KiB units). Coarser units make a
//!   piece's hop slightly faster (a unit goes at the full uplink rate, then the next peer's)
//!   and endgame duplicates coarser; request and cancel counts are still per 16 KiB block.
//! - **TCP.** No slow start, losses or retransmissions, and shares are fair: on the bench,
//!   TCP (BBR) gave the first connections to the seed 20-40x the bytes of the others for a
//!   few seconds, which the spreader's fair-share rule corrects only in part. The `goodput`
//!   factor stands for the steady-state overhead.
//! - **Processes.** Hashing takes `piece_len / hash_bytes_per_s`; everything else is
//!   instantaneous, unless the optional CPU model is on (`cpu_cores`, `cpu_s_per_gib`): for
//!   a cluster emulated on one machine, every unit received costs CPU time on one shared
//!   pool of cores, a FIFO server all deliveries pass through. The 16-node bench at 100
//!   Mbit/s is CPU-bound on its 2 cores (shared with other work); its own measured CPU
//!   seconds per GiB and the cores the rest of the machine left it are the inputs.
//! - **Refills.** The engine tops up a connection's requests after every batch of messages
//!   from that peer. The sim does so after every unit and every HAVE, except that a HAVE on
//!   a connection whose last refill came back short is not acted on while the node's last
//!   refill anywhere also came back short and units keep arriving (the piece-memory cap is
//!   reached; such picks find nothing): the next verification retries the hungry
//!   connections in turn until one gets nothing. A connection can so wait a few
//!   milliseconds longer than in the engine; picks fell 4x.
//! - **HAVEs to peers that have the piece** change nothing in the picker there (a verified
//!   piece is never picked); they are counted but not simulated, except to a spreading seed.
//! - **Failures** are clean leaves (the kernel closes the connections); a node that vanishes
//!   silently would be noticed only through the engine's 15 s snub timeout, not modelled.
//! - **Snubbing, choking rotation, tracker re-announces, PEX** are not modelled: unchoke-all
//!   with 200 slots never rotates below 200 peers.
//!
//! The event queue is a calendar queue (`queue.rs`): events by time, ties in scheduling
//! order. A 1 GiB, 1,000-node run is about 120 M events (3 minutes); 10,000 nodes (256 KiB
//! units) about 540 M, 9 minutes of CPU (19 on a busy 2-core machine) and 2 GB of memory.
//!
//! Determinism: the same [`SimConfig`] (seed included) gives the same events, with one
//! exception outside this crate: `SeedSpreader` keeps its peers in a `std` `HashMap`, and
//! when its tick frees stalled windows the order (and so its random draws) follows that
//! map's per-process hash keys. Runs where a window stalls (large swarms, where peers wait
//! at the piece-memory cap) then differ from run to run: at 100 nodes, 1 GiB, the median
//! of one seed moved between 1.27 and 1.32 x S/U; at 1,000 nodes results vary by about
//! 1-2 %. Report several seeds (`--runs`).

pub mod config;
pub mod net;
pub mod plot;
pub mod queue;
pub mod report;
pub mod sim;
pub mod topology;

#[cfg(test)]
mod tests;

pub use config::SimConfig;
pub use report::{NodeResult, Outcome, Summary};
pub use sim::Sim;

/// Runs one simulation.
pub fn simulate(config: SimConfig) -> Result<Outcome, String> {
    Ok(Sim::new(config)?.run())
}
