//! Push notifications from registries, parsed into [`PushEvent`]s (sans-IO: bytes in, values
//! out; nothing here reads a socket or a clock).
//!
//! Two senders:
//! - A Docker registry (distribution 2.8) posts an *envelope* `{"events": [...]}` for every
//!   blob upload, blob/manifest pull and manifest push ([`parse_registry_envelope`]). Only a
//!   `push` of a *manifest* (Docker schema 2, OCI manifest, manifest list, OCI index, schema 1)
//!   means "a new image exists"; everything else is skipped quietly, because a single
//!   `docker push` produces one blob event per layer plus the manifest event.
//! - Docker Hub posts one webhook per tag push ([`parse_hub_webhook`]), without a digest.
//!
//! Design decisions:
//! - **One bad event never sinks the envelope.** The envelope is parsed as a list of opaque
//!   JSON values; each is then decoded and validated on its own, and a bad one becomes a
//!   [`Skipped`] entry with a reason. Only a body that is not JSON, or not an object with an
//!   `events` array, is an error: answering an error makes the registry re-send the envelope
//!   (and hold back every later one) until it is accepted.
//! - **Everything that ends up in a `docker pull` argument is validated** against the
//!   distribution reference grammar: registry host, repository path, tag, digest. An event
//!   from the network can therefore never smuggle option-like or path-like text to the loader.
//! - **Lenient about the rest.** Unknown fields are ignored (no `deny_unknown_fields`), fields
//!   we do not use are never typed (a registry sending `"size": "12"` still works), and the
//!   media type is compared without parameters and case-insensitively.
//! - **Bounded.** Bodies over [`MAX_BODY`] are refused before parsing; an envelope holds at most
//!   [`MAX_EVENTS`] events (checked while the array is decoded, so a hostile body cannot make
//!   us hold a huge list); serde_json's recursion limit bounds nesting; reasons quote at most
//!   [`QUOTE_LEN`] characters of the offending value.
//!
//! Registry host: `request.host` (the `Host` header the pusher used, e.g. `10.77.0.1:5000`),
//! else the authority of `target.url`; `registry_override` replaces both when the registry's
//! own idea of its address is not reachable from the nodes. Whoever can post a notification
//! therefore names the host the agent will request: the grammar is checked here, the address
//! by the registry client's host policy ([`crate::registry::guard`]: no loopback, link-local,
//! metadata... unless `--allow` names the host), before anything acts on the push.

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::image::ImageRef;

/// Largest notification body accepted, in bytes (registry envelopes are a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// Most events accepted in one registry envelope (the registry sends one to a handful).
pub const MAX_EVENTS: usize = 1000;

/// Longest repository name, as in the distribution reference grammar.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// Characters of an offending value quoted in an error message.
pub const QUOTE_LEN: usize = 80;

/// Manifest media types whose push starts a distribution.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// Registry names that mean Docker Hub, where official images live under `library/`.
const DOCKER_HUB_NAMES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A pushed image that should be spread to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The image as pushed.
    pub image: ImageRef,
    /// The registry's event id, when it sent one (for logs and de-duplication).
    pub event_id: Option<String>,
}

/// Why a notification (or one event of an envelope) was refused.
#[derive(Debug, Error)]
pub enum NotificationError {
    /// The body is larger than [`MAX_BODY`].
    #[error("notification body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not JSON of the expected overall shape.
    #[error("malformed notification JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// One event of an envelope is not an object of the expected shape.
    #[error("malformed event: {0}")]
    BadEvent(String),
    /// A field the notification cannot do without is absent or empty.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// The repository name is not a valid distribution repository path.
    #[error("invalid repository name {0}")]
    InvalidRepository(String),
    /// The tag does not match `[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}`.
    #[error("invalid tag {0}")]
    InvalidTag(String),
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {0}")]
    InvalidDigest(String),
    /// The registry host is not `host[:port]` or `[ipv6][:port]`.
    #[error("invalid registry host {0}")]
    InvalidRegistry(String),
    /// Neither `request.host`, `target.url` nor an override names the registry.
    #[error("no registry host: request.host and target.url are both missing")]
    NoRegistry,
    /// A manifest push with neither tag nor digest: there is nothing exact to pull.
    #[error("push event has neither tag nor digest")]
    NothingToPull,
}

