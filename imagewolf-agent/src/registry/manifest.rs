//! Manifests: parsing (Docker schema 2 and OCI, images and indexes), picking this host's
//! platform out of an index, and the media types the archive can carry.
//!
//! Only what `docker load` on Debian's dockerd 20.10 accepts is supported: gzip or plain tar
//! layers. zstd layers, foreign (Windows) layers, non-distributable layers, schema 1 and any
//! other media type are [`RegistryError::Unsupported`], so the caller can let Docker try.

use serde::Deserialize;

use super::client::valid_digest;
use super::RegistryError;

/// Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Image config media types (Docker, OCI).
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
];
/// Layer media types `docker load` accepts as they are (gzip or plain tar).
const LAYER_TYPES: [&str; 3] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar",
];
/// Most layers in one image (Docker itself stops at 127 for overlay mounts).
pub const MAX_LAYERS: usize = 256;
/// Largest blob accepted (a sanity bound on a size field, not a memory bound: blobs stream).
pub const MAX_BLOB_SIZE: u64 = 1 << 40;
/// Most entries in an index.
const MAX_INDEX_ENTRIES: usize = 1024;

/// A content descriptor: what a blob is, its digest and size (both checked on download).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// An image manifest: the config blob and the layer blobs, in order (repeats kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// The image config (its digest is the image id).
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// What a manifest GET returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single image.
    Image(ImageManifest),
    /// A manifest list / OCI index: one image per platform.
    Index(Vec<IndexEntry>),
}

/// One entry of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The manifest it points at.
    pub manifest: Descriptor,
    /// `os`, `architecture`, `variant` (empty strings when absent).
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: String,
}

/// An OS/architecture pair in the registry's (Go's) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// Always `linux` here.
    pub os: &'static str,
    /// Go's `GOARCH` name (`amd64`, `arm64`, ...).
    pub architecture: &'static str,
    /// The variant (`v7`, `v8`), empty when any will do.
    pub variant: &'static str,
}

impl Platform {
    /// Parses `os/architecture[/variant]` (`linux/amd64`, `linux/arm/v7`), as `docker
    /// --platform` writes it. The strings live for the program (flags are parsed once).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let good = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| good(p)) {
            return Err(format!(
                "{s:?} is not os/architecture[/variant], e.g. linux/arm64"
            ));
        }
        let leak = |p: &str| -> &'static str { Box::leak(p.to_ascii_lowercase().into_boxed_str()) };
        Ok(Platform {
            os: leak(parts[0]),
            architecture: leak(parts[1]),
            variant: parts.get(2).map_or("", |v| leak(v)),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// The platform this agent runs on, in Go's names (Rust's `std::env::consts::ARCH` mapped).
pub fn host_platform() -> Platform {
    Platform {
        os: "linux",
        architecture: go_arch(std::env::consts::ARCH),
        variant: "",
    }
}

/// Rust's architecture names to Go's (what image indexes use).
fn go_arch(rust: &'static str) -> &'static str {
    match rust {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64" => "mips64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

fn failed(what: &str, message: impl std::fmt::Display) -> RegistryError {
    RegistryError::Failed(format!("{what}: {message}"))
}

/// A JSON error without the offending text (serde quotes values: "invalid type: string
/// \"...\""): what kind of error, and where. Errors reach `/stats`, and what answered may not
/// be a registry.
fn json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} (line {}, column {})", e.line(), e.column())
}

/// A media type from a registry's answer as an error shows it: quoted when it looks like one
/// (`type/subtype`, lowercase, at most 127 characters), else a placeholder.
pub(crate) fn shown_media_type(t: &str) -> String {
    let token = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".+-_".contains(&b))
    };
    match t.split_once('/') {
        Some((a, b)) if t.len() <= 127 && token(a) && token(b) => format!("{t:?}"),
        _ => "(not a media type; not shown)".into(),
    }
}

/// A platform name part from a registry's answer (`amd64`, `v7`), or `?`.
fn shown_platform_part(p: &str) -> &str {
    let ok = p.len() <= 32
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        p
    } else {
        "?"
    }
}

