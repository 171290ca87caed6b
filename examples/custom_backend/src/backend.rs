use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tierstack_core::{
    Bytes, Capabilities, ClearScope, DecodeLimits, Entry, Error, ErrorKind, Health, Key, Operation,
    Result, ScanCursor, ScanPage, Tier, TierSize, Timestamp, async_trait,
};

use crate::error::io;
use crate::{CAPABILITIES, FilesConfig};

/// Numbers temporary files, unique per process and write, so concurrent
/// writers never share one.
static WRITES: AtomicU64 = AtomicU64::new(0);

const STRUCTURE_ONLY: DecodeLimits = DecodeLimits {
    max_raw_len: u32::MAX,
};

/// One file per entry, named by the hash of its key. A file holds the key's
/// length and text, then the entry bytes; the key is checked on read, so a
/// hash collision is a miss, not a wrong value. Writes go to a temporary file
/// renamed into place, so readers never see half a file.
#[derive(Debug)]
pub struct FilesTier {
    name: String,
    dir: PathBuf,
    max_ttl: Option<Duration>,
}

impl FilesTier {
    /// Opens (creating) the directory of `config` for schema `schema_version`.
    pub fn open(config: &FilesConfig, schema_version: u32) -> Result<Self> {
        let base = tierstack_core::paths::expand(&config.dir).map_err(Error::config)?;
        let dir = base.join(format!("v{schema_version}"));
        tierstack_core::paths::create_private_dir(&dir)?;
        Ok(Self {
            name: config.name.clone(),
            dir,
            max_ttl: config.ttl,
        })
    }

    fn path(&self, key: &Key) -> PathBuf {
        let hash = xxhash_rust::xxh3::xxh3_128(key.as_str().as_bytes());
        self.dir.join(format!("{hash:032x}.entry"))
    }

    async fn read(&self, path: &Path) -> Result<Option<(String, Entry)>> {
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e, path, Operation::Get)),
        };
        let corrupt = || Error::new(ErrorKind::Corrupt, format!("{} is damaged", path.display()));
        let len = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let key_end = len
            .map(|l| 4 + l)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(corrupt)?;
        let key = std::str::from_utf8(&bytes[4..key_end])
            .map_err(|_| corrupt())?
            .to_owned();
        let entry = Entry::from_bytes(Bytes::copy_from_slice(&bytes[key_end..]), STRUCTURE_ONLY)
            .map_err(|e| corrupt().with_source(e))?;
        Ok(Some((key, entry)))
    }

    async fn entries(&self) -> Result<Vec<(PathBuf, String, Entry)>> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(|e| io(e, &self.dir, Operation::Scan))?;
        while let Some(item) = dir
            .next_entry()
            .await
            .map_err(|e| io(e, &self.dir, Operation::Scan))?
        {
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("entry") {
                continue;
            }
            if let Ok(Some((key, entry))) = self.read(&path).await {
                out.push((path, key, entry));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Tier for FilesTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn max_ttl(&self) -> Option<Duration> {
        self.max_ttl
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let now = Timestamp::now();
        Ok(self
            .read(&self.path(key))
            .await?
            .filter(|(stored, entry)| stored == key.as_str() && entry.header.is_retained(now))
            .map(|(_, entry)| entry))
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        let path = self.path(key);
        let mut bytes = Vec::with_capacity(4 + key.as_str().len() + entry.encoded_len());
        bytes.extend_from_slice(&(key.as_str().len() as u32).to_le_bytes());
        bytes.extend_from_slice(key.as_str().as_bytes());
        bytes.extend_from_slice(&entry.to_vec());
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| io(e, &tmp, Operation::Set))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io(e, &path, Operation::Set))
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let path = self.path(key);
        match self.read(&path).await? {
            Some((stored, _)) if stored == key.as_str() => {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io(e, &path, Operation::Delete)),
                }
            }
            _ => Ok(false),
        }
    }

    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        let now = Timestamp::now();
        let mut removed = 0;
        for (path, key, entry) in self.entries().await? {
            let doomed = match &scope {
                ClearScope::Source(source) => Key::parse(&key).is_ok_and(|k| k.source() == source),
                ClearScope::Expired => !entry.header.is_fresh(now),
                _ => true,
            };
            if doomed && tokio::fs::remove_file(&path).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn size(&self) -> Result<TierSize> {
        let entries = self.entries().await?;
        Ok(TierSize {
            entries: entries.len() as u64,
            bytes: entries
                .iter()
                .map(|(_, k, e)| (k.len() + e.encoded_len()) as u64)
                .sum(),
        })
    }

    /// One page with every live entry, in key order (the example keeps it
    /// simple; a real backend would page).
    async fn scan(&self, _cursor: Option<ScanCursor>, _limit: usize) -> Result<ScanPage> {
        let now = Timestamp::now();
        let mut entries: Vec<(Key, Entry)> = self
            .entries()
            .await?
            .into_iter()
            .filter(|(_, _, e)| e.header.is_retained(now))
            .filter_map(|(_, k, e)| Key::parse(&k).ok().map(|k| (k, e)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ScanPage {
            entries,
            next: None,
        })
    }

    async fn health(&self) -> Health {
        match tokio::fs::metadata(&self.dir).await {
            Ok(m) if m.is_dir() => Health::Healthy,
            Ok(_) => Health::Unhealthy(format!("{} is not a directory", self.dir.display())),
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
