//! The API server's own limits and error envelope (issue 11, item 5): every error the
//! server can produce is problem+json, oversized bodies are 413, only JSON is JSON, a
//! duplicate key points at itself, what the HTTP parser refuses is problem+json too, and
//! connections that send nothing, trickle their headers or their body, or come beyond
//! the connection limit are closed (the last told why).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use remapd::http::{HttpLimits, serve_http};
use support::*;

#[tokio::test]
async fn every_error_is_a_problem() {
    let app = app("problems");
    // 405 keeps its Allow header.
    let req = Request::builder()
        .method("PATCH")
        .uri("/v1/cluster")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(app.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(res.headers().contains_key("allow"), "{:?}", res.headers());
    let r = call(&app, "PATCH", "/v1/cluster", None, Some(TOKEN)).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, "", None);
    // A query the extractor cannot parse.
    let r = call(
        &app,
        "GET",
        "/v1/translate?address=1.2.3.4&address=x",
        None,
        None,
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "", None);
    let r = call(&app, "GET", "/v1/translate?bogus", None, None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "", None);
    // A URI longer than the server takes.
    let long = format!("/v1/peerings/{}", "a".repeat(20_000));
    let r = call(&app, "GET", &long, None, None).await;
    assert_problem(&r, StatusCode::URI_TOO_LONG, "", None);
}

#[tokio::test]
async fn bodies_are_bounded_and_only_json_is_json() {
    let app = app("bodies");
    // Larger than any body the API takes: 413, for JSON and for a policy upload alike.
    let big = vec![b' '; 100 << 20];
    let r = raw(&app, "PUT", "/v1/cluster", "application/json", big.clone()).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "", None);
    let r = raw(&app, "PUT", "/v1/policies/big", "application/wasm", big).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "", None);
    // A JSON body over the JSON limit (but under the upload limit) too.
    let mut json = b"{\"name\": \"".to_vec();
    json.extend(std::iter::repeat_n(b'a', 2 << 20));
    json.extend(b"\"}");
    let r = raw(&app, "PUT", "/v1/cluster", "application/json", json).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "", None);

    let body = serde_json::to_vec(&cluster()).unwrap();
    for ct in [
        "application/jsonp",
        "application/json-patch+json",
        "text/json",
        "application/jsonx; charset=utf-8",
    ] {
        let r = raw(&app, "PUT", "/v1/cluster", ct, body.clone()).await;
        assert_problem(
            &r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
            None,
        );
    }
    for ct in ["application/json", "Application/JSON; charset=utf-8"] {
        let r = raw(&app, "PUT", "/v1/cluster", ct, body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{ct}: {}", r.body);
    }
    // Nothing was changed by the refused ones.
    assert_eq!(
        call(&app, "GET", "/v1/cluster", None, None).await.body,
        cluster()
    );

    // A duplicate key points at itself, not at the document.
    let dup = br#"{"name": "c", "pod_cidrs": ["40.0.0.0/24"], "name": "d"}"#.to_vec();
    let r = raw(&app, "PUT", "/v1/cluster", "application/json", dup).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "duplicate", Some("/name"));
    let dup = br#"{"policy": "auto", "remote": {"name": "x", "name": "y", "pod_cidrs": []}, "tunnel": {"listen_port": 51820}}"#.to_vec();
    let r = raw(&app, "PUT", "/v1/peerings/p", "application/json", dup).await;
    assert_problem(
        &r,
        StatusCode::BAD_REQUEST,
        "duplicate",
        Some("/remote/name"),
    );
}

/// A server on an ephemeral loopback port with `limits`; stopped when dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _app: App,
}

impl Server {
    async fn start(limits: HttpLimits, body_timeout: Duration) -> Self {
        let app = app_with_body_timeout(fresh_dir("server"), body_timeout);
        let listener = remapd::http::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_http(listener, app.router.clone(), limits, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
            _app: app,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Blocking: waits (at most `within`) for the peer to close `s`; what it sent first.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<String> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned());
            }
            Err(_) => return None,
        }
    }
}