fn descriptor(what: &str, raw: RawDescriptor) -> Result<Descriptor, RegistryError> {
    if !valid_digest(&raw.digest) {
        // Other algorithms (sha512) are legal but rare; Docker may cope.
        return Err(RegistryError::Unsupported(format!(
            "{what}: a descriptor's digest is not sha256:<64 hex>"
        )));
    }
    let size = u64::try_from(raw.size)
        .ok()
        .filter(|s| *s <= MAX_BLOB_SIZE)
        .ok_or_else(|| failed(what, format!("size {} out of range", raw.size)))?;
    Ok(Descriptor {
        media_type: raw.media_type.unwrap_or_default(),
        digest: raw.digest,
        size,
    })
}

/// The media type of a manifest body: its own `mediaType`, else the response's
/// `Content-Type`, else what its shape says (OCI allows leaving it out).
pub fn media_type(body: &[u8], content_type: Option<&str>) -> Option<String> {
    let raw: RawManifest = serde_json::from_slice(body).ok()?;
    Some(resolved_media_type(&raw, content_type))
}

fn resolved_media_type(raw: &RawManifest, content_type: Option<&str>) -> String {
    let header_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
    raw.media_type
        .clone()
        .or(header_type.filter(|t| !t.is_empty() && t != "application/json"))
        .unwrap_or_else(|| {
            if raw.manifests.is_some() {
                OCI_INDEX.to_owned()
            } else {
                OCI_MANIFEST.to_owned()
            }
        })
}

/// Parses a manifest body. `content_type` is the response's `Content-Type` (used when the
/// body names no `mediaType`, which OCI allows). `what` names it in errors.
pub fn parse(
    what: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<Manifest, RegistryError> {
    let raw: RawManifest = serde_json::from_slice(body)
        .map_err(|e| failed(what, format!("not a manifest: {}", json_error(&e))))?;
    let media_type = resolved_media_type(&raw, content_type);
    if raw.schema_version != Some(2) {
        return Err(RegistryError::Unsupported(format!(
            "{what}: schema version {:?} ({}); only schema 2 / OCI is read here",
            raw.schema_version,
            shown_media_type(&media_type)
        )));
    }
    match media_type.as_str() {
        DOCKER_LIST | OCI_INDEX => {
            let entries = raw
                .manifests
                .ok_or_else(|| failed(what, "an index without \"manifests\""))?;
            if entries.len() > MAX_INDEX_ENTRIES {
                return Err(failed(
                    what,
                    format!(
                        "{} index entries (limit {MAX_INDEX_ENTRIES})",
                        entries.len()
                    ),
                ));
            }
            entries
                .into_iter()
                .map(|mut e| {
                    let p = e.platform.take();
                    Ok(IndexEntry {
                        manifest: descriptor(what, e)?,
                        os: p.as_ref().map(|p| p.os.clone()).unwrap_or_default(),
                        architecture: p
                            .as_ref()
                            .map(|p| p.architecture.clone())
                            .unwrap_or_default(),
                        variant: p.map(|p| p.variant).unwrap_or_default(),
                    })
                })
                .collect::<Result<_, _>>()
                .map(Manifest::Index)
        }
        DOCKER_MANIFEST | OCI_MANIFEST => {
            let config = descriptor(
                what,
                raw.config
                    .ok_or_else(|| failed(what, "a manifest without \"config\""))?,
            )?;
            if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
                return Err(RegistryError::Unsupported(format!(
                    "{what}: config media type {} is not a container image",
                    shown_media_type(&config.media_type)
                )));
            }
            let layers = raw
                .layers
                .ok_or_else(|| failed(what, "a manifest without \"layers\""))?;
            if layers.len() > MAX_LAYERS {
                return Err(failed(
                    what,
                    format!("{} layers (limit {MAX_LAYERS})", layers.len()),
                ));
            }
            let layers = layers
                .into_iter()
                .map(|l| {
                    let d = descriptor(what, l)?;
                    if !LAYER_TYPES.contains(&d.media_type.as_str()) {
                        return Err(RegistryError::Unsupported(format!(
                            "{what}: layer {} has media type {}, which dockerd 20.10's \
                             `docker load` cannot take (gzip or plain tar only)",
                            d.digest,
                            shown_media_type(&d.media_type)
                        )));
                    }
                    Ok(d)
                })
                .collect::<Result<_, _>>()?;
            Ok(Manifest::Image(ImageManifest { config, layers }))
        }
        other => Err(RegistryError::Unsupported(format!(
            "{what}: manifest media type {} is not supported here",
            shown_media_type(other)
        ))),
    }
}

