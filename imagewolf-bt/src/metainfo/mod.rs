//! `.torrent` metainfo (BEP 3, with BEP 12 announce lists and BEP 27 private flag): the model,
//! a bounded parser, a writer, piece hashing and a single-pass torrent builder.
//!
//! # The info-hash comes from the original bytes
//!
//! A torrent's identity is the SHA-1 of its bencoded `info` dictionary *exactly as it appears in
//! the file*. Files written by other tools carry keys we do not model (BEP 52 `file tree`,
//! `meta version`, `name.utf-8`, `md5sum`, ...), so re-encoding our [`Info`] would drop them and
//! give a different hash. [`Metainfo`] therefore keeps the raw `info` bytes it was parsed from,
//! hashes exactly those, and [`Metainfo::to_bytes`] writes them back verbatim. Only
//! [`Metainfo::from_info`] (a torrent we create) encodes an `info` dict itself, canonically.
//!
//! # How strict the parser is
//!
//! * **Bencode syntax is strict** (bendy's decoder): dictionary keys must be sorted and unique,
//!   integers canonical (no leading zeros, no `-0`), no trailing bytes after the root dict.
//!   bendy cannot be told to accept unsorted keys, and we do not want to: BEP 3 requires sorted
//!   keys, every mainstream creator (libtorrent, Transmission, mktorrent, rqbit) writes them
//!   sorted, and a dict with *duplicate* keys is ambiguous (two clients could see two different
//!   file lists under one info-hash). The torrents ImageWolf moves are made by its own builder.
//! * **The `info` dict is strict**: it decides which bytes we download and which files we write,
//!   so a missing key, a wrong type, an out-of-range number, a non-UTF-8 name or a dangerous path
//!   component is an error naming the key. Unknown keys are tolerated (and kept, via the raw bytes).
//! * **Everything outside `info` is lax**: announce URLs, comment, creator and date are
//!   informational. A value of the wrong type or encoding there is kept verbatim as an
//!   unmodelled key (so [`Metainfo::to_bytes`] does not lose it) and otherwise ignored, as
//!   libtorrent does. Unknown root keys (`url-list`, `nodes`, BEP 52 `piece layers`) are kept too.
//!
//! # Bounds (a hostile `.torrent` must not exhaust memory or escape the download dir)
//!
//! * Input at most [`MAX_METAINFO_LEN`] bytes, nesting at most [`MAX_DEPTH`] (bendy's depth limit;
//!   it also bounds the recursion in bendy's drop handlers), at most [`MAX_FILES`] files with at
//!   most [`MAX_PATH_COMPONENTS`] components each ([`MAX_TOTAL_PATH_COMPONENTS`] in all), at most [`MAX_TRACKERS`] tracker URLs and
//!   [`MAX_EXTRA_ROOT_KEYS`] unmodelled root keys, so memory stays a small multiple of the input.
//! * Every path component (and the torrent name, which becomes the top-level file or directory)
//!   is non-empty, not `.` or `..`, at most [`MAX_COMPONENT_LEN`] bytes, and holds no `/`, `\` or
//!   NUL, so joining it below the download dir can never leave it. Two files may not share a
//!   path, and no file may sit where another file needs a directory.
//! * Piece length is 1..=[`MAX_PIECE_LEN`](crate::MAX_PIECE_LEN), the total length is non-zero
//!   and fits `u64`, and `pieces` holds exactly one 20-byte hash per piece. A parsed or built
//!   [`Metainfo`] upholds all of this, which is why its [`Info`] is read-only.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{InfoHash, Lengths, LengthsError, PieceIndex};

mod builder;
mod create;
mod hasher;
mod parse;
mod write;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_build;
#[cfg(test)]
mod tests_libtorrent;

pub use builder::TorrentBuilder;
pub use hasher::{
    piece_length_for, sha1, verify_piece, PieceHasher, MAX_AUTO_PIECE_LEN, MIN_AUTO_PIECE_LEN,
};

/// The largest `.torrent` file [`Metainfo::from_bytes`] accepts: 16 MiB. That is ~800 000
/// piece hashes, enough for 200 GiB at 256 KiB pieces or 12 TiB at 16 MiB pieces.
pub const MAX_METAINFO_LEN: usize = 16 * 1024 * 1024;

