//! Torrents of files and directories on disk, and saving `.torrent` files.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{FileEntry, FileLayout, Metainfo, MetainfoError, TorrentBuilder, MAX_FILES};

impl TorrentBuilder {
    /// Hashes a file or a directory in place (nothing is copied), on the calling thread:
    /// from async code use [`TorrentBuilder::create`] or [`Metainfo::create`]. A directory
    /// becomes a multi-file torrent of the regular files below it, in path order (symbolic
    /// links and special files are left out; an empty directory is an error).
    pub fn build_from_path(self, path: &Path) -> Result<Metainfo, MetainfoError> {
        if !std::fs::metadata(path)?.is_dir() {
            return self.build_from_file(path);
        }
        let mut files = Vec::new();
        collect_files(path, &mut Vec::new(), &mut files)?;
        let size_hint = files.iter().map(|(_, len)| *len).sum();
        let mut hasher = self.start(size_hint)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut entries = Vec::with_capacity(files.len());
        for (components, _) in files {
            let file_path: PathBuf = components.iter().fold(path.to_path_buf(), |p, c| p.join(c));
            let mut file = File::open(&file_path)?;
            let mut length = 0u64;
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n.min(buf.len()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                hasher.update(&buf[..n]);
                length += n as u64;
            }
            entries.push(FileEntry {
                path: components,
                length,
                padding: false,
            });
        }
        self.finish_with(hasher, FileLayout::Multi { files: entries })
    }

    /// [`TorrentBuilder::build_from_path`] on tokio's blocking pool, so hashing gigabytes
    /// never stalls the async runtime.
    pub async fn create(self, path: impl AsRef<Path>) -> Result<Metainfo, MetainfoError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || self.build_from_path(&path))
            .await
            .map_err(|e| MetainfoError::Io(io::Error::other(format!("hashing task: {e}"))))?
    }
}

/// The regular files below `dir`, as path components and lengths, sorted by path.
fn collect_files(
    dir: &Path,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, u64)>,
) -> Result<(), MetainfoError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().into_string().map_err(|name| {
            MetainfoError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: file name is not UTF-8", dir.join(name).display()),
            ))
        })?;
        names.push((name, entry.file_type()?));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, kind) in names {
        if kind.is_dir() {
            prefix.push(name);
            collect_files(&dir.join(&prefix[prefix.len() - 1]), prefix, out)?;
            prefix.pop();
        } else if kind.is_file() {
            if out.len() >= MAX_FILES {
                return Err(MetainfoError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("more than {MAX_FILES} files"),
                )));
            }
            let len = std::fs::metadata(dir.join(&name))?.len();
            let mut path = prefix.clone();
            path.push(name);
            out.push((path, len));
        }
    }
    if prefix.is_empty() && out.is_empty() {
        return Err(MetainfoError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no files to make a torrent of", dir.display()),
        )));
    }
    Ok(())
}

impl Metainfo {
    /// Makes a torrent of the file or directory at `path` (see
    /// [`TorrentBuilder::build_from_path`]), named after it, with the default piece length
    /// and no tracker; hashing runs on tokio's blocking pool. Use [`TorrentBuilder`] (and
    /// its [`TorrentBuilder::create`]) to set trackers, a piece length or a comment.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), imagewolf_bt::Error> {
    /// use imagewolf_bt::metainfo::Metainfo;
    /// let dir = std::env::temp_dir().join(format!("iw-doc-create-{}", std::process::id()));
    /// std::fs::create_dir_all(dir.join("sub"))?;
    /// std::fs::write(dir.join("a.txt"), b"hello")?;
    /// std::fs::write(dir.join("sub/b.bin"), vec![1u8; 100_000])?;
    /// let meta = Metainfo::create(&dir).await?;
    /// assert_eq!(meta.total_len(), 100_005);
    /// assert_eq!(meta.files().len(), 2);
    /// let saved = dir.with_extension("torrent");
    /// meta.save(&saved)?;
    /// assert_eq!(Metainfo::load(&saved)?.info_hash(), meta.info_hash());
    /// # std::fs::remove_dir_all(&dir)?; std::fs::remove_file(&saved)?;
    /// # Ok(()) }
    /// ```
    pub async fn create(path: impl AsRef<Path>) -> Result<Metainfo, MetainfoError> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                MetainfoError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: no usable file name", path.display()),
                ))
            })?
            .to_owned();
        TorrentBuilder::new(name).create(path).await
    }

    /// Writes the torrent to a `.torrent` file at `path` (replacing it). A few KiB written
    /// at once, so it is fine to call from async code.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), MetainfoError> {
        std::fs::write(path, self.to_bytes())?;
        Ok(())
    }
}
