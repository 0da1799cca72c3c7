//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<info-hash>&dn=<name>&tr=<tracker>&x.pe=<peer>`.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::{Error, InfoHash};

/// Most trackers and peers taken from one link (the rest are ignored).
const MAX_ENTRIES: usize = 64;

/// A parsed magnet link: the info-hash, and where to look for peers.
///
/// ```
/// use imagewolf_bt::Magnet;
/// let link = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567\
///             &dn=image.tar&tr=http%3A%2F%2F10.0.0.1%3A6969%2Fannounce&x.pe=10.0.0.2:6881";
/// let magnet = Magnet::parse(link).unwrap();
/// assert_eq!(magnet.info_hash.to_hex(), "0123456789abcdef0123456789abcdef01234567");
/// assert_eq!(magnet.name.as_deref(), Some("image.tar"));
/// assert_eq!(magnet.trackers, ["http://10.0.0.1:6969/announce"]);
/// assert_eq!(magnet.peers, ["10.0.0.2:6881".parse().unwrap()]);
/// assert_eq!(Magnet::parse(&magnet.to_string()).unwrap(), magnet);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Magnet {
    /// The torrent's info-hash (`xt=urn:btih:`, 40 hex or 32 base32 characters).
    pub info_hash: InfoHash,
    /// The suggested name (`dn`), if any.
    pub name: Option<String>,
    /// Tracker URLs (`tr`).
    pub trackers: Vec<String>,
    /// Peers (`x.pe`, `host:port`; names are resolved when parsing).
    pub peers: Vec<SocketAddr>,
}

impl Magnet {
    /// A link for `info_hash` with peers to ask and no trackers.
    pub fn new(info_hash: InfoHash, peers: impl IntoIterator<Item = SocketAddr>) -> Self {
        Magnet {
            info_hash,
            name: None,
            trackers: Vec::new(),
            peers: peers.into_iter().collect(),
        }
    }

    /// Parses a magnet link. Unknown parameters are ignored; a link without a BitTorrent
    /// v1 info-hash is an error. `x.pe` host names are resolved here (blocking, as
    /// `std::net` resolution is); an entry that does not resolve is skipped.
    pub fn parse(link: &str) -> Result<Magnet, Error> {
        let bad = |what: &str| Error::Magnet(what.to_owned());
        let query = link
            .strip_prefix("magnet:?")
            .ok_or_else(|| bad("does not start with magnet:?"))?;
        let mut info_hash = None;
        let mut magnet = Magnet::new(InfoHash([0; 20]), []);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| bad("bad percent-encoding"))?;
            match key {
                "xt" => {
                    if let Some(hash) = value.strip_prefix("urn:btih:") {
                        info_hash = Some(parse_hash(hash).ok_or_else(|| bad("bad info-hash"))?);
                    }
                }
                "dn" => magnet.name = Some(value),
                "tr" if magnet.trackers.len() < MAX_ENTRIES => magnet.trackers.push(value),
                "x.pe" if magnet.peers.len() < MAX_ENTRIES => {
                    if let Ok(addrs) = value.to_socket_addrs() {
                        magnet.peers.extend(addrs.take(1));
                    }
                }
                _ => {}
            }
        }
        magnet.info_hash = info_hash.ok_or_else(|| bad("no xt=urn:btih: info-hash"))?;
        Ok(magnet)
    }
}

impl std::fmt::Display for Magnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "magnet:?xt=urn:btih:{}", self.info_hash.to_hex())?;
        if let Some(name) = &self.name {
            write!(f, "&dn={}", percent_encode(name))?;
        }
        for tracker in &self.trackers {
            write!(f, "&tr={}", percent_encode(tracker))?;
        }
        for peer in &self.peers {
            write!(f, "&x.pe={peer}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Magnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Magnet::parse(s)
    }
}

/// 40 hex digits or 32 base32 characters (RFC 4648, either case).
fn parse_hash(s: &str) -> Option<InfoHash> {
    let mut out = [0u8; 20];
    match s.len() {
        40 => {
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
        }
        32 => {
            let mut acc = 0u64;
            let mut bits = 0;
            let mut n = 0;
            for c in s.bytes() {
                let v = match c.to_ascii_uppercase() {
                    c @ b'A'..=b'Z' => c - b'A',
                    c @ b'2'..=b'7' => c - b'2' + 26,
                    _ => return None,
                };
                acc = (acc << 5) | u64::from(v);
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    *out.get_mut(n)? = (acc >> bits) as u8;
                    n += 1;
                }
            }
        }
        _ => return None,
    }
    Some(InfoHash(out))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_and_hex_give_the_same_hash() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        let base32 = "AERUKZ4JVPG66AJDIVTYTK6N54ASGRLH";
        let a = Magnet::parse(&format!("magnet:?xt=urn:btih:{hex}")).unwrap();
        let b = Magnet::parse(&format!("magnet:?xt=urn:btih:{base32}")).unwrap();
        assert_eq!(a.info_hash, b.info_hash);
        let lower = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", base32.to_lowercase()));
        assert_eq!(lower.unwrap().info_hash, a.info_hash);
    }

    #[test]
    fn bad_links_are_errors() {
        for link in [
            "http://x",
            "magnet:?dn=x",
            "magnet:?xt=urn:btih:0123",
            "magnet:?xt=urn:btih:zz23456789abcdef0123456789abcdef01234567",
            "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=%zz",
            "magnet:?xt=urn:btih:AERUKZ4JVPG66AJDIVTYTK6N54ASGRL1",
            "magnet:?xt=urn:btih:ééééééééééééééééééééé",
        ] {
            assert!(Magnet::parse(link).is_err(), "{link}");
        }
    }
}
