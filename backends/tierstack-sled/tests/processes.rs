//! Real processes on one sled directory: `kill -9` while writing with
//! `flush: always` (every acknowledged, flushed write survives), and a second
//! process gets a clear "locked" error. Scale with `TIERSTACK_CRASH_CYCLES`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tierstack::Tier;
use tierstack_conformance::processes::{ProcessSuite, main as run};
use tierstack_sled::{SledConfig, SledTier};

/// sled recovers its log when opened; a directory that cannot be opened fails
/// the cycle.
fn integrity(path: &Path) -> Result<(), String> {
    let db = sled::open(path).map_err(|e| e.to_string())?;
    db.checksum().map(drop).map_err(|e| e.to_string())
}

fn main() {
    run(&ProcessSuite {
        name: "sled",
        open: |path: PathBuf| {
            Box::pin(async move {
                let tier = SledTier::open(&SledConfig::new(path), 1)?;
                Ok(Arc::new(tier) as Arc<dyn Tier>)
            })
        },
        integrity,
        multi_process: false,
    });
}
