//! Real processes on one SQLite file: `kill -9` while writing (every
//! acknowledged write survives, `integrity_check` is `ok`), and 4 writer + 4
//! reader processes at once (no `SQLITE_BUSY` reaches a caller, no write is
//! lost). Scale with `TIERSTACK_CRASH_CYCLES` and `TIERSTACK_MULTIPROCESS_SECS`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tierstack::Tier;
use tierstack_conformance::processes::{ProcessSuite, main as run};
use tierstack_sqlite::{SqliteConfig, SqliteTier};

fn integrity(path: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(verdict)
    }
}

fn main() {
    run(&ProcessSuite {
        name: "sqlite",
        open: |path: PathBuf| {
            Box::pin(async move {
                let tier = SqliteTier::open(&SqliteConfig::new(path), 1).await?;
                Ok(Arc::new(tier) as Arc<dyn Tier>)
            })
        },
        integrity,
        multi_process: true,
    });
}