/// The deepest bencode nesting accepted (libtorrent's limit too). v1 torrents need 5 levels;
/// BEP 52 `file tree` dicts (kept as unknown keys) nest one level per path component.
pub const MAX_DEPTH: usize = 100;

/// The most files a multi-file torrent may list.
pub const MAX_FILES: usize = 100_000;

/// The most components one file path may have (below the torrent's name directory).
pub const MAX_PATH_COMPONENTS: usize = 128;

/// The most path components of all files together. Parsed paths cost ~50 bytes per component
/// (a `String` each) plus ~40 for the collision check, so this caps a hostile file list at
/// tens of MiB however the 16 MiB of input are spent; real torrents come nowhere near it.
pub const MAX_TOTAL_PATH_COMPONENTS: usize = 500_000;

/// The longest path component (and torrent name) in bytes: the `NAME_MAX` of common file systems.
pub const MAX_COMPONENT_LEN: usize = 255;

/// The most tracker URLs kept from an `announce-list`; a longer list is treated as malformed
/// (kept verbatim for writing, otherwise ignored).
pub const MAX_TRACKERS: usize = 1024;

/// The most unmodelled root keys kept for writing back; further ones are dropped.
pub const MAX_EXTRA_ROOT_KEYS: usize = 1024;

/// Why a `.torrent` could not be parsed, built or validated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetainfoError {
    /// The input is larger than [`MAX_METAINFO_LEN`] (or a built torrent would be).
    #[error("metainfo is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Size of the input (or of the encoded `info` dict of a built torrent).
        len: usize,
        /// The limit, [`MAX_METAINFO_LEN`].
        max: usize,
    },
    /// A stream read by [`read_limited`] (or [`Metainfo::load`]) went on past
    /// [`MAX_METAINFO_LEN`]; reading stopped there, so its whole size is unknown.
    #[error("metainfo is more than the limit of {max} bytes")]
    StreamTooLarge {
        /// The limit, [`MAX_METAINFO_LEN`].
        max: usize,
    },
    /// The bytes are not valid (canonical) bencode: syntax error, truncation, unsorted or
    /// duplicate dictionary keys, nesting deeper than [`MAX_DEPTH`].
    #[error("invalid bencode: {0}")]
    Bencode(String),
    /// Valid bencode follows the root dictionary.
    #[error("trailing data after the root dictionary")]
    TrailingData,
    /// A required key is absent.
    #[error("missing required key `{0}`")]
    MissingKey(String),
    /// A key holds a value of the wrong bencode type.
    #[error("`{key}` has the wrong type: expected {expected}")]
    WrongType {
        /// Where the value is, e.g. `info.files[3].path`.
        key: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// An integer does not fit its field (negative length, piece length above `u32`, ...).
    #[error("`{key}` = {value} is out of range")]
    OutOfRange {
        /// Where the value is.
        key: String,
        /// The value as written (truncated if very long).
        value: String,
    },
    /// A string that must be text is not UTF-8.
    #[error("`{key}` is not valid UTF-8")]
    NotUtf8 {
        /// Where the value is.
        key: String,
    },
    /// A path component (or the torrent name) could escape or confuse the download directory.
    #[error("`{key}`: unsafe path component {component:?}: {reason}")]
    BadPath {
        /// Where the component is.
        key: String,
        /// The offending component (lossy UTF-8, truncated if very long).
        component: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two files share a path, or one file's path is the directory of another.
    #[error("file path {0:?} collides with another file")]
    PathConflict(String),
    /// The `info` dict has both `length` (single file) and `files` (multi-file).
    #[error("`info` has both `length` and `files`")]
    AmbiguousLayout,
    /// A multi-file torrent lists no files.
    #[error("`info.files` is empty")]
    NoFiles,
    /// More than [`MAX_FILES`] files, or a path with more than [`MAX_PATH_COMPONENTS`] parts.
    #[error("`{key}` has more than {max} entries")]
    TooMany {
        /// The list that is too long.
        key: String,
        /// Its limit.
        max: usize,
    },
    /// The `pieces` string is not a whole number of 20-byte SHA-1 hashes.
    #[error("`info.pieces` is {0} bytes, not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    /// The number of piece hashes does not match the total length and piece length.
    #[error("`info.pieces` holds {actual} hashes but the lengths need {expected}")]
    PieceCountMismatch {
        /// `ceil(total length / piece length)`.
        expected: u32,
        /// Hashes present.
        actual: usize,
    },
    /// The file lengths add up to more than `u64::MAX`.
    #[error("total length of the files overflows u64")]
    TotalLengthOverflow,
    /// Total length or piece length is unusable (zero total, piece length out of range, ...).
    #[error("bad torrent geometry: {0}")]
    Lengths(#[from] LengthsError),
    /// Reading the payload or writing the copy failed while building a torrent.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed or freshly built `.torrent`: tracker and informational fields, the validated
/// [`Info`], and the exact `info` bytes its [`InfoHash`] is computed from.
///
/// Invariant: `info_hash == sha1(info_bytes)`, `info` is what `info_bytes` decode to, and
/// `info` passed validation (see the module docs), so [`Metainfo::lengths`] is consistent with
/// `info.pieces`. The `info` part is therefore only readable; the other fields are outside the
/// hash and may be changed freely before [`Metainfo::to_bytes`].
#[derive(Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// The primary tracker URL (`announce`), if any.
    pub announce: Option<String>,
    /// BEP 12 tracker tiers (`announce-list`); empty tiers are dropped.
    pub announce_list: Vec<Vec<String>>,
    /// Free-form `comment`.
    pub comment: Option<String>,
    /// The program that created the torrent (`created by`).
    pub created_by: Option<String>,
    /// Creation time in seconds since the Unix epoch (`creation date`).
    pub creation_date: Option<i64>,
    /// The decoded, validated `info` dict.
    info: Info,
    /// The `info` dict exactly as found in the file (or as we encoded it).
    info_bytes: Bytes,
    /// SHA-1 of `info_bytes`.
    info_hash: InfoHash,
    /// Geometry derived from `info` at construction.
    lengths: Lengths,
    /// Root keys we do not model (or whose value was malformed), as raw `(key, bencoded value)`
    /// pairs, so writing the torrent back keeps them.
    extra: Vec<(Bytes, Bytes)>,
}

/// The `info` dictionary: what the torrent's payload is and how it is cut into pieces.
#[derive(Clone, PartialEq, Eq)]
pub struct Info {
    /// Suggested name of the single file, or of the directory holding a multi-file torrent's
    /// files. Validated like a path component.
    pub name: String,
    /// Bytes per piece (every piece but the last), 1..=[`MAX_PIECE_LEN`](crate::MAX_PIECE_LEN).
    pub piece_length: u32,
    /// SHA-1 of every piece, in order.
    pub pieces: Vec<[u8; 20]>,
    /// Whether this is one file or a list of files.
    pub files: FileLayout,
    /// BEP 27 `private` flag: get peers from the tracker only (no DHT or peer exchange).
    pub private: bool,
}

/// The two shapes of a torrent's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileLayout {
    /// A single file named [`Info::name`].
    Single {
        /// Its length in bytes.
        length: u64,
    },
    /// Files inside a directory named [`Info::name`], concatenated in list order to form the
    /// payload that pieces cut.
    Multi {
        /// The files, in payload order.
        files: Vec<FileEntry>,
    },
}

/// One file of a multi-file torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path below the torrent's directory, one validated component per element (never empty).
    pub path: Vec<String>,
    /// Length in bytes (may be zero).
    pub length: u64,
    /// BEP 47 pad file (`attr` contains `p`): filler of zeros that aligns the next file to a
    /// piece boundary (libtorrent's hybrid torrents add them). Storage need not create it.
    pub padding: bool,
}

