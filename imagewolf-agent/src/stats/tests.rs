//! Rendering tests, with a small checker of the Prometheus text format (0.0.4) rules that a
//! scraper enforces.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::*;

fn image(reference: &str, state: ImageState) -> ImageStats {
    ImageStats {
        reference: reference.to_owned(),
        image_id: None,
        digest: None,
        id: None,
        size: None,
        state,
        error: None,
        origin: false,
        bytes_down: 0,
        bytes_up: 0,
        peers: 0,
        started_at: 1_700_000_000.0,
        completed_at: None,
        loaded_at: None,
        load_seconds: None,
        attempts: 1,
        layers_loaded_ahead: 0,
        blobs: None,
    }
}

/// One parsed sample: metric name, labels (unescaped), value.
pub(crate) type Sample = (String, Labels, f64);

/// Label pairs, unescaped.
pub(crate) type Labels = Vec<(String, String)>;

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust accepts "inf"/"nan" spellings Prometheus does not; refuse letters besides e/E.
        _ if s
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

/// Parses `{k="v",...}` with Prometheus escapes; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(key, false) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("raw newline in label".into()),
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Checks the exposition rules and returns the samples: every line is a comment or
/// `name{labels} value`; every family has exactly one HELP and one TYPE, before its samples,
/// which are contiguous; no label set repeats within a family; counters end in `_total`.
pub(crate) fn check_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut sampled = HashSet::new();
    let mut samples = Vec::new();
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let (kind, rest) = comment.split_once(' ').ok_or("bare comment")?;
            let (name, tail) = rest.split_once(' ').ok_or("comment without text")?;
            if !is_name(name, true) {
                return Err(format!("bad family name {name:?}"));
            }
            if finished.contains(name) || sampled.contains(name) {
                return Err(format!("{name}: {kind} after its samples"));
            }
            match kind {
                "HELP" => {
                    if !help.insert(name.to_owned()) {
                        return Err(format!("{name}: second HELP"));
                    }
                    if tail.contains('\n') {
                        return Err("newline in HELP".into());
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail) {
                        return Err(format!("{name}: bad TYPE {tail}"));
                    }
                    if types.insert(name.to_owned(), tail.to_owned()).is_some() {
                        return Err(format!("{name}: second TYPE"));
                    }
                    if tail == "counter" && !name.ends_with("_total") {
                        return Err(format!("{name}: counter without _total"));
                    }
                }
                _ => return Err(format!("unknown comment {kind}")),
            }
            if let Some(prev) = current.replace(name.to_owned()) {
                if prev != name {
                    finished.insert(prev);
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        if current.as_deref() != Some(name) || finished.contains(name) {
            return Err(format!("{name}: sample outside its family block"));
        }
        if !help.contains(name) || !types.contains_key(name) {
            return Err(format!("{name}: sample before HELP and TYPE"));
        }
        let rest = &line[name_end..];
        let (labels, rest) = if rest.starts_with('{') {
            parse_labels(rest)?
        } else {
            (Vec::new(), rest)
        };
        let value_text = rest.strip_prefix(' ').ok_or("no space before value")?;
        let value = parse_value(value_text).ok_or(format!("bad value {value_text:?}"))?;
        let keys: HashSet<_> = labels.iter().map(|(k, _)| k).collect();
        if keys.len() != labels.len() {
            return Err(format!("{name}: repeated label name"));
        }
        if !series.insert((name.to_owned(), labels.clone())) {
            return Err(format!("{name}: duplicate series {labels:?}"));
        }
        sampled.insert(name.to_owned());
        samples.push((name.to_owned(), labels, value));
    }
    if let Some(name) = help.iter().find(|n| !types.contains_key(*n)) {
        return Err(format!("{name}: HELP without TYPE"));
    }
    Ok(samples)
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && l.iter()
                    .zip(labels)
                    .all(|((k, v), (k2, v2))| k == k2 && v == v2)
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn empty_agent_renders_every_required_family() {
    let text = render_prometheus(&[], &AgentMetrics::default());
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value_of(&samples, "imagewolf_up", &[]), Some(1.0));
    assert_eq!(value_of(&samples, "imagewolf_known_agents", &[]), Some(0.0));
    assert_eq!(
        value_of(&samples, "imagewolf_http_rejected_total", &[]),
        Some(0.0)
    );
    for state in ImageState::ALL {
        assert_eq!(
            value_of(&samples, "imagewolf_images", &[("state", state.as_str())]),
            Some(0.0),
            "{state:?}"
        );
    }
    for family in [
        "imagewolf_image_bytes_downloaded_total",
        "imagewolf_image_bytes_uploaded_total",
        "imagewolf_image_peers",
        "imagewolf_image_load_seconds",
        "imagewolf_http_requests_total",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
    }
}

