//! A hand-written SVG of the scaling curve: completion / (S/U) against the number of nodes.

use std::fmt::Write as _;

/// One point of the curve.
#[derive(Clone, Debug)]
pub struct CurvePoint {
    /// Nodes, seed included.
    pub nodes: usize,
    /// p50 completion / (S/U).
    pub p50: f64,
    /// p99 completion / (S/U).
    pub p99: f64,
    /// Origin upload / S.
    pub origin: f64,
}

/// An SVG plot of p50 and p99 completion / (S/U) and origin upload / S against nodes (log
/// scale), with the targets (p99 1.3, origin 1.2) as dashed lines.
pub fn curve_svg(points: &[CurvePoint], title: &str) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (70.0, 170.0, 50.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xmin = points.iter().map(|p| p.nodes).min().unwrap_or(10).max(2) as f64;
    let xmax = points
        .iter()
        .map(|p| p.nodes)
        .max()
        .unwrap_or(10_000)
        .max(3) as f64;
    let (lx0, lx1) = (
        xmin.log10().floor(),
        xmax.log10().ceil().max(xmin.log10().floor() + 1.0),
    );
    let values = || {
        points
            .iter()
            .flat_map(|p| [p.p50, p.p99, p.origin])
            .filter(|v| v.is_finite())
    };
    // From 1.0 (nothing beats S/U or a single copy) to a little above the largest value.
    let ymax = (values().fold(1.5f64, f64::max) * 10.0).ceil() / 10.0 + 0.1;
    let ymin = if values().fold(1.0f64, f64::min) >= 1.0 {
        1.0
    } else {
        0.0
    };
    let x = |n: f64| left + (n.log10() - lx0) / (lx1 - lx0) * pw;
    let y = |v: f64| top + (1.0 - (v - ymin) / (ymax - ymin)) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    // Grid and axes.
    let mut e = lx0 as i32;
    while f64::from(e) <= lx1 {
        let xv = x(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            10f64.powi(e) as u64
        );
        e += 1;
    }
    let step = if ymax - ymin > 1.5 { 0.5 } else { 0.1 };
    let mut v = ymin;
    while v <= ymax + 1e-9 {
        let yv = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
            left + pw,
            left - 6.0,
            yv + 4.0
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">nodes (log scale)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">x S/U (completion) or x S (origin upload)</text>"#,
        top + ph / 2.0
    );
    for (target, label, color) in [
        (1.3, "p99 target 1.3", "#d62728"),
        (1.2, "origin target 1.2", "#2ca02c"),
    ] {
        let yv = y(target);
        let _ = writeln!(
            s,
            r#"<line x1="{left}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="{color}" stroke-dasharray="5 4" stroke-opacity="0.6"/><text x="{:.1}" y="{:.1}" fill="{color}">{label}</text>"#,
            left + pw,
            left + pw + 8.0,
            yv + 4.0
        );
    }
    let series: [Series; 3] = [
        ("p50 / (S/U)", "#1f77b4", |p| p.p50),
        ("p99 / (S/U)", "#d62728", |p| p.p99),
        ("origin upload / S", "#2ca02c", |p| p.origin),
    ];
    for (i, (label, color, get)) in series.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .filter(|p| get(p).is_finite())
            .map(|p| format!("{:.1},{:.1}", x(p.nodes as f64), y(get(p))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        for p in points.iter().filter(|p| get(p).is_finite()) {
            let (cx, cy) = (x(p.nodes as f64), y(get(p)));
            let _ = writeln!(
                s,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="{color}" font-size="10">{:.2}</text>"#,
                cx + 5.0,
                cy - 6.0,
                get(p)
            );
        }
        let ly = top + 90.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            left + pw + 8.0,
            left + pw + 28.0,
            left + pw + 32.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A line of the plot: label, colour, value.
type Series = (&'static str, &'static str, fn(&CurvePoint) -> f64);

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
