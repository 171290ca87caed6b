//! Real processes on one redb file: `kill -9` while writing with durable
//! commits (every acknowledged write survives and the file reopens), and a
//! second process gets a clear "locked" error. Scale with
//! `TIERSTACK_CRASH_CYCLES`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tierstack::Tier;
use tierstack_conformance::processes::{ProcessSuite, main as run};
use tierstack_redb::{RedbConfig, RedbTier};

/// redb checks (and if needed repairs) the file when it is opened; a file
/// that cannot be opened fails the cycle.
fn integrity(path: &Path) -> Result<(), String> {
    let mut db = redb::Database::open(path).map_err(|e| e.to_string())?;
    match db.check_integrity() {
        Ok(true) => Ok(()),
        Ok(false) => Err("integrity check repaired the file".into()),
        Err(e) => Err(e.to_string()),
    }
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
