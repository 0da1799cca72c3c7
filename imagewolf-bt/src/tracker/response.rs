//! Announce replies: encoding on the tracker side, decoding on the client side (sans-IO).
//!
//! The encoder is hand-written: the reply has a fixed shape, so writing the keys in their
//! sorted order directly is simpler than building a generic value, and it cannot fail.
//!
//! The decoder uses bendy, which enforces canonical bencode (sorted, unique keys). It is
//! tolerant of everything else: unknown keys are skipped, optional fields of the wrong type
//! count as absent, `peers` may be a compact string (BEP 23) or a list of dicts, and entries
//! that cannot be dialled (host names, port 0, unspecified addresses) are dropped rather than
//! failing the whole reply. Memory is bounded by the caller bounding the body size; the
//! decoder never allocates more than a fraction of the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bendy::decoding::{Decoder, Object};
use thiserror::Error;

use crate::PeerId;

/// The interval assumed when a tracker reply has none (libtorrent's default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1800);

/// Size of one IPv4 entry in a compact peer list (BEP 23).
const COMPACT_V4_LEN: usize = 6;
/// Size of one IPv6 entry in a compact `peers6` list.
const COMPACT_V6_LEN: usize = 18;
/// Bencode nesting needed by an announce reply: dict > list > dict, plus slack.
const MAX_DEPTH: usize = 8;

/// One peer in a reply the tracker sends.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplyPeer {
    /// Where to dial the peer.
    pub addr: SocketAddr,
    /// Its peer id; only written in non-compact replies.
    pub peer_id: Option<PeerId>,
}

/// A successful announce reply, as the tracker builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceReply {
    /// Regular re-announce interval (sent in whole seconds, at least 1).
    pub interval: Duration,
    /// Shortest interval the tracker tolerates between announces.
    pub min_interval: Option<Duration>,
    /// Seeds in the swarm.
    pub complete: u32,
    /// Leechers in the swarm.
    pub incomplete: u32,
    /// The peers handed out.
    pub peers: Vec<ReplyPeer>,
    /// A non-fatal message for the client.
    pub warning: Option<String>,
}

/// An announce reply as the client reads it. Durations are as the tracker sent them (up to
/// `u64::MAX` seconds): clamp before adding them to an `Instant`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// When to announce again ([`DEFAULT_INTERVAL`] when the tracker did not say).
    pub interval: Duration,
    /// Do not announce more often than this.
    pub min_interval: Option<Duration>,
    /// Seeds in the swarm, if reported.
    pub complete: Option<u32>,
    /// Leechers in the swarm, if reported.
    pub incomplete: Option<u32>,
    /// All peers: compact `peers`, a dict list, and `peers6`, merged, in reply order.
    pub peers: Vec<SocketAddr>,
    /// The tracker's `warning message`.
    pub warning: Option<String>,
}

/// Why a tracker reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    /// The tracker refused the announce with this `failure reason`.
    #[error("tracker failure: {0}")]
    Failure(String),
    /// The body is not valid (canonical) bencode.
    #[error("invalid bencode: {0}")]
    Bencode(String),
    /// The body is valid bencode but not a dictionary.
    #[error("reply is not a bencoded dictionary")]
    NotADict,
}

impl From<bendy::decoding::Error> for ResponseError {
    fn from(e: bendy::decoding::Error) -> Self {
        ResponseError::Bencode(e.to_string())
    }
}

impl AnnounceReply {
    /// Encode as a bencoded dict. `compact` selects BEP 23 strings (`peers` for IPv4, `peers6`
    /// for IPv6) over a list of `ip`/`peer id`/`port` dicts holding every peer.
    pub fn encode(&self, compact: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.peers.len() * 48);
        out.push(b'd');
        put_key_int(&mut out, "complete", self.complete.into());
        put_key_int(&mut out, "incomplete", self.incomplete.into());
        put_key_int(&mut out, "interval", whole_secs(self.interval));
        if let Some(min) = self.min_interval {
            put_key_int(&mut out, "min interval", whole_secs(min));
        }
        put_bytes(&mut out, b"peers");
        if compact {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for p in &self.peers {
                match p.addr {
                    SocketAddr::V4(a) => {
                        v4.extend(a.ip().octets().into_iter().chain(a.port().to_be_bytes()))
                    }
                    SocketAddr::V6(a) => {
                        v6.extend(a.ip().octets().into_iter().chain(a.port().to_be_bytes()))
                    }
                }
            }
            put_bytes(&mut out, &v4);
            if !v6.is_empty() {
                put_bytes(&mut out, b"peers6");
                put_bytes(&mut out, &v6);
            }
        } else {
            out.push(b'l');
            for p in &self.peers {
                out.push(b'd');
                put_bytes(&mut out, b"ip");
                put_bytes(&mut out, p.addr.ip().to_string().as_bytes());
                if let Some(id) = p.peer_id {
                    put_bytes(&mut out, b"peer id");
                    put_bytes(&mut out, &id.0);
                }
                put_key_int(&mut out, "port", p.addr.port().into());
                out.push(b'e');
            }
            out.push(b'e');
        }
        if let Some(w) = &self.warning {
            put_bytes(&mut out, b"warning message");
            put_bytes(&mut out, w.as_bytes());
        }
        out.push(b'e');
        out
    }
}

