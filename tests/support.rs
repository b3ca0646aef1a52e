//! Shared helpers for the end-to-end tests: free loopback ports, loud skips, waiting.
//!
//! A test that needs Docker or nginx calls [`require_nginx`] / [`require_docker`]: where
//! `CI` is set a missing component fails the test; elsewhere the test says loudly that it
//! skipped. Tests wait with [`eventually`], never with bare sleeps.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails under CI, skips loudly elsewhere. Returns whether the test may go on.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required when CI is set, and it is missing");
    }
    eprintln!("SKIPPED: {what} is missing (set CI=1 to make this a failure)");
    false
}

/// The nginx binary, if installed.
pub fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub fn require_nginx() -> Option<PathBuf> {
    let found = nginx();
    require(found.is_some(), "nginx (apt-get install nginx)").then(|| found.unwrap())
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let since = Instant::now();
    while since.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}
