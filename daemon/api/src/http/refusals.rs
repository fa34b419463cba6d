//! Answers the server gives before the API's router sees a request, as problem+json
//! like every other error: the requests hyper refuses while parsing the head, and
//! connections beyond the connection limit.
//!
//! hyper answers a head it cannot parse (400), a request target over its 64 KiB limit
//! (414) or a head over its read buffer or with too many fields (431) itself, with an
//! empty body, and offers no hook to change that answer. [`ProblemTransport`] sits
//! between hyper and the socket and replaces exactly those answers: a `4xx` head with
//! `connection: close`, `content-length: 0` and no `content-type`, which the API never
//! writes (every error response of the router is problem+json, see
//! `api::problem_for_every_error`). Everything else passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::problem::Problem;

/// Longest request head hyper reads (its read buffer), stated in the 431 answer.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a request head, stated in the 431 answer.
pub const MAX_HEADERS: usize = 100;

/// A complete `application/problem+json` response that closes the connection.
fn problem_response(problem: &Problem, extra_headers: &str) -> Vec<u8> {
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len(),
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The problem for hyper's own answer to an unparseable head, if `head` is one.
fn replacement_for(head: &[u8]) -> Option<Vec<u8>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let mut closes = false;
    let mut empty = false;
    let mut date = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => return None,
            "connection" => closes = value.eq_ignore_ascii_case("close"),
            "content-length" => empty = value == "0",
            "date" => date = Some(value.to_owned()),
            _ => {}
        }
    }
    if !(closes && empty && end + 4 == head.len()) {
        return None;
    }
    let detail = match code {
        400 => "the request is not valid HTTP/1.1: its request line or a header field is malformed"
            .to_owned(),
        414 => "the request target is longer than the server reads (64 KiB; the API itself takes at most 8 KiB)"
            .to_owned(),
        431 => format!(
            "the request head is larger than the server reads: at most {} KiB and {MAX_HEADERS} header fields",
            MAX_HEAD_BYTES / 1024
        ),
        _ => return None,
    };
    let status = StatusCode::from_u16(code).ok()?;
    let date = date.map(|d| format!("date: {d}\r\n")).unwrap_or_default();
    Some(problem_response(
        &Problem::from_status(status, detail),
        &date,
    ))
}

/// The socket under hyper, replacing hyper's bodiless parse-error answers with
/// problem+json (see the module documentation). Writes are not vectored, so hyper
/// hands over each response head in one buffer.
pub struct ProblemTransport<S> {
    inner: S,
    /// A replacement being written, and how much of it is written.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<S> ProblemTransport<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            replacing: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ProblemTransport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ProblemTransport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none() {
            match replacement_for(buf) {
                Some(bytes) => this.replacing = Some((bytes, 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper calls again with the same buffer while this is pending.
        if let Some((bytes, written)) = &mut this.replacing {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        this.replacing = None;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// How long a connection refused at the limit is kept to drain what the client sent,
/// so the refusal is not lost to a reset.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Refusals lingering at once; beyond it a refused connection is just closed.
pub const MAX_LINGERING_REFUSALS: usize = 64;

/// Tells a connection beyond the connection limit why it is refused (503 problem with
/// `retry-after`), then closes it: at once when more than
/// [`MAX_LINGERING_REFUSALS`] are already lingering, else after draining its request
/// for a moment (closing with unread input resets the connection, and the client
/// would lose the answer).
pub fn refuse(stream: TcpStream, linger: Option<tokio::sync::OwnedSemaphorePermit>) {
    let problem = Problem::from_status(
        StatusCode::SERVICE_UNAVAILABLE,
        "the API is at its connection limit; retry when some connections have closed",
    );
    let answer = problem_response(&problem, "retry-after: 1\r\n");
    // Never waits: a refusal that does not fit the socket buffer is cut short.
    let _ = stream.try_write(&answer);
    let Some(permit) = linger else { return };
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_errors_are_replaced() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 16:11:07 GMT\r\n\r\n";
        let out = String::from_utf8(replacement_for(hyper).unwrap()).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(out.contains("content-type: application/problem+json\r\n"));
        assert!(out.contains("date: Wed, 02 Dec 2026 16:11:07 GMT\r\n"));
        let body = out.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        assert_eq!(
            v["type"],
            "https://remapd.dev/problems/request-header-fields-too-large"
        );
        // The API's own answers are left alone: a problem, a success, a keep-alive error
        // without the close, a head followed by body bytes.
        for head in [
            &b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/problem+json\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx",
            b"{\"HTTP/1.1 400\"}",
        ] {
            assert!(replacement_for(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
