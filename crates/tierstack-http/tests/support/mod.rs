//! What the HTTP tests share.

use tierstack::{Entry, Key, Tier};

/// Every entry `tier` holds, read page by page.
pub(crate) async fn all_entries(tier: &dyn Tier) -> Vec<(Key, Entry)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = tier.scan(cursor, 100).await.unwrap();
        out.extend(page.entries);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}
