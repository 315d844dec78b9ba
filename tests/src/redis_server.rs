//! A Redis server of a test's own, on a loopback port of its own, for tests
//! that must restart, fill, reconfigure or stop Redis (never the shared one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Keeps what it writes in an append-only file, so that a restart keeps the
/// streams (as a production Redis with persistence does).
pub const PERSISTENT: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];
/// Keeps nothing: a restart comes back empty, as many deployments run.
pub const EPHEMERAL: &[&str] = &["--appendonly", "no"];

/// A `redis-server` child process; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server on a free port with `args` (say [`PERSISTENT`]),
    /// keeping its files in `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> RedisServer {
        let mut server = RedisServer::on_port(free_port(), dir, args);
        server.launch();
        server
    }

    /// A server for `port` that is not started yet: [`RedisServer::launch`]
    /// starts it (for a host that must start before its Redis).
    pub fn on_port(port: u16, dir: &Path, args: &[&str]) -> RedisServer {
        RedisServer {
            port,
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a server that speaks only TLS, on a free port, with the
    /// server certificate `server` signed by `ca`; `clients_need_certs`
    /// makes it require a client certificate signed by `ca` (mutual TLS).
    /// Stop it by dropping it (`stop` speaks plain TCP).
    pub fn start_tls(
        dir: &Path,
        ca: &Path,
        server: &crate::certs::Identity,
        clients_need_certs: bool,
    ) -> RedisServer {
        let port = free_port();
        let port_text = port.to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port_text,
            "--appendonly",
            "no",
            "--tls-cert-file",
            server.cert.to_str().unwrap(),
            "--tls-key-file",
            server.key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.to_str().unwrap(),
            "--tls-auth-clients",
            if clients_need_certs { "yes" } else { "no" },
        ];
        let mut server = RedisServer::on_port(port, dir, &args);
        server.launch();
        server
    }

    /// The `rediss://` URL of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "own redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Shuts the server down (it writes its append-only file if it keeps
    /// one) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
