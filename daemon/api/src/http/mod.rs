//! Serving the API over HTTP/1.1 with limits a hostile client cannot get around: a
//! deadline for the request head (which also closes connections that send nothing and
//! keep-alive connections left idle), a cap on open connections below the open-files
//! limit, and a graceful drain on shutdown. (The body deadline is the API's, applied
//! after the token check: see `api::AppState::body_timeout`.)
//!
//! `axum::serve` has none of these knobs (it runs hyper without a timer), so this is
//! the accept loop of axum's `serve-with-hyper` example with hyper's own
//! `header_read_timeout` and hyper-util's `GracefulShutdown`. What hyper itself answers
//! (heads it cannot parse) and connections beyond the limit get problem+json too: see
//! [`refusals`].

pub mod refusals;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use refusals::{MAX_HEAD_BYTES, MAX_HEADERS, MAX_LINGERING_REFUSALS, ProblemTransport};

/// Connection limits of the API server (`[api]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A client must send a complete request head within this long of connecting or of
    /// the previous response; otherwise the connection is closed. This is also the
    /// idle timeout of keep-alive connections.
    pub header_timeout: Duration,
    /// Connections open at once; beyond it a new connection is closed at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// File descriptors kept free for everything but API connections (state files, netlink
/// sockets, pinned maps, WireGuard UAPI sockets, logs).
pub const RESERVED_FDS: u64 = 256;

/// Length of the accept queue asked for (the kernel caps it at `net.core.somaxconn`,
/// 4096 by default). Tokio's default of 1024 overflows when thousands of clients
/// connect at once; the kernel then drops the handshake's last ACK, and a probe waits
/// for a SYN retransmission (1 s and more) instead of being answered.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft open-files limit to the hard limit; the resulting soft limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// The connection cap that fits `open_files`: `wanted`, or less if the file limit
/// minus [`RESERVED_FDS`] is lower (at least 1).
pub fn connection_cap(wanted: usize, open_files: u64) -> usize {
    let fits = usize::try_from(open_files.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    wanted.min(fits).max(1)
}

/// Serves `app` on `listener` with `limits` until `stop` resolves; then accepts nothing
/// more, lets open requests finish and closes idle connections, and returns when every
/// connection is gone (bound that wait with a timeout).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
    let at_limit = AtomicBool::new(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Bounds what a connection that never finishes its head can make the server
        // hold (hyper's default is ~400 KiB each).
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) if is_transient(&e) => {
                    // Out of file descriptors or a connection reset before accept: wait
                    // a moment rather than spin, and go on serving the open ones.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            () = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if !at_limit.swap(true, Ordering::Relaxed) {
                warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: closing new connections until some close"
                );
            }
            debug!(%peer, "connection refused: at the connection limit");
            refusals::refuse(stream, lingering.clone().try_acquire_owned().ok());
            continue;
        };
        if at_limit.swap(false, Ordering::Relaxed) {
            info!("below the connection limit again");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful
            .watch(builder.serve_connection(TokioIo::new(ProblemTransport::new(stream)), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection closed");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Accept errors that concern one connection or a passing shortage, not the listener.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_file_limit() {
        assert_eq!(connection_cap(4096, 1024), 768);
        assert_eq!(connection_cap(4096, 1 << 20), 4096);
        assert_eq!(connection_cap(4096, 10), 1);
    }
}
