//! [`InFlight`]: how many requests the demo app is answering right now, counted by the
//! guard [`InFlight::enter`] hands out. `/`, `/slow`, `/upload`, an event stream and an
//! open websocket each hold one, so the graceful shutdown in
//! [`serve`](crate::server::serve) waits for all of them, up to its grace.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How many requests (and open websockets) are being answered right now.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Returns once nothing is in flight. Polls: a count only the guards change needs no
    /// wakeups, and shutdown is the only caller.
    pub async fn drained(&self) {
        while self.get() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Decrements on drop, so a request whose client went away is not counted forever.
#[derive(Debug)]
pub struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::SeqCst);
    }
}
