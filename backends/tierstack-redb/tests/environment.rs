//! redb behaviour that needs something of the machine: root, to mount a
//! small tmpfs (a disk that fills up). Without it the test is reported as
//! ignored with the reason, or fails under `TIERSTACK_REQUIRE_ENVIRONMENT`.

use std::sync::Arc;
use std::time::Duration;

use tierstack::{Bytes, Codec, CompressionKind, Entry, EntryMeta, ErrorKind, Key, Tier, Timestamp};
use tierstack_conformance::environment::{self, Outcome, SmallDisk, block_on, ran};
use tierstack_redb::{RedbConfig, RedbTier};

fn key(name: &str) -> Key {
    Key::new("environment", [("k", name)])
}

fn entry(key: &Key, len: usize) -> Entry {
    let body: Vec<u8> = (0..len)
        .map(|i| b'a' + ((i * 7 + len) % 26) as u8)
        .collect();
    Entry::from_body(
        EntryMeta::new(key, 1, Timestamp::now()),
        Codec::Json,
        CompressionKind::None,
        0,
        len as u32,
        Bytes::from(body),
    )
}

/// A full disk fails the batch it happens in with an error of kind `Full`
/// naming the file; redb then refuses every later write (`PreviousIo`)
/// until the tier is opened again, so a batch retried request by request
/// cannot save the others, and no acknowledged write is lost: what was
/// committed stays readable, also after a reopen.
fn a_full_disk_fails_writes_clearly_and_keeps_what_was_committed() -> Outcome {
    let disk = match SmallDisk::mount(4 << 20) {
        Ok(disk) => disk,
        Err(unavailable) => return unavailable,
    };
    block_on(async move {
        let path = disk.path().join("full.redb");
        let tier = Arc::new(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap());
        let mut acknowledged = Vec::new();
        for i in 0..20 {
            let k = key(&format!("before{i}"));
            tier.set(&k, entry(&k, 500)).await.unwrap();
            acknowledged.push(k);
        }
        // Built beforehand, so that every request reaches the queue at once.
        let requests: Vec<(Key, Entry)> = (0..21)
            .map(|i| {
                let k = key(&format!("batch{i}"));
                let len = if i == 10 { 16 << 20 } else { 500 };
                let e = entry(&k, len);
                (k, e)
            })
            .collect();
        // One write keeps the writer busy while the others queue behind it.
        let busy = {
            let tier = Arc::clone(&tier);
            let e = entry(&key("busy"), 1 << 20);
            tokio::spawn(async move { tier.set(&key("busy"), e).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut handles = Vec::new();
        for (k, e) in requests {
            let tier = Arc::clone(&tier);
            handles.push(tokio::spawn(
                async move { (k.clone(), tier.set(&k, e).await) },
            ));
        }
        if busy.await.unwrap().is_ok() {
            acknowledged.push(key("busy"));
        }
        // The batch failed: a full disk, and then, for each request retried
        // alone, the database that redb no longer writes.
        let mut failed = 0;
        for (k, result) in futures_join(handles).await {
            match result {
                Ok(()) => acknowledged.push(k),
                Err(e) => {
                    failed += 1;
                    let message = e.to_string();
                    assert!(
                        matches!(e.kind(), ErrorKind::Full | ErrorKind::Io)
                            && message.contains("full.redb")
                            && (message.contains("no space left")
                                || message.contains("after an earlier I/O error")),
                        "{k}: {e:?}"
                    );
                }
            }
        }
        assert!(failed >= 1, "a 16 MiB entry fitted on a 4 MiB disk");
        // Every later write fails, naming the file and why; reads go on.
        let err = tier
            .set(&key("later"), entry(&key("later"), 10))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err:?}");
        assert!(
            err.to_string().contains("full.redb") && err.to_string().contains("opened again"),
            "{err}"
        );
        for k in &acknowledged {
            assert!(
                tier.get(k).await.unwrap().is_some(),
                "{k} acknowledged but lost"
            );
        }
        drop(tier);
        let reopened = RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap();
        for k in &acknowledged {
            assert!(
                reopened.get(k).await.unwrap().is_some(),
                "{k} lost after a reopen"
            );
        }
        assert!(reopened.get(&key("batch10")).await.unwrap().is_none());
    });
    ran()
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

fn main() {
    environment::main(vec![(
        "a_full_disk_fails_writes_clearly_and_keeps_what_was_committed",
        a_full_disk_fails_writes_clearly_and_keeps_what_was_committed,
    )]);
}
