//! Results of the runs and the markdown table made from them.
//!
//! The lower bound `S/U` is the time one node needs to receive `S` MiB through a `U` Mbit/s
//! link with nothing else in the way: `S * 2^20 * 8 / (U * 10^6)` seconds (tc's `mbit` is
//! 10^6 bit/s). Every run is reported as a multiple of it, so the numbers mean the same on
//! any machine that can drive the links at line rate.

use std::fmt::Write as _;

use crate::measure::CpuUse;

/// One run's outcome.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Short name in the table and plot (e.g. "imagewolf-bt").
    pub name: String,
    /// Nodes in the run (receivers plus the seed, or pulling daemons).
    pub nodes: usize,
    /// Link rate, Mbit/s.
    pub rate_mbit: u32,
    /// Payload per node, MiB.
    pub size_mib: u64,
    /// Per receiving node, seconds from the common start to its completion, sorted.
    pub times: Vec<f64>,
    /// Receivers that did not complete (timed out or failed).
    pub failed: usize,
    /// CPU use over the run.
    pub cpu: CpuUse,
    /// Peak RSS of the agents, MiB (end-to-end runs).
    pub peak_rss_mib: Option<f64>,
    /// Free-form observations (upload counts, phases, waste).
    pub notes: Vec<String>,
    /// A run for memory only (unshaped links): reported apart, not plotted.
    pub memory_only: bool,
}

impl RunResult {
    /// The lower bound `S/U` in seconds.
    pub fn bound(&self) -> f64 {
        lower_bound(self.size_mib, self.rate_mbit)
    }

    /// The `q`-quantile of completion times (nearest rank), if any node completed.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.times, q)
    }

    /// The slowest node's completion, or `None` if some node failed.
    pub fn max(&self) -> Option<f64> {
        if self.failed > 0 {
            None
        } else {
            self.times.last().copied()
        }
    }

    /// GiB received in all (completed receivers x payload).
    pub fn gib_received(&self) -> f64 {
        self.times.len() as f64 * self.size_mib as f64 / 1024.0
    }

    /// CPU seconds per GiB received.
    pub fn cpu_per_gib(&self) -> Option<f64> {
        let gib = self.gib_received();
        (gib > 0.0).then(|| self.cpu.process_seconds / gib)
    }

    /// Whether the machine was close to saturated (>= 90 % of its cores busy) during the run.
    pub fn cpu_bound(&self) -> bool {
        self.cpu.machine_cores >= 0.9 * crate::measure::cpu_count() as f64
    }
}

/// `S/U` in seconds for `size_mib` MiB at `rate_mbit` Mbit/s.
pub fn lower_bound(size_mib: u64, rate_mbit: u32) -> f64 {
    size_mib as f64 * 1_048_576.0 * 8.0 / (f64::from(rate_mbit) * 1e6)
}

/// Nearest-rank quantile of sorted `times`.
pub fn quantile(times: &[f64], q: f64) -> Option<f64> {
    if times.is_empty() {
        return None;
    }
    let rank = (q * times.len() as f64).ceil() as usize;
    times.get(rank.clamp(1, times.len()) - 1).copied()
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn ratio(v: Option<f64>, bound: f64) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", v / bound))
}

/// Everything the report needs besides the runs.
pub struct Context {
    /// The exact command line.
    pub command: String,
    /// One line describing the machine.
    pub machine: String,
    /// TCP goodput per node measured on the same links (the ceiling run), per rate.
    pub ceilings: Vec<crate::ceiling::Ceiling>,
    /// Extra notes for below the table.
    pub notes: Vec<String>,
}

