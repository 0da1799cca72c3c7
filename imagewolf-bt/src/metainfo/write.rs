//! Writing: a canonical `info` dict through bendy's encoder, and the root dict around the
//! original `info` bytes.
//!
//! The root dict is assembled by hand because bendy's encoder has no way to splice in
//! pre-encoded bytes, and the `info` bytes (and unmodelled root values) must go out verbatim.
//! Keys are merged in byte order, so the output is canonical bencode that bendy (and our
//! parser) accepts back.

use std::borrow::Cow;

use bendy::encoding::Encoder;

use super::{FileLayout, Info, Metainfo, MetainfoError};

/// Appends a bencoded byte string.
pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Appends a bencoded integer given by its (already canonical) decimal text.
pub(super) fn put_int_str(out: &mut Vec<u8>, digits: &str) {
    out.push(b'i');
    out.extend_from_slice(digits.as_bytes());
    out.push(b'e');
}

fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Cow<'static, [u8]> {
    let mut out = Vec::new();
    f(&mut out);
    Cow::Owned(out)
}

/// The canonical encoding of `info`: sorted keys, `private` only when set, `attr` only on pad
/// files. Only [`Metainfo::from_info`] uses it; parsed torrents keep their own bytes.
pub(super) fn encode_info(info: &Info) -> Result<Vec<u8>, MetainfoError> {
    let mut encoder = Encoder::new();
    encoder
        .emit_dict(|mut dict| {
            // Key order: files < length < name < piece length < pieces < private.
            match &info.files {
                FileLayout::Multi { files } => dict.emit_pair_with(b"files", |e| {
                    e.emit_list(|list| {
                        for file in files {
                            list.emit_dict(|mut fd| {
                                if file.padding {
                                    fd.emit_pair(b"attr", "p")?;
                                }
                                fd.emit_pair(b"length", file.length)?;
                                fd.emit_pair(b"path", &file.path)
                            })?;
                        }
                        Ok(())
                    })
                })?,
                FileLayout::Single { length } => dict.emit_pair(b"length", *length)?,
            }
            dict.emit_pair(b"name", &info.name)?;
            dict.emit_pair(b"piece length", info.piece_length)?;
            dict.emit_pair_with(b"pieces", |e| e.emit_bytes(info.pieces.as_flattened()))?;
            if info.private {
                dict.emit_pair(b"private", 1u8)?;
            }
            Ok(())
        })
        .and_then(|()| encoder.get_output())
        // Only reachable through a bug in the code above (unsorted keys, unclosed dict).
        .map_err(|e| MetainfoError::Bencode(format!("encoding info: {e}")))
}

pub(super) fn write_metainfo(m: &Metainfo) -> Vec<u8> {
    let mut pairs: Vec<(&[u8], Cow<'_, [u8]>)> = Vec::with_capacity(6 + m.extra.len());
    if let Some(announce) = &m.announce {
        pairs.push((b"announce", encoded(|o| put_bytes(o, announce.as_bytes()))));
    }
    if !m.announce_list.is_empty() {
        let list = encoded(|o| {
            o.push(b'l');
            for tier in &m.announce_list {
                o.push(b'l');
                for url in tier {
                    put_bytes(o, url.as_bytes());
                }
                o.push(b'e');
            }
            o.push(b'e');
        });
        pairs.push((b"announce-list", list));
    }
    if let Some(comment) = &m.comment {
        pairs.push((b"comment", encoded(|o| put_bytes(o, comment.as_bytes()))));
    }
    if let Some(created_by) = &m.created_by {
        pairs.push((
            b"created by",
            encoded(|o| put_bytes(o, created_by.as_bytes())),
        ));
    }
    if let Some(date) = m.creation_date {
        pairs.push((
            b"creation date",
            encoded(|o| put_int_str(o, &date.to_string())),
        ));
    }
    pairs.push((b"info", Cow::Borrowed(&m.info_bytes)));
    let modelled = pairs.len();
    for (key, value) in &m.extra {
        // A malformed modelled key is kept as extra; if the field has since been set, the
        // field wins (a duplicate key would make the output unparseable). Extras are unique
        // among themselves (bendy rejects duplicate keys), so only the modelled keys need
        // checking, which keeps this linear.
        if !pairs[..modelled].iter().any(|(k, _)| *k == &key[..]) {
            pairs.push((key, Cow::Borrowed(value)));
        }
    }
    // Keys are now unique, so any sort gives the one canonical order.
    pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));

    let len = pairs
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'd');
    for (key, value) in pairs {
        put_bytes(&mut out, key);
        out.extend_from_slice(&value);
    }
    out.push(b'e');
    out
}
