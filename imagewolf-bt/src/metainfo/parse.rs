//! Parsing (streaming over bendy's decoder, so nothing is decoded twice) and the validation
//! shared by parsed and built torrents.

use std::collections::HashMap;
use std::str::FromStr;

use bendy::decoding::{Decoder, DictDecoder, Object};
use bytes::Bytes;

use super::write::{put_bytes, put_int_str};
use super::{
    FileEntry, FileLayout, Info, Metainfo, MetainfoError, MAX_COMPONENT_LEN, MAX_DEPTH,
    MAX_EXTRA_ROOT_KEYS, MAX_FILES, MAX_METAINFO_LEN, MAX_PATH_COMPONENTS,
    MAX_TOTAL_PATH_COMPONENTS, MAX_TRACKERS,
};
use crate::Lengths;

type BResult<T> = Result<T, bendy::decoding::Error>;

/// bendy's errors stay out of our public API: keep the message, drop the type.
fn bencode(e: bendy::decoding::Error) -> MetainfoError {
    MetainfoError::Bencode(e.to_string())
}

/// A value quoted in an error message, cut short: a hostile file may hold megabytes of digits.
fn quote(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        s.chars().take(MAX).chain("...".chars()).collect()
    }
}

pub(super) fn parse_metainfo(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
    if bytes.len() > MAX_METAINFO_LEN {
        return Err(MetainfoError::TooLarge {
            len: bytes.len(),
            max: MAX_METAINFO_LEN,
        });
    }
    let mut decoder = Decoder::new(bytes).with_max_depth(MAX_DEPTH);
    let root = match decoder.next_object().map_err(bencode)? {
        Some(Object::Dict(d)) => d,
        Some(_) => {
            return Err(MetainfoError::WrongType {
                key: "<root>".into(),
                expected: "a dictionary",
            })
        }
        None => return Err(MetainfoError::Bencode("input is empty".into())),
    };
    let metainfo = parse_root(root)?;
    // Anything after the root, even more valid bencode, means this is not a `.torrent`.
    let at_end = matches!(decoder.next_object(), Ok(None));
    if at_end {
        Ok(metainfo)
    } else {
        Err(MetainfoError::TrailingData)
    }
}

/// The root dict: strict about `info`, lax (keep verbatim, ignore) about everything else.
fn parse_root(mut root: DictDecoder<'_, '_>) -> Result<Metainfo, MetainfoError> {
    let mut info = None;
    let mut announce = None;
    let mut announce_list = Vec::new();
    let mut comment = None;
    let mut created_by = None;
    let mut creation_date = None;
    let mut extra = Vec::new();

    while let Some((key, value)) = root.next_pair().map_err(bencode)? {
        // `Err(raw)` = keep the pair as an unmodelled key.
        let unmodelled: Result<(), Bytes> = match key {
            b"info" => {
                let Object::Dict(dict) = value else {
                    return Err(MetainfoError::WrongType {
                        key: "info".into(),
                        expected: "a dictionary",
                    });
                };
                info = Some(parse_info(dict)?);
                Ok(())
            }
            b"announce" => text_or_raw(value)
                .map_err(bencode)?
                .map(|s| announce = Some(s)),
            b"comment" => text_or_raw(value)
                .map_err(bencode)?
                .map(|s| comment = Some(s)),
            b"created by" => text_or_raw(value)
                .map_err(bencode)?
                .map(|s| created_by = Some(s)),
            b"creation date" => match value {
                Object::Integer(s) => match s.parse::<i64>() {
                    Ok(n) => {
                        creation_date = Some(n);
                        Ok(())
                    }
                    Err(_) => Err(raw_int(s)),
                },
                other => Err(raw_value(other).map_err(bencode)?),
            },
            b"announce-list" => announce_list_or_raw(value)
                .map_err(bencode)?
                .map(|tiers| announce_list = tiers),
            _ => Err(raw_value(value).map_err(bencode)?),
        };
        // Beyond the cap, unknown keys are dropped: each kept pair costs two allocations,
        // and a file of millions of tiny keys must not cost gigabytes.
        if let (Err(raw), true) = (unmodelled, extra.len() < MAX_EXTRA_ROOT_KEYS) {
            extra.push((Bytes::copy_from_slice(key), raw));
        }
    }

    let (info, info_raw) = info.ok_or_else(|| MetainfoError::MissingKey("info".into()))?;
    let lengths = validate_info(&info)?;
    let mut m = Metainfo::assemble(info, Bytes::copy_from_slice(info_raw), lengths);
    m.announce = announce;
    m.announce_list = announce_list;
    m.comment = comment;
    m.created_by = created_by;
    m.creation_date = creation_date;
    m.extra = extra;
    Ok(m)
}