#[test]
fn images_and_http_counters_render_and_parse() {
    let mut a = image("10.77.0.1:5000/team/app:v1", ImageState::Loaded);
    a.bytes_down = 1 << 60; // past f64's exact integers: must print exactly
    a.bytes_up = 12_345;
    a.peers = 7;
    a.size = Some(52_428_800);
    a.load_seconds = Some(2.5);
    let b = image("10.77.0.1:5000/other@sha256:00", ImageState::Downloading);
    let c = image("x", ImageState::Failed);
    let counters = HttpCounters::new();
    counters.record("/registryNotifications", 200);
    counters.record("/registryNotifications", 200);
    counters.record("other", 404);
    counters.record("/stats", 405);
    counters.record_rejected();
    let agent = counters.snapshot(3);
    assert_eq!(agent.http_rejected, 3);
    assert_eq!(
        agent.http.get(&("/registryNotifications".to_owned(), 200)),
        Some(&2)
    );

    let text = render_prometheus(&[a, b, c], &agent);
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let app = [("reference", "10.77.0.1:5000/team/app:v1")];
    assert!(text.contains(&format!(
        "imagewolf_image_bytes_downloaded_total{{reference=\"10.77.0.1:5000/team/app:v1\"}} {}\n",
        1u64 << 60
    )));
    assert_eq!(
        value_of(&samples, "imagewolf_image_bytes_uploaded_total", &app),
        Some(12_345.0)
    );
    assert_eq!(value_of(&samples, "imagewolf_image_peers", &app), Some(7.0));
    assert_eq!(
        value_of(&samples, "imagewolf_image_size_bytes", &app),
        Some(52_428_800.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_image_load_seconds", &app),
        Some(2.5)
    );
    // No load time, no size: no sample rather than a made-up 0.
    let other = [("reference", "10.77.0.1:5000/other@sha256:00")];
    assert_eq!(
        value_of(&samples, "imagewolf_image_load_seconds", &other),
        None
    );
    assert_eq!(
        value_of(&samples, "imagewolf_image_size_bytes", &other),
        None
    );
    assert_eq!(
        value_of(&samples, "imagewolf_images", &[("state", "loaded")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_images", &[("state", "downloading")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_images", &[("state", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_images", &[("state", "seeding")]),
        Some(0.0)
    );
    assert_eq!(value_of(&samples, "imagewolf_known_agents", &[]), Some(3.0));
    assert_eq!(
        value_of(&samples, "imagewolf_http_rejected_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        value_of(
            &samples,
            "imagewolf_http_requests_total",
            &[("path", "/registryNotifications"), ("code", "200")]
        ),
        Some(2.0)
    );
}

#[test]
fn label_values_are_escaped() {
    let nasty = "a\\b\"c\nd}e,f=\"g";
    let text = render_prometheus(
        &[image(nasty, ImageState::Seeding)],
        &AgentMetrics::default(),
    );
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value_of(&samples, "imagewolf_image_peers", &[("reference", nasty)]),
        Some(0.0)
    );
    assert!(text.contains(r#"reference="a\\b\"c\nd}e,f=\"g""#), "{text}");
    // HTTP path labels pass through the same escaping.
    let mut agent = AgentMetrics::default();
    agent.http.insert(("\"\n\\".to_owned(), 500), 1);
    check_exposition(&render_prometheus(&[], &agent)).unwrap();
}

#[test]
fn records_sharing_a_reference_merge_into_one_series() {
    let mut old = image("r/app:latest", ImageState::Seeding);
    old.bytes_up = 100;
    old.peers = 2;
    old.load_seconds = Some(9.0);
    old.started_at = 1.0;
    let mut new = image("r/app:latest", ImageState::Loaded);
    new.bytes_up = 50;
    new.peers = 1;
    new.load_seconds = Some(3.0);
    new.started_at = 2.0;
    for images in [[old.clone(), new.clone()], [new, old]] {
        let text = render_prometheus(&images, &AgentMetrics::default());
        let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let key = [("reference", "r/app:latest")];
        assert_eq!(
            value_of(&samples, "imagewolf_image_bytes_uploaded_total", &key),
            Some(150.0)
        );
        assert_eq!(value_of(&samples, "imagewolf_image_peers", &key), Some(3.0));
        assert_eq!(
            value_of(&samples, "imagewolf_image_load_seconds", &key),
            Some(3.0)
        );
    }
}

#[test]
fn odd_floats_use_prometheus_spelling() {
    assert_eq!(format_float(f64::INFINITY), "+Inf");
    assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
    assert_eq!(format_float(f64::NAN), "NaN");
    assert_eq!(format_float(0.1), "0.1");
    let mut weird = image("w", ImageState::Loaded);
    weird.load_seconds = Some(f64::NAN);
    let mut huge = image("h", ImageState::Loaded);
    huge.load_seconds = Some(1e300);
    let text = render_prometheus(&[weird, huge], &AgentMetrics::default());
    check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

#[test]
fn the_checker_catches_broken_output() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n";
    assert!(check_exposition(good).is_ok());
    for bad in [
        "a_total 1\n",
        "# TYPE a_total counter\na_total 1\n",
        "# HELP a x\n# TYPE a gauge\na{l=\"x} 1\n",
        "# HELP a x\n# TYPE a gauge\na{l=\"\\x\"} 1\n",
        "# HELP a x\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a x\n# TYPE a gauge\na one\n",
        "# HELP a x\n# TYPE a gauge\na inf\n",
        "# HELP a x\n# TYPE a counter\na 1\n",
        "# HELP a x\n# TYPE a gauge\na 1",
        "# HELP a x\n# TYPE a gauge\n# HELP b x\n# TYPE b gauge\nb 1\na 1\n",
    ] {
        assert!(check_exposition(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn json_shape_of_stats() {
    let value = serde_json::to_value(image("r/a:1", ImageState::Downloading)).unwrap();
    assert_eq!(value["state"], "downloading");
    assert_eq!(value["reference"], "r/a:1");
    let _: BTreeMap<String, serde_json::Value> = serde_json::from_value(value).unwrap();
    for state in ImageState::ALL {
        assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
    }
}

#[test]
fn slots_queue_and_refusals_render() {
    let agent = AgentMetrics {
        distribution: DistributionMetrics {
            slots: 16,
            slots_busy: 3,
            queued: 2,
            refused_pushes: 5,
            refused_announcements: 1,
            working: 7,
            working_max: 64,
            busy_pushes: 2,
            busy_announcements: 9,
            stalled: 3,
            seeding_stopped_early: 4,
            records: 300,
            record_tombstones: 1000,
        },
        ..AgentMetrics::default()
    };
    let images = [
        image("r/a:1", ImageState::Queued),
        image("r/b:1", ImageState::Queued),
        image("evil/x:1", ImageState::Refused),
    ];
    let text = render_prometheus(&images, &agent);
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value_of(&samples, "imagewolf_torrent_slots", &[]),
        Some(16.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_torrent_slots_busy", &[]),
        Some(3.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_distributions_queued", &[]),
        Some(2.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_refused_total", &[("source", "push")]),
        Some(5.0)
    );
    assert_eq!(
        value_of(
            &samples,
            "imagewolf_refused_total",
            &[("source", "announcement")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_images", &[("state", "queued")]),
        Some(2.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_images", &[("state", "refused")]),
        Some(1.0)
    );
    for (series, labels, value) in [
        ("imagewolf_distributions_working", &[][..], 7.0),
        ("imagewolf_distributions_working_max", &[], 64.0),
        ("imagewolf_busy_total", &[("source", "push")], 2.0),
        ("imagewolf_busy_total", &[("source", "announcement")], 9.0),
        ("imagewolf_downloads_stalled_total", &[], 3.0),
        ("imagewolf_seeding_stopped_early_total", &[], 4.0),
        ("imagewolf_records", &[], 300.0),
        ("imagewolf_record_tombstones", &[], 1000.0),
    ] {
        assert_eq!(
            value_of(&samples, series, labels),
            Some(value),
            "{series}{labels:?}"
        );
    }
    // The families exist (at 0) on an agent that has seen nothing.
    let empty = render_prometheus(&[], &AgentMetrics::default());
    let samples = check_exposition(&empty).unwrap();
    assert_eq!(
        value_of(&samples, "imagewolf_refused_total", &[("source", "push")]),
        Some(0.0)
    );
    assert_eq!(
        value_of(&samples, "imagewolf_torrent_slots_busy", &[]),
        Some(0.0)
    );
}
