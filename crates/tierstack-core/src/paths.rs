//! Path expansion for config files: `~` and `$VAR` / `${VAR}`.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Operation};

/// Expands a leading `~` (the user's home) and `$VAR` / `${VAR}` anywhere.
/// An unset variable is an error naming it, so a typo does not silently
/// become a relative path.
pub fn expand(path: &str) -> Result<PathBuf, String> {
    expand_text(path).map(PathBuf::from)
}

/// Expands `$VAR` / `${VAR}` (and a leading `~`) in any config text, such
/// as a server URL or a password taken from the environment.
pub fn expand_text(path: &str) -> Result<String, String> {
    let mut out = String::with_capacity(path.len());
    let rest = if path == "~" || path.starts_with("~/") {
        let home = std::env::var("HOME")
            .map_err(|_| format!("cannot expand ~ in {path:?}: HOME is not set"))?;
        out.push_str(&home);
        &path[1..]
    } else {
        path
    };
    let mut chars = rest.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = chars.peek().is_some_and(|&(_, c)| c == '{');
        if braced {
            chars.next();
        }
        // A name starts with a letter or `_` (as in a shell), so `$5` stays text.
        let mut name = String::new();
        while let Some(&(_, c)) = chars.peek() {
            let fits =
                c == '_' || c.is_ascii_alphabetic() || (!name.is_empty() && c.is_ascii_digit());
            if !fits {
                break;
            }
            name.push(c);
            chars.next();
        }
        if braced {
            match chars.next() {
                Some((_, '}')) => {}
                _ => return Err(format!("unclosed ${{ in {path:?}")),
            }
        }
        if name.is_empty() {
            if braced {
                return Err(format!(
                    "invalid ${{...}} in {path:?}: expected a variable name"
                ));
            }
            out.push('$');
            continue;
        }
        let value = std::env::var(&name)
            .map_err(|_| format!("environment variable {name} in {path:?} is not set"))?;
        out.push_str(&value);
    }
    Ok(out)
}

/// The default location of a store file or directory named `name`:
/// `$XDG_CACHE_HOME/tierstack/NAME` when set, else `~/.cache/tierstack/NAME`
/// (expanded when the tier opens).
pub fn default_cache_path(name: &str) -> String {
    std::env::var("XDG_CACHE_HOME")
        .ok()
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || format!("~/.cache/tierstack/{name}"),
            |dir| format!("{dir}/tierstack/{name}"),
        )
}

/// An I/O error on `path`, with a kind the caller can act on.
pub fn io_error(error: std::io::Error, path: &Path, what: &str) -> Error {
    let kind = match error.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::PermissionDenied
        }
        std::io::ErrorKind::StorageFull => ErrorKind::Full,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{what} {}", path.display()))
        .with_operation(Operation::Build)
        .with_source(error)
}

/// A refusal to touch `path`, saying why.
pub fn refuse(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("refusing to use {}: {why}", path.display()),
    )
    .with_operation(Operation::Build)
}

/// Creates a directory and its missing parents with mode 0700 (owner only).
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| io_error(e, dir, "cannot create the cache directory"))
}

/// Checks a store's file before its engine touches it: an existing file must
/// be a regular file (not a symbolic link) whose first bytes are `magic`
/// (`kind` names the format in the error); a missing file is created empty
/// with mode 0600 in a 0700 directory. A foreign file is refused and never
/// modified.
pub fn prepare_file(path: &Path, magic: &[u8], kind: &str) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if meta.file_type().is_symlink() {
                return Err(refuse(
                    path,
                    "it is a symbolic link; point the config at the real file",
                ));
            }
            if !meta.is_file() {
                return Err(refuse(path, "it is not a regular file"));
            }
            let mut head = vec![0u8; magic.len()];
            let mut file = fs::File::open(path).map_err(|e| io_error(e, path, "cannot read"))?;
            let mut n = 0;
            while n < head.len() {
                match file.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(read) => n += read,
                    Err(e) => return Err(io_error(e, path, "cannot read")),
                }
            }
            if n > 0 && head[..n] != magic[..n] {
                return Err(refuse(
                    path,
                    &format!("it is not a {kind} database (the file was left untouched)"),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                // Another process may have created it since we looked.
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(io_error(e, path, "cannot create the database file")),
            }
        }
        Err(e) => Err(io_error(e, path, "cannot inspect")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_home_and_variables() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(
            expand("~/.cache/x").unwrap(),
            PathBuf::from(format!("{home}/.cache/x"))
        );
        assert_eq!(
            expand("$HOME/a").unwrap(),
            PathBuf::from(format!("{home}/a"))
        );
        assert_eq!(
            expand("${HOME}/b").unwrap(),
            PathBuf::from(format!("{home}/b"))
        );
        assert_eq!(expand("/plain/path").unwrap(), PathBuf::from("/plain/path"));
        assert_eq!(expand("/cost/$5").unwrap(), PathBuf::from("/cost/$5"));
        assert!(
            expand("$TIERSTACK_SURELY_UNSET_VAR/x")
                .unwrap_err()
                .contains("TIERSTACK_SURELY_UNSET_VAR")
        );
        assert!(expand("${HOME").is_err());
        assert!(expand("${5}").is_err());
    }
}