/// The markdown table, ratios and notes.
pub fn markdown(runs: &[RunResult], ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | nodes | U Mbit/s | S MiB | S/U s | p50 s | p90 s | max s | p50 / (S/U) | max / (S/U) | p50 / (S/G) | max / (S/G) | CPU s per GiB | cores busy: run / machine | agent peak RSS |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs.iter().filter(|r| !r.memory_only) {
        let bound = r.bound();
        let max = match (r.max(), r.failed) {
            (Some(m), _) => format!("{m:.1}"),
            (None, f) => format!("{f} failed"),
        };
        // S/G: the floor TCP over these links allows (G = the ceiling run's median goodput
        // at this rate), for runs whose nodes all receive over such links.
        let floor = ctx
            .ceilings
            .iter()
            .find(|c| c.rate_mbit == r.rate_mbit)
            .map(|c| bound * f64::from(r.rate_mbit) / c.median_mbit());
        let vs_floor = |v: Option<f64>| floor.map_or("-".into(), |f| ratio(v, f));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2}{} | {} |",
            r.name,
            r.nodes,
            r.rate_mbit,
            r.size_mib,
            bound,
            secs(r.quantile(0.5)),
            secs(r.quantile(0.9)),
            max,
            ratio(r.quantile(0.5), bound),
            ratio(r.max(), bound),
            vs_floor(r.quantile(0.5)),
            vs_floor(r.max()),
            r.cpu_per_gib().map_or("-".into(), |v| format!("{v:.1}")),
            if r.cpu.wall > 0.0 {
                r.cpu.process_seconds / r.cpu.wall
            } else {
                0.0
            },
            r.cpu.machine_cores,
            if r.cpu_bound() { " (CPU-bound)" } else { "" },
            r.peak_rss_mib.map_or("-".into(), |v| format!("{v:.0} MiB")),
        );
    }
    let _ = writeln!(out);
    let memory: Vec<&RunResult> = runs.iter().filter(|r| r.memory_only).collect();
    if !memory.is_empty() {
        let _ = writeln!(
            out,
            "| memory run (unshaped links) | nodes | image MiB | push end -> loaded everywhere, s | agent peak RSS (max over agents) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for r in memory {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.name,
                r.nodes,
                r.size_mib,
                secs(r.max()),
                r.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1} MiB"))
            );
        }
        let _ = writeln!(out);
    }
    for c in &ctx.ceilings {
        let _ = writeln!(out, "{}", c.describe());
        let _ = writeln!(out);
    }
    for line in &ctx.notes {
        let _ = writeln!(out, "- {line}");
    }
    for r in runs {
        for line in &r.notes {
            let _ = writeln!(out, "- {}: {line}", r.name);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Machine: {}", ctx.machine);
    let _ = writeln!(out);
    let _ = writeln!(out, "Command: `{}`", ctx.command);
    out
}

/// `a / b` of two runs' slowest nodes, as text ("-" when either failed).
pub fn max_ratio(a: &RunResult, b: &RunResult) -> String {
    match (a.max(), b.max()) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "-".into(),
    }
}

/// Start and end markers of the cold section in cluster.md (so a later `--runs cold`
/// replaces it and keeps everything else).
pub const COLD_BEGIN: &str = "<!-- bench-cluster: cold pulls -->";
pub const COLD_END: &str = "<!-- /bench-cluster: cold pulls -->";

