//! The per-container record upstream's plugin keeps for DEL: `<dataDir>/<containerID>` holding
//! the delegate config of the ADD (same bytes, so a node can switch implementations).
//!
//! It is written before anything else happens in ADD (a crash mid-ADD still leaves DEL the
//! information it needs), restored or removed when ADD fails, and removed by DEL only after
//! the teardown fully succeeded.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
        source,
    }
}

/// `<dataDir>/<containerID>`; the ID has been validated (no `/`, no `..`).
pub fn path(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
}

/// The saved bytes, or `None` when there is no record.
pub fn read(data_dir: &Path, container_id: &str) -> Result<Option<Vec<u8>>, StateError> {
    let p = path(data_dir, container_id);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("read", &p)(e)),
    }
}

/// Container IDs that have a record (file names that are valid container IDs).
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

/// Removes the record; `Ok` if there is none.
pub fn remove(data_dir: &Path, container_id: &str) -> Result<(), StateError> {
    let p = path(data_dir, container_id);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", &p)(e)),
    }
}

/// A record written by ADD, with what was there before so a failed ADD can put it back.
#[derive(Debug)]
pub struct Written {
    data_dir: PathBuf,
    container_id: String,
    previous: Option<Vec<u8>>,
}

impl Written {
    /// True when there was no record before: this container has not been added yet.
    pub fn is_new(&self) -> bool {
        self.previous.is_none()
    }

    /// Undoes the write: the previous content comes back, or the file goes.
    pub fn revert(self) -> Result<(), StateError> {
        match &self.previous {
            Some(bytes) => write_in_place(&self.data_dir, &self.container_id, bytes, false),
            None => remove(&self.data_dir, &self.container_id),
        }
    }
}

/// Writes the record (dir 0700, file 0600, like upstream), in place: one write of a few
/// hundred bytes. A torn record (a crash mid-write) is not valid JSON, and DEL then falls back
/// to the current config, so no temp file + rename (an extra inode per ADD) is needed.
pub fn write(
    data_dir: &Path,
    container_id: &str,
    bytes: &[u8],
    fsync: bool,
) -> Result<Written, StateError> {
    let previous = read(data_dir, container_id)?;
    if previous.as_deref() != Some(bytes) {
        write_in_place(data_dir, container_id, bytes, fsync)?;
    }
    Ok(Written {
        data_dir: data_dir.to_path_buf(),
        container_id: container_id.to_string(),
        previous,
    })
}

fn write_in_place(
    data_dir: &Path,
    container_id: &str,
    bytes: &[u8],
    fsync: bool,
) -> Result<(), StateError> {
    let dst = path(data_dir, container_id);
    let open = || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&dst)
    };
    let mut f = match open() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(err("create directory", data_dir))?;
            open().map_err(err("create", &dst))?
        }
        other => other.map_err(err("create", &dst))?,
    };
    f.write_all(bytes).map_err(err("write", &dst))?;
    if fsync {
        f.sync_all().map_err(err("fsync", &dst))?;
    }
    Ok(())
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

    #[test]
    fn write_read_revert_cycle() {
        let root = tmpdir("cycle");
        let dir = root.join("flannel");
        let w = write(&dir, "c1", b"{\"a\":1}", false).unwrap();
        assert_eq!(read(&dir, "c1").unwrap().unwrap(), b"{\"a\":1}");
        let mode = std::fs::metadata(path(&dir, "c1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        w.revert().unwrap();
        assert!(read(&dir, "c1").unwrap().is_none());

        write(&dir, "c2", b"old", false).unwrap();
        let w = write(&dir, "c2", b"new", true).unwrap();
        assert_eq!(read(&dir, "c2").unwrap().unwrap(), b"new");
        w.revert().unwrap();
        assert_eq!(read(&dir, "c2").unwrap().unwrap(), b"old");
        assert_eq!(list(&dir).unwrap(), vec!["c2".to_string()]);
        remove(&dir, "c2").unwrap();
        remove(&dir, "c2").unwrap();
        assert!(list(&dir).unwrap().is_empty());
        assert!(list(&root.join("missing")).unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
