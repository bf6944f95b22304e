//! FTP paths as the checksum store keys them: absolute within the user's root, normalised.

use std::path::{Component, Path};

/// A path the server will not act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path escapes the user's root")]
    Escapes,
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("path is empty")]
    Empty,
    #[error("path names the root directory, not a file")]
    Root,
}

/// Resolves `path` against the working directory `cwd` (both as FTP shows them) and removes
/// `.` and `..` lexically, so `/a/./b/../c` and `c` in `/a` are the same record.
pub fn resolve(cwd: &str, path: &Path) -> Result<String, PathError> {
    if path.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    let mut parts: Vec<&str> = Vec::new();
    let joined;
    let full: &Path = if path.is_absolute() {
        path
    } else {
        joined = Path::new(cwd).join(path);
        &joined
    };
    for c in full.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                parts.pop().ok_or(PathError::Escapes)?;
            }
            Component::Normal(s) => parts.push(s.to_str().ok_or(PathError::NotUtf8)?),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Like [`resolve`] but for a file: the root itself is refused.
pub fn resolve_file(cwd: &str, path: &Path) -> Result<String, PathError> {
    let p = resolve(cwd, path)?;
    if p == "/" {
        return Err(PathError::Root);
    }
    Ok(p)
}

/// The path relative to the user's root directory handle (`.` for the root).
pub fn relative(normalised: &str) -> &str {
    match normalised.trim_start_matches('/') {
        "" => ".",
        rel => rel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_and_dots() {
        assert_eq!(resolve("/", Path::new("a.ts")).unwrap(), "/a.ts");
        assert_eq!(resolve("/d", Path::new("a.ts")).unwrap(), "/d/a.ts");
        assert_eq!(resolve("/d", Path::new("/x/./y/../z")).unwrap(), "/x/z");
        assert_eq!(resolve("/d/e", Path::new("../f")).unwrap(), "/d/f");
        assert_eq!(
            resolve("/", Path::new("my file.ts")).unwrap(),
            "/my file.ts"
        );
        assert_eq!(resolve("/", Path::new("/")).unwrap(), "/");
    }

    #[test]
    fn refuses_escape_and_empty() {
        assert_eq!(resolve("/", Path::new("..")), Err(PathError::Escapes));
        assert_eq!(
            resolve("/a", Path::new("../../etc/passwd")),
            Err(PathError::Escapes)
        );
        assert_eq!(resolve("/", Path::new("")), Err(PathError::Empty));
        assert_eq!(resolve_file("/", Path::new("/.")), Err(PathError::Root));
    }

    #[test]
    fn relative_for_cap_std() {
        assert_eq!(relative("/"), ".");
        assert_eq!(relative("/a/b"), "a/b");
    }
}
