//! What tierstack does with the files under a store or an export, tested on
//! real files in a temporary directory: a missing store file is created
//! 0600 in 0700 directories; an existing one must be a regular file that
//! starts with the engine's magic; anything else is refused, named, and
//! left untouched.

use std::fs;
use std::io::Read;
use std::path::Path;

use tierstack_core::ErrorKind;
use tierstack_core::paths::{check_replaceable, create_private_dir, io_error, prepare_file};

const MAGIC: &[u8] = b"SQLite format 3\0";

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

fn refusal(path: &Path) -> String {
    let err = prepare_file(path, MAGIC, "SQLite").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    err.to_string()
}

#[test]
fn a_missing_file_is_created_empty_in_private_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/cache.db");
    prepare_file(&path, MAGIC, "SQLite").unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    #[cfg(unix)]
    {
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    }
    // Prepared again, the empty file it made is accepted as it is.
    prepare_file(&path, MAGIC, "SQLite").unwrap();
    create_private_dir(&dir.path().join("c/d")).unwrap();
    assert!(dir.path().join("c/d").is_dir());
}

#[test]
fn a_file_that_starts_with_the_magic_is_accepted_even_when_short() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.db");
    fs::write(&path, [MAGIC, b"pages follow"].concat()).unwrap();
    prepare_file(&path, MAGIC, "SQLite").unwrap();
    // A file shorter than the magic, that starts as it does (a store cut
    // short while it was being created).
    fs::write(&path, &MAGIC[..6]).unwrap();
    prepare_file(&path, MAGIC, "SQLite").unwrap();
}

#[test]
fn a_foreign_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("notes.txt", b"dear diary".as_slice()),
        ("one.db", b"X"),
        ("almost.db", b"SQLite format 4\0"),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        let message = refusal(&path);
        assert!(
            message.contains("not a SQLite database") && message.contains(name),
            "{message}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name} was modified");
    }
}

#[test]
fn a_directory_or_a_symbolic_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("store.db");
    fs::create_dir(&sub).unwrap();
    assert!(refusal(&sub).contains("not a regular file"));
    #[cfg(unix)]
    {
        let real = dir.path().join("real.db");
        fs::write(&real, MAGIC).unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(refusal(&link).contains("symbolic link"));
    }
}

/// Errors other than "not found" are reported as what they are, never
/// taken for a missing file to create.
#[test]
fn an_error_other_than_not_found_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    fs::write(&file, b"x").unwrap();
    // A path through a regular file: "not a directory".
    let err = prepare_file(&file.join("cache.db"), MAGIC, "SQLite").unwrap_err();
    assert!(err.to_string().contains("cannot inspect"), "{err}");
    // A directory where nothing may be created, even by root.
    #[cfg(target_os = "linux")]
    {
        let err = prepare_file(Path::new("/proc/tierstack-test.db"), MAGIC, "SQLite").unwrap_err();
        assert!(
            err.to_string().contains("cannot create the database file"),
            "{err}"
        );
    }
}

#[test]
fn io_errors_keep_a_kind_the_caller_can_act_on() {
    use std::io::{Error, ErrorKind as Io};
    let path = Path::new("/data/cache.db");
    for (io, kind) in [
        (Io::PermissionDenied, ErrorKind::PermissionDenied),
        (Io::ReadOnlyFilesystem, ErrorKind::PermissionDenied),
        (Io::StorageFull, ErrorKind::Full),
        (Io::Other, ErrorKind::Io),
    ] {
        let err = io_error(Error::from(io), path, "cannot write");
        assert_eq!(err.kind(), kind, "{io:?}");
        assert_eq!(err.message(), "cannot write /data/cache.db");
    }
}

fn never_ours(_: &mut fs::File) -> bool {
    false
}

fn ours_if_marked(file: &mut fs::File) -> bool {
    let mut text = String::new();
    file.read_to_string(&mut text).is_ok() && text.starts_with("{\"format\":\"mine\"")
}

fn replace_refusal(path: &Path) -> String {
    let err = check_replaceable(path, "a tierstack export", never_ours).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    err.to_string()
}