/// The cold run's section (between [`COLD_BEGIN`] and [`COLD_END`]).
pub fn cold_markdown(cold: &crate::cold::ColdReport, ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{COLD_BEGIN}");
    let _ = writeln!(out, "## Cold pulls (mirror mode, containerd nodes)");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| run | pulling nodes | U Mbit/s | S MiB | S/U s | p50 s | max s | max / (S/U) | registry blob GETs per blob (config, layers) | CPU s per GiB | cores busy: run / machine | agent peak RSS |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    );
    for row in &cold.rows {
        let r = &row.result;
        let max = match (r.max(), r.failed) {
            (Some(m), _) => format!("{m:.2}"),
            (None, f) => format!("{f} failed"),
        };
        let gets = if row.repetitions > 1 {
            format!("{:?} over {} pulls", row.gets_per_blob, row.repetitions)
        } else {
            format!("{:?}", row.gets_per_blob)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {:.2} / {:.2}{} | {} |",
            r.name,
            r.nodes,
            r.rate_mbit,
            r.size_mib,
            r.bound(),
            r.quantile(0.5).map_or("-".into(), |v| format!("{v:.2}")),
            max,
            ratio(r.max(), r.bound()),
            gets,
            r.cpu_per_gib().map_or("-".into(), |v| format!("{v:.1}")),
            if r.cpu.wall > 0.0 {
                r.cpu.process_seconds / r.cpu.wall
            } else {
                0.0
            },
            r.cpu.machine_cores,
            if r.cpu_bound() { " (CPU-bound)" } else { "" },
            r.peak_rss_mib.map_or("-".into(), |v| format!("{v:.0} MiB")),
        );
    }
    let _ = writeln!(out);
    if let Some(hit) = &cold.hit {
        use crate::cold::Hit;
        let e = Hit::median(&hit.endpoint);
        let _ = writeln!(
            out,
            "| loopback read of a {} MiB blob on node 0 | GB/s (median) | all reads, GB/s | endpoint / this |",
            hit.bytes >> 20
        );
        let _ = writeln!(out, "|---|---:|---|---:|");
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rows: [(&str, Option<f64>, String); 4] = [
            (
                "mirror hit: `curl` GET from the agent's endpoint (blob in the store)",
                e,
                fmt(&hit.endpoint),
            ),
            (
                "ceiling: the same `curl` reading the store's file (`file://`)",
                Hit::median(&hit.curl_file),
                fmt(&hit.curl_file),
            ),
            (
                "ceiling: `cat FILE > /dev/null`",
                Hit::median(&hit.cat),
                fmt(&hit.cat),
            ),
            (
                "ceiling: one loopback TCP stream (iperf3, 3 s)",
                hit.iperf,
                hit.iperf.map_or("-".into(), |v| format!("{v:.2}")),
            ),
        ];
        for (name, median, all) in rows {
            let _ = writeln!(
                out,
                "| {name} | {} | {all} | {} |",
                median.map_or("-".into(), |v| format!("{v:.2}")),
                match (e, median) {
                    (Some(e), Some(m)) if m > 0.0 => format!("{:.2}", e / m),
                    _ => "-".into(),
                }
            );
        }
        if let Some(miss) = hit.miss_s {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "The first read was a miss: the agent read the blob from the registry (links unshaped for this part) in {miss:.1} s before serving it."
            );
        }
        let _ = writeln!(out);
    }
    for line in &cold.notes {
        let _ = writeln!(out, "- {line}");
    }
    for row in &cold.rows {
        for line in &row.result.notes {
            let _ = writeln!(out, "- {}: {line}", row.result.name);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Machine: {}", ctx.machine);
    let _ = writeln!(out);
    let _ = writeln!(out, "Command: `{}`", ctx.command);
    let _ = writeln!(out, "{COLD_END}");
    out
}

/// `doc` with its cold section replaced by `section` (appended when it has none).
pub fn upsert_cold_section(doc: &str, section: &str) -> String {
    if let (Some(b), Some(e)) = (doc.find(COLD_BEGIN), doc.find(COLD_END)) {
        if b < e {
            let end = e + COLD_END.len();
            let rest = doc[end..].strip_prefix('\n').unwrap_or(&doc[end..]);
            return format!("{}{section}{rest}", &doc[..b]);
        }
    }
    if doc.is_empty() {
        section.to_owned()
    } else if doc.ends_with("\n\n") {
        format!("{doc}{section}")
    } else if doc.ends_with('\n') {
        format!("{doc}\n{section}")
    } else {
        format!("{doc}\n\n{section}")
    }
}

/// The cold run as JSON (the `cold` key of cluster.json).
pub fn cold_json(cold: &crate::cold::ColdReport, ctx: &Context) -> serde_json::Value {
    serde_json::json!({
        "command": ctx.command,
        "machine": ctx.machine,
        "runs": cold.rows.iter().map(|row| {
            let r = &row.result;
            serde_json::json!({
                "name": r.name,
                "pulling_nodes": r.nodes,
                "rate_mbit": r.rate_mbit,
                "size_mib": r.size_mib,
                "lower_bound_s": r.bound(),
                "times_s": r.times,
                "failed": r.failed,
                "registry_blob_gets_per_blob": row.gets_per_blob,
                "repetitions": row.repetitions,
                "cpu_process_s": r.cpu.process_seconds,
                "wall_s": r.cpu.wall,
                "machine_cores_busy": r.cpu.machine_cores,
                "agent_peak_rss_mib": r.peak_rss_mib,
                "notes": r.notes,
            })
        }).collect::<Vec<_>>(),
        "hit": cold.hit.as_ref().map(|h| serde_json::json!({
            "blob_bytes": h.bytes,
            "miss_s": h.miss_s,
            "endpoint_gbps": h.endpoint,
            "curl_file_gbps": h.curl_file,
            "cat_gbps": h.cat,
            "iperf3_loopback_gbps": h.iperf,
        })),
        "notes": cold.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cold_section_is_replaced_in_place_and_the_rest_kept() {
        let first = format!("{COLD_BEGIN}\nold\n{COLD_END}\n");
        let doc = format!("before\n\n{first}after\n");
        let new = format!("{COLD_BEGIN}\nnew\n{COLD_END}\n");
        assert_eq!(
            upsert_cold_section(&doc, &new),
            format!("before\n\n{new}after\n")
        );
        assert_eq!(
            upsert_cold_section("table\n", &new),
            format!("table\n\n{new}")
        );
        assert_eq!(upsert_cold_section("", &new), new);
    }
}
