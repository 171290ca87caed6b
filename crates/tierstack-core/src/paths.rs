//! Paths: expansion for config files (`~` and `$VAR` / `${VAR}`), and the
//! checks that keep tierstack from writing over a file that is not its own.

use std::fs;
use std::io::{Read as _, Seek as _};
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
        let home = variable("HOME").map_err(|why| format!("cannot expand ~ in {path:?}: {why}"))?;
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
        let value = variable(&name).map_err(|why| format!("{why} (in {path:?})"))?;
        out.push_str(&value);
    }
    Ok(out)
}

/// An environment variable's value, or why there is none to use.
fn variable(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| match e {
        std::env::VarError::NotPresent => format!("environment variable {name} is not set"),
        std::env::VarError::NotUnicode(_) => {
            format!("environment variable {name} is not valid UTF-8")
        }
    })
}

/// The default location of a store file or directory named `name`:
/// `$XDG_CACHE_HOME/tierstack/NAME` when set, else `~/.cache/tierstack/NAME`
/// (expanded when the tier opens).
pub fn default_cache_path(name: &str) -> String {
    cache_path_under(std::env::var("XDG_CACHE_HOME").ok().as_deref(), name)
}

/// [`default_cache_path`] with `$XDG_CACHE_HOME` given.
fn cache_path_under(xdg_cache_home: Option<&str>, name: &str) -> String {
    xdg_cache_home.filter(|dir| !dir.is_empty()).map_or_else(
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

/// Names the formats of the stores tierstack's tiers keep, so that a
/// refusal says what the file is.
fn describe_head(head: &[u8]) -> Option<&'static str> {
    const FORMATS: &[(&[u8], &str)] = &[
        (b"SQLite format 3\0", "a SQLite database"),
        (b"redb", "a redb database"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd-compressed data"),
    ];
    // tierstack's own JSON files name their format near the start.
    const OWN: &[(&[u8], &str)] = &[
        (b"\"tierstack-stats\"", "a tierstack stats file"),
        (b"\"tierstack-export\"", "a tierstack export"),
    ];
    FORMATS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .or_else(|| {
            OWN.iter()
                .find(|(marker, _)| head.windows(marker.len()).any(|w| w == *marker))
        })
        .map(|&(_, name)| name)
}

fn describe_type(file_type: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Tells whether an existing file (read from its start) is one tierstack
/// wrote and may replace.
pub type Recognise = fn(&mut fs::File) -> bool;

/// Checks that a new file of `kind` may take the place of `path`: it is
/// missing, or it is an empty regular file, or a regular file (not a
/// symbolic link, device, FIFO, socket or directory) that `is_ours`
/// recognises. Anything else, a store of any tier first of all, is refused
/// and left untouched. Returns whether the file exists.
pub fn check_replaceable(path: &Path, kind: &str, is_ours: Recognise) -> Result<bool, Error> {
    let not_ours = |what: &str| {
        refuse(
            path,
            &format!(
                "it is {what}, not {kind}; tierstack only replaces its own files (the file was left untouched)"
            ),
        )
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(e, path, "cannot inspect")),
    };
    if !meta.is_file() {
        return Err(not_ours(describe_type(meta.file_type())));
    }
    let mut options = fs::OpenOptions::new();
    options.read(true);
    // The file may have been swapped since we looked: never follow a link,
    // never block on a FIFO, and look again at what was opened.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NOFOLLOW | libc::O_NONBLOCK,
    );
    let mut file = options
        .open(path)
        .map_err(|e| io_error(e, path, "cannot read"))?;
    let meta = file
        .metadata()
        .map_err(|e| io_error(e, path, "cannot inspect"))?;
    if !meta.is_file() {
        return Err(not_ours(describe_type(meta.file_type())));
    }
    if meta.len() == 0 || is_ours(&mut file) {
        return Ok(true);
    }
    let mut head = [0u8; 64];
    let n = file
        .rewind()
        .and_then(|()| file.read(&mut head))
        .unwrap_or(0);
    Err(not_ours(describe_head(&head[..n]).unwrap_or(
        "a file tierstack does not recognise as one of its own",
    )))
}

/// A file written under a fresh temporary name beside its destination and
/// renamed over it once complete, so that an interrupted write leaves the
/// old file whole. The temporary file is created exclusively (a planted
/// file or symbolic link of that name is never opened; another random name
/// is tried) with mode 0600, and removed if the write is abandoned. The
/// destination is checked with [`check_replaceable`] before anything is
/// written and again just before the rename.
#[derive(Debug)]
pub struct AtomicFile {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
    kind: &'static str,
    is_ours: Recognise,
}

impl AtomicFile {
    /// Starts a file that will replace `target`; `kind` names what it holds
    /// (for refusals) and `is_ours` recognises an older one.
    pub fn create(target: &Path, kind: &'static str, is_ours: Recognise) -> Result<Self, Error> {
        check_replaceable(target, kind, is_ours)?;
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        let name = target
            .file_name()
            .map_or_else(|| "tierstack".into(), |n| n.to_string_lossy());
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp").rand_bytes(8);
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let temp = builder.tempfile_in(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::config(format!(
                    "cannot create {}: the directory {} does not exist",
                    target.display(),
                    dir.display()
                ))
                .with_operation(Operation::Build)
                .with_source(e)
            } else {
                io_error(e, target, "cannot create a file beside")
            }
        })?;
        Ok(Self {
            temp,
            target: target.to_owned(),
            kind,
            is_ours,
        })
    }

    /// The file being written.
    pub fn file(&mut self) -> &mut fs::File {
        self.temp.as_file_mut()
    }

    /// Flushes the file to disk and renames it over the destination.
    pub fn commit(self) -> Result<(), Error> {
        let target = self.target;
        self.temp
            .as_file()
            .sync_all()
            .map_err(|e| io_error(e, &target, "cannot write"))?;
        // Another process may have put something there while we wrote.
        let exists = check_replaceable(&target, self.kind, self.is_ours)?;
        let persisted = if exists {
            self.temp.persist(&target)
        } else {
            // Fails, instead of replacing, if a file appeared since.
            self.temp.persist_noclobber(&target)
        };
        persisted.map_err(|e| io_error(e.error, &target, "cannot write"))?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Best effort: the rename survives a crash only once the
            // directory is on disk too.
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
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

    /// The documented default: under `$XDG_CACHE_HOME` when it is set and
    /// not empty, else under `~/.cache`, in a `tierstack` directory.
    #[test]
    fn the_default_cache_path_is_under_the_users_cache_directory() {
        assert_eq!(
            cache_path_under(Some("/var/cache/me"), "cache.db"),
            "/var/cache/me/tierstack/cache.db"
        );
        for unset in [None, Some("")] {
            assert_eq!(
                cache_path_under(unset, "cache.db"),
                "~/.cache/tierstack/cache.db"
            );
        }
        let xdg = std::env::var("XDG_CACHE_HOME").ok();
        assert_eq!(
            default_cache_path("x"),
            cache_path_under(xdg.as_deref(), "x")
        );
    }
}
