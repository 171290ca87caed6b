//! Cache keys of HTTP requests.
//!
//! A response is stored under its *variant* key: the method (GET and HEAD
//! apart), the URL as sent with its percent-encoding normalised (RFC 3986
//! §6.2.2: upper-case hex, unreserved characters decoded; nothing else
//! changes, so repeated query parameters and their order are kept), the
//! values of the request headers the response's `Vary` names, a
//! fingerprint of the request's credentials, and the generation of the
//! URL's index. The index (one small entry per method and URL) holds the
//! `Vary` names and the generation; a write to the URL starts a new
//! generation, which makes every variant of the old one unreachable.

use std::fmt::Write as _;

use http::{HeaderMap, Method};
use reqwest::Url;
use tierstack::Key;

/// Request headers that identify a user: a request carrying them never
/// shares an entry (or a fetch in flight) with one that carries other
/// values.
pub(crate) const CREDENTIALS: [http::HeaderName; 2] =
    [http::header::AUTHORIZATION, http::header::COOKIE];

/// The key of a URL's index entry, under its own source (`{source}:index`)
/// so that creating one is not counted as a fetch of the URL's source.
pub(crate) fn index_key(source: &str, method: &Method, url: &Url) -> Key {
    Key::new(
        format!("{source}:index"),
        [("m", method.as_str()), ("u", normalised_url(url).as_str())],
    )
}

/// The key a response to this request is stored under.
pub(crate) fn variant_key(
    source: &str,
    method: &Method,
    url: &Url,
    generation: u64,
    vary: &[String],
    headers: &HeaderMap,
    shared: bool,
) -> Key {
    let url = normalised_url(url);
    let generation = generation.to_string();
    let credentials = credentials(headers);
    let varied: Vec<(String, String)> = vary
        .iter()
        .map(|name| (format!("v.{name}"), header_values(headers, name)))
        .collect();
    let fixed = [
        ("m", Some(method.as_str())),
        ("u", Some(url.as_str())),
        ("g", Some(generation.as_str())),
        ("c", credentials.as_deref()),
        // A private cache's answers (`private` ones among them) are never
        // read by a shared cache over the same tiers.
        ("p", (!shared).then_some("1")),
    ];
    Key::new(
        source,
        fixed.into_iter().chain(
            varied
                .iter()
                .map(|(name, value)| (name.as_str(), Some(value.as_str()))),
        ),
    )
}

/// A fingerprint of the request's credentials (never the credentials: keys
/// are listed and exported), `None` without any.
fn credentials(headers: &HeaderMap) -> Option<String> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut any = false;
    for name in &CREDENTIALS {
        for value in headers.get_all(name) {
            any = true;
            hasher.update(name.as_str().as_bytes());
            hasher.update(&[0]);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
    }
    any.then(|| format!("{:032x}", hasher.digest128()))
}