/// The bencoding of any value, exactly as in the input (bendy only accepts canonical bencode,
/// so re-encoding a string or integer reproduces the input bytes).
fn raw_value(value: Object<'_, '_>) -> BResult<Bytes> {
    Ok(match value {
        Object::Bytes(b) => {
            let mut out = Vec::with_capacity(b.len() + 12);
            put_bytes(&mut out, b);
            out.into()
        }
        Object::Integer(s) => raw_int(s),
        Object::List(l) => Bytes::copy_from_slice(l.into_raw()?),
        Object::Dict(d) => Bytes::copy_from_slice(d.into_raw()?),
    })
}

fn raw_int(s: &str) -> Bytes {
    let mut out = Vec::with_capacity(s.len() + 2);
    put_int_str(&mut out, s);
    out.into()
}

/// A UTF-8 string, or the raw value when it is anything else.
fn text_or_raw(value: Object<'_, '_>) -> BResult<Result<String, Bytes>> {
    match value {
        Object::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Ok(Ok(s.to_owned())),
            Err(_) => raw_value(value).map(Err),
        },
        other => raw_value(other).map(Err),
    }
}

/// BEP 12 tiers, or the raw value if any part is not a list of lists of UTF-8 strings.
fn announce_list_or_raw(value: Object<'_, '_>) -> BResult<Result<Vec<Vec<String>>, Bytes>> {
    let Object::List(mut list) = value else {
        return raw_value(value).map(Err);
    };
    let mut tiers = Vec::new();
    let mut well_formed = true;
    let mut count = 0;
    while let Some(tier) = list.next_object()? {
        let Object::List(mut tier) = tier else {
            well_formed = false;
            continue;
        };
        if !well_formed {
            continue; // the raw value will be kept; stop building strings
        }
        let mut urls = Vec::new();
        while let Some(url) = tier.next_object()? {
            match url {
                // Too many URLs: keep the value raw (one buffer) rather than as millions
                // of tiny strings.
                _ if count == MAX_TRACKERS => well_formed = false,
                Object::Bytes(b) => match std::str::from_utf8(b) {
                    Ok(s) => {
                        urls.push(s.to_owned());
                        count += 1;
                    }
                    Err(_) => well_formed = false,
                },
                _ => well_formed = false,
            }
        }
        if !urls.is_empty() {
            tiers.push(urls);
        }
    }
    if well_formed {
        Ok(Ok(tiers))
    } else {
        // `into_raw` spans the whole list from its start, however far we iterated.
        Ok(Err(Bytes::copy_from_slice(list.into_raw()?)))
    }
}

fn wrong_type(key: impl Into<String>, expected: &'static str) -> MetainfoError {
    MetainfoError::WrongType {
        key: key.into(),
        expected,
    }
}

fn int<T: FromStr>(
    value: Object<'_, '_>,
    key: impl FnOnce() -> String,
) -> Result<T, MetainfoError> {
    match value {
        Object::Integer(s) => s.parse().map_err(|_| MetainfoError::OutOfRange {
            key: key(),
            value: quote(s),
        }),
        _ => Err(wrong_type(key(), "an integer")),
    }
}

fn byte_string<'ser>(
    value: Object<'_, 'ser>,
    key: impl FnOnce() -> String,
) -> Result<&'ser [u8], MetainfoError> {
    match value {
        Object::Bytes(b) => Ok(b),
        _ => Err(wrong_type(key(), "a byte string")),
    }
}

/// A list of byte strings (a file path), at most [`MAX_PATH_COMPONENTS`] long.
fn path_list<'ser>(
    value: Object<'_, 'ser>,
    key: impl Fn() -> String,
) -> Result<Vec<&'ser [u8]>, MetainfoError> {
    let Object::List(mut list) = value else {
        return Err(wrong_type(key(), "a list of strings"));
    };
    let mut parts = Vec::new();
    while let Some(part) = list.next_object().map_err(bencode)? {
        if parts.len() == MAX_PATH_COMPONENTS {
            return Err(MetainfoError::TooMany {
                key: key(),
                max: MAX_PATH_COMPONENTS,
            });
        }
        parts.push(byte_string(part, &key)?);
    }
    Ok(parts)
}

/// Text of a name or path that some creators write twice: a plain key (historically in the
/// creator's local code page) and a `.utf-8` variant. Like libtorrent, prefer the variant when
/// it is valid UTF-8, so both clients put the files at the same paths.
fn prefer_utf8<T>(
    plain: Option<T>,
    variant: Option<T>,
    decode: impl Fn(T) -> Option<String>,
) -> Option<Result<String, ()>> {
    let plain = plain?;
    Some(
        variant
            .and_then(&decode)
            .or_else(|| decode(plain))
            .ok_or(()),
    )
}

