//! A file-backed backend: one or more files laid end to end, accessed with positioned I/O.
//!
//! # Opening files safely
//!
//! A torrent names the files we write, and the download directory may be shared with
//! others (a planted symlink where a torrent's file will go would make us write, and size,
//! whatever it points to). So below the directory a [`FileStorage`] is given (`root`, which
//! is the caller's choice and is used as is), no symlink is ever followed: the path is
//! walked one component at a time with `openat`/`mkdirat`, each directory opened with
//! `O_NOFOLLOW | O_DIRECTORY` relative to the one before, and the file itself with
//! `O_NOFOLLOW`. A symlink anywhere below `root` is therefore an error naming it, whatever
//! is swapped in while we walk (checking with `lstat` and then opening by path would leave
//! that race open). Only regular files are used (`O_NONBLOCK` keeps a planted FIFO from
//! blocking the open).
//!
//! A file we did not just create is not ours: writable storage never shortens it (one
//! longer than the torrent says is an error, not truncated) and refuses one with other hard
//! links, since writing it would change a file elsewhere.
//!
//! # A bounded number of descriptors
//!
//! At most [`MAX_OPEN_FILES`] files are open at once per storage. A payload of that many
//! files or fewer keeps them all open; a larger one (a torrent may list up to
//! [`crate::metainfo::MAX_FILES`]) keeps the most recently used ones open and reopens others
//! on demand, through the same symlink-free walk from a kept handle on `root`, checking that
//! the file is still the one it created (same device and inode).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;

use super::{check_range, Storage};

/// The most files one [`FileStorage`] keeps open at once (plus one handle on its directory
/// when it has more files than this).
pub const MAX_OPEN_FILES: usize = 128;

/// One file of the payload.
struct Span {
    /// Offset of the file's first byte in the payload.
    start: u64,
    /// Length in bytes (of the file, or of the range of it this span covers).
    len: u64,
    /// Where the span starts inside its file: 0 except for [`FileStorage::create_range`] and
    /// [`FileStorage::open_range`].
    file_offset: u64,
    /// The file's path below the storage's directory (for reopening and for messages).
    rel: PathBuf,
    /// Device and inode of the file opened at creation: a reopened file must be the same.
    id: (u64, u64),
}

/// Open files by span index, least recently used closed first.
struct OpenFiles {
    files: HashMap<usize, (Arc<File>, u64)>,
    /// Use counter: each access stamps its file with the next value.
    clock: u64,
}

/// A payload stored in files on disk: a single file, or a torrent's file list under a directory.
///
/// Reads and writes are `pread`/`pwrite`, so any number of threads can use the storage at
/// once without a shared cursor. Files below the directory are opened without following
/// symlinks, and at most [`MAX_OPEN_FILES`] of them are open at once (the notes at the top
/// of `storage/file.rs` explain both).
///
/// ```
/// use imagewolf_bt::storage::{FileStorage, Storage};
/// let dir = std::env::temp_dir().join(format!("iw-doc-{}", std::process::id()));
/// let s = FileStorage::create(&dir, &[("a.bin".into(), 3), ("sub/b.bin".into(), 5)]).unwrap();
/// s.write_at(1, b"spans").unwrap(); // crosses from a.bin into sub/b.bin
/// let mut buf = [0u8; 5];
/// s.read_at(1, &mut buf).unwrap();
/// assert_eq!(&buf, b"spans");
/// assert_eq!(std::fs::read(dir.join("sub/b.bin")).unwrap(), b"ans\0\0");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct FileStorage {
    spans: Vec<Span>,
    total: u64,
    /// Whether files are opened read-write.
    writable: bool,
    /// The directory the spans' paths are relative to, kept only when not every file can
    /// stay open (so they are reopened relative to it, not by a path that could change).
    root: Option<File>,
    /// The files currently open (all of them when there are at most [`MAX_OPEN_FILES`]).
    open: Mutex<OpenFiles>,
    /// Serialises writes. Concurrent buffered writes to one ext4 file contend on its inode
    /// lock by spinning (measured: 11 % of all CPU in a 1 GiB loopback download with two
    /// hashing threads); a mutex makes the second writer sleep instead. Reads take no lock.
    write_lock: std::sync::Mutex<()>,
}

/// How a file is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Read-only, the file must exist.
    Read,
    /// Read-write, the file must exist.
    Write,
    /// Read-write, created (with its directories) when missing.
    Create,
}

