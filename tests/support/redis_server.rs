//! A `redis-server` of the test's own, on a free loopback port, stopped when dropped.
//!
//! The binary comes from `PATH`. When it is missing, [`RedisServer::start`] prints a loud
//! message and returns `None` (the caller skips), unless `PARAPET_REQUIRE_REDIS=1` is set
//! (the CI script sets it), in which case it panics.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Start a server on a free port, or `None` when the binary is missing and not required.
    pub fn start() -> Option<RedisServer> {
        if !available() {
            let required = std::env::var("PARAPET_REQUIRE_REDIS").is_ok_and(|v| v == "1");
            let message = "redis-server was not found on PATH: the Redis tests are SKIPPED. \
                           Install it (`apt-get install redis-server`) to run them; \
                           `.ci/run` installs it and requires them.";
            assert!(!required, "{message}");
            eprintln!("\n!!!!!!!!!!\n!!! {message}\n!!!!!!!!!!\n");
            return None;
        }
        let port = free_port();
        Some(RedisServer::start_on(port))
    }

    /// Start a server on `port` (e.g. again after [`stop`](Self::stop)).
    pub fn start_on(port: u16) -> RedisServer {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "notice",
                "--logfile",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // Ready when it says so; its output is read on a thread so a silent server cannot
        // hang the test past the deadline below.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!("redis-server on port {port} did not become ready within 20 s");
        }
        RedisServer {
            child: Some(child),
            port,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kill it (SIGKILL: no goodbye to clients) and wait until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen server must go on to die.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze it (SIGSTOP): connections stay open and nothing answers, as a hung server.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Let a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([which, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {which} {pid}");
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let again = RedisServer::start_on(self.port);
        *self = again;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `redis-server` can be run.
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A loopback port nobody listens on (as the system hands them out).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
