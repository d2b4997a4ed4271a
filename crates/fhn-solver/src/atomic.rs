//! Atomic file and directory writes: an output is written to a temporary sibling in the same
//! directory, flushed and synced, then renamed over its target, so a full disk or a crash
//! leaves the previous file (or no file), never a partial one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, SolverError};

/// A `tempfile` builder whose files and directories get the permissions of an ordinary new
/// file or directory (`0o666` / `0o777` less the process umask, as `File::create` and
/// `create_dir` give) instead of `tempfile`'s owner-only `0o600` / `0o700`. The temporary is
/// renamed into place and keeps its mode, so without this every atomically written output
/// (reports, datasets, checkpoints) would be unreadable by the user's group.
pub fn ordinary_temp_builder<'a>(
    prefix: &'a str,
    suffix: &'a str,
    dir: bool,
) -> tempfile::Builder<'a, 'a> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The mode goes to open(2) / mkdir(2), which apply the umask.
        let mode = if dir { 0o777 } else { 0o666 };
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = dir;
    builder
}

/// A new temporary file in `dir` (named `prefix…suffix`) with ordinary permissions (see
/// [`ordinary_temp_builder`]), to be written and renamed over its target.
pub fn temp_file_in(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    ordinary_temp_builder(prefix, suffix, false).tempfile_in(dir)
}

/// The directory a temporary sibling of `path` goes in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SolverError + '_ {
    move |source| SolverError::Io {
        path: path.into(),
        source,
    }
}

/// A temporary file next to `path` (same directory, so the final rename is atomic).
fn temp_sibling(path: &Path) -> Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy());
    temp_file_in(parent_of(path), &format!(".{name}."), ".tmp").map_err(io_error(path))
}

/// Writes `path` atomically: `write` fills a buffered writer on a temporary sibling, which is
/// then flushed, synced and renamed over `path`. On any error the temporary file is removed
/// and `path` keeps its previous content.
pub fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    let temp = temp_sibling(path)?;
    {
        let mut writer = BufWriter::new(temp.as_file());
        write(&mut writer).map_err(io_error(path))?;
        writer.flush().map_err(io_error(path))?;
    }
    finish(temp, path, true)
}

/// Writes `path` atomically through a function that takes a file path (a library that
/// opens the file itself): `write` writes the temporary sibling's path, which is then
/// synced and renamed over `path`.
pub fn write_file_via_path(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let temp = temp_sibling(path)?;
    write(temp.path())?;
    // The library may have replaced the file at that path (its own rename): sync what the
    // path names now, not the handle we opened.
    File::open(temp.path())
        .and_then(|f| f.sync_all())
        .map_err(io_error(path))?;
    finish(temp, path, true)
}