impl FileStorage {
    /// Opens (creating where missing) each `(relative path, length)` under `root`, in payload
    /// order, and sizes it to its length. Existing contents are kept, so a restarted download
    /// can re-check what it already has. Paths must be relative and stay under `root`; no
    /// symlink below `root` is followed, and an existing file is never shortened (one longer
    /// than its length, or with other hard links, is an error).
    pub fn create(root: &Path, files: &[(PathBuf, u64)]) -> io::Result<Self> {
        Self::open_with(root, files, true)
    }

    /// Opens existing files read-only, for seeding data that is already complete. Each file
    /// must exist with exactly its expected length; no symlink below `root` is followed.
    pub fn open_existing(root: &Path, files: &[(PathBuf, u64)]) -> io::Result<Self> {
        Self::open_with(root, files, false)
    }

    /// The files of `metainfo` under `root` (`root/NAME` for a single-file torrent,
    /// `root/NAME/...` for a multi-file one), created where missing.
    pub fn for_metainfo(root: &Path, metainfo: &crate::metainfo::Metainfo) -> io::Result<Self> {
        let files: Vec<(PathBuf, u64)> = metainfo
            .files()
            .into_iter()
            .map(|f| (f.path, f.len))
            .collect();
        Self::create(root, &files)
    }

    /// A single file at `path` holding the whole payload of `len` bytes, opened read-only. The
    /// usual way to seed a file that was just hashed into a torrent. `path` itself must not
    /// be a symlink.
    pub fn open_file(path: &Path, len: u64) -> io::Result<Self> {
        let (dir, name) = split_file_path(path)?;
        Self::open_existing(dir, &[(name, len)])
    }

    /// A single file at `path` of `len` bytes, created or opened for writing. `path` itself
    /// must not be a symlink (see [`FileStorage::create`]).
    pub fn create_file(path: &Path, len: u64) -> io::Result<Self> {
        let (dir, name) = split_file_path(path)?;
        Self::create(dir, &[(name, len)])
    }

