//! What the demo app keeps on disk, so tests can see data outlive a version: with
//! `DATA_DIRS` set (comma-separated directories, such as a bind and a named volume),
//! [`write_marker`] writes a file named after the version into each one at start, and
//! `GET /data` answers [`listing`]: one line per directory, `<dir>: <file> <file> …`, sorted.

use std::io;
use std::path::{Path, PathBuf};

/// Writes `<dir>/<version>` (holding the version) in every directory of `dirs`; the error
/// names the file.
pub fn write_marker(dirs: &[PathBuf], version: &str) -> Result<(), String> {
    for dir in dirs {
        let path = dir.join(version);
        std::fs::write(&path, format!("{version}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The files in each of `dirs`, one line per directory, names sorted.
pub fn listing(dirs: &[PathBuf]) -> io::Result<String> {
    let mut text = String::new();
    for dir in dirs {
        let mut names = files_in(dir)?;
        names.sort();
        text.push_str(&format!("{}: {}\n", dir.display(), names.join(" ")));
    }
    Ok(text)
}

fn files_in(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_leaves_its_file_and_the_listing_shows_them_all() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dirs = vec![a.path().to_owned(), b.path().to_owned()];
        write_marker(&dirs, "v2").unwrap();
        write_marker(&dirs, "v1").unwrap();
        assert_eq!(
            std::fs::read_to_string(a.path().join("v1")).unwrap(),
            "v1\n"
        );
        let text = listing(&dirs).unwrap();
        assert_eq!(
            text,
            format!(
                "{}: v1 v2\n{}: v1 v2\n",
                a.path().display(),
                b.path().display()
            )
        );
    }

    #[test]
    fn a_directory_it_cannot_write_is_named() {
        let missing = tempfile::tempdir().unwrap().path().join("gone");
        let err = write_marker(std::slice::from_ref(&missing), "v1").unwrap_err();
        assert!(
            err.contains(&missing.join("v1").display().to_string()),
            "{err}"
        );
        assert!(listing(&[missing]).is_err());
    }
}