/// The index entry for `platform`: an image manifest for that OS and architecture; on arm64
/// the `v8` (or unnamed) variant is preferred. Entries that are not image manifests
/// (nested indexes, attestations) are never picked.
pub fn select<'a>(
    what: &str,
    entries: &'a [IndexEntry],
    platform: Platform,
) -> Result<&'a IndexEntry, RegistryError> {
    let candidates: Vec<&IndexEntry> = entries
        .iter()
        .filter(|e| {
            e.os == platform.os
                && e.architecture == platform.architecture
                && [DOCKER_MANIFEST, OCI_MANIFEST].contains(&e.manifest.media_type.as_str())
        })
        .collect();
    let preferred = |e: &&&IndexEntry| match (platform.variant, platform.architecture) {
        ("", "arm64") => e.variant.is_empty() || e.variant == "v8",
        ("", _) => true,
        (wanted, _) => e.variant == wanted,
    };
    candidates
        .iter()
        .find(preferred)
        .or(candidates.first())
        .copied()
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .take(32)
                .map(|e| {
                    let mut p = format!(
                        "{}/{}",
                        shown_platform_part(&e.os),
                        shown_platform_part(&e.architecture)
                    );
                    if !e.variant.is_empty() {
                        p = format!("{p}/{}", shown_platform_part(&e.variant));
                    }
                    p
                })
                .collect();
            failed(
                what,
                format!(
                    "no image for {platform} in the index (it has: {})",
                    have.join(", ")
                ),
            )
        })
}

