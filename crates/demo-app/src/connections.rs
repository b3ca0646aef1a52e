//! Connections the demo app can cut. [`TrackedListener`] accepts like a [`TcpListener`] and
//! registers each connection in [`OpenConnections`], so that when the shutdown grace runs
//! out [`OpenConnections::close_all`] closes them at once and their requests get no
//! response, as when the process exits. axum serves each connection on a task of its own,
//! so without this they would outlive [`serve`](crate::server::serve).

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The connections a [`TrackedListener`] accepted that are still open.
#[derive(Debug, Clone, Default)]
pub struct OpenConnections(Arc<Mutex<Registry>>);

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    /// A duplicate of each open connection's socket, to shut it down from outside the task
    /// that serves it.
    sockets: HashMap<u64, std::net::TcpStream>,
}

impl OpenConnections {
    /// Shuts every open connection down both ways: its client sees it close without a
    /// response, and the task serving it reads end of stream.
    pub fn close_all(&self) {
        for socket in self.registry().sockets.values() {
            // Fails only for a socket that is already disconnected.
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn track(&self, stream: TcpStream) -> io::Result<TrackedStream> {
        let socket = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        let mut registry = self.registry();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.sockets.insert(id, socket);
        Ok(TrackedStream {
            stream,
            id,
            open: self.clone(),
        })
    }
}

/// A [`TcpListener`] whose connections are registered in an [`OpenConnections`].
#[derive(Debug)]
pub struct TrackedListener {
    listener: TcpListener,
    open: OpenConnections,
}

impl TrackedListener {
    pub fn new(listener: TcpListener, open: OpenConnections) -> TrackedListener {
        TrackedListener { listener, open }
    }
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        loop {
            // axum's own accept, which retries and backs off on accept errors.
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            match self.open.track(stream) {
                Ok(stream) => return (stream, addr),
                // Out of file descriptors, most likely. A connection that could not be cut
                // when the grace runs out is not served at all.
                Err(err) => {
                    eprintln!(
                        "demo-app: closing the connection from {addr}: cannot track it: {err}"
                    )
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection; leaves its [`OpenConnections`] when dropped.
#[derive(Debug)]
pub struct TrackedStream {
    stream: TcpStream,
    id: u64,
    open: OpenConnections,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.open.registry().sockets.remove(&self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
