#[tierstack::cached(source = "books")]
async fn book(id: u32) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