impl NotificationError {
    /// Whether the body was refused for its size (HTTP 413) rather than its content (400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, NotificationError::TooLarge { .. })
    }
}

/// Why one event of an envelope did not become a [`PushEvent`].
#[derive(Debug)]
pub enum SkipReason {
    /// A normal event that does not announce a new image: a pull, a blob upload, a delete.
    NotAManifestPush {
        /// The event's action (`push`, `pull`, `delete`, `mount`, ...).
        action: String,
        /// The target's media type, when present.
        media_type: Option<String>,
    },
    /// A manifest push (or something claiming to be one) that failed validation.
    Invalid(NotificationError),
}

/// One event left out of the result, with the reason.
#[derive(Debug)]
pub struct Skipped {
    /// Index of the event in the envelope.
    pub index: usize,
    /// The registry's event id, when it had a usable one.
    pub event_id: Option<String>,
    /// Why it was left out.
    pub reason: SkipReason,
}

/// Everything an envelope said: the pushes to act on and the events left out.
#[derive(Debug, Default)]
pub struct Envelope {
    /// Manifest pushes, in envelope order.
    pub pushes: Vec<PushEvent>,
    /// Events that are not manifest pushes, or failed validation.
    pub skipped: Vec<Skipped>,
}

impl Envelope {
    /// Skipped events that were invalid (as opposed to ordinary pulls and blob uploads).
    pub fn invalid(&self) -> impl Iterator<Item = &Skipped> {
        self.skipped
            .iter()
            .filter(|s| matches!(s.reason, SkipReason::Invalid(_)))
    }
}

/// Parses a registry notification envelope into the manifest pushes it contains.
///
/// Events that are not manifest pushes are dropped silently; invalid manifest pushes are
/// dropped with a `warn` log naming the reason. Use [`parse_registry_envelope_detailed`] to
/// see both.
pub fn parse_registry_envelope(
    body: &[u8],
    registry_override: Option<&str>,
) -> Result<Vec<PushEvent>, NotificationError> {
    let envelope = parse_registry_envelope_detailed(body, registry_override)?;
    for skipped in envelope.invalid() {
        if let SkipReason::Invalid(e) = &skipped.reason {
            tracing::warn!(
                index = skipped.index,
                event_id = skipped.event_id.as_deref().unwrap_or(""),
                "skipping registry event: {e}"
            );
        }
    }
    Ok(envelope.pushes)
}

/// Parses a registry notification envelope, keeping the skipped events and their reasons.
///
/// Fails only when the body is too large or is not a JSON object with an `events` array of
/// at most [`MAX_EVENTS`] entries.
pub fn parse_registry_envelope_detailed(
    body: &[u8],
    registry_override: Option<&str>,
) -> Result<Envelope, NotificationError> {
    check_size(body)?;
    let raw: RawEnvelope = serde_json::from_slice(body).map_err(NotificationError::Json)?;
    let mut envelope = Envelope::default();
    for (index, event) in raw.events.0.into_iter().enumerate() {
        let event = match event {
            Ok(event) => event,
            Err(reason) => {
                envelope.skipped.push(Skipped {
                    index,
                    event_id: None,
                    reason: SkipReason::Invalid(NotificationError::BadEvent(reason)),
                });
                continue;
            }
        };
        let event_id = event.id.clone().filter(|id| usable_event_id(id));
        match interpret_event(event, registry_override) {
            Ok(image) => envelope.pushes.push(PushEvent { image, event_id }),
            Err(reason) => envelope.skipped.push(Skipped {
                index,
                event_id,
                reason,
            }),
        }
    }
    Ok(envelope)
}

