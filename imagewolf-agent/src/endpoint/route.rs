//! Request parsing for the endpoint, sans I/O: the path into a [`Route`] (with the
//! distribution grammar for names, tags and digests), containerd's `ns` query parameter, and
//! a `Range` header into a byte range.

use std::borrow::Cow;

/// Longest repository name (the distribution spec's limit, path components and slashes).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag (`[\w][\w.-]{0,127}`).
pub const MAX_TAG_LEN: usize = 128;

/// What a manifest request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A tag, resolved through [`super::Content::resolve_tag`].
    Tag(String),
    /// A digest, `sha256:<64 lowercase hex>`.
    Digest(String),
}

/// A request path, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// The repository name.
        name: String,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// The repository name (not needed to find a blob: blobs are content-addressed).
        name: String,
        /// `sha256:<64 lowercase hex>`.
        digest: String,
    },
}

/// Why a path is not a route; each maps to an OCI error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No route has this shape.
    NotFound,
    /// The repository name breaks the grammar.
    NameInvalid,
    /// A digest that is not `sha256:<64 lowercase hex>`.
    DigestInvalid,
    /// A manifest reference that is neither a tag nor a digest.
    TagInvalid,
}

/// Parses a request path (without the query). Percent-escapes are decoded first; the name
/// may contain slashes, so the path is split at the LAST `/manifests/` or `/blobs/`.
pub fn parse_path(raw: &str) -> Result<Route, RouteError> {
    let path = percent_decode(raw).ok_or(RouteError::NotFound)?;
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?;
    let manifests = rest
        .rfind("/manifests/")
        .map(|i| (i, "/manifests/".len(), true));
    let blobs = rest.rfind("/blobs/").map(|i| (i, "/blobs/".len(), false));
    let (at, sep_len, is_manifest) = match (manifests, blobs) {
        (Some(m), Some(b)) => {
            if m.0 > b.0 {
                m
            } else {
                b
            }
        }
        (Some(m), None) => m,
        (None, Some(b)) => b,
        (None, None) => return Err(RouteError::NotFound),
    };
    let name = rest.get(..at).ok_or(RouteError::NotFound)?;
    let reference = rest.get(at + sep_len..).ok_or(RouteError::NotFound)?;
    if reference.is_empty() || reference.contains('/') {
        return Err(RouteError::NotFound);
    }
    if !valid_name(name) {
        return Err(RouteError::NameInvalid);
    }
    if is_manifest {
        let reference = if reference.contains(':') {
            if !valid_digest(reference) {
                return Err(RouteError::DigestInvalid);
            }
            Reference::Digest(reference.to_owned())
        } else {
            if !valid_tag(reference) {
                return Err(RouteError::TagInvalid);
            }
            Reference::Tag(reference.to_owned())
        };
        Ok(Route::Manifest {
            name: name.to_owned(),
            reference,
        })
    } else {
        if !valid_digest(reference) {
            return Err(RouteError::DigestInvalid);
        }
        Ok(Route::Blob {
            name: name.to_owned(),
            digest: reference.to_owned(),
        })
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The distribution name grammar: components `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
/// separated by `/`, at most [`MAX_NAME_LEN`] in all.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between alphanumeric runs: one of ".", "_", "__", or any number of "-".
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while bytes.get(i).is_some_and(|&b| !alnum(b)) {
            i += 1;
        }
        if let Some(sep) = bytes.get(start..i) {
            let ok = match sep {
                [] | [b'.'] | [b'_'] | [b'_', b'_'] => true,
                dashes => dashes.iter().all(|&b| b == b'-'),
            };
            if !ok {
                return false;
            }
        }
        while bytes.get(i).is_some_and(|&b| alnum(b)) {
            i += 1;
        }
    }
    true
}

/// A tag: `[\w][\w.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.split_first() {
        Some((&first, rest)) => {
            word(first)
                && bytes.len() <= MAX_TAG_LEN
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// A digest this endpoint serves: `sha256:` and 64 lowercase hex digits.
pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// containerd's `ns` query parameter (the registry a mirror request is for), decoded.
pub fn ns_param(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "ns")
        .and_then(|(_, value)| {
            let value = value.replace('+', " ");
            percent_decode(&value).map(Cow::into_owned)
        })
        .filter(|v| !v.is_empty())
}

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send everything (absent, malformed, or several ranges, which a
    /// server may ignore).
    Full,
    /// Bytes `start..=end`, inside the body.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A well-formed range that starts past the end: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range against a body of `len`
/// bytes. An end past the body is clamped to its last byte.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if len > 0 => RangeRequest::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (false, open) => {
            let Some(start) = number(first) else {
                return RangeRequest::Full;
            };
            let end = if open {
                u64::MAX
            } else {
                match number(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeRequest::Full,
                }
            };
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        (true, true) => RangeRequest::Full,
    }
}
