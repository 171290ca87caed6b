static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

struct Book {
    title: String,
}

#[tierstack::cached(cache = CACHE, source = "books")]
async fn book(id: u32) -> Option<Book> {
    Some(Book { title: id.to_string() })
}

fn main() {}
