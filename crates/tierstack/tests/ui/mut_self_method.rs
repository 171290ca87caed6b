struct Counter {
    cache: tierstack::TieredCache,
    calls: u32,
}

impl Counter {
    #[tierstack::cached(cache = self.cache, source = "counts")]
    async fn count(&mut self, id: u32) -> Option<u32> {
        self.calls += 1;
        Some(id)
    }
}

fn main() {}