/// How many layers the config's `rootfs.diff_ids` lists (`docker load` insists that equals
/// the manifest's layer count).
pub fn config_layer_count(what: &str, config: &[u8]) -> Result<usize, RegistryError> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let c: Config = serde_json::from_slice(config)
        .map_err(|e| failed(what, format!("not an image config: {}", json_error(&e))))?;
    Ok(c.rootfs.diff_ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn index_json() -> String {
        let entry = |n: u8, mt: &str, os: &str, arch: &str, variant: Option<&str>| {
            let mut p = serde_json::json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = v.into();
            }
            serde_json::json!({"mediaType": mt, "digest": digest(n), "size": 500 + n as i64, "platform": p})
        };
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                entry(1, OCI_MANIFEST, "linux", "arm", Some("v7")),
                entry(2, OCI_MANIFEST, "linux", "arm64", Some("v9")),
                entry(3, OCI_MANIFEST, "linux", "arm64", Some("v8")),
                entry(4, OCI_MANIFEST, "windows", "amd64", None),
                entry(5, OCI_INDEX, "linux", "amd64", None),
                entry(6, OCI_MANIFEST, "linux", "amd64", None),
                entry(7, OCI_MANIFEST, "unknown", "unknown", None),
            ]
        })
        .to_string()
    }

    #[test]
    fn index_picks_this_platform() {
        let Manifest::Index(entries) = parse("idx", index_json().as_bytes(), None).unwrap() else {
            panic!("not an index");
        };
        assert_eq!(entries.len(), 7);
        let amd64 = Platform {
            os: "linux",
            architecture: "amd64",
            variant: "",
        };
        // Not the windows one, not the nested index: the linux/amd64 image manifest.
        assert_eq!(
            select("idx", &entries, amd64).unwrap().manifest.digest,
            digest(6)
        );
        let arm64 = Platform {
            os: "linux",
            architecture: "arm64",
            variant: "",
        };
        assert_eq!(
            select("idx", &entries, arm64).unwrap().manifest.digest,
            digest(3)
        );
        let s390 = Platform {
            os: "linux",
            architecture: "s390x",
            variant: "",
        };
        let err = select("idx", &entries, s390).unwrap_err();
        assert!(!err.retryable() && !err.wants_fallback(), "{err}");
        assert!(
            err.to_string().contains("linux/arm/v7, linux/arm64/v9"),
            "{err}"
        );
        // This host (the tests run on x86_64 here).
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(host_platform(), amd64);
        }
        assert_eq!(go_arch("aarch64"), "arm64");
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert_eq!(
            select("idx", &entries, v7).unwrap().variant,
            "v7",
            "an explicit variant is matched"
        );
        assert_eq!(Platform::parse("linux/arm64").unwrap(), arm64);
        for bad in ["linux", "linux/", "a/b/c/d", "linux/../x", ""] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_list_without_body_media_type_uses_the_header() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest(9), "size": 7,
                           "platform": {"os": "linux", "architecture": "amd64"}}]
        })
        .to_string();
        let m = parse(
            "list",
            body.as_bytes(),
            Some(&format!("{DOCKER_LIST}; charset=x")),
        )
        .unwrap();
        assert!(
            matches!(&m, Manifest::Index(e) if e[0].manifest.size == 7),
            "{m:?}"
        );
    }

    fn image_json(layer_type: &str) -> String {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": CONFIG_TYPES[0], "digest": digest(1), "size": 1000},
            "layers": [
                {"mediaType": LAYER_TYPES[0], "digest": digest(2), "size": 20},
                {"mediaType": layer_type, "digest": digest(3), "size": 30},
            ]
        })
        .to_string()
    }

    #[test]
    fn image_manifests_and_media_types() {
        for ok in LAYER_TYPES {
            let Manifest::Image(m) = parse("m", image_json(ok).as_bytes(), None).unwrap() else {
                panic!("not an image");
            };
            assert_eq!(m.config.digest, digest(1));
            assert_eq!(m.layers.len(), 2);
            assert_eq!(m.layers[1].size, 30);
        }
        for unsupported in [
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/octet-stream",
        ] {
            let err = parse("m", image_json(unsupported).as_bytes(), None).unwrap_err();
            assert!(err.wants_fallback(), "{unsupported}: {err}");
            assert!(err.to_string().contains(unsupported), "{err}");
        }
        // Schema 1, an artifact config, a sha512 digest: Docker's business.
        let schema1 = r#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#;
        assert!(parse("m", schema1.as_bytes(), None)
            .unwrap_err()
            .wants_fallback());
        let artifact = image_json(LAYER_TYPES[0])
            .replace(CONFIG_TYPES[0], "application/vnd.cncf.helm.config.v1+json");
        assert!(parse("m", artifact.as_bytes(), None)
            .unwrap_err()
            .wants_fallback());
        let sha512 =
            image_json(LAYER_TYPES[0]).replace(&digest(2), &format!("sha512:{}", "ab".repeat(64)));
        assert!(parse("m", sha512.as_bytes(), None)
            .unwrap_err()
            .wants_fallback());
    }

    #[test]
    fn malformed_manifests_are_clear_errors() {
        let negative = image_json(LAYER_TYPES[0]).replace("\"size\":20", "\"size\":-1");
        let huge = image_json(LAYER_TYPES[0])
            .replace("\"size\":20", &format!("\"size\":{}", MAX_BLOB_SIZE + 1));
        let many = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPES[1], "digest": digest(1), "size": 1},
            "layers": vec![serde_json::json!({"mediaType": LAYER_TYPES[2], "digest": digest(2), "size": 1}); MAX_LAYERS + 1],
        })
        .to_string();
        for bad in [
            "",
            "[]",
            "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"}",
            &negative,
            &huge,
            &many,
            "{\"schemaVersion\":2,\"digest\":\"sha256:../../x\"",
        ] {
            let err = parse("m", bad.as_bytes(), None).unwrap_err();
            assert!(!err.retryable() && !err.wants_fallback(), "{bad:?}: {err}");
        }
        assert_eq!(
            config_layer_count("c", br#"{"rootfs":{"type":"layers","diff_ids":["a","b"]}}"#)
                .unwrap(),
            2
        );
        assert!(config_layer_count("c", b"{}").is_err());
    }
}
