//! Keeping the agent's resident memory near what it uses.
//!
//! Measured (issue 18, `tests/rss_processes.rs`: separate agent processes, three 32 MiB
//! images): with glibc's defaults an agent's RSS stayed at 64-94 MiB once its images were
//! loaded, though what it still used was about 30 MiB. The difference was memory it had
//! freed and glibc kept: buffers of 128 KiB and more (a peer connection's 256 KiB read
//! buffer, piece buffers, blob chunks) start out mmapped, but the first free of one raises
//! glibc's mmap threshold to its size, so later ones come from the heap arenas, where freed
//! memory stays resident and fragmented.
//!
//! Two settings fix that, glibc only (other C libraries keep their own behaviour):
//! - [`tune_allocator`], at start: a fixed 64 KiB mmap threshold, so large buffers are
//!   always mapped and go back to the system when freed. Their cost, an mmap, page faults
//!   and a munmap per buffer, did not show: reading a 1 GiB file into a fresh 256 KiB buffer
//!   per read (as the endpoint serves blobs) ran at 5.3 GB/s either way on this machine,
//!   four times the endpoint's own rate;
//! - [`release_free_memory`], every [`TRIM_EVERY`]: hands the arenas' free pages back.
//!
//! At 48 agents the trim alone left 61 MiB mean, 83 MiB max after 40 s idle (peaks 91 and
//! 128 MiB); both together 34 and 50 MiB (peaks 51 and 81 MiB).

use std::time::Duration;

/// How often the agent returns freed heap pages to the system.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Allocations at least this large are mmapped (and unmapped when freed).
const MMAP_THRESHOLD: i32 = 64 * 1024;

/// Sets the allocator up for a long-running agent; call once at start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters (under glibc's own lock, so other
    // threads may be allocating); a refused setting (return 0) leaves glibc's default.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 0 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused");
        }
    }
}

/// Returns the heap's free pages to the system (blocking: run it off the async threads).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs [`release_free_memory`] every [`TRIM_EVERY`] until the runtime stops.
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    })
}
