//! Agent-to-agent request authentication under the cluster secret.
//!
//! Every call one agent makes to another (`GET`/`POST /v1/distributions`,
//! `GET /v1/torrents/<info-hash>`) carries an [`AUTH_HEADER`]:
//!
//! ```text
//! x-imagewolf-auth: v1 t=<unix seconds> n=<32 hex nonce> b=<hex SHA-256 of the body> s=<hex MAC>
//! ```
//!
//! where the MAC is HMAC-SHA256, under a key derived from the cluster secret, of the
//! method, the path and query, `t`, `n` and `b`. The server checks it **from the head
//! alone**, before reading a byte of the body ([`RequestAuth::check_head`]): a client
//! without the secret cannot make the agent buffer anything. The body is then read and must
//! hash to `b` ([`BodyHash::matches`]).
//!
//! Replay protection: `t` must be within [`MAX_SKEW`] of the server's clock, and each nonce
//! is accepted once while its `t` is acceptable (nonces are remembered for twice the skew;
//! at most [`MAX_NONCES`] of them, past which requests are refused as busy rather than
//! remembered less). Agents need clocks within a minute of each other (NTP).
//!
//! What it does not give: confidentiality (answers travel in clear; a listing reveals image
//! names and info-hashes to whoever can sniff the node network) and authentication of the
//! answers (a receiver checks what it got by the signed distributions and by hashes).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The request header carrying the authentication.
pub const AUTH_HEADER: &str = "x-imagewolf-auth";
/// Largest clock difference between two agents tolerated.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Most nonces remembered at once (a few MiB); past it, new requests are refused as busy.
pub const MAX_NONCES: usize = 1 << 17;
/// Longest header value accepted (a valid one is about 190 bytes).
const MAX_HEADER_LEN: usize = 512;
/// Domain separation: the request key is derived from the cluster secret with this label,
/// so a request MAC can never stand for a distribution signature or the other way round.
const KEY_LABEL: &[u8] = b"imagewolf agent request authentication v1";

type HmacSha256 = hmac::Hmac<Sha256>;

/// The key agent requests are signed with, derived from the cluster secret. Cheap to clone.
#[derive(Clone)]
pub struct ClusterKey {
    key: Arc<[u8; 32]>,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// The request key of the cluster whose secret is `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("any key length");
        mac.update(KEY_LABEL);
        ClusterKey {
            key: Arc::new(mac.finalize().into_bytes().into()),
        }
    }

    /// The [`AUTH_HEADER`] value for a request of `method` to `path_and_query` with `body`,
    /// signed now with a fresh random nonce.
    pub fn sign_request(&self, method: &str, path_and_query: &str, body: &[u8]) -> String {
        let nonce = hex(&rand::random::<[u8; 16]>());
        let body_hash = hex(&Sha256::digest(body));
        let t = unix_now();
        let mac = self.mac(method, path_and_query, t, &nonce, &body_hash);
        format!("v1 t={t} n={nonce} b={body_hash} s={}", hex(&mac))
    }

    fn mac(&self, method: &str, path: &str, t: u64, nonce: &str, body_hash: &str) -> [u8; 32] {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key[..]).expect("32 bytes");
        for field in [method.as_bytes(), path.as_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&t.to_be_bytes());
        mac.update(nonce.as_bytes());
        mac.update(body_hash.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Why a request's authentication was refused. Every variant but [`AuthError::Busy`] is
/// answered 401; `Busy` is 503 (retry later).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No [`AUTH_HEADER`].
    #[error("missing {AUTH_HEADER} header (agent requests need the cluster secret)")]
    Missing,
    /// The header is not `v1 t=.. n=.. b=.. s=..`.
    #[error("malformed {AUTH_HEADER} header")]
    Malformed,
    /// `t` is further than [`MAX_SKEW`] from this agent's clock.
    #[error("request time {skew_secs} s off this agent's clock (at most {} s accepted; check NTP)", MAX_SKEW.as_secs())]
    Stale {
        /// Seconds between the request's time and this agent's clock.
        skew_secs: u64,
    },
    /// The MAC does not match: another secret, or a modified request.
    #[error("wrong request signature (is the cluster secret the same on every agent?)")]
    BadSignature,
    /// The nonce was seen before.
    #[error("replayed request")]
    Replayed,
    /// Too many nonces to remember.
    #[error("too many agent requests; retry shortly")]
    Busy,
    /// The body does not hash to what the header says.
    #[error("request body does not match its signature")]
    BodyMismatch,
}

