//! Announce query strings: parsing on the tracker side, rendering on the client side (sans-IO).
//!
//! `info_hash` and `peer_id` are percent-encoded *raw bytes*, not text: they are decoded
//! byte-wise and never pass through a UTF-8 conversion (a lossy conversion would turn every
//! byte >= 0x80 into U+FFFD and the hash would no longer match). `+` decodes to a space, as in
//! HTML forms, because that is what every tracker does; clients escape a literal `+` as `%2B`.
//!
//! The parser is deliberately lax about what it does not need: unknown keys, empty segments,
//! keys without `=`, and the extras real clients send (`key`, `corrupt`, `redundant`,
//! `supportcrypto`, `requirecrypto`, `ipv4`, `ipv6`, `trackerid`, `no_peer_id`, ...) are
//! skipped without being decoded. It is strict about what identifies the peer (`info_hash`,
//! `peer_id`, `port`) and about the byte counters, and it bounds the work a hostile query can
//! cause ([`MAX_QUERY_LEN`], [`MAX_QUERY_PARAMS`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use thiserror::Error;

use crate::{InfoHash, PeerId};

/// Longest announce query accepted, in bytes. A libtorrent announce is about 300 bytes.
pub const MAX_QUERY_LEN: usize = 8 * 1024;

/// Most `&`-separated parameters accepted in one query. libtorrent sends about 15.
pub const MAX_QUERY_PARAMS: usize = 64;

/// The `event` of an announce.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Event {
    /// The first announce of a session.
    Started,
    /// The download just finished (not sent when the peer started as a seed).
    Completed,
    /// The peer is leaving the swarm.
    Stopped,
    /// A regular re-announce (no `event` parameter, or `event=empty`, or an unknown event such
    /// as BEP 21's `paused`).
    #[default]
    None,
}

impl Event {
    /// The query value for this event; `None` for [`Event::None`], which sends no parameter.
    pub fn as_query_value(self) -> Option<&'static str> {
        match self {
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
            Event::None => None,
        }
    }

    /// Interpret a decoded `event` value; anything unknown counts as a regular announce.
    fn from_query_value(value: &[u8]) -> Self {
        match value {
            b"started" => Event::Started,
            b"completed" => Event::Completed,
            b"stopped" => Event::Stopped,
            _ => Event::None,
        }
    }
}

/// A parsed announce request, as the tracker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer.
    pub peer_id: PeerId,
    /// The port the peer accepts BitTorrent connections on (never 0).
    pub port: u16,
    /// Bytes uploaded this session (0 when absent).
    pub uploaded: u64,
    /// Bytes downloaded this session (0 when absent).
    pub downloaded: u64,
    /// Bytes still missing; 0 means the peer is a seed (0 when absent).
    pub left: u64,
    /// The announce event.
    pub event: Event,
    /// Whether the peer accepts a BEP 23 compact peer list. True unless `compact=0`.
    pub compact: bool,
    /// Whether the peer asked to omit peer ids from a non-compact list.
    pub no_peer_id: bool,
    /// How many peers the client wants, if it said.
    pub numwant: Option<u32>,
    /// The address the peer advertises via `ip=`, if present and a valid IP literal (host
    /// names are ignored: the tracker does no DNS).
    pub ip: Option<IpAddr>,
}