fn utf8(b: &[u8]) -> Option<String> {
    std::str::from_utf8(b).ok().map(str::to_owned)
}

fn parse_info<'ser>(mut dict: DictDecoder<'_, 'ser>) -> Result<(Info, &'ser [u8]), MetainfoError> {
    let mut name = None;
    let mut name_utf8 = None;
    let mut piece_length = None;
    let mut pieces = None;
    let mut length = None;
    let mut files = None;
    let mut private = false;

    while let Some((key, value)) = dict.next_pair().map_err(bencode)? {
        match key {
            b"name" => name = Some(byte_string(value, || "info.name".into())?),
            b"name.utf-8" => name_utf8 = Some(byte_string(value, || "info.name.utf-8".into())?),
            b"piece length" => piece_length = Some(int(value, || "info.piece length".into())?),
            b"pieces" => pieces = Some(parse_pieces(value)?),
            b"length" => length = Some(int(value, || "info.length".into())?),
            b"files" => files = Some(parse_files(value)?),
            b"private" => private = int::<i64>(value, || "info.private".into())? != 0,
            // Unknown keys (BEP 52 `file tree`, `meta version`, `source`, ...) live on in the
            // raw bytes; dropping the value consumes it.
            _ => {}
        }
    }
    // Every pair was read, so this is exactly the dict's bytes, `d` to `e`.
    let raw = dict.into_raw().map_err(bencode)?;

    let name = match prefer_utf8(name, name_utf8, utf8) {
        None => return Err(MetainfoError::MissingKey("info.name".into())),
        Some(Err(())) => {
            return Err(MetainfoError::NotUtf8 {
                key: "info.name".into(),
            })
        }
        Some(Ok(name)) => name,
    };
    let files = match (length, files) {
        (Some(_), Some(_)) => return Err(MetainfoError::AmbiguousLayout),
        (Some(length), None) => FileLayout::Single { length },
        (None, Some(files)) => FileLayout::Multi { files },
        (None, None) => {
            return Err(MetainfoError::MissingKey(
                "info.length (single file) or info.files (multi-file)".into(),
            ))
        }
    };
    let info = Info {
        name,
        piece_length: piece_length
            .ok_or_else(|| MetainfoError::MissingKey("info.piece length".into()))?,
        pieces: pieces.ok_or_else(|| MetainfoError::MissingKey("info.pieces".into()))?,
        files,
        private,
    };
    Ok((info, raw))
}