    /// The range `offset..offset + len` of the file at `path`, opened for writing and created
    /// (or extended) as needed; bytes outside the range are left alone and the file is never
    /// shortened. Several torrents can so store consecutive parts of one file, e.g. the
    /// segments of an image tarball that is announced while it is still being written.
    /// `path` itself must not be a symlink (its directories may be).
    ///
    /// ```
    /// use imagewolf_bt::storage::{FileStorage, Storage};
    /// let path = std::env::temp_dir().join(format!("iw-doc-range-{}", std::process::id()));
    /// let second = FileStorage::create_range(&path, 4, 3).unwrap();
    /// let first = FileStorage::create_range(&path, 0, 4).unwrap();
    /// second.write_at(0, b"xyz").unwrap();
    /// first.write_at(0, b"abcd").unwrap();
    /// assert_eq!(std::fs::read(&path).unwrap(), b"abcdxyz");
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn create_range(path: &Path, offset: u64, len: u64) -> io::Result<Self> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let (dir, name) = split_file_path(path)?;
        fs::create_dir_all(dir)?;
        let root = open_dir(CWD, dir.as_os_str(), OFlags::empty())?;
        let (file, _) = open_below(&root, &name, Access::Create)?;
        if file.metadata()?.len() < end {
            file.set_len(end)?;
        }
        Self::single_span(file, name, offset, len, true)
    }

    /// The range `offset..offset + len` of the existing file at `path`, read-only, for
    /// seeding; the file must reach at least to the range's end. `path` itself must not be
    /// a symlink.
    pub fn open_range(path: &Path, offset: u64, len: u64) -> io::Result<Self> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let (dir, name) = split_file_path(path)?;
        let root = open_dir(CWD, dir.as_os_str(), OFlags::empty())?;
        let (file, _) = open_below(&root, &name, Access::Read)?;
        let actual = file.metadata()?.len();
        if actual < end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {actual} bytes, too short for the range {offset}..{end}",
                    path.display()
                ),
            ));
        }
        Self::single_span(file, name, offset, len, false)
    }

    fn single_span(
        file: File,
        rel: PathBuf,
        file_offset: u64,
        len: u64,
        writable: bool,
    ) -> io::Result<Self> {
        let meta = file.metadata()?;
        let mut open = OpenFiles {
            files: HashMap::new(),
            clock: 0,
        };
        open.files.insert(0, (Arc::new(file), 0));
        Ok(Self {
            spans: vec![Span {
                start: 0,
                len,
                file_offset,
                rel,
                id: (meta.dev(), meta.ino()),
            }],
            total: len,
            writable,
            root: None,
            open: Mutex::new(open),
            write_lock: std::sync::Mutex::new(()),
        })
    }

    fn open_with(root_path: &Path, files: &[(PathBuf, u64)], writable: bool) -> io::Result<Self> {
        if writable {
            fs::create_dir_all(root_path)?;
        }
        let root = open_dir(CWD, root_path.as_os_str(), OFlags::empty())
            .map_err(|e| with_path(e, root_path))?;
        let access = if writable {
            Access::Create
        } else {
            Access::Read
        };
        let mut spans = Vec::with_capacity(files.len());
        let mut open = OpenFiles {
            files: HashMap::new(),
            clock: 0,
        };
        let mut start = 0u64;
        for (i, (rel, len)) in files.iter().enumerate() {
            check_relative(rel)?;
            let shown = root_path.join(rel);
            let (file, created) =
                open_below(&root, rel, access).map_err(|e| with_path(e, &shown))?;
            let meta = file.metadata()?;
            let actual = meta.len();
            if writable {
                if !created && meta.nlink() > 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} has other hard links; not writing into a file that is not ours",
                            shown.display()
                        ),
                    ));
                }
                if actual > *len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is {actual} bytes, longer than the torrent's {len}; \
                             not truncating a file that is not ours",
                            shown.display()
                        ),
                    ));
                }
                if actual < *len {
                    file.set_len(*len)?;
                }
            } else if actual != *len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is {actual} bytes, the torrent says {len}",
                        shown.display()
                    ),
                ));
            }
            open.insert(i, Arc::new(file));
            spans.push(Span {
                start,
                len: *len,
                file_offset: 0,
                rel: rel.clone(),
                id: (meta.dev(), meta.ino()),
            });
            start = start
                .checked_add(*len)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "payload too large"))?;
        }
        Ok(Self {
            spans,
            total: start,
            writable,
            // Needed only to reopen files that were closed to stay within the limit.
            root: (files.len() > MAX_OPEN_FILES).then_some(root),
            open: Mutex::new(open),
            write_lock: std::sync::Mutex::new(()),
        })
    }

    fn lock_open(&self) -> MutexGuard<'_, OpenFiles> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open file of span `i`, reopened (closing the least recently used) if needed.
    fn file(&self, i: usize) -> io::Result<Arc<File>> {
        let mut open = self.lock_open();
        if let Some(file) = open.touch(i) {
            return Ok(file);
        }
        let span = &self.spans[i];
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("{} is not open", span.rel.display())))?;
        let access = if self.writable {
            Access::Write
        } else {
            Access::Read
        };
        let (file, _) = open_below(root, &span.rel, access)?;
        let meta = file.metadata()?;
        if (meta.dev(), meta.ino()) != span.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} was replaced by another file since the storage opened it",
                    span.rel.display()
                ),
            ));
        }
        let file = Arc::new(file);
        open.insert(i, Arc::clone(&file));
        Ok(file)
    }

    /// Files open right now (at most [`MAX_OPEN_FILES`]).
    pub fn open_files(&self) -> usize {
        self.lock_open().files.len()
    }

    /// Calls `f(span index, offset in its file, range of buf)` for each span `offset..offset+len`
    /// touches, in order.
    fn for_each_span(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(usize, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        check_range(offset, len, self.total)?;
        let end = offset + len as u64;
        // First file whose end lies past `offset`; spans are sorted by start.
        let first = self.spans.partition_point(|s| s.start + s.len <= offset);
        for (i, span) in self.spans.iter().enumerate().skip(first) {
            if span.start >= end {
                break;
            }
            if span.len == 0 {
                continue;
            }
            let from = offset.max(span.start);
            let to = end.min(span.start + span.len);
            let buf_range = (from - offset) as usize..(to - offset) as usize;
            f(i, span.file_offset + (from - span.start), buf_range)?;
        }
        Ok(())
    }
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.total
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.for_each_span(offset, buf.len(), |i, at, range| {
            self.file(i)?.read_exact_at(&mut buf[range], at)
        })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let _one_writer = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.for_each_span(offset, buf.len(), |i, at, range| {
            self.file(i)?.write_all_at(&buf[range], at)
        })
    }

    fn flush(&self) -> io::Result<()> {
        // fsync works on the inode, so a file closed since it was written is synced by
        // reopening it.
        (0..self.spans.len()).try_for_each(|i| self.file(i)?.sync_data())
    }
}

