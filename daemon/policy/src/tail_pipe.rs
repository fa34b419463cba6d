//! A policy's stderr: the last bytes written are kept, so the end of what a policy
//! says before it fails (an uncaught exception's message, which is what
//! `HostState::stderr_tail` reports) survives however much it wrote before. Writes
//! always succeed: a chatty policy is never failed for filling its stderr.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much one write may hand over at a time (it is all accepted).
const WRITE_PERMIT: usize = 64 << 10;

/// Keeps the last `capacity` bytes written to it; clones share the bytes.
#[derive(Clone, Debug)]
pub(crate) struct TailPipe {
    capacity: usize,
    bytes: Arc<Mutex<VecDeque<u8>>>,
}

impl TailPipe {
    /// A pipe keeping the last `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            bytes: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let mut bytes = self.lock();
        bytes.extend(data);
        let excess = bytes.len().saturating_sub(self.capacity);
        bytes.drain(..excess);
    }

    /// The bytes kept: the last `capacity` written.
    pub(crate) fn contents(&self) -> Vec<u8> {
        self.lock().iter().copied().collect()
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However much comes first, the last bytes are kept and every write is accepted.
    #[test]
    fn the_last_bytes_are_kept_and_writes_never_fail() {
        let pipe = TailPipe::new(16);
        let mut stream = pipe.p2_stream();
        for _ in 0..1000 {
            assert!(stream.check_write().unwrap() > 0);
            stream.write(Bytes::from_static(b"noise noise\n")).unwrap();
        }
        stream.write(Bytes::from_static(b"Error: boom\n")).unwrap();
        assert_eq!(pipe.contents(), b"noise\nError: boom\n"[2..].to_vec());
        // One write longer than the capacity keeps its own end.
        stream
            .write(Bytes::from(
                vec![b'x'; 100]
                    .into_iter()
                    .chain(*b"the end")
                    .collect::<Vec<u8>>(),
            ))
            .unwrap();
        assert_eq!(pipe.contents(), b"xxxxxxxxxthe end".to_vec());
    }
}
