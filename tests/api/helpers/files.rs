//! The repository's own files, for tests that read the source, and scratch directories
//! for tests that run the `careboard` binary.

use std::path::{Path, PathBuf};

/// Every file below `dir` (relative to the crate root), depth first.
pub fn files_under(dir: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The text of a Rust source before its unit tests (`#[cfg(test)]`): what the built
/// binary is made of.
pub fn production_part(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or_default()
}

/// An empty directory for `--data-dir`. Run as root, the embedded cluster runs as an
/// unprivileged user, who must be able to reach it.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}