fn healthz(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    closed_within(&mut s, Duration::from_secs(10)).expect("healthz answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_excess_connections_are_closed() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(300),
        max_connections: 8,
    };
    let server = Server::start(limits, Duration::from_millis(300)).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        // Sends nothing.
        let mut idle = TcpStream::connect(addr).unwrap();
        // Sends its request line and then one header byte every 100 ms.
        let mut trickle = TcpStream::connect(addr).unwrap();
        trickle.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let trickler = {
            let mut t = trickle.try_clone().unwrap();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if t.write_all(b"x").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        // Sends its headers and then a body that never completes.
        let mut slow_body = TcpStream::connect(addr).unwrap();
        slow_body
            .write_all(
                format!(
                    "PUT /v1/cluster HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .unwrap();
        // A keep-alive connection after its request is idle too.
        let mut kept = TcpStream::connect(addr).unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();

        // Liveness bounds (10 s), far above the 300 ms limits: the point is that they close.
        let bound = Duration::from_secs(10);
        assert!(closed_within(&mut idle, bound).is_some(), "idle connection stayed open");
        assert!(closed_within(&mut trickle, bound).is_some(), "trickling headers stayed open");
        let answer = closed_within(&mut slow_body, bound).expect("slow body stayed open");
        assert!(
            answer.starts_with("HTTP/1.1 408") && answer.contains("application/problem+json"),
            "{answer}"
        );
        let answer = closed_within(&mut kept, bound).expect("keep-alive stayed open");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        trickler.join().unwrap();

        // Up to the limit, connections are held; beyond it, closed at once; the
        // server answers again when they are gone.
        let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        let mut excess = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut excess, Duration::from_millis(250)).is_some(),
            "a connection beyond the limit was not closed at once"
        );
        assert!(started.elapsed() < Duration::from_millis(250));
        drop(held);
        let mut answered = false;
        for _ in 0..100 {
            if healthz(addr).starts_with("HTTP/1.1 200") {
                answered = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(answered, "the server did not answer after the held connections closed");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_with_many_idle_connections_open() {
    let limits = HttpLimits {
        max_connections: 2_100,
        ..HttpLimits::default()
    };
    // This process holds both ends of every connection.
    remapd::http::raise_open_files_limit().unwrap();
    let server = Server::start(limits, remapd::api::DEFAULT_BODY_TIMEOUT).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let idle: Vec<TcpStream> = (0..2_000)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let answer = healthz(addr);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(idle);
    })
    .await
    .unwrap();
}

/// Blocking: sends `request` on a new connection and returns everything the server sent
/// before closing (at most 10 s).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    // The server may answer and close before it has read everything: a failed write
    // of the rest is expected then.
    let _ = s.write_all(request);
    closed_within(&mut s, Duration::from_secs(10)).expect("the server answered and closed")
}

/// Asserts `answer` is a complete problem+json response with `status`.
fn assert_raw_problem(answer: &str, status: u16) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "not a {status}: {head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "not problem+json: {head}"
    );
    assert!(
        lower.contains(&format!("content-length: {}", body.len())),
        "length does not match the body: {head}"
    );
    let problem: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(problem["status"], status, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .starts_with("https://remapd.dev/problems/"),
        "{problem}"
    );
    assert!(!problem["detail"].as_str().unwrap().is_empty(), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_refuses_get_problems_too() {
    // Requests refused while the head is parsed, before any handler or middleware
    // runs: hyper answers those itself with an empty body.
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(10),
        max_connections: 2,
    };
    let server = Server::start(limits, Duration::from_secs(10)).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        // A request target the API refuses (over 8 KiB), and one over hyper's 64 KiB.
        let target = format!("/v1/peerings/{}", "a".repeat(60_000));
        let answer = exchange(
            addr,
            format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        );
        assert_raw_problem(&answer, 414);
        let target = format!("/v1/peerings/{}", "a".repeat(70_000));
        let answer = exchange(
            addr,
            format!("GET {target} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
        );
        assert_raw_problem(&answer, 414);
        // A head larger than the read buffer.
        let big = format!(
            "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "b".repeat(600_000)
        );
        assert_raw_problem(&exchange(addr, big.as_bytes()), 431);
        // More header fields than the parser takes.
        let mut many = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
        for i in 0..200 {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_raw_problem(&exchange(addr, many.as_bytes()), 431);
        // A head that parses but whose header is malformed, not HTTP at all, and a request target with a control character.
        assert_raw_problem(
            &exchange(addr, b"GET / HTTP/1.1\r\nbad header\r\n\r\n"),
            400,
        );
        assert_raw_problem(
            &exchange(
                addr,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            ),
            400,
        );
        assert_raw_problem(
            &exchange(addr, b"GET /a\x01b HTTP/1.1\r\nhost: x\r\n\r\n"),
            400,
        );
        // The second request on a keep-alive connection too, after a normal answer.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 512];
        let n = s.read(&mut first).unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
        let _ = s.write_all(format!("GET {target} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
        let answer = closed_within(&mut s, Duration::from_secs(10)).unwrap();
        assert_raw_problem(&answer, 414);
        // A connection beyond the limit is told why before it is closed.
        let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_raw_problem(&answer, 503);
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: "),
            "{answer}"
        );
        drop(held);
    })
    .await
    .unwrap();
}
