//! The per-container record upstream's plugin keeps for DEL: `<dataDir>/<containerID>` holding
//! the delegate config of the ADD (same bytes, so a node can switch implementations).
//!
//! It is written before anything else happens in ADD (a crash mid-ADD still leaves DEL the
//! information it needs), restored or removed when ADD fails, and removed by DEL only after
//! the teardown fully succeeded.
//!
//! The record file is also the container's lock: ADD, DEL and GC `flock` it for their whole
//! run ([`lock`]), so two calls for one container ID never interleave (a DEL can neither free
//! an IP an ADD is configuring nor drop the record the ADD wrote, and a failing ADD cannot
//! revert the record of one that succeeded). The file is only ever unlinked by a holder of
//! its lock; a waiter that then gets the lock on the unlinked inode sees that the path no
//! longer names it and opens again. A call for a container without a record creates an empty
//! file to lock and removes it when done; an empty file (also one left by a kill) reads as
//! "no record". Files are never opened through a symbolic link, so one planted in the
//! directory cannot redirect a write.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct StateError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError {
        op,
        path: path.to_path_buf(),
        source: explain_symlink(source),
    }
}

/// O_NOFOLLOW's ELOOP reads "too many levels of symbolic links"; say what happened instead.
pub(crate) fn explain_symlink(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        std::io::Error::other("is a symbolic link, which is not followed")
    } else {
        e
    }
}

/// `<dataDir>/<containerID>`; the ID has been validated (no `/`, no `..`).
pub fn path(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
}

const NOFOLLOW: i32 = nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC;

/// The saved bytes, or `None` when there is no record (or an empty one). Not locked: for
/// CHECK, which changes nothing.
pub fn read(data_dir: &Path, container_id: &str) -> Result<Option<Vec<u8>>, StateError> {
    let p = path(data_dir, container_id);
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("open", &p)(e)),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(err("read", &p))?;
    Ok((!bytes.is_empty()).then_some(bytes))
}

/// Container IDs that have a record (regular files named like valid container IDs).
pub fn list(data_dir: &Path) -> Result<Vec<String>, StateError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err("read directory", data_dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err("read directory", data_dir))?;
        if let Some(name) = entry.file_name().to_str()
            && super::env::validate_container_id(name).is_ok()
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// How [`lock`] gets the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Create the record file (and the directory) if needed and wait for the lock: ADD, DEL.
    Wait,
    /// Only an existing record, only if nobody holds it (GC: a busy record is in use).
    TryExisting,
}

/// The record of one container, locked until dropped.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    file: Flock<File>,
    /// The content when the lock was taken; `None` for no record.
    previous: Option<Vec<u8>>,
    /// The file's length now (0: no record, the file is only a lock and goes on drop).
    len: u64,
    removed: bool,
}

fn open_record(p: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(p)
}

/// Locks the record of `container_id` (see the module doc for the protocol). `Ok(None)` only
/// with [`Acquire::TryExisting`]: no record, or it is busy.
pub fn lock(
    data_dir: &Path,
    container_id: &str,
    how: Acquire,
) -> Result<Option<Record>, StateError> {
    let p = path(data_dir, container_id);
    let create = how == Acquire::Wait;
    loop {
        let file = match open_record(&p, create) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(data_dir)
                    .map_err(err("create directory", data_dir))?;
                open_record(&p, true).map_err(err("create", &p))?
            }
            Err(e) => return Err(err("open", &p)(e)),
        };
        let arg = match how {
            Acquire::Wait => FlockArg::LockExclusive,
            Acquire::TryExisting => FlockArg::LockExclusiveNonblock,
        };
        let file = match Flock::lock(file, arg) {
            Ok(f) => f,
            Err((_, Errno::EWOULDBLOCK)) if how == Acquire::TryExisting => return Ok(None),
            Err((_, errno)) => return Err(err("flock", &p)(errno.into())),
        };
        let held = file.metadata().map_err(err("stat", &p))?;
        if !held.is_file() {
            return Err(err("open", &p)(std::io::Error::other(
                "is not a regular file",
            )));
        }
        // The holder we waited for may have unlinked the file: then our lock is on an inode
        // nobody else will look at, and the path (if any) names a new one.
        match std::fs::symlink_metadata(&p) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(err("stat", &p)(e)),
        }
        let mut bytes = Vec::new();
        (&*file).read_to_end(&mut bytes).map_err(err("read", &p))?;
        let len = bytes.len() as u64;
        return Ok(Some(Record {
            path: p,
            file,
            previous: (!bytes.is_empty()).then_some(bytes),
            len,
            removed: false,
        }));
    }
}

impl Record {
    /// The record as it was when locked (`None`: there was none).
    pub fn saved(&self) -> Option<&[u8]> {
        self.previous.as_deref()
    }