/// The SHA-256 a request's body must have, as its authenticated header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyHash([u8; 32]);

impl BodyHash {
    /// True if `body` hashes to it.
    pub fn matches(&self, body: &[u8]) -> bool {
        let got: [u8; 32] = Sha256::digest(body).into();
        // Not secret, but no reason to leak where they differ either.
        got.iter()
            .zip(self.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The server side: checks requests' headers and remembers their nonces.
pub struct RequestAuth {
    key: ClusterKey,
    nonces: Mutex<Nonces>,
}

impl fmt::Debug for RequestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestAuth").finish_non_exhaustive()
    }
}

impl RequestAuth {
    /// Checks requests signed with `key`.
    pub fn new(key: ClusterKey) -> Self {
        RequestAuth {
            key,
            nonces: Mutex::new(Nonces::default()),
        }
    }

    /// Checks a request's head (its `method`, `path_and_query` and [`AUTH_HEADER`] value)
    /// at the current time. On success the nonce is spent and the returned hash is what the
    /// body must have.
    pub fn check_head(
        &self,
        method: &str,
        path_and_query: &str,
        header: Option<&[u8]>,
    ) -> Result<BodyHash, AuthError> {
        self.check_head_at(method, path_and_query, header, unix_now())
    }

    pub(crate) fn check_head_at(
        &self,
        method: &str,
        path_and_query: &str,
        header: Option<&[u8]>,
        now: u64,
    ) -> Result<BodyHash, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let parsed = Parsed::parse(header).ok_or(AuthError::Malformed)?;
        let skew_secs = now.abs_diff(parsed.t);
        if skew_secs > MAX_SKEW.as_secs() {
            return Err(AuthError::Stale { skew_secs });
        }
        let expected = self.key.mac(
            method,
            path_and_query,
            parsed.t,
            parsed.nonce,
            parsed.body_hash,
        );
        let given = decode_hex::<32>(parsed.mac).ok_or(AuthError::Malformed)?;
        if expected
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Err(AuthError::BadSignature);
        }
        let nonce = decode_hex::<16>(parsed.nonce).ok_or(AuthError::Malformed)?;
        self.nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spend(nonce, now)?;
        Ok(BodyHash(
            decode_hex::<32>(parsed.body_hash).ok_or(AuthError::Malformed)?,
        ))
    }
}

/// Nonces seen, with when they may be forgotten (insertion order is expiry order).
#[derive(Default)]
struct Nonces {
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<([u8; 16], u64)>,
}

impl Nonces {
    fn spend(&mut self, nonce: [u8; 16], now: u64) -> Result<(), AuthError> {
        while let Some(&(old, expires)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.contains_key(&nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(AuthError::Busy);
        }
        // A request dated t is accepted until now' = t + skew <= now + 2 skew.
        let expires = now + 2 * MAX_SKEW.as_secs();
        self.seen.insert(nonce, expires);
        self.order.push_back((nonce, expires));
        Ok(())
    }
}

struct Parsed<'a> {
    t: u64,
    nonce: &'a str,
    body_hash: &'a str,
    mac: &'a str,
}