/// Where one file of a torrent lies in the payload. Made by [`Metainfo::files`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpan {
    /// Relative path: the torrent name for a single-file torrent, `name/dir/.../file` for a
    /// multi-file one. Every component is validated, so it is safe to join below a directory.
    pub path: PathBuf,
    /// Offset of the file's first byte in the payload.
    pub offset: u64,
    /// Length in bytes (may be zero).
    pub len: u64,
    /// BEP 47 pad file (see [`FileEntry::padding`]).
    pub padding: bool,
}

impl Info {
    /// Sum of the file lengths. Saturates instead of overflowing; validated torrents never do.
    pub fn total_len(&self) -> u64 {
        match &self.files {
            FileLayout::Single { length } => *length,
            FileLayout::Multi { files } => files
                .iter()
                .fold(0u64, |acc, f| acc.saturating_add(f.length)),
        }
    }
}

impl fmt::Debug for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Thousands of piece hashes would drown everything else.
        f.debug_struct("Info")
            .field("name", &self.name)
            .field("piece_length", &self.piece_length)
            .field("pieces", &format_args!("[{} hashes]", self.pieces.len()))
            .field("files", &self.files)
            .field("private", &self.private)
            .finish()
    }
}

impl fmt::Debug for Metainfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metainfo")
            .field("info_hash", &self.info_hash)
            .field("announce", &self.announce)
            .field("announce_list", &self.announce_list)
            .field("comment", &self.comment)
            .field("created_by", &self.created_by)
            .field("creation_date", &self.creation_date)
            .field("info", &self.info)
            .field("extra_keys", &self.extra.len())
            .finish()
    }
}

