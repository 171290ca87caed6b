static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

#[tierstack::cached(cache = CACHE, source = "pathinfo")]
fn extract_path_info(path: &str) -> String {
    path.to_uppercase()
}

fn main() {}