/// Encode a `failure reason` reply.
pub fn encode_failure(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 24);
    out.push(b'd');
    put_bytes(&mut out, b"failure reason");
    put_bytes(&mut out, reason.as_bytes());
    out.push(b'e');
    out
}

/// Seconds as the wire carries them: whole, and at least 1 so a client never spins.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

fn put_key_int(out: &mut Vec<u8>, key: &str, value: u64) {
    put_bytes(out, key.as_bytes());
    out.push(b'i');
    out.extend_from_slice(value.to_string().as_bytes());
    out.push(b'e');
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Decode a tracker's announce reply. A `failure reason` becomes
/// [`ResponseError::Failure`]. Bytes after the top-level dict are ignored.
pub fn decode_response(body: &[u8]) -> Result<AnnounceResponse, ResponseError> {
    let mut decoder = Decoder::new(body).with_max_depth(MAX_DEPTH);
    let Some(Object::Dict(mut dict)) = decoder.next_object()? else {
        return Err(ResponseError::NotADict);
    };
    let mut failure = None;
    let mut resp = AnnounceResponse {
        interval: DEFAULT_INTERVAL,
        min_interval: None,
        complete: None,
        incomplete: None,
        peers: Vec::new(),
        warning: None,
    };
    while let Some((key, value)) = dict.next_pair()? {
        match (key, value) {
            (b"failure reason", Object::Bytes(b)) => failure = Some(lossy(b)),
            (b"warning message", Object::Bytes(b)) => resp.warning = Some(lossy(b)),
            (b"interval", Object::Integer(n)) => {
                if let Some(secs) = non_negative(n) {
                    resp.interval = Duration::from_secs(secs);
                }
            }
            (b"min interval", Object::Integer(n)) => {
                resp.min_interval = non_negative(n).map(Duration::from_secs)
            }
            (b"complete", Object::Integer(n)) => resp.complete = non_negative(n).map(saturate),
            (b"incomplete", Object::Integer(n)) => resp.incomplete = non_negative(n).map(saturate),
            (b"peers", Object::Bytes(b)) => compact_peers::<COMPACT_V4_LEN>(b, &mut resp.peers),
            (b"peers6", Object::Bytes(b)) => compact_peers::<COMPACT_V6_LEN>(b, &mut resp.peers),
            (b"peers", Object::List(mut list)) => {
                while let Some(item) = list.next_object()? {
                    if let Object::Dict(mut entry) = item {
                        let (mut ip, mut port) = (None, None);
                        while let Some((k, v)) = entry.next_pair()? {
                            match (k, v) {
                                (b"ip", Object::Bytes(b)) => {
                                    ip = std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
                                }
                                (b"port", Object::Integer(n)) => port = n.parse::<u16>().ok(),
                                _ => {}
                            }
                        }
                        if let (Some(ip), Some(port)) = (ip, port) {
                            push_dialable(SocketAddr::new(ip, port), &mut resp.peers);
                        }
                    }
                }
            }
            // Unknown keys and wrong types: skipped (bendy consumes a dropped list or dict).
            _ => {}
        }
    }
    match failure {
        Some(reason) => Err(ResponseError::Failure(reason)),
        None => Ok(resp),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn non_negative(n: &str) -> Option<u64> {
    n.parse().ok()
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parse BEP 23 entries of `N` bytes (6: IPv4, 18: IPv6); a trailing partial entry is
/// ignored, as libtorrent does.
fn compact_peers<const N: usize>(bytes: &[u8], out: &mut Vec<SocketAddr>) {
    for entry in bytes.chunks_exact(N) {
        let (ip_bytes, port) = entry.split_at(N - 2);
        let Ok(port) = <[u8; 2]>::try_from(port) else {
            continue;
        };
        let port = u16::from_be_bytes(port);
        let ip = if let Ok(v4) = <[u8; 4]>::try_from(ip_bytes) {
            IpAddr::V4(Ipv4Addr::from(v4))
        } else if let Ok(v6) = <[u8; 16]>::try_from(ip_bytes) {
            IpAddr::V6(Ipv6Addr::from(v6))
        } else {
            continue;
        };
        push_dialable(SocketAddr::new(ip, port), out);
    }
}

fn push_dialable(addr: SocketAddr, out: &mut Vec<SocketAddr>) {
    if addr.port() != 0 && !addr.ip().is_unspecified() {
        out.push(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(peers: &[(&str, Option<PeerId>)]) -> AnnounceReply {
        AnnounceReply {
            interval: Duration::from_secs(60),
            min_interval: Some(Duration::from_secs(30)),
            complete: 3,
            incomplete: 4,
            peers: peers
                .iter()
                .map(|(a, id)| ReplyPeer {
                    addr: a.parse().unwrap(),
                    peer_id: *id,
                })
                .collect(),
            warning: Some("be nice".into()),
        }
    }

    fn addrs(r: &AnnounceReply) -> Vec<SocketAddr> {
        r.peers.iter().map(|p| p.addr).collect()
    }

    #[test]
    fn compact_round_trip_with_peers6() {
        let r = reply(&[
            ("10.0.0.1:6881", None),
            ("[fd00::2]:7000", None),
            ("192.168.1.9:1", None),
        ]);
        let bytes = r.encode(true);
        // BEP 23 layout, checked byte for byte.
        let expected_v4 = b"5:peers12:\x0a\x00\x00\x01\x1a\xe1\xc0\xa8\x01\x09\x00\x01";
        assert!(bytes.windows(expected_v4.len()).any(|w| w == expected_v4));
        assert!(bytes.windows(10).any(|w| w == b"6:peers618"));
        let resp = decode_response(&bytes).unwrap();
        assert_eq!(resp.interval, Duration::from_secs(60));
        assert_eq!(resp.min_interval, Some(Duration::from_secs(30)));
        assert_eq!((resp.complete, resp.incomplete), (Some(3), Some(4)));
        assert_eq!(resp.warning.as_deref(), Some("be nice"));
        let mut got = resp.peers.clone();
        let mut want = addrs(&r);
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn non_compact_round_trip() {
        let id = Some(PeerId(
            *b"-IW0001-\x00\xff\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a",
        ));
        let r = reply(&[("10.0.0.1:6881", id), ("[fd00::2]:7000", None)]);
        let bytes = r.encode(false);
        assert!(!bytes.windows(6).any(|w| w == b"peers6"));
        assert_eq!(decode_response(&bytes).unwrap().peers, addrs(&r));
    }

    #[test]
    fn empty_reply_has_empty_peers_string() {
        let bytes = reply(&[]).encode(true);
        assert!(bytes.windows(9).any(|w| w == b"5:peers0:"));
        assert!(decode_response(&bytes).unwrap().peers.is_empty());
    }

    #[test]
    fn failure_reason() {
        assert_eq!(
            decode_response(&encode_failure("unregistered torrent")),
            Err(ResponseError::Failure("unregistered torrent".into()))
        );
    }

    #[test]
    fn tolerant_decoding() {
        // Extra keys, a host name, port 0, a partial compact entry, trailing newline.
        let body = b"d8:completei-1e10:downloadedi5e8:intervali900e5:peersld2:ip9:tracker.x4:porti1eed2:ip8:10.0.0.24:porti0eed2:ip8:10.0.0.37:peer id3:abc4:porti80eee6:peers619:\
\xfd\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x1a\xe1\x0010:tracker id2:xye\n";
        let resp = decode_response(body).unwrap();
        assert_eq!(resp.interval, Duration::from_secs(900));
        assert_eq!(resp.complete, None);
        assert_eq!(
            resp.peers,
            vec![
                "10.0.0.3:80".parse().unwrap(),
                "[fd00::1]:6881".parse().unwrap()
            ]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode_response(b"li1ee"), Err(ResponseError::NotADict));
        assert_eq!(decode_response(b""), Err(ResponseError::NotADict));
        assert!(matches!(
            decode_response(b"d5:peers"),
            Err(ResponseError::Bencode(_))
        ));
        assert!(matches!(
            decode_response(b"<html>"),
            Err(ResponseError::Bencode(_))
        ));
        // Unsorted keys are not canonical bencode.
        assert!(decode_response(b"d8:intervali1e5:peers0:8:completei1ee").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_response(&bytes);
        }

        #[test]
        fn decode_never_panics_on_near_valid(cut in 0usize..200, flip in 0usize..200) {
            let mut bytes = reply(&[("10.0.0.1:6881", None), ("[fd00::2]:7000", None)]).encode(false);
            if let Some(b) = bytes.get_mut(flip) { *b ^= 0x5a; }
            bytes.truncate(cut);
            let _ = decode_response(&bytes);
        }
    }
}