/// Why an announce query was rejected. The message is sent back as `failure reason`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnnounceError {
    /// The query is longer than [`MAX_QUERY_LEN`].
    #[error("query too long ({0} bytes)")]
    TooLong(usize),
    /// The query has more than [`MAX_QUERY_PARAMS`] parameters.
    #[error("too many query parameters")]
    TooManyParams,
    /// A required parameter is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A parameter that must appear once appeared twice.
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// A parameter value has a malformed `%` escape.
    #[error("bad percent-encoding in {0}")]
    BadEncoding(&'static str),
    /// `info_hash` or `peer_id` did not decode to exactly 20 bytes.
    #[error("{name} must be 20 bytes, got {len}")]
    BadLength {
        /// The parameter.
        name: &'static str,
        /// Its decoded length.
        len: usize,
    },
    /// A numeric parameter is not a valid number in its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl AnnounceRequest {
    /// Parse the query part of an announce URL (the text after `?`; a leading `?` is
    /// tolerated).
    pub fn from_query(query: &str) -> Result<AnnounceRequest, AnnounceError> {
        if query.len() > MAX_QUERY_LEN {
            return Err(AnnounceError::TooLong(query.len()));
        }
        let query = query.strip_prefix('?').unwrap_or(query);

        let mut info_hash = None;
        let mut peer_id = None;
        let mut port = None;
        let mut uploaded = 0;
        let mut downloaded = 0;
        let mut left = 0;
        let mut event = Event::None;
        let mut compact = true;
        let mut no_peer_id = false;
        let mut numwant = None;
        let mut ip = None;

        for (count, segment) in query.split('&').enumerate() {
            if count >= MAX_QUERY_PARAMS {
                return Err(AnnounceError::TooManyParams);
            }
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            match key {
                "info_hash" => {
                    set_once(&mut info_hash, "info_hash", id_bytes("info_hash", value)?)?
                }
                "peer_id" => set_once(&mut peer_id, "peer_id", id_bytes("peer_id", value)?)?,
                "port" => match number::<u16>("port", value)? {
                    0 => return Err(AnnounceError::Invalid("port")),
                    p => set_once(&mut port, "port", p)?,
                },
                "uploaded" => uploaded = number("uploaded", value)?,
                "downloaded" => downloaded = number("downloaded", value)?,
                "left" => left = number("left", value)?,
                "event" => event = Event::from_query_value(&percent_decode("event", value)?),
                "compact" => compact = value != "0",
                "no_peer_id" => no_peer_id = value != "0",
                // Lenient: some clients send `numwant=-1` for "default".
                "numwant" => numwant = number::<u32>("numwant", value).ok(),
                // Lenient: a host name or garbage falls back to the connection's address.
                "ip" => {
                    ip = percent_decode("ip", value)
                        .ok()
                        .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                }
                _ => {}
            }
        }

        Ok(AnnounceRequest {
            info_hash: InfoHash(info_hash.ok_or(AnnounceError::Missing("info_hash"))?),
            peer_id: PeerId(peer_id.ok_or(AnnounceError::Missing("peer_id"))?),
            port: port.ok_or(AnnounceError::Missing("port"))?,
            uploaded,
            downloaded,
            left,
            event,
            compact,
            no_peer_id,
            numwant,
            ip,
        })
    }

    /// Render as a query string (without the leading `?`), as our client sends it.
    pub fn to_query(&self) -> String {
        let mut q = String::with_capacity(256);
        q.push_str("info_hash=");
        percent_encode(&self.info_hash.0, &mut q);
        q.push_str("&peer_id=");
        percent_encode(&self.peer_id.0, &mut q);
        // Writing to a String cannot fail.
        let _ = write!(
            q,
            "&port={}&uploaded={}&downloaded={}&left={}&compact={}",
            self.port,
            self.uploaded,
            self.downloaded,
            self.left,
            u8::from(self.compact)
        );
        if self.no_peer_id {
            q.push_str("&no_peer_id=1");
        }
        if let Some(event) = self.event.as_query_value() {
            q.push_str("&event=");
            q.push_str(event);
        }
        if let Some(n) = self.numwant {
            let _ = write!(q, "&numwant={n}");
        }
        if let Some(ip) = self.ip {
            q.push_str("&ip=");
            percent_encode(ip.to_string().as_bytes(), &mut q);
        }
        q
    }
}

fn set_once<T>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), AnnounceError> {
    if slot.replace(value).is_some() {
        return Err(AnnounceError::Duplicate(name));
    }
    Ok(())
}

fn id_bytes(name: &'static str, value: &str) -> Result<[u8; 20], AnnounceError> {
    let bytes = percent_decode(name, value)?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| AnnounceError::BadLength { name, len })
}

fn number<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, AnnounceError> {
    // Numbers are plain digits in practice; decoding first costs nothing and accepts `%33`.
    let bytes = percent_decode(name, value)?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(AnnounceError::Invalid(name))
}

