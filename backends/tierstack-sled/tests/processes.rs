//! Real processes on one sled directory: `kill -9` while writing with
//! `flush: always` (every acknowledged, flushed write survives), and a second
//! process gets a clear "locked" error. Scale with `TIERSTACK_CRASH_CYCLES`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tierstack::Tier;
use tierstack_conformance::processes::{ProcessSuite, main as run};
use tierstack_sled::{SledConfig, SledTier};

/// sled recovers its log when opened, and cuts a damaged log short rather
/// than failing, so opening proves little. The check reads every entry of
/// every tree: each must be a whole tierstack entry (its header parses, its
/// body has the declared length and checksum), and the tree of entries must
/// not be empty, since each cycle acknowledged writes before the crash.
fn integrity(path: &Path) -> Result<(), String> {
    use tierstack_core::envelope::{DecodeLimits, Entry};
    use tierstack_core::{Bytes, Dictionaries};
    let db = sled::open(path).map_err(|e| format!("open: {e}"))?;
    let mut entries = 0u64;
    for name in db.tree_names() {
        if !name.starts_with(b"entries_v") {
            continue;
        }
        let tree = db.open_tree(&name).map_err(|e| e.to_string())?;
        for item in &tree {
            let (key, bytes) = item.map_err(|e| format!("reading the log: {e}"))?;
            let damaged = |e| format!("entry {} is damaged: {e}", String::from_utf8_lossy(&key));
            let entry = Entry::from_bytes(Bytes::copy_from_slice(&bytes), DecodeLimits::default())
                .map_err(damaged)?;
            entry
                .raw_body(DecodeLimits::default(), &Dictionaries::default())
                .map_err(damaged)?;
            entries += 1;
        }
    }
    if entries == 0 {
        return Err("no entries survived".into());
    }
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
