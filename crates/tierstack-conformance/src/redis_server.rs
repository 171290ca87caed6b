//! Real `redis-server` processes for tests: a single server, a 3-master
//! Cluster, a server with `requirepass` and an ACL user, a TLS server, each
//! on free ports, each killed when its guard is dropped.
//!
//! Every server also has a watchdog (a `sh` loop) that kills it when the
//! test process is gone, so a guard held in a `static` (never dropped) or a
//! test killed half-way leaves nothing running.
//!
//! With `TIERSTACK_REDIS_URL` set, [`RedisServer::shared_or_start`] uses
//! that server instead of starting one (tests then isolate themselves by
//! prefix).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What tests print when a server cannot be started.
const INSTALL_HINT: &str = "redis-server and redis-cli are needed by these tests: \
     install them (Debian/Ubuntu: `apt-get install -y redis-server`, macOS: `brew install redis`) \
     or point TIERSTACK_REDIS_URL at a server you own";

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    url: String,
    /// Kept so that the directory outlives the server.
    _tmp: Option<tempfile::TempDir>,
}

/// A free TCP port on loopback whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A prefix no other test uses, for isolation on a shared server.
pub fn unique_prefix(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}-{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn ping(port: u16, password: Option<&str>) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if let Some(password) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
        if stream.write_all(auth.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0_u8; 64];
        if stream.read(&mut buf).is_err() {
            return false;
        }
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0_u8; 64];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Runs `redis-cli` with `args` against `port`; panics with its output on
/// failure.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); {INSTALL_HINT}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Starts `sh -c` that kills `pid` once this process is gone.
fn watchdog(pid: u32) {
    let me = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

impl RedisServer {
    /// Starts a plain server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[], None)
    }

    /// `TIERSTACK_REDIS_URL` if set (nothing started, the guard does
    /// nothing), else a new server.
    pub fn shared_or_start() -> Self {
        match std::env::var("TIERSTACK_REDIS_URL") {
            Ok(url) if !url.is_empty() => Self {
                child: None,
                port: 0,
                dir: PathBuf::new(),
                args: Vec::new(),
                url,
                _tmp: None,
            },
            _ => Self::start(),
        }
    }

    /// Starts a server with extra `redis-server` arguments; `password` is
    /// used to check that it is up.
    pub fn start_with(extra: &[&str], password: Option<&str>) -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().to_owned();
        let port = free_port();
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut server = Self {
            child: None,
            port,
            dir,
            args,
            url: format!("redis://127.0.0.1:{port}"),
            _tmp: Some(tmp),
        };
        server.spawn(password);
        server
    }

    fn spawn(&mut self, password: Option<&str>) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "server.log"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); {INSTALL_HINT}"));
        watchdog(child.id());
        self.child = Some(child);
        self.wait_until_up(password);
    }

    fn wait_until_up(&mut self, password: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port, password) {
                return;
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    panic!("redis-server exited ({status}): {log}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// `redis://127.0.0.1:PORT` (or `TIERSTACK_REDIS_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("a server this guard started")
            .id()
    }

    /// SIGKILL: the server is gone, its connections reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(None);
    }

    /// SIGSTOP: the server keeps its connections but answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server ignores SIGKILL until continued on some systems.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// A Redis Cluster of three masters, no replicas, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three servers and joins them with `redis-cli --cluster create`.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                    None,
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(nodes[0].port(), &args);
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let all_ok = self
                .nodes
                .iter()
                .all(|n| redis_cli(n.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if all_ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not reach cluster_state:ok within 20 s");
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url().to_owned()).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// TLS material for a server: a CA, and a server certificate it signed for
/// `127.0.0.1` and `localhost`, made with the `openssl` command.
#[derive(Debug)]
pub struct TlsFiles {
    /// The CA certificate (PEM), to trust.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Makes the files; `Err` says why not (no `openssl`).
    pub fn make() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let p = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .map_err(|e| format!("cannot run openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=tierstack test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .map_err(|e| e.to_string())?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ])?;
        Ok(Self {
            ca: p("ca.crt"),
            cert: p("server.crt"),
            key: p("server.key"),
            _dir: dir,
        })
    }
}

/// Starts a server that speaks only TLS, or says why it cannot (a
/// `redis-server` built without TLS, no `openssl`).
pub fn start_tls_server() -> Result<(RedisServer, TlsFiles), String> {
    let files = TlsFiles::make()?;
    let probe = Command::new("redis-server")
        .args(["--tls-port", "0", "--port", "0", "--test-memory", "1"])
        .output();
    if let Ok(out) = &probe {
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase()
            + &String::from_utf8_lossy(&out.stderr).to_lowercase();
        if text.contains("not built with tls") || text.contains("tls support is not") {
            return Err("this redis-server was built without TLS support".to_owned());
        }
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--tls-port")
        .arg(port.to_string())
        .arg("--tls-cert-file")
        .arg(&files.cert)
        .arg("--tls-key-file")
        .arg(&files.key)
        .arg("--tls-ca-cert-file")
        .arg(&files.ca)
        .args(["--tls-auth-clients", "no"])
        .arg("--dir")
        .arg(tmp.path())
        .args(["--logfile", "server.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))?;
    watchdog(child.id());
    let mut server = RedisServer {
        child: Some(child),
        port,
        dir: tmp.path().to_owned(),
        args: Vec::new(),
        url: format!("rediss://127.0.0.1:{port}"),
        _tmp: Some(tmp),
    };
    // Plain PING cannot check a TLS port: wait for the port to accept.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if let Some(child) = &mut server.child {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
                return Err(format!("redis-server with TLS exited ({status}): {log}"));
            }
        }
        if Instant::now() > deadline {
            return Err("the TLS server did not open its port within 10 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, files))
}