fn parse_pieces(value: Object<'_, '_>) -> Result<Vec<[u8; 20]>, MetainfoError> {
    let bytes = byte_string(value, || "info.pieces".into())?;
    if bytes.len() % 20 != 0 {
        return Err(MetainfoError::PiecesNotMultipleOf20(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(20)
        .map(|chunk| {
            let mut hash = [0u8; 20];
            hash.copy_from_slice(chunk);
            hash
        })
        .collect())
}

fn parse_files(value: Object<'_, '_>) -> Result<Vec<FileEntry>, MetainfoError> {
    let Object::List(mut list) = value else {
        return Err(wrong_type("info.files", "a list of dictionaries"));
    };
    let mut files = Vec::new();
    let mut components = 0usize;
    while let Some(entry) = list.next_object().map_err(bencode)? {
        let index = files.len();
        if index == MAX_FILES {
            return Err(MetainfoError::TooMany {
                key: "info.files".into(),
                max: MAX_FILES,
            });
        }
        let Object::Dict(entry) = entry else {
            return Err(wrong_type(format!("info.files[{index}]"), "a dictionary"));
        };
        let file = parse_file(entry, index)?;
        components += file.path.len();
        if components > MAX_TOTAL_PATH_COMPONENTS {
            return Err(too_many_components());
        }
        files.push(file);
    }
    Ok(files)
}

fn too_many_components() -> MetainfoError {
    MetainfoError::TooMany {
        key: "info.files[*].path (components in total)".into(),
        max: MAX_TOTAL_PATH_COMPONENTS,
    }
}

fn parse_file(mut dict: DictDecoder<'_, '_>, index: usize) -> Result<FileEntry, MetainfoError> {
    let key = |field: &str| format!("info.files[{index}].{field}");
    let mut length = None;
    let mut path = None;
    let mut path_utf8 = None;
    let mut padding = false;
    while let Some((k, value)) = dict.next_pair().map_err(bencode)? {
        match k {
            b"length" => length = Some(int(value, || key("length"))?),
            b"path" => path = Some(path_list(value, || key("path"))?),
            b"path.utf-8" => path_utf8 = Some(path_list(value, || key("path.utf-8"))?),
            b"attr" => padding = byte_string(value, || key("attr"))?.contains(&b'p'),
            _ => {}
        }
    }
    let decode = |parts: &Vec<&[u8]>| parts.iter().map(|p| utf8(p)).collect::<Option<Vec<_>>>();
    let path = match (path.as_ref(), path_utf8.as_ref()) {
        (None, _) => return Err(MetainfoError::MissingKey(key("path"))),
        (Some(plain), variant) => variant
            .and_then(decode)
            .or_else(|| decode(plain))
            .ok_or_else(|| MetainfoError::NotUtf8 { key: key("path") })?,
    };
    Ok(FileEntry {
        path,
        length: length.ok_or_else(|| MetainfoError::MissingKey(key("length")))?,
        padding,
    })
}

/// Checks one path component (or the torrent name): joined below the download directory it
/// must name an entry directly inside it, never the directory itself, its parent or the root.
pub(super) fn check_component(
    component: &str,
    key: impl FnOnce() -> String,
) -> Result<(), MetainfoError> {
    let reason = if component.is_empty() {
        "empty"
    } else if component == "." || component == ".." {
        "refers to a directory itself or its parent"
    } else if component.contains(['/', '\\']) {
        "contains a path separator"
    } else if component.contains('\0') {
        "contains a NUL byte"
    } else if component.len() > MAX_COMPONENT_LEN {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(MetainfoError::BadPath {
        key: key(),
        component: quote(component),
        reason,
    })
}

/// What a path prefix names while checking for collisions.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File,
}

/// Validates an [`Info`] (parsed or about to be encoded) and returns its geometry. See the
/// module docs for the rules.
pub(super) fn validate_info(info: &Info) -> Result<Lengths, MetainfoError> {
    check_component(&info.name, || "info.name".into())?;
    let total = match &info.files {
        FileLayout::Single { length } => *length,
        FileLayout::Multi { files } => validate_files(files)?,
    };
    let lengths = Lengths::new(total, info.piece_length)?;
    if info.pieces.len() != lengths.num_pieces() as usize {
        return Err(MetainfoError::PieceCountMismatch {
            expected: lengths.num_pieces(),
            actual: info.pieces.len(),
        });
    }
    Ok(lengths)
}

/// Checks every file path and returns the total length.
fn validate_files(files: &[FileEntry]) -> Result<u64, MetainfoError> {
    if files.is_empty() {
        return Err(MetainfoError::NoFiles);
    }
    if files.len() > MAX_FILES {
        return Err(MetainfoError::TooMany {
            key: "info.files".into(),
            max: MAX_FILES,
        });
    }
    // A trie keyed by (parent node, component): one lookup per component, so the check is
    // linear in the total path length however deep a hostile file nests.
    let components = files
        .iter()
        .map(|f| f.path.len())
        .fold(0usize, usize::saturating_add);
    if components > MAX_TOTAL_PATH_COMPONENTS {
        return Err(too_many_components());
    }
    let mut nodes: HashMap<(usize, &str), (usize, Node)> = HashMap::new();
    let mut total = 0u64;
    for (index, file) in files.iter().enumerate() {
        let key = || format!("info.files[{index}].path");
        if file.path.is_empty() {
            return Err(MetainfoError::BadPath {
                key: key(),
                component: String::new(),
                reason: "the path has no components",
            });
        }
        if file.path.len() > MAX_PATH_COMPONENTS {
            return Err(MetainfoError::TooMany {
                key: key(),
                max: MAX_PATH_COMPONENTS,
            });
        }
        for component in &file.path {
            check_component(component, key)?;
        }
        total = total
            .checked_add(file.length)
            .ok_or(MetainfoError::TotalLengthOverflow)?;
        // Pad files are never written, and libtorrent names them by size (`.pad/16384`), so
        // two of them may legitimately share a path.
        if !file.padding {
            claim_path(&mut nodes, &file.path)?;
        }
    }
    Ok(total)
}

/// Records `path` as a file in the trie; fails if it is already a file or a directory, or if
/// one of its parents is a file.
fn claim_path<'a>(
    nodes: &mut HashMap<(usize, &'a str), (usize, Node)>,
    path: &'a [String],
) -> Result<(), MetainfoError> {
    let conflict = || MetainfoError::PathConflict(quote(&path.join("/")));
    let mut parent = 0; // the torrent's directory
    for (depth, component) in path.iter().enumerate() {
        let is_last = depth + 1 == path.len();
        let want = if is_last { Node::File } else { Node::Dir };
        let next_id = nodes.len() + 1;
        let (id, kind) = *nodes
            .entry((parent, component.as_str()))
            .or_insert((next_id, want));
        if id != next_id && (is_last || kind == Node::File) {
            return Err(conflict());
        }
        parent = id;
    }
    Ok(())
}
