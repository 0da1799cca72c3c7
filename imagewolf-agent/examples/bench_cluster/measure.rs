//! CPU and memory accounting from /proc, without libc.
//!
//! - Short-lived children (the swarm clients, `docker pull` CLIs) are counted through this
//!   process's `cutime + cstime` (fields 16 and 17 of `/proc/self/stat`): the kernel adds a
//!   child's CPU there when it is reaped, which is exact and needs no sampling race against
//!   the child's exit. A run's CPU is the difference across it, after every child of the run
//!   has been reaped.
//! - Long-lived processes (dockerds, the registry, agents) are read directly from
//!   `/proc/PID/stat` (own time plus reaped children, e.g. dockerd's `unpigz`) before and
//!   after a run.
//! - The whole machine's busy time comes from the first line of `/proc/stat`: it includes
//!   softirq time (where veth and tbf forwarding is spent) and everyone else's work on this
//!   shared machine, so a run that keeps it near 2 cores busy was CPU-bound, whatever the
//!   share of its own processes.

use std::fs;
use std::time::Instant;

/// Kernel clock ticks per second for /proc times (`getconf CLK_TCK`; 100 on every Linux
/// architecture this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields after the `(comm)` field of a /proc/PID/stat line, so field `k` (1-based, as in
/// proc(5)) is at index `k - 3`. The comm may contain spaces and parentheses; the last `)`
/// ends it.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    Some(
        rest.split_whitespace()
            .skip(1) // state
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// Field `k` (1-based, proc(5) numbering, k >= 4) of a stat line split by [`stat_fields`].
fn field(fields: &[u64], k: usize) -> u64 {
    fields.get(k.saturating_sub(4)).copied().unwrap_or(0)
}

/// CPU seconds of this process's reaped children so far.
pub fn children_cpu_seconds() -> f64 {
    stat_fields("self")
        .map(|f| (field(&f, 16) + field(&f, 17)) as f64 / TICKS_PER_SECOND)
        .unwrap_or(0.0)
}

/// CPU seconds of process `pid` including its reaped children; 0 if it is gone.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    stat_fields(&pid.to_string())
        .map(|f| {
            (field(&f, 14) + field(&f, 15) + field(&f, 16) + field(&f, 17)) as f64
                / TICKS_PER_SECOND
        })
        .unwrap_or(0.0)
}

/// Sum of [`process_cpu_seconds`] over `pids`.
pub fn pids_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|p| process_cpu_seconds(*p)).sum()
}

/// A `/proc/PID/status` field in KiB (e.g. `VmHWM`), as MiB.
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident set size (`VmHWM`) of `pid` in MiB, if it is alive.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`) of `pid` in MiB, if it is alive.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS")
}

/// Busy and total jiffies of the whole machine (all CPUs) from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Number of CPUs the machine has (for "cores busy" figures).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A CPU meter over one run: wall time, machine busy time, this process's reaped children,
/// and a set of long-lived pids.
pub struct CpuMeter {
    started: Instant,
    machine_busy: u64,
    machine_total: u64,
    children: f64,
    pids: Vec<u32>,
    pids_cpu: f64,
}

/// What a [`CpuMeter`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// Wall seconds.
    pub wall: f64,
    /// CPU seconds of the run's own processes.
    pub process_seconds: f64,
    /// Average number of the machine's cores busy (everything, softirq included).
    pub machine_cores: f64,
}

impl CpuMeter {
    /// Starts measuring; `pids` are long-lived processes whose CPU counts too.
    pub fn start(pids: &[u32]) -> Self {
        let (busy, total) = machine_jiffies();
        Self {
            started: Instant::now(),
            machine_busy: busy,
            machine_total: total,
            children: children_cpu_seconds(),
            pids: pids.to_vec(),
            pids_cpu: pids_cpu_seconds(pids),
        }
    }

    /// The measurement so far. Children count only once reaped.
    pub fn read(&self) -> CpuUse {
        let (busy, total) = machine_jiffies();
        let cores = cpu_count() as f64;
        let machine_cores = if total > self.machine_total {
            cores * (busy.saturating_sub(self.machine_busy)) as f64
                / (total - self.machine_total) as f64
        } else {
            0.0
        };
        CpuUse {
            wall: self.started.elapsed().as_secs_f64(),
            process_seconds: (children_cpu_seconds() - self.children)
                + (pids_cpu_seconds(&self.pids) - self.pids_cpu),
            machine_cores,
        }
    }
}

/// Waits (up to `max_wait`) until the machine is nearly idle (under `cores` busy over one
/// second), so a run does not start inside someone else's burst of work; returns the busy
/// cores seen last.
pub fn wait_quiet(cores: f64, max_wait: std::time::Duration) -> f64 {
    let started = Instant::now();
    let mut said = false;
    loop {
        let (b0, t0) = machine_jiffies();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (b1, t1) = machine_jiffies();
        let busy = if t1 > t0 {
            cpu_count() as f64 * b1.saturating_sub(b0) as f64 / (t1 - t0) as f64
        } else {
            0.0
        };
        if busy < cores || started.elapsed() >= max_wait || crate::interrupted() {
            if said {
                eprintln!("   machine at {busy:.2} cores busy; starting");
            }
            return busy;
        }
        if !said {
            eprintln!("   machine busy ({busy:.2} cores, other work); waiting up to {max_wait:?} for it to quiet down");
            said = true;
        }
    }
}
