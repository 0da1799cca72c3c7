//! The plot: per-node completion times of every run as a cumulative step curve (share of
//! nodes done against time), one series per run, on a logarithmic time axis so an 11 s
//! swarm and a 3-minute herd fit side by side; dashed verticals mark each distinct `S/U`.
//! Plain SVG written by hand: no plotting library on the machine, and the output stays
//! small and diffable.

use std::fmt::Write as _;

use crate::report::RunResult;

const W: f64 = 1060.0;
const H: f64 = 540.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 400.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders the SVG for `runs` with `title`; `None` when no run has a time to plot.
pub fn svg(runs: &[RunResult], title: &str) -> Option<String> {
    let runs: Vec<RunResult> = runs.iter().filter(|r| !r.memory_only).cloned().collect();
    let runs = runs.as_slice();
    let all: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.times.iter().copied())
        .chain(runs.iter().map(RunResult::bound))
        .filter(|t| t.is_finite() && *t > 0.0)
        .collect();
    if all.is_empty() {
        return None;
    }
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.1) * 0.8;
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 2.0) * 1.15;
    let (lx, hx) = (lo.log10(), hi.log10());
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: f64| LEFT + (t.max(lo).log10() - lx) / (hx - lx) * pw;
    let y = |f: f64| TOP + (1.0 - f) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="16" font-weight="bold">{}</text>"#,
        LEFT,
        esc(title)
    );
    // Grid and axes.
    let mut decade = 10f64.powf(lx.floor());
    while decade <= hi {
        let steps: &[f64] = if hx - lx < 1.5 {
            &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0]
        } else {
            &[1.0, 2.0, 5.0]
        };
        for &m in steps {
            let t = decade * m;
            if t < lo || t > hi {
                continue;
            }
            let px = x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                TOP + ph
            );
            let label = if t >= 1.0 && t.fract() == 0.0 {
                format!("{t:.0}")
            } else {
                format!("{t}")
            };
            let _ = writeln!(
                s,
                r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                TOP + ph + 18.0
            );
        }
        decade *= 10.0;
    }
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let py = y(f);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0} %</text>"#,
            LEFT - 8.0,
            py + 4.0,
            f * 100.0
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds from the common start (log scale)</text>"#,
        LEFT + pw / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">nodes complete</text>"#,
        TOP + ph / 2.0
    );
    // Lower bounds.
    let mut bounds: Vec<f64> = runs.iter().map(RunResult::bound).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    for b in bounds {
        let px = x(b);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="6 4"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#555">S/U = {b:.1} s</text>"##,
            px + 4.0,
            TOP + 14.0
        );
    }
    // Series.
    for (k, r) in runs.iter().enumerate() {
        let (color, dash) = style(r, k, runs);
        let total = (r.times.len() + r.failed).max(1) as f64;
        let mut path = String::new();
        let mut prev = 0.0;
        for (i, t) in r.times.iter().enumerate() {
            let f = (i + 1) as f64 / total;
            let (px, py0, py1) = (x(*t), y(prev), y(f));
            if i == 0 {
                let _ = write!(path, "M{px:.1},{py0:.1}");
            } else {
                let _ = write!(path, " L{px:.1},{py0:.1}");
            }
            let _ = write!(path, " L{px:.1},{py1:.1}");
            prev = f;
        }
        let _ = writeln!(
            s,
            r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#
        );
        for (i, t) in r.times.iter().enumerate() {
            let f = (i + 1) as f64 / total;
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*t),
                y(f)
            );
        }
        let ly = TOP + 10.0 + k as f64 * 40.0;
        let lx0 = LEFT + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx0:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"{dash}/>"#,
            lx0 + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx0 + 30.0,
            ly + 4.0,
            esc(&r.name)
        );
        let detail = match r.max() {
            Some(m) => format!(
                "N={}, U={} Mbit/s: slowest {m:.1} s = {:.2} x S/U",
                r.nodes,
                r.rate_mbit,
                m / r.bound()
            ),
            None => format!("N={}: {} failed", r.nodes, r.failed),
        };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#444">{}</text>"##,
            lx0 + 30.0,
            ly + 19.0,
            esc(&detail)
        );
    }
    let _ = writeln!(s, "</svg>");
    Some(s)
}

/// Colour by kind of run (so a run and its lower-rate or smaller repeat match), dashed for
/// the variants.
fn style(r: &RunResult, k: usize, runs: &[RunResult]) -> (&'static str, &'static str) {
    const DASH: &str = r#" stroke-dasharray="7 3""#;
    let kind = |name: &str| -> Option<usize> {
        [
            "imagewolf-bt",
            "libtorrent",
            "registry herd",
            "ImageWolf end to end",
        ]
        .iter()
        .position(|p| name.starts_with(p))
    };
    let Some(kr) = kind(&r.name) else {
        return (PALETTE[(4 + k) % PALETTE.len()], "");
    };
    // The first run of a kind is solid; later ones (other rate, other N) dashed.
    let first = runs.iter().position(|o| kind(&o.name) == Some(kr)) == Some(k);
    (PALETTE[kr], if first { "" } else { DASH })
}