    /// True when there was no record: this container has not been added yet.
    pub fn is_new(&self) -> bool {
        self.previous.is_none()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the record (file 0600, dir 0700, like upstream) in place: one write of a few
    /// hundred bytes. A torn record (a crash mid-write) is not valid JSON, and DEL then falls
    /// back to the current config, so no temp file + rename (an extra inode per ADD).
    pub fn write(&mut self, bytes: &[u8], fsync: bool) -> Result<(), StateError> {
        if self.previous.as_deref() == Some(bytes) && self.len == bytes.len() as u64 {
            return Ok(());
        }
        let p = &self.path;
        self.file.write_all_at(bytes, 0).map_err(err("write", p))?;
        let new_len = bytes.len() as u64;
        if self.len > new_len {
            self.file.set_len(new_len).map_err(err("truncate", p))?;
        }
        self.len = new_len;
        if fsync {
            self.file.sync_all().map_err(err("fsync", p))?;
        }
        Ok(())
    }

    /// Undoes [`Record::write`]: the previous content comes back, or the file goes.
    pub fn revert(mut self) -> Result<(), StateError> {
        match self.previous.take() {
            Some(bytes) => {
                let r = self.write(&bytes, false);
                self.previous = Some(bytes);
                r
            }
            None => self.remove(),
        }
    }

    /// Removes the record, still holding its lock (only holders unlink, see the module doc).
    pub fn remove(mut self) -> Result<(), StateError> {
        self.unlink()
    }

    fn unlink(&mut self) -> Result<(), StateError> {
        self.removed = true;
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("remove", &self.path)(e)),
        }
    }
}

impl Drop for Record {
    /// An empty file is only our lock: it goes before the lock is released (the fd closes
    /// after this body), so it can never take another holder's file with it.
    fn drop(&mut self) {
        if !self.removed
            && self.len == 0
            && let Err(e) = self.unlink()
        {
            tracing::warn!(error = %e, "cannot remove an empty record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "frs-state-{}-{tag}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    fn locked(dir: &Path, cid: &str) -> Record {
        lock(dir, cid, Acquire::Wait).unwrap().unwrap()
    }

    #[test]
    fn write_read_revert_cycle() {
        let root = tmpdir("cycle");
        let dir = root.join("flannel");
        let mut r = locked(&dir, "c1");
        assert!(r.is_new());
        r.write(b"{\"a\":1}", false).unwrap();
        assert_eq!(read(&dir, "c1").unwrap().unwrap(), b"{\"a\":1}");
        let mode = std::fs::metadata(path(&dir, "c1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        r.revert().unwrap();
        assert!(read(&dir, "c1").unwrap().is_none());
        assert!(!path(&dir, "c1").exists());

        locked(&dir, "c2").write(b"old-and-longer", false).unwrap();
        let mut r = locked(&dir, "c2");
        assert_eq!(r.saved(), Some(&b"old-and-longer"[..]));
        r.write(b"new", true).unwrap();
        assert_eq!(read(&dir, "c2").unwrap().unwrap(), b"new");
        r.revert().unwrap();
        assert_eq!(read(&dir, "c2").unwrap().unwrap(), b"old-and-longer");
        assert_eq!(list(&dir).unwrap(), vec!["c2".to_string()]);
        locked(&dir, "c2").remove().unwrap();
        assert!(list(&dir).unwrap().is_empty());
        assert!(list(&root.join("missing")).unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_lock_without_a_record_leaves_no_file() {
        let root = tmpdir("empty");
        let r = locked(&root, "c1");
        assert!(
            path(&root, "c1").exists(),
            "the lock file exists while held"
        );
        drop(r);
        assert!(!path(&root, "c1").exists());
        assert!(lock(&root, "c1", Acquire::TryExisting).unwrap().is_none());
        assert!(!path(&root, "c1").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A holder that removes the record lets a waiter in, which must then see the new state
    /// (no record) rather than keep a lock on the unlinked file.
    #[test]
    fn holders_exclude_each_other_across_removal() {
        let root = tmpdir("excl");
        let mut first = locked(&root, "c1");
        first.write(b"x", false).unwrap();
        assert!(
            lock(&root, "c1", Acquire::TryExisting).unwrap().is_none(),
            "busy"
        );
        let waiter = {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut r = locked(&root, "c1");
                let was_new = r.is_new();
                r.write(b"second", false).unwrap();
                was_new
            })
        };
        // Whether the waiter already blocks or not, it only gets in after this removal.
        first.remove().unwrap();
        assert!(waiter.join().unwrap(), "the waiter saw the removal");
        assert_eq!(read(&root, "c1").unwrap().unwrap(), b"second");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn symlinks_are_not_followed() {
        let root = tmpdir("link");
        std::fs::create_dir_all(&root).unwrap();
        let victim = root.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, path(&root, "c1")).unwrap();
        let e = lock(&root, "c1", Acquire::Wait).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(read(&root, "c1").is_err());
        assert!(lock(&root, "c1", Acquire::TryExisting).is_err());
        assert!(list(&root).unwrap().iter().all(|c| c != "c1"));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