/// Reads a whole `.torrent` from `reader`, but never more than [`MAX_METAINFO_LEN`] bytes:
/// it reads at most one byte past the limit and refuses the input
/// ([`MetainfoError::StreamTooLarge`]) if that byte exists, so memory stays bounded whatever
/// the source (a huge file, a pipe, a socket). Read errors are [`MetainfoError::Io`].
///
/// Use this (or [`Metainfo::load`], [`Metainfo::from_reader`]) instead of reading a file
/// whole and then calling [`Metainfo::from_bytes`], which refuses too large an input only
/// after it was read into memory.
///
/// ```
/// use imagewolf_bt::metainfo::{read_limited, MetainfoError, MAX_METAINFO_LEN};
/// assert_eq!(read_limited(&b"d4:infod...e"[..]).unwrap().len(), 12);
/// // An endless stream is cut off just past the limit.
/// let endless = std::io::repeat(b'x');
/// assert!(matches!(read_limited(endless), Err(MetainfoError::StreamTooLarge { max }) if max == MAX_METAINFO_LEN));
/// ```
pub fn read_limited(reader: impl Read) -> Result<Vec<u8>, MetainfoError> {
    let limit = MAX_METAINFO_LEN as u64 + 1;
    let mut bytes = Vec::new();
    reader.take(limit).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_METAINFO_LEN {
        return Err(MetainfoError::StreamTooLarge {
            max: MAX_METAINFO_LEN,
        });
    }
    Ok(bytes)
}