/// Parses a Docker Hub webhook into the pushed tag, to be pulled from `hub_registry`.
///
/// `repository.repo_name` (else `namespace/name`) is the repository. An official image's
/// name has no slash (`nginx`); on Docker Hub itself (`docker.io`, `index.docker.io`,
/// `registry-1.docker.io`) it lives at `library/nginx`, so it is mapped there. For any other
/// `hub_registry` (a mirror or test registry) the name is kept as sent, because such a
/// registry stores it under whatever path it was pushed to.
pub fn parse_hub_webhook(body: &[u8], hub_registry: &str) -> Result<PushEvent, NotificationError> {
    check_size(body)?;
    let raw: RawHubPayload = serde_json::from_slice(body).map_err(NotificationError::Json)?;
    validate_registry(hub_registry)?;
    let repository = raw
        .repository
        .ok_or(NotificationError::MissingField("repository"))?;
    let name = match non_empty(repository.repo_name) {
        Some(name) => name,
        None => match (non_empty(repository.namespace), non_empty(repository.name)) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name,
            _ => return Err(NotificationError::MissingField("repository.repo_name")),
        },
    };
    let tag = raw
        .push_data
        .and_then(|p| non_empty(p.tag))
        .ok_or(NotificationError::MissingField("push_data.tag"))?;
    let is_hub = DOCKER_HUB_NAMES
        .iter()
        .any(|hub| hub.eq_ignore_ascii_case(hub_registry));
    let repository = if is_hub && !name.contains('/') {
        format!("library/{name}")
    } else {
        name
    };
    let image = ImageRef {
        registry: hub_registry.to_owned(),
        repository,
        tag: Some(tag),
        digest: None,
    };
    validate_image_ref(&image)?;
    Ok(PushEvent {
        image,
        event_id: None,
    })
}

/// Checks every part of an image reference that ends up in a pull: registry host,
/// repository, tag and digest (when present), and the total name length.
pub fn validate_image_ref(image: &ImageRef) -> Result<(), NotificationError> {
    validate_registry(&image.registry)?;
    validate_repository(&image.repository)?;
    // Docker refuses names (registry included) longer than 255 characters.
    if image.registry.len() + 1 + image.repository.len() > MAX_REPOSITORY_LEN {
        return Err(NotificationError::InvalidRepository(quote(&format!(
            "{}/{}",
            image.registry, image.repository
        ))));
    }
    if let Some(tag) = &image.tag {
        validate_tag(tag)?;
    }
    if let Some(digest) = &image.digest {
        validate_digest(digest)?;
    }
    Ok(())
}

/// Checks a repository path against the distribution grammar: `/`-separated components of
/// lowercase alphanumerics joined by `.`, `_`, `__` or one or more `-`; at most 255 bytes.
pub fn validate_repository(repository: &str) -> Result<(), NotificationError> {
    let valid = !repository.is_empty()
        && repository.len() <= MAX_REPOSITORY_LEN
        && repository.split('/').all(valid_path_component);
    if valid {
        Ok(())
    } else {
        Err(NotificationError::InvalidRepository(quote(repository)))
    }
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), NotificationError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let valid = match bytes.split_first() {
        Some((&first, rest)) => {
            word(first)
                && rest.len() <= 127
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(NotificationError::InvalidTag(quote(tag)))
    }
}

/// Checks a manifest digest: `sha256:` followed by exactly 64 lowercase hex digits.
pub fn validate_digest(digest: &str) -> Result<(), NotificationError> {
    let valid = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if valid {
        Ok(())
    } else {
        Err(NotificationError::InvalidDigest(quote(digest)))
    }
}

/// Checks a registry host: `name[:port]` with DNS-style labels, or `[ipv6][:port]`.
pub fn validate_registry(host: &str) -> Result<(), NotificationError> {
    if valid_registry(host) {
        Ok(())
    } else {
        Err(NotificationError::InvalidRegistry(quote(host)))
    }
}

fn valid_registry(host: &str) -> bool {
    if host.is_empty() || host.len() > 255 {
        return false;
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != 0)
    });
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.split('.').all(|label| {
                let b = label.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                    && b.first() != Some(&b'-')
                    && b.last() != Some(&b'-')
            })
    });
    port_ok && name_ok
}

/// One path component: alphanumeric runs separated by `.`, `_`, `__` or `-+`.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Every maximal run of separator bytes must be one of the allowed separators.
    let mut run_start: Option<usize> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if alnum(b) {
            if let Some(start) = run_start.take() {
                if !valid_separator(&bytes[start..i]) {
                    return false;
                }
            }
        } else if matches!(b, b'.' | b'_' | b'-') {
            run_start.get_or_insert(i);
        } else {
            return false;
        }
    }
    // The last byte is alphanumeric, so no run is left open here.
    true
}

fn valid_separator(run: &[u8]) -> bool {
    matches!(run, b"." | b"_" | b"__") || run.iter().all(|&b| b == b'-')
}