impl OpenFiles {
    /// The file of span `i` if it is open, marked as just used.
    fn touch(&mut self, i: usize) -> Option<Arc<File>> {
        self.clock += 1;
        let clock = self.clock;
        self.files.get_mut(&i).map(|(file, used)| {
            *used = clock;
            Arc::clone(file)
        })
    }

    /// Adds span `i`'s file, first closing the least recently used one if
    /// [`MAX_OPEN_FILES`] are open. (A file being read or written by another thread stays
    /// open until that call ends: the bound is the limit plus the calls in flight.)
    fn insert(&mut self, i: usize, file: Arc<File>) {
        if self.files.len() >= MAX_OPEN_FILES {
            if let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&k, _)| k)
            {
                self.files.remove(&oldest);
            }
        }
        self.clock += 1;
        self.files.insert(i, (file, self.clock));
    }
}

/// Opens the directory `name` relative to `dir`, never following a symlink when `extra`
/// holds `O_NOFOLLOW`.
fn open_dir(dir: impl AsFd, name: &OsStr, extra: OFlags) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra;
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::empty(),
    )?))
}

/// Opens the regular file at `rel` below `root`, walking one component at a time and never
/// following a symlink (see the module docs). With [`Access::Create`], missing directories
/// and the file are created; the flag says whether the file was created by this call.
fn open_below(root: &File, rel: &Path, access: Access) -> io::Result<(File, bool)> {
    let parts: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect();
    let Some((name, dirs)) = parts.split_last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty file path in torrent",
        ));
    };
    let mut parent: Option<File> = None;
    for dir in dirs {
        let at = parent.as_ref().unwrap_or(root);
        if access == Access::Create {
            match rustix::fs::mkdirat(at, *dir, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let next = open_dir(at, dir, OFlags::NOFOLLOW).map_err(|e| refusal(e, dir))?;
        parent = Some(next);
    }
    let at = parent.as_ref().unwrap_or(root);
    // O_NONBLOCK: opening a planted FIFO must fail below, not block. It does nothing for the
    // regular files we keep.
    let base = OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let rw = base | OFlags::RDWR;
    let (fd, created) = match access {
        Access::Read => (
            rustix::fs::openat(at, *name, base | OFlags::RDONLY, Mode::empty()),
            false,
        ),
        Access::Write => (rustix::fs::openat(at, *name, rw, Mode::empty()), false),
        Access::Create => {
            let mode = Mode::from_raw_mode(0o666);
            match rustix::fs::openat(at, *name, rw | OFlags::CREATE | OFlags::EXCL, mode) {
                Err(Errno::EXIST) => (rustix::fs::openat(at, *name, rw, Mode::empty()), false),
                other => (other, true),
            }
        }
    };
    let file = File::from(fd.map_err(|e| refusal(e, name))?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a regular file", name),
        ));
    }
    Ok((file, created))
}

/// A clear error for a component that could not be opened: symlinks are refused on purpose.
fn refusal(e: impl Into<io::Error>, name: &OsStr) -> io::Error {
    let e = e.into();
    match e.raw_os_error() {
        Some(code) if code == Errno::LOOP.raw_os_error() => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is a symbolic link; refusing to follow it"),
        ),
        Some(code) if code == Errno::NOTDIR.raw_os_error() => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a directory (or is a symbolic link)"),
        ),
        _ => e,
    }
}

/// `e` with `path` in front of its message.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Refuses absolute paths, `..` and empty paths, so a torrent cannot name a file outside
/// `root`.
fn check_relative(rel: &Path) -> io::Result<()> {
    let mut any = false;
    for component in rel.components() {
        match component {
            Component::Normal(_) => any = true,
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unsafe path in torrent: {}", rel.display()),
                ))
            }
        }
    }
    if !any {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty file path in torrent",
        ));
    }
    Ok(())
}

fn split_file_path(path: &Path) -> io::Result<(&Path, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    Ok((dir.unwrap_or(Path::new(".")), PathBuf::from(name)))
}
