//! Real processes on one redb file: `kill -9` while writing with durable
//! commits (every acknowledged write survives and the file reopens), and a
//! second process gets a clear "locked" error. Scale with
//! `TIERSTACK_CRASH_CYCLES`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tierstack::Tier;
use tierstack_conformance::processes::{ProcessSuite, main as run};
use tierstack_redb::{RedbConfig, RedbTier};

/// redb repairs a file that was not closed cleanly when it is opened, so a
/// check after a plain open could only pass. The check runs on a copy,
/// which keeps the crashed file for the tier's own reopen: the copy must
/// open (repairing what the crash left) and then pass `check_integrity`
/// with nothing more to repair; a damaged file fails one or the other.
fn integrity(path: &Path) -> Result<(), String> {
    let copy = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::copy(path, copy.path()).map_err(|e| e.to_string())?;
    // redb 4.6 panics on some damaged pages instead of returning an error;
    // a panic is a failed check too.
    let checked = std::panic::catch_unwind(|| {
        let mut db = redb::Database::create(copy.path()).map_err(|e| format!("open: {e}"))?;
        match db.check_integrity() {
            Ok(true) => Ok(()),
            Ok(false) => Err("the file needed a second repair after opening".to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    checked.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Err(format!("redb panicked reading the file: {why}"))
    })
}

fn main() {
    run(&ProcessSuite {
        name: "redb",
        open: |path: PathBuf| {
            Box::pin(async move {
                let tier = RedbTier::open(&RedbConfig::new(path), 1).await?;
                Ok(Arc::new(tier) as Arc<dyn Tier>)
            })
        },
        integrity,
        multi_process: false,
    });
}