fn check_size(body: &[u8]) -> Result<(), NotificationError> {
    if body.len() > MAX_BODY {
        return Err(NotificationError::TooLarge {
            len: body.len(),
            max: MAX_BODY,
        });
    }
    Ok(())
}

/// Event ids are only logged and compared; anything long or odd is dropped, not quoted.
fn usable_event_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The image of a valid manifest push, or why the event is skipped.
fn interpret_event(
    event: RawEvent,
    registry_override: Option<&str>,
) -> Result<ImageRef, SkipReason> {
    let action = event.action.unwrap_or_default();
    let target = event.target.unwrap_or_default();
    let media_type = target.media_type;
    let is_manifest = media_type.as_deref().is_some_and(is_manifest_media_type);
    if action != "push" || !is_manifest {
        return Err(SkipReason::NotAManifestPush {
            action: quote_plain(&action),
            media_type: media_type.as_deref().map(quote_plain),
        });
    }
    let invalid = SkipReason::Invalid;
    let repository = non_empty(target.repository)
        .ok_or_else(|| invalid(NotificationError::MissingField("target.repository")))?;
    let tag = non_empty(target.tag);
    let digest = non_empty(target.digest);
    if tag.is_none() && digest.is_none() {
        return Err(invalid(NotificationError::NothingToPull));
    }
    let registry = match registry_override {
        Some(host) => host.to_owned(),
        None => match non_empty(event.request.and_then(|r| r.host)) {
            Some(host) => host,
            None => target
                .url
                .as_deref()
                .and_then(url_authority)
                .map(str::to_owned)
                .ok_or_else(|| invalid(NotificationError::NoRegistry))?,
        },
    };
    let image = ImageRef {
        registry,
        repository,
        tag,
        digest,
    };
    validate_image_ref(&image).map_err(invalid)?;
    Ok(image)
}

fn is_manifest_media_type(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim();
    MANIFEST_MEDIA_TYPES
        .iter()
        .any(|m| m.eq_ignore_ascii_case(essence))
}

/// The `host[:port]` of an `http(s)://` URL, without user info.
fn url_authority(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host.is_empty()).then_some(host)
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// A value quoted for an error message: Debug-escaped and cut at [`QUOTE_LEN`] characters.
fn quote(s: &str) -> String {
    let mut out: String = s.chars().take(QUOTE_LEN).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Like [`quote`] without the surrounding quotes (for fields shown as values).
fn quote_plain(s: &str) -> String {
    let quoted = quote(s);
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .map_or(quoted.clone(), str::to_owned)
}

#[derive(Deserialize)]
struct RawEnvelope {
    events: EventList,
}

/// The `events` array, each entry decoded on its own so one bad entry is just skipped.
struct EventList(Vec<Result<RawEvent, String>>);

impl<'de> Deserialize<'de> for EventList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventsVisitor;
        impl<'de> Visitor<'de> for EventsVisitor {
            type Value = EventList;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of events")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventList, A::Error> {
                let mut events = Vec::new();
                while let Some(value) = seq.next_element::<serde_json::Value>()? {
                    if events.len() >= MAX_EVENTS {
                        return Err(A::Error::custom(format_args!(
                            "more than {MAX_EVENTS} events in one envelope"
                        )));
                    }
                    events
                        .push(serde_json::from_value::<RawEvent>(value).map_err(|e| e.to_string()));
                }
                Ok(EventList(events))
            }
        }
        deserializer.deserialize_seq(EventsVisitor)
    }
}

/// The fields of a registry event we use; the rest (timestamp, actor, source, sizes) is
/// ignored untyped.
#[derive(Deserialize)]
struct RawEvent {
    id: Option<String>,
    action: Option<String>,
    target: Option<RawTarget>,
    request: Option<RawRequest>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawTarget {
    media_type: Option<String>,
    digest: Option<String>,
    repository: Option<String>,
    url: Option<String>,
    tag: Option<String>,
}

#[derive(Deserialize)]
struct RawRequest {
    host: Option<String>,
}

#[derive(Deserialize)]
struct RawHubPayload {
    push_data: Option<RawHubPushData>,
    repository: Option<RawHubRepository>,
}

#[derive(Deserialize)]
struct RawHubPushData {
    tag: Option<String>,
}

#[derive(Deserialize)]
struct RawHubRepository {
    repo_name: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests;
