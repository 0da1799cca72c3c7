//! The BEP 10 extension handshake dictionary.

use std::collections::BTreeMap;

use bendy::decoding::{Decoder, Object};
use bendy::encoding::Encoder;
use bytes::Bytes;

use super::WireError;

/// The extension message id of the extension handshake itself.
pub const EXTENDED_HANDSHAKE_ID: u8 = 0;

/// The largest extension handshake payload [`ExtensionHandshake::decode`] parses (64 KiB).
/// Real ones are a few hundred bytes; the cap bounds the work a peer can make us do.
pub const MAX_EXTENSION_HANDSHAKE_LEN: usize = 64 * 1024;

/// Nesting allowed in the payload: the handshake itself is two levels deep (`m`); unknown
/// keys may carry a little more, garbage nested deeper is refused.
const MAX_DEPTH: usize = 16;
/// `m` entries kept; further ones are ignored. There are only 255 usable ids anyway.
const MAX_EXTENSIONS: usize = 256;
/// Longest extension name kept in `m` (real ones are like `ut_metadata`).
const MAX_EXTENSION_NAME_LEN: usize = 64;
/// Longest client name kept from `v`.
const MAX_CLIENT_NAME_LEN: usize = 256;

/// The BEP 10 extension handshake: the bencoded dictionary carried by the Extended message
/// with id [`EXTENDED_HANDSHAKE_ID`].
///
/// Decoding is tolerant: unknown keys are ignored, and so is a known key whose value has
/// the wrong type or is out of range (as if it were absent). It is strict about bencode
/// itself (bendy refuses unsorted or duplicate keys, which every mainstream client writes
/// correctly) and about size ([`MAX_EXTENSION_HANDSHAKE_LEN`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtensionHandshake {
    /// Extension name to the message id the sender wants to receive it under. Id 0 means
    /// the sender disables that extension (see [`ExtensionHandshake::extension_id`]).
    pub m: BTreeMap<String, u8>,
    /// Client name and version, e.g. `ImageWolf 0.1.0`.
    pub v: Option<String>,
    /// The sender's listen port.
    pub p: Option<u16>,
    /// How many outstanding requests the sender queues; libtorrent caps our request queue
    /// at this, so we advertise a large one.
    pub reqq: Option<u32>,
    /// Our address as the sender sees it: 4 (IPv4) or 16 (IPv6) bytes. Other lengths are
    /// dropped when decoding and must not be set when encoding.
    pub yourip: Option<Vec<u8>>,
    /// BEP 9: the size of the sender's info dict, when it has one to serve.
    pub metadata_size: Option<u64>,
}

fn parse_int<T: TryFrom<i64>>(obj: &Object<'_, '_>) -> Option<T> {
    match obj {
        Object::Integer(s) => s.parse::<i64>().ok().and_then(|n| T::try_from(n).ok()),
        _ => None,
    }
}

/// `v` as a string of at most [`MAX_CLIENT_NAME_LEN`] bytes. Truncated after the lossy
/// conversion (which can grow it), so decoding what we re-encode gives the same string.
fn client_name(raw: &[u8]) -> String {
    let raw = raw.get(..MAX_CLIENT_NAME_LEN).unwrap_or(raw);
    let mut name = String::from_utf8_lossy(raw).into_owned();
    let mut end = name.len().min(MAX_CLIENT_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

impl ExtensionHandshake {
    /// The id under which the sender wants to receive extension `name`, if it supports it
    /// (an id of 0 means disabled).
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        self.m.get(name).copied().filter(|&id| id != 0)
    }

    /// The bencoded dictionary, keys sorted as bencode requires.
    pub fn encode(&self) -> Bytes {
        let mut encoder = Encoder::new();
        let result = encoder.emit_with(|e| {
            e.emit_dict(|mut d| {
                d.emit_pair(b"m", &self.m)?;
                if let Some(size) = self.metadata_size {
                    d.emit_pair(b"metadata_size", size)?;
                }
                if let Some(p) = self.p {
                    d.emit_pair(b"p", p)?;
                }
                if let Some(reqq) = self.reqq {
                    d.emit_pair(b"reqq", reqq)?;
                }
                if let Some(v) = &self.v {
                    d.emit_pair(b"v", v)?;
                }
                if let Some(ip) = &self.yourip {
                    d.emit_pair_with(b"yourip", |e| e.emit_bytes(ip))?;
                }
                Ok(())
            })
        });
        // Keys are emitted in sorted order (and `m` is a BTreeMap), two levels deep: bendy
        // has nothing to refuse.
        let out = result
            .and_then(|()| encoder.get_output())
            .expect("extension handshake encoding cannot fail");
        Bytes::from(out)
    }

    /// Parses an extension handshake payload (the bytes after the extension id).
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        if payload.len() > MAX_EXTENSION_HANDSHAKE_LEN {
            return Err(WireError::BadExtensionHandshake(format!(
                "{} bytes, limit {MAX_EXTENSION_HANDSHAKE_LEN}",
                payload.len()
            )));
        }
        let bad = |e: bendy::decoding::Error| WireError::BadExtensionHandshake(e.to_string());
        let mut decoder = Decoder::new(payload).with_max_depth(MAX_DEPTH);
        let mut dict = match decoder.next_object().map_err(bad)? {
            Some(Object::Dict(dict)) => dict,
            Some(_) => {
                return Err(WireError::BadExtensionHandshake(
                    "not a dictionary".to_owned(),
                ))
            }
            None => return Err(WireError::BadExtensionHandshake("empty".to_owned())),
        };
        let mut hs = Self::default();
        // Values we skip are consumed (and checked) when dropped; a structure error in
        // them resurfaces from the next `next_pair` call.
        while let Some((key, value)) = dict.next_pair().map_err(bad)? {
            match key {
                b"m" => {
                    if let Object::Dict(mut m) = value {
                        while let Some((name, id)) = m.next_pair().map_err(bad)? {
                            if hs.m.len() >= MAX_EXTENSIONS || name.len() > MAX_EXTENSION_NAME_LEN {
                                continue;
                            }
                            if let (Ok(name), Some(id)) =
                                (std::str::from_utf8(name), parse_int::<u8>(&id))
                            {
                                hs.m.insert(name.to_owned(), id);
                            }
                        }
                    }
                }
                b"v" => {
                    if let Object::Bytes(v) = value {
                        hs.v = Some(client_name(v));
                    }
                }
                b"p" => hs.p = parse_int::<u16>(&value).filter(|&p| p != 0),
                b"reqq" => hs.reqq = parse_int::<u32>(&value),
                b"metadata_size" => hs.metadata_size = parse_int::<u64>(&value),
                b"yourip" => {
                    hs.yourip = match value {
                        Object::Bytes(ip) if ip.len() == 4 || ip.len() == 16 => Some(ip.to_vec()),
                        _ => None,
                    }
                }
                _ => {}
            }
        }
        Ok(hs)
    }
}