/// Decode `%XX` escapes and `+` into raw bytes. The output is never longer than the input.
pub(crate) fn percent_decode(name: &'static str, value: &str) -> Result<Vec<u8>, AnnounceError> {
    let input = value.as_bytes();
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'%' => {
                let (hi, lo, tail) = match rest {
                    [hi, lo, tail @ ..] => (*hi, *lo, tail),
                    _ => return Err(AnnounceError::BadEncoding(name)),
                };
                let (Some(hi), Some(lo)) = (hex_val(hi), hex_val(lo)) else {
                    return Err(AnnounceError::BadEncoding(name));
                };
                out.push((hi << 4) | lo);
                rest = tail;
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Append `bytes` percent-encoded: RFC 3986 unreserved characters stay literal, every other
/// byte becomes `%XX` (upper-case hex, as libtorrent writes it).
pub(crate) fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: [u8; 20] = [
        0x00, 0xff, 0x80, 0x2b, 0x20, 0x41, 0x7e, 0x25, 0xc3, 0x28, 0x00, 0x01, 0xfe, 0x7f, 0x3d,
        0x26, 0x3f, 0x23, 0x9a, 0x10,
    ];
    const PEER: &[u8; 20] = b"-lt20A0-\x01\x02\xff\xfe%&= +a\x00d";

    fn encoded(bytes: &[u8]) -> String {
        let mut s = String::new();
        percent_encode(bytes, &mut s);
        s
    }

    /// What libtorrent 2.0 puts on the wire (key order and extras as it sends them).
    fn libtorrent_query() -> String {
        format!(
            "info_hash={}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=1048576\
             &corrupt=0&key=3FA2B1C4&event=started&numwant=200&compact=1&no_peer_id=1\
             &supportcrypto=1&redundant=0&ipv6=fd00%3A%3A5&ipv4=10.0.0.5&trackerid=abc",
            encoded(&HASH),
            encoded(PEER)
        )
    }

    #[test]
    fn parses_libtorrent_query_with_raw_bytes() {
        let req = AnnounceRequest::from_query(&libtorrent_query()).unwrap();
        assert_eq!(req.info_hash, InfoHash(HASH));
        assert_eq!(req.peer_id, PeerId(*PEER));
        assert_eq!(req.port, 6881);
        assert_eq!(req.left, 1_048_576);
        assert_eq!(req.event, Event::Started);
        assert_eq!(req.numwant, Some(200));
        assert!(req.compact);
        assert!(req.no_peer_id);
        assert_eq!(req.ip, None);
    }

    #[test]
    fn lower_case_escapes_literal_bytes_and_plus() {
        // Every byte escaped, lower-case hex, except a few left literal; `+` is a space.
        let mut q = String::from("info_hash=");
        for b in HASH {
            match b {
                b'A' | b'~' => q.push(char::from(b)),
                b' ' => q.push('+'),
                _ => q.push_str(&format!("%{b:02x}")),
            }
        }
        q.push_str("&peer_id=ABCDEFGHIJKLMNOPQRST&port=1&event=&compact=0&ip=192.168.1.7");
        let req = AnnounceRequest::from_query(&q).unwrap();
        assert_eq!(req.info_hash, InfoHash(HASH));
        assert_eq!(req.peer_id, PeerId(*b"ABCDEFGHIJKLMNOPQRST"));
        assert_eq!(req.event, Event::None);
        assert!(!req.compact);
        assert_eq!(req.ip, Some("192.168.1.7".parse().unwrap()));
    }

    #[test]
    fn round_trips_through_to_query() {
        let req = AnnounceRequest {
            info_hash: InfoHash(HASH),
            peer_id: PeerId(*PEER),
            port: 51413,
            uploaded: u64::MAX,
            downloaded: 7,
            left: 0,
            event: Event::Completed,
            compact: true,
            no_peer_id: false,
            numwant: Some(12),
            ip: Some("fd00::1".parse().unwrap()),
        };
        assert_eq!(AnnounceRequest::from_query(&req.to_query()), Ok(req));
    }

    #[test]
    fn unknown_and_odd_segments_are_ignored() {
        let q = format!(
            "?&info_hash={}&&flag&peer_id={}&port=80&event=paused&numwant=-1&ip=host.lan&x=%zz",
            encoded(&HASH),
            encoded(PEER)
        );
        let req = AnnounceRequest::from_query(&q).unwrap();
        assert_eq!(req.event, Event::None);
        assert_eq!(req.numwant, None);
        assert_eq!(req.ip, None);
        assert_eq!((req.uploaded, req.downloaded, req.left), (0, 0, 0));
    }

    #[test]
    fn rejects_bad_queries() {
        let h = encoded(&HASH);
        let p = encoded(PEER);
        let err = |q: &str| AnnounceRequest::from_query(q).unwrap_err();
        assert_eq!(
            err(&format!("peer_id={p}&port=1")),
            AnnounceError::Missing("info_hash")
        );
        assert_eq!(
            err(&format!(
                "info_hash={}&peer_id={p}&port=1",
                encoded(&HASH[..19])
            )),
            AnnounceError::BadLength {
                name: "info_hash",
                len: 19
            }
        );
        assert_eq!(
            err(&format!("info_hash={h}&peer_id={p}")),
            AnnounceError::Missing("port")
        );
        for port in ["0", "65536", "-1", "x", ""] {
            assert_eq!(
                err(&format!("info_hash={h}&peer_id={p}&port={port}")),
                AnnounceError::Invalid("port")
            );
        }
        assert_eq!(
            err(&format!("info_hash={h}&peer_id={p}&port=1&left=-5")),
            AnnounceError::Invalid("left")
        );
        assert_eq!(
            err(&format!("info_hash={h}%2&peer_id={p}&port=1")),
            AnnounceError::BadEncoding("info_hash")
        );
        assert_eq!(
            err(&format!("info_hash={h}&info_hash={h}&peer_id={p}&port=1")),
            AnnounceError::Duplicate("info_hash")
        );
        let long = format!(
            "info_hash={h}&peer_id={p}&port=1&pad={}",
            "a".repeat(MAX_QUERY_LEN)
        );
        assert!(matches!(err(&long), AnnounceError::TooLong(_)));
        let many = format!(
            "info_hash={h}&peer_id={p}&port=1{}",
            "&a".repeat(MAX_QUERY_PARAMS)
        );
        assert_eq!(err(&many), AnnounceError::TooManyParams);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics(q in ".{0,300}") {
            let _ = AnnounceRequest::from_query(&q);
        }

        #[test]
        fn ids_round_trip(hash in proptest::array::uniform20(0u8..), peer in proptest::array::uniform20(0u8..)) {
            let q = format!("info_hash={}&peer_id={}&port=9", encoded(&hash), encoded(&peer));
            let req = AnnounceRequest::from_query(&q).unwrap();
            proptest::prop_assert_eq!(req.info_hash.0, hash);
            proptest::prop_assert_eq!(req.peer_id.0, peer);
        }
    }
}