/// All values of header `name`, in order, as ASCII text: bytes outside
/// visible ASCII are percent-encoded (so no Unicode normalisation applies),
/// and `%` itself, so the rendering stays injective; values are joined by
/// a byte a value cannot hold unencoded.
fn header_values(headers: &HeaderMap, name: &str) -> String {
    let mut out = String::new();
    for (i, value) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for &byte in value.as_bytes() {
            if (byte.is_ascii_graphic() && byte != b'%') || byte == b' ' {
                out.push(char::from(byte));
            } else {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

/// The URL as sent, without its fragment, with percent-encoding
/// normalised: `%2f` → `%2F`, `%41` → `A`. `Url` has already lower-cased
/// the scheme and host and dropped a default port.
pub(crate) fn normalised_url(url: &Url) -> String {
    let text = url.as_str();
    let text = text.split_once('#').map_or(text, |(before, _)| before);
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let byte = high << 4 | low;
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    out.push(char::from(byte));
                } else {
                    let _ = write!(out, "%{byte:02X}");
                }
                i += 3;
                continue;
            }
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn percent_encoding_is_normalised_and_nothing_else_changes() {
        assert_eq!(
            normalised_url(&url(
                "HTTP://API.Example.com:80/a%2fb/%41%7e?x=1&x=2&a=%e2%82%ac#frag"
            )),
            "http://api.example.com/a%2Fb/A~?x=1&x=2&a=%E2%82%AC"
        );
        // Order and repetition of query parameters are significant.
        assert_ne!(
            normalised_url(&url("http://h/p?a=1&b=2")),
            normalised_url(&url("http://h/p?b=2&a=1"))
        );
        assert_ne!(
            normalised_url(&url("http://h/p?a=1")),
            normalised_url(&url("http://h/p?a=1&a=1"))
        );
        // A trailing `%` or a bad escape is kept as sent.
        assert_eq!(
            normalised_url(&url("http://h/p?q=%zz%4")),
            "http://h/p?q=%zz%4"
        );
    }

    #[test]
    fn header_values_keep_every_byte_apart() {
        let mut a = HeaderMap::new();
        a.append("accept", http::HeaderValue::from_static("text/html"));
        let mut b = HeaderMap::new();
        b.append("accept", http::HeaderValue::from_static("text/html%0A"));
        let mut c = HeaderMap::new();
        c.append("accept", http::HeaderValue::from_static("text/html"));
        c.append("accept", http::HeaderValue::from_static(""));
        let values = [
            header_values(&a, "accept"),
            header_values(&b, "accept"),
            header_values(&c, "accept"),
        ];
        assert_ne!(values[0], values[1]);
        assert_ne!(values[0], values[2]);
        assert_ne!(values[1], values[2]);
        let mut d = HeaderMap::new();
        d.append(
            "accept",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(header_values(&d, "accept"), "caf%C3%A9");
    }

    #[derive(Debug, Clone)]
    struct Request {
        method: Method,
        url: Url,
        accept: Vec<Vec<u8>>,
        auth: Option<String>,
    }

    impl Request {
        fn headers(&self) -> HeaderMap {
            let mut headers = HeaderMap::new();
            for value in &self.accept {
                headers.append("accept", http::HeaderValue::from_bytes(value).unwrap());
            }
            if let Some(auth) = &self.auth {
                headers.append("authorization", http::HeaderValue::from_str(auth).unwrap());
            }
            headers
        }
    }

    /// Small alphabets, so that equal requests are drawn often enough.
    fn request() -> impl proptest::strategy::Strategy<Value = Request> {
        use proptest::prelude::*;
        let method = prop_oneof![Just(Method::GET), Just(Method::HEAD)];
        let path = proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("A"),
                Just("%41"),
                Just("%2f"),
                Just("%2F"),
                Just("/"),
                Just("%e9"),
                Just("é"),
                Just("~"),
                Just("%7E"),
                Just("+"),
                Just("%20")
            ],
            0..4,
        );
        let query = proptest::collection::vec(
            prop_oneof![Just("x=1"), Just("x=2"), Just("y=1"), Just("x=%31")],
            0..3,
        );
        let accept = proptest::collection::vec(
            prop_oneof![
                Just(b"a".to_vec()),
                Just(b"b".to_vec()),
                Just(b"".to_vec()),
                Just(b"a%0A".to_vec()),
                Just(b"\xe9".to_vec()),
                Just(b"a b".to_vec())
            ],
            0..3,
        );
        let auth = proptest::option::of(prop_oneof![
            Just("Bearer a".to_owned()),
            Just("Bearer b".to_owned())
        ]);
        (method, path, query, accept, auth).prop_map(|(method, path, query, accept, auth)| {
            let mut text = format!("http://h/{}", path.concat());
            if !query.is_empty() {
                text.push('?');
                text.push_str(&query.join("&"));
            }
            Request {
                method,
                url: Url::parse(&text).unwrap(),
                accept,
                auth,
            }
        })
    }

    proptest::proptest! {
        #[test]
        fn requests_that_differ_in_a_significant_byte_never_share_a_key(a in request(), b in request()) {
            let vary = ["accept".to_owned()];
            let key_a = variant_key("api", &a.method, &a.url, 7, &vary, &a.headers(), true);
            let key_b = variant_key("api", &b.method, &b.url, 7, &vary, &b.headers(), true);
            let same = a.method == b.method
                && normalised_url(&a.url) == normalised_url(&b.url)
                && a.accept == b.accept
                && a.auth == b.auth;
            proptest::prop_assert_eq!(key_a == key_b, same, "{} vs {}", key_a, key_b);
        }
    }

    #[test]
    fn generations_vary_names_and_the_cache_mode_keep_variants_apart() {
        let url = url("http://h/p");
        let headers = HeaderMap::new();
        let key = |generation, vary: &[String], shared, url: &Url| {
            variant_key("api", &Method::GET, url, generation, vary, &headers, shared)
        };
        let one = key(1, &[], true, &url);
        assert_ne!(one, key(2, &[], true, &url));
        assert_ne!(one, key(1, &["accept".to_owned()], true, &url));
        assert_ne!(
            one,
            key(1, &[], false, &url),
            "a private cache's answers apart"
        );
        assert_eq!(one, key(1, &[], true, &Url::parse("http://h/%70").unwrap()));
        assert_ne!(
            index_key("api", &Method::GET, &url),
            index_key("api", &Method::HEAD, &url)
        );
    }
}