impl Metainfo {
    /// Parses a `.torrent` file. See the module docs for what is accepted and the bounds.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MetainfoError> {
        parse::parse_metainfo(bytes)
    }

    /// A torrent made of a bare info dict (as fetched from peers with BEP 9): its info-hash
    /// is the SHA-1 of exactly these bytes; no trackers.
    pub fn from_info_bytes(info: &[u8]) -> Result<Self, MetainfoError> {
        let mut torrent = Vec::with_capacity(info.len() + 8);
        torrent.extend_from_slice(b"d4:info");
        torrent.extend_from_slice(info);
        torrent.push(b'e');
        parse::parse_metainfo(&torrent)
    }

    /// Reads a `.torrent` from `reader` through [`read_limited`] (at most
    /// [`MAX_METAINFO_LEN`] bytes) and parses it.
    pub fn from_reader(reader: impl Read) -> Result<Self, MetainfoError> {
        Self::from_bytes(&read_limited(reader)?)
    }

    /// Reads and parses the `.torrent` file at `path`, never holding more than
    /// [`MAX_METAINFO_LEN`] bytes of it: a regular file larger than that is refused from its
    /// size before anything is read ([`MetainfoError::TooLarge`]), and anything else (a
    /// pipe, a file still growing) is read through [`read_limited`]. Opening or reading
    /// fails with [`MetainfoError::Io`]; callers add the path to the message.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), imagewolf_bt::metainfo::MetainfoError> {
    /// let meta = imagewolf_bt::metainfo::Metainfo::load("image.torrent".as_ref())?;
    /// println!("{} bytes", meta.total_len());
    /// # Ok(()) }
    /// ```
    pub fn load(path: &Path) -> Result<Self, MetainfoError> {
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_file() && meta.len() > MAX_METAINFO_LEN as u64 {
            return Err(MetainfoError::TooLarge {
                len: usize::try_from(meta.len()).unwrap_or(usize::MAX),
                max: MAX_METAINFO_LEN,
            });
        }
        Self::from_reader(file)
    }

    /// Encodes the torrent: our fields, any unmodelled root keys, and the `info` dict bytes
    /// verbatim, all in canonical (sorted-key) order.
    pub fn to_bytes(&self) -> Vec<u8> {
        write::write_metainfo(self)
    }

    /// Makes a torrent from an [`Info`] we created: validates it like a parsed one, encodes it
    /// canonically and hashes the encoding.
    ///
    /// Returns a `Result` (unlike a plain constructor) because `info` must uphold the same
    /// invariants as a parsed torrent: safe paths, matching piece count, bounded size.
    pub fn from_info(info: Info, announce: Option<String>) -> Result<Self, MetainfoError> {
        let lengths = parse::validate_info(&info)?;
        let info_bytes = write::encode_info(&info)?;
        if info_bytes.len() > MAX_METAINFO_LEN {
            return Err(MetainfoError::TooLarge {
                len: info_bytes.len(),
                max: MAX_METAINFO_LEN,
            });
        }
        Ok(Self::assemble(info, Bytes::from(info_bytes), lengths).with_announce(announce))
    }

    /// Builds the struct around validated parts; all other fields empty.
    fn assemble(info: Info, info_bytes: Bytes, lengths: Lengths) -> Self {
        Self {
            announce: None,
            announce_list: Vec::new(),
            comment: None,
            created_by: None,
            creation_date: None,
            info_hash: InfoHash(sha1(&info_bytes)),
            info,
            info_bytes,
            lengths,
            extra: Vec::new(),
        }
    }

    fn with_announce(mut self, announce: Option<String>) -> Self {
        self.announce = announce;
        self
    }

    /// The torrent's identity: SHA-1 of [`Metainfo::info_bytes`].
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The bencoded `info` dict the info-hash is computed from (what BEP 9 metadata exchange
    /// would send).
    pub fn info_bytes(&self) -> &[u8] {
        &self.info_bytes
    }

    /// The decoded `info` dict.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The torrent's name (file name or top directory).
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Piece geometry, validated against `info.pieces` when the torrent was made.
    pub fn lengths(&self) -> Lengths {
        self.lengths
    }

    /// Total payload length in bytes.
    pub fn total_len(&self) -> u64 {
        self.lengths.total_len()
    }

    /// The expected SHA-1 of `piece`.
    ///
    /// A [`PieceIndex`] from another torrent's [`Lengths`] may be out of range here; the answer
    /// is then all zeros, which no data hashes to, so verification fails safely.
    pub fn piece_hash(&self, piece: PieceIndex) -> [u8; 20] {
        self.info
            .pieces
            .get(piece.as_usize())
            .copied()
            .unwrap_or([0; 20])
    }

    /// Every file with its place in the payload, in payload order (pad files included and
    /// flagged). Used by storage to map payload offsets to files.
    pub fn files(&self) -> Vec<FileSpan> {
        match &self.info.files {
            FileLayout::Single { length } => vec![FileSpan {
                path: PathBuf::from(&self.info.name),
                offset: 0,
                len: *length,
                padding: false,
            }],
            FileLayout::Multi { files } => {
                let mut offset = 0u64;
                files
                    .iter()
                    .map(|f| {
                        let mut path = PathBuf::from(&self.info.name);
                        path.extend(&f.path);
                        let span = FileSpan {
                            path,
                            offset,
                            len: f.length,
                            padding: f.padding,
                        };
                        // Validation proved the sum fits in u64.
                        offset = offset.saturating_add(f.length);
                        span
                    })
                    .collect()
            }
        }
    }

    /// Every tracker URL: `announce` first, then the `announce-list` tiers in order, without
    /// duplicates or empty strings.
    pub fn announce_urls(&self) -> Vec<String> {
        // A set, not `Vec::contains`: a hostile file may list a million URLs.
        let mut seen = HashSet::new();
        self.announce
            .iter()
            .chain(self.announce_list.iter().flatten())
            .filter(|url| !url.is_empty() && seen.insert(url.as_str()))
            .cloned()
            .collect()
    }
}