impl<'a> Parsed<'a> {
    fn parse(header: &'a [u8]) -> Option<Self> {
        if header.len() > MAX_HEADER_LEN {
            return None;
        }
        let text = std::str::from_utf8(header).ok()?;
        let mut parts = text.split(' ');
        if parts.next()? != "v1" {
            return None;
        }
        let mut field = |name: &str| parts.next()?.strip_prefix(name);
        let t = field("t=")?;
        let nonce = field("n=")?;
        let body_hash = field("b=")?;
        let mac = field("s=")?;
        if parts.next().is_some() || t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Parsed {
            t: t.parse().ok()?,
            nonce,
            body_hash,
            mac,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes of lowercase hex.
fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2)?;
        if !pair
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (ClusterKey, RequestAuth) {
        let key = ClusterKey::new(b"cluster secret");
        (key.clone(), RequestAuth::new(key))
    }

    #[test]
    fn a_signed_request_passes_once_and_its_body_must_match() {
        let (key, auth) = server();
        let header = key.sign_request("POST", "/v1/distributions", b"{\"a\":1}");
        let hash = auth
            .check_head("POST", "/v1/distributions", Some(header.as_bytes()))
            .unwrap();
        assert!(hash.matches(b"{\"a\":1}"));
        assert!(!hash.matches(b"{\"a\":2}"));
        assert_eq!(
            auth.check_head("POST", "/v1/distributions", Some(header.as_bytes())),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn another_secret_method_or_path_is_refused() {
        let (_, auth) = server();
        let other = ClusterKey::new(b"another secret");
        let header = other.sign_request("GET", "/v1/distributions", b"");
        assert_eq!(
            auth.check_head("GET", "/v1/distributions", Some(header.as_bytes())),
            Err(AuthError::BadSignature)
        );
        let (key, auth) = server();
        let header = key.sign_request("GET", "/v1/distributions", b"");
        for (method, path) in [("POST", "/v1/distributions"), ("GET", "/v1/torrents/aa")] {
            assert_eq!(
                auth.check_head(method, path, Some(header.as_bytes())),
                Err(AuthError::BadSignature)
            );
        }
    }

    #[test]
    fn stale_missing_and_malformed_headers_are_refused() {
        let (key, auth) = server();
        let header = key.sign_request("GET", "/x", b"");
        let late = unix_now() + MAX_SKEW.as_secs() + 5;
        assert!(matches!(
            auth.check_head_at("GET", "/x", Some(header.as_bytes()), late),
            Err(AuthError::Stale { .. })
        ));
        assert_eq!(auth.check_head("GET", "/x", None), Err(AuthError::Missing));
        let valid = header.clone();
        for bad in [
            String::new(),
            "v2".to_owned() + &valid[2..],
            valid.replace(" s=", " x="),
            valid.clone() + " extra",
            valid.replace("t=", "t=-"),
            valid[..valid.len() - 2].to_owned(),
            format!("v1 t={} n= b= s=", unix_now()),
            "x".repeat(MAX_HEADER_LEN + 1),
        ] {
            assert!(
                matches!(
                    auth.check_head("GET", "/x", Some(bad.as_bytes())),
                    Err(AuthError::Malformed | AuthError::BadSignature)
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn nonces_are_forgotten_after_twice_the_skew_and_bounded() {
        let mut nonces = Nonces::default();
        nonces.spend([1; 16], 1000).unwrap();
        assert_eq!(nonces.spend([1; 16], 1001), Err(AuthError::Replayed));
        nonces
            .spend([2; 16], 1000 + 2 * MAX_SKEW.as_secs())
            .unwrap();
        assert_eq!(nonces.seen.len(), 1, "the first nonce expired");
        let mut full = Nonces::default();
        for i in 0..MAX_NONCES as u32 {
            let mut n = [0u8; 16];
            n[..4].copy_from_slice(&i.to_be_bytes());
            full.spend(n, 5).unwrap();
        }
        assert_eq!(full.spend([0xff; 16], 5), Err(AuthError::Busy));
        assert!(full.spend([0xff; 16], 5 + 2 * MAX_SKEW.as_secs()).is_ok());
    }
}
