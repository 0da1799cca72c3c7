//! A download's progress, for failing one that makes none (see `stall_timeout` in the
//! module docs): what both receiving paths (segments and blob chunks) watch each tick.

use std::time::{Duration, Instant};

use imagewolf_bt::{TorrentHandle, TorrentStatus};

/// A download's progress mark: (things announced, bytes verified, bytes received).
pub(super) type Mark = (u64, u64, u64);

/// Sums `torrents`' progress into a mark starting at `announced`, and says whether any is
/// checking existing data. Fails if one stopped or failed (`what` names them in the error).
pub(super) fn progress<'a>(
    announced: u64,
    torrents: impl IntoIterator<Item = &'a TorrentHandle>,
    what: &str,
) -> Result<(Mark, bool), String> {
    let mut mark = (announced, 0, 0);
    let mut checking = false;
    for t in torrents {
        let s = t.stats();
        mark.1 += s.have_bytes;
        mark.2 += s.downloaded;
        checking |= s.status == TorrentStatus::Checking;
        match &s.status {
            TorrentStatus::Stopped => return Err(format!("download: {what} stopped")),
            TorrentStatus::Failed(why) => return Err(format!("download: {why}")),
            _ => {}
        }
    }
    Ok((mark, checking))
}

/// Remembers when the mark last moved.
pub(super) struct StallWatch {
    last: Mark,
    since: Instant,
    limit: Duration,
}

impl StallWatch {
    /// A watch failing after `limit` without progress.
    pub(super) fn new(limit: Duration) -> Self {
        StallWatch {
            last: (0, 0, 0),
            since: Instant::now(),
            limit,
        }
    }

    /// Notes this tick's mark; true once it has not moved (and nothing was being checked)
    /// for the limit.
    pub(super) fn stalled(&mut self, mark: Mark, checking: bool) -> bool {
        if mark != self.last || checking {
            self.last = mark;
            self.since = Instant::now();
            false
        } else {
            self.since.elapsed() >= self.limit
        }
    }

    /// The limit.
    pub(super) fn limit(&self) -> Duration {
        self.limit
    }
}