#[test]
fn only_a_missing_empty_or_recognised_file_may_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    assert!(!check_replaceable(&path, "a tierstack export", never_ours).unwrap());
    fs::write(&path, b"").unwrap();
    assert!(check_replaceable(&path, "a tierstack export", never_ours).unwrap());
    fs::write(&path, b"{\"format\":\"mine\"}").unwrap();
    assert!(check_replaceable(&path, "a tierstack export", ours_if_marked).unwrap());
    assert!(replace_refusal(&path).contains("does not recognise"));
}

/// A refusal names what the file is: another tier's store, tierstack's
/// other files, or the kind of special file.
#[test]
fn a_refusal_names_what_the_file_is() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, what) in [
        ("sqlite", [MAGIC, b"rest"].concat(), "a SQLite database"),
        ("redb", b"redb\x1a\x0a\xa9\x0d".to_vec(), "a redb database"),
        (
            "zstd",
            vec![0x28, 0xb5, 0x2f, 0xfd, 0],
            "zstd-compressed data",
        ),
        (
            "stats",
            b"{\"format\":\"tierstack-stats\",\"v\":1}".to_vec(),
            "a tierstack stats file",
        ),
        (
            "export",
            b"{\"format\":\"tierstack-export\"}".to_vec(),
            "a tierstack export",
        ),
        ("text", b"hello".to_vec(), "does not recognise"),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes).unwrap();
        let message = replace_refusal(&path);
        assert!(message.contains(what), "{name}: {message}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name} was modified");
    }
    let sub = dir.path().join("dir");
    fs::create_dir(&sub).unwrap();
    assert!(replace_refusal(&sub).contains("it is a directory"));
    #[cfg(unix)]
    {
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("text"), &link).unwrap();
        assert!(replace_refusal(&link).contains("a symbolic link"));
        assert!(replace_refusal(Path::new("/dev/null")).contains("a character device"));
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(replace_refusal(&socket).contains("a socket"));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert!(replace_refusal(&fifo).contains("a FIFO"));
        }
    }
}

#[test]
fn an_atomic_file_is_written_beside_its_target_and_renamed_over_it() {
    use std::io::Write;
    use tierstack_core::paths::AtomicFile;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.json");
    let mut file = AtomicFile::create(&target, "a tierstack export", never_ours).unwrap();
    file.file().write_all(b"{\"format\":\"mine\"}").unwrap();
    let beside: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        beside.len() == 1
            && beside[0].starts_with(".out.json.")
            && Path::new(&beside[0])
                .extension()
                .is_some_and(|e| e == "tmp"),
        "{beside:?}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join(&beside[0])), 0o600);
    assert!(!target.exists(), "written before the commit");
    file.commit().unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"{\"format\":\"mine\"}");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "the temporary file is left"
    );

    // A file of its own kind is replaced; one that appeared meanwhile and
    // is not is refused at the commit, untouched, and the new file dropped.
    let mut again = AtomicFile::create(&target, "a tierstack export", ours_if_marked).unwrap();
    again
        .file()
        .write_all(b"{\"format\":\"mine\",\"n\":2}")
        .unwrap();
    again.commit().unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"{\"format\":\"mine\",\"n\":2}");
    let late = AtomicFile::create(&target, "a tierstack export", ours_if_marked).unwrap();
    fs::write(&target, b"someone else's").unwrap();
    let err = late.commit().unwrap_err();
    assert!(err.to_string().contains("does not recognise"), "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"someone else's");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "the temporary file is left"
    );
}

#[test]
fn an_atomic_file_in_a_missing_directory_is_a_clear_error() {
    use tierstack_core::paths::AtomicFile;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("missing/out.json");
    let err = AtomicFile::create(&target, "a tierstack export", never_ours).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A destination that cannot be looked at is an error, not a free place.
#[test]
fn a_destination_that_cannot_be_inspected_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    fs::write(&file, b"x").unwrap();
    let err =
        check_replaceable(&file.join("out.json"), "a tierstack export", never_ours).unwrap_err();
    assert!(err.to_string().contains("cannot inspect"), "{err}");
}