/// Writes `path` atomically only if it does not exist yet; returns whether it wrote. Two
/// processes racing to create the same file both succeed, and exactly one writes it.
pub fn write_file_if_absent(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let temp = temp_sibling(path)?;
    {
        let mut writer = BufWriter::new(temp.as_file());
        write(&mut writer).map_err(io_error(path))?;
        writer.flush().map_err(io_error(path))?;
    }
    match finish(temp, path, false) {
        Ok(()) => Ok(true),
        Err(SolverError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Syncs the temporary file and renames it to `path` (over an existing file if `replace`).
fn finish(temp: tempfile::NamedTempFile, path: &Path, replace: bool) -> Result<()> {
    // The data must be on disk before the rename makes it visible under the final name.
    temp.as_file().sync_all().map_err(io_error(path))?;
    let persisted = if replace {
        temp.persist(path).map(drop)
    } else {
        temp.persist_noclobber(path).map(drop)
    };
    persisted.map_err(|e| SolverError::Io {
        path: path.into(),
        source: e.error,
    })
}

/// Builds the directory `target` atomically: `fill` writes everything into a staging
/// directory (a temporary sibling of `target`), which is renamed to `target` only once
/// `fill` succeeded. On error the staging directory is removed and `target` is untouched.
///
/// If `target` exists and is empty, it is replaced. If it holds files, this is an error
/// unless `replace_existing`, in which case the old directory is moved aside, the new one
/// renamed into place, and the old one removed, so that `target` always holds one complete
/// dataset.
pub fn write_dir<T>(
    target: &Path,
    replace_existing: bool,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let occupied = dir_holds_files(target)?;
    if occupied && !replace_existing {
        return Err(SolverError::invalid(
            "output directory",
            target.display(),
            "a directory that does not exist or is empty (it already holds files; remove \
             them, choose another directory, or ask to replace it)",
        ));
    }
    let parent = parent_of(target);
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    let name = target
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy());
    let staging = ordinary_temp_builder(&format!(".{name}.staging-"), "", true)
        .tempdir_in(parent)
        .map_err(io_error(target))?;
    let value = fill(staging.path())?;
    let staged: PathBuf = staging.keep();
    let moved = if occupied {
        swap_into_place(&staged, target)
    } else {
        std::fs::rename(&staged, target).map_err(io_error(target))
    };
    if moved.is_err() {
        // Best effort: the error that matters is the rename's.
        let _ = std::fs::remove_dir_all(&staged);
    }
    moved.map(|()| value)
}

/// Whether `dir` exists and holds at least one entry (an error if it is not a directory).
fn dir_holds_files(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(dir)(e)),
    }
}

/// Moves the existing `target` aside, renames `staged` into its place, removes the old one.
fn swap_into_place(staged: &Path, target: &Path) -> Result<()> {
    let name = target
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy());
    let aside = ordinary_temp_builder(&format!(".{name}.old-"), "", true)
        .tempdir_in(parent_of(target))
        .map_err(io_error(target))?
        .keep();
    // `aside` exists (empty); renaming a directory over an empty one replaces it.
    std::fs::rename(target, &aside).map_err(io_error(target))?;
    if let Err(e) = std::fs::rename(staged, target) {
        let _ = std::fs::rename(&aside, target);
        return Err(io_error(target)(e));
    }
    std::fs::remove_dir_all(&aside).map_err(io_error(&aside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_file(&path, |w| w.write_all(b"old")).unwrap();
        let failed = write_file(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(!write_file_if_absent(&path, |w| w.write_all(b"new")).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn a_failed_directory_leaves_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let target = parent.path().join("data");
        let failed: Result<()> = write_dir(&target, false, |staging| {
            std::fs::write(staging.join("train.safetensors"), b"x").unwrap();
            Err(SolverError::invalid("test", 0, "a failure"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
        write_dir(&target, false, |s| {
            std::fs::write(s.join("a"), b"1").map_err(io_error(s))
        })
        .unwrap();
        assert!(write_dir(&target, false, |_| Ok(())).is_err());
        write_dir(&target, true, |s| {
            std::fs::write(s.join("b"), b"2").map_err(io_error(s))
        })
        .unwrap();
        assert!(!target.join("a").exists() && target.join("b").exists());
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
    }

    /// Atomic outputs get the mode `File::create` / `create_dir` would give (the umask
    /// applied to 0o666 / 0o777), not the temporary's owner-only one.
    #[cfg(unix)]
    #[test]
    fn outputs_have_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.txt");
        std::fs::File::create(&plain).unwrap();
        let plain_dir = dir.path().join("plain-dir");
        std::fs::create_dir(&plain_dir).unwrap();

        let file = dir.path().join("atomic.txt");
        write_file(&file, |w| w.write_all(b"x")).unwrap();
        assert_eq!(mode(&file), mode(&plain));
        let via_path = dir.path().join("via-path.txt");
        write_file_via_path(&via_path, |p| std::fs::write(p, b"y").map_err(io_error(p))).unwrap();
        assert_eq!(mode(&via_path), mode(&plain));
        let staged = dir.path().join("staged");
        write_dir(&staged, false, |s| {
            std::fs::write(s.join("a"), b"1").map_err(io_error(s))
        })
        .unwrap();
        assert_eq!(mode(&staged), mode(&plain_dir));
    }
}
