//! `tierstack proxy` as a user starts it: in front of a real HTTP server
//! (Python's `http.server` over a directory), answers cached by RFC 9111's
//! heuristic, the control endpoints, a config `proxy:` section, SIGTERM
//! ending it cleanly.

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use support::Sandbox;

/// A directory served by `python3 -m http.server` on a free port; the
/// file's modification time ten days ago makes its answers fresh for a
/// day by the heuristic (a tenth of its age).
struct Upstream {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Files ten days old, served.
fn upstream() -> Upstream {
    let dir = tempfile::tempdir().unwrap();
    let ten_days_ago = SystemTime::now() - Duration::from_secs(10 * 86_400);
    for (name, body) in [
        ("book.json", r#"{"title":"Dune"}"#),
        ("stale.json", r#"{"title":"Emma"}"#),
        ("other.json", r#"{"title":"Ubik"}"#),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, body).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(ten_days_ago)
            .unwrap();
    }
    let port = free_port();
    Upstream {
        child: serve(dir.path(), port),
        port,
        dir,
    }
}

impl Upstream {
    /// Kills the server (`kill -9`: its connections die with it).
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Serves the same directory on the same port again.
    fn restart(&mut self) {
        self.child = serve(self.dir.path(), self.port);
    }
}

#[allow(clippy::zombie_processes)] // `Upstream`'s drop kills and waits for it
fn serve(dir: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("http.server did not start");
}

/// One HTTP/1.1 GET; the status line, the headers (lower-case names) and
/// the body.
fn get(port: u16, path: &str) -> (String, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Waits for the proxy's "listening on http://ADDR" line; its port.
fn listening(child: &mut Child) -> (u16, BufReader<std::process::ChildStderr>) {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let address = rest.split_whitespace().next().unwrap();
            let port = address.rsplit(':').next().unwrap().parse().unwrap();
            return (port, stderr);
        }
    }
    let _ = child.kill();
    panic!("the proxy did not say where it listens; last line: {line}");
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the proxy did not stop on SIGTERM");
}

#[test]
fn the_proxy_caches_answers_serves_its_endpoints_and_stops_on_sigterm() {
    let upstream = upstream();
    let sandbox = Sandbox::new();
    let target = format!("http://127.0.0.1:{}", upstream.port);
    let mut proxy = sandbox.spawn(&["proxy", "--upstream", &target, "--listen", "127.0.0.1:0"]);
    let (port, mut stderr) = listening(&mut proxy);

    let (status, headers, body) = get(port, "/book.json");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, r#"{"title":"Dune"}"#);
    assert_eq!(header(&headers, "x-cache"), Some("MISS"));
    let (_, headers, body) = get(port, "/book.json");
    assert_eq!(header(&headers, "x-cache"), Some("HIT"), "{headers:?}");
    assert_eq!(body, r#"{"title":"Dune"}"#);
    let (status, _, body) = get(port, "/_tierstack/health");
    assert!(
        status.contains("200") && body.contains(r#""status":"ok""#),
        "{status} {body}"
    );
    let (_, _, body) = get(port, "/_tierstack/stats");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let source = format!("127.0.0.1:{}", upstream.port);
    assert_eq!(stats["cache"]["sources"][&source]["hits"], 1, "{stats}");
    assert_eq!(stats["cache"]["sources"][&source]["fetches"], 1, "{stats}");
    let (status, headers, body) = get(port, "/_tierstack/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("text/plain")));
    let hits = format!("tierstack_source_hits_total{{source=\"{source}\"}} 1");
    assert!(body.lines().any(|l| l == hits), "no `{hits}` in:\n{body}");

    let status = terminate(&mut proxy);
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("proxied") && rest.contains("cache=HIT"),
        "access log: {rest}"
    );
    assert!(rest.contains("tierstack proxy: stopped"), "{rest}");
    assert!(
        !rest.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {rest}"
    );
}

#[test]
fn the_config_proxy_section_routes_prefixes_and_bad_input_is_a_usage_error() {
    let upstream = upstream();
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "proxy.yaml",
        &format!(
            "cache:\n  tiers:\n    - kind: memory\nproxy:\n  listen: 127.0.0.1:0\n  upstreams:\n    - prefix: /files\n      url: http://127.0.0.1:{}\n  routes:\n    - /{{name}}\n  overrides:\n    - path: /book\n      source: books\n      ttl: 1h\n",
            upstream.port
        ),
    );
    let config = config.to_str().unwrap();
    let mut proxy = sandbox.spawn(&["--config", config, "proxy"]);
    let (port, _stderr) = listening(&mut proxy);
    let (_, headers, body) = get(port, "/files/book.json");
    assert_eq!(body, r#"{"title":"Dune"}"#);
    assert_eq!(header(&headers, "x-cache"), Some("MISS"));
    let (status, ..) = get(port, "/elsewhere");
    assert!(status.contains("404"), "no route: {status}");
    // Not on the upstream (a 404, not stored), but looked up under its route.
    get(port, "/files/other.json");
    let (_, _, body) = get(port, "/_tierstack/stats");
    assert!(body.contains(r#""books""#), "the override's source: {body}");
    // Overrides and routes match the upstream's path (the prefix replaced).
    assert!(body.contains("/{name}"), "the route's source: {body}");
    assert!(terminate(&mut proxy).success());

    let routes = sandbox.write(
        "routes.yaml",
        "cache:\n  tiers:\n    - kind: memory\nproxy:\n  upstreams:\n    - url: http://127.0.0.1:1\n  routes:\n    - books/{asin}\n",
    );
    let bad_route = sandbox
        .run(&["--config", routes.to_str().unwrap(), "proxy"])
        .expect(2);
    assert!(
        bad_route.stderr.contains("proxy.routes") && bad_route.stderr.contains("starts with '/'"),
        "{bad_route:?}"
    );

    let none = sandbox.run(&["proxy", "--listen", "127.0.0.1:0"]).expect(2);
    assert!(none.stderr.contains("no upstream"), "{none:?}");
    let bad = sandbox
        .run(&["proxy", "--upstream", "ftp://example"])
        .expect(2);
    assert!(bad.stderr.contains("http or https"), "{bad:?}");
    let listen = sandbox
        .run(&[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            "here",
        ])
        .expect(2);
    assert!(listen.stderr.contains("listen address"), "{listen:?}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let busy = sandbox
        .run(&[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            &address,
        ])
        .expect(3);
    assert!(busy.stderr.contains("cannot listen"), "{busy:?}");
}

/// With its upstream killed, the proxy still serves fresh answers, and
/// stale ones inside the stale window; the rest fail at once (the
/// connection is refused: a `502`); once the upstream is back it is used
/// again at the next request.
#[test]
fn with_the_upstream_down_fresh_and_stale_answers_are_served_and_it_is_used_again_when_back() {
    let mut upstream = upstream();
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "down.yaml",
        &format!(
            "cache:\n  stale_for: 1h\n  tiers:\n    - kind: memory\nproxy:\n  listen: 127.0.0.1:0\n  timeout: 5s\n  upstreams:\n    - url: http://127.0.0.1:{}\n  overrides:\n    - path: /stale.json\n      ttl: 1s\n",
            upstream.port
        ),
    );
    let mut proxy = sandbox.spawn(&["--config", config.to_str().unwrap(), "proxy"]);
    let (port, _stderr) = listening(&mut proxy);
    for path in ["/book.json", "/stale.json"] {
        let (status, headers, _) = get(port, path);
        assert!(status.contains("200"), "{path}: {status}");
        assert_eq!(header(&headers, "x-cache"), Some("MISS"), "{path}");
    }
    std::thread::sleep(Duration::from_millis(1300));
    upstream.kill();
    let (status, headers, body) = get(port, "/book.json");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        (header(&headers, "x-cache"), body.as_str()),
        (Some("HIT"), r#"{"title":"Dune"}"#)
    );
    let (status, headers, body) = get(port, "/stale.json");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        (header(&headers, "x-cache"), body.as_str()),
        (Some("STALE"), r#"{"title":"Emma"}"#)
    );
    let asked = std::time::Instant::now();
    let (status, ..) = get(port, "/other.json");
    assert!(status.contains("502"), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "not within the timeout: {:?}",
        asked.elapsed()
    );
    upstream.restart();
    let back = std::time::Instant::now();
    let (status, headers, body) = get(port, "/other.json");
    assert!(status.contains("200"), "not used again at once: {status}");
    assert_eq!(
        (header(&headers, "x-cache"), body.as_str()),
        (Some("MISS"), r#"{"title":"Ubik"}"#)
    );
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
    assert!(terminate(&mut proxy).success());
}

/// An upstream that takes connections and never answers is a `504` once
/// `proxy.timeout` has passed.
#[test]
fn a_hung_upstream_is_a_504_after_the_configured_timeout_and_sigterm_waits_for_it() {
    let port = free_port();
    // Listens, never accepts: connections wait in its backlog unanswered.
    let mut hung = Command::new("python3")
        .args([
            "-c",
            "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen(64)\ntime.sleep(120)",
            &port.to_string(),
        ])
        .spawn()
        .expect("python3");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "hung.yaml",
        &format!(
            "cache:\n  tiers:\n    - kind: memory\nproxy:\n  listen: 127.0.0.1:0\n  timeout: 1s\n  upstreams:\n    - url: http://127.0.0.1:{port}\n"
        ),
    );
    let mut proxy = sandbox.spawn(&["--config", config.to_str().unwrap(), "proxy"]);
    let (listen, _stderr) = listening(&mut proxy);
    let asked = std::time::Instant::now();
    let (status, ..) = get(listen, "/anything");
    let waited = asked.elapsed();
    assert!(status.contains("504"), "{status}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "answered after {waited:?}, the timeout is 1 s"
    );
    // A SIGTERM while a request waits: that request is still answered
    // (here, its 504 when the timeout ends), then the proxy stops.
    let in_flight = std::thread::spawn(move || get(listen, "/in-flight").0);
    std::thread::sleep(Duration::from_millis(300));
    let stopped = terminate(&mut proxy);
    let status = in_flight.join().unwrap();
    let _ = hung.kill();
    let _ = hung.wait();
    assert!(
        status.contains("504"),
        "the request in flight was cut off: {status:?}"
    );
    assert!(stopped.success());
}
