//! [`MetricsServer`]: the HTTP/1.1 server that serves [`Metrics`] (see the
//! [parent module](super), "The HTTP responder"), on hyper.
//!
//! One route, one request per connection, no keep-alive. Everything a client can make it do is
//! bounded: the bytes of a request head (hyper answers 431 beyond), the time to send it
//! (hyper's header-read timeout closes the connection), the time to read the answer, and the
//! connections served at once, where a connection still waiting for its head gives way to a
//! newer one, so idle connections cannot keep a scraper out.
//!
//! The format follows the `Accept` header: a client that accepts
//! `application/openmetrics-text` (Prometheus does by default) gets OpenMetrics
//! ([`CONTENT_TYPE`]); any other gets the Prometheus text format 0.0.4
//! ([`TEXT_CONTENT_TYPE`](super::TEXT_CONTENT_TYPE)), which older tools and `promtool` read.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, ALLOW, CONNECTION, CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use super::{Metrics, TEXT_CONTENT_TYPE, lock};

/// The `Content-Type` of a scrape: the OpenMetrics text format, which is what
/// prometheus-client writes (counters end in `_total`, the body ends with `# EOF`). Prometheus
/// asks for it by default.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bounds of the [`MetricsServer`] against hostile or broken clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// The longest request head (request line and headers) read; a longer one gets 431.
    /// Default 8 KiB, which is also the least hyper takes (a smaller value counts as 8 KiB).
    pub max_head_bytes: usize,
    /// The time a client has to send its whole request head, counted from the accept; then
    /// the connection is closed. Writing the response has as long again. Default 5 s.
    pub io_timeout: Duration,
    /// Connections served at once. One more takes the slot of the oldest connection that has
    /// not sent its whole request head; when every connection is being answered, it is closed
    /// at once. Default 16.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            io_timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// Serves [`Metrics`] over HTTP/1.1 at `/metrics` (see the module docs). Stops when
/// [`stop`](Self::stop) is called (the port is free when it returns) or when the server is
/// dropped.
#[derive(Debug)]
pub struct MetricsServer {
    /// The bound address (the real port when 0 was asked).
    local_addr: SocketAddr,
    /// Aborts the accept loop, which owns the connection tasks.
    abort: AbortHandle,
    /// The accept loop, until [`stop`](Self::stop) awaits its end.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `metrics` on the current tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Metrics,
        limits: ServerLimits,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, metrics, limits));
        Ok(Self {
            local_addr,
            abort: task.abort_handle(),
            task: Mutex::new(Some(task)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and aborts the scrapes in progress, closing their connections; the
    /// listener is closed when this returns. Idempotent.
    pub async fn stop(&self) {
        self.abort.abort();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            // Cancelled: the error says so; the future, and with it the listener, is dropped.
            let _ = task.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// The accept loop. Connection tasks live in a `JoinSet` owned here, so aborting this task
/// aborts them too.
///
/// When `max_connections` are being served, a new connection takes the slot of the oldest one
/// that has not sent its whole request head yet (its task is aborted, closing it unanswered):
/// idle or trickling connections cannot keep a scraper out, since a scraper sends its head
/// right after connecting. Only when every slot is writing a response is the newcomer closed
/// at once, unread.
async fn serve(listener: TcpListener, metrics: Metrics, limits: ServerLimits) {
    let mut tasks = JoinSet::new();
    // The connections being served, oldest first.
    let mut conns: Vec<Conn> = Vec::with_capacity(limits.max_connections);
    let mut pause = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(5);
                    if conns.len() >= limits.max_connections {
                        let Some(oldest) = oldest_without_head(&conns) else {
                            // Every slot is answering: dropped here, closed unread.
                            continue;
                        };
                        conns.remove(oldest).abort.abort();
                    }
                    let metrics = metrics.clone();
                    let head_read = Arc::new(AtomicBool::new(false));
                    let flag = head_read.clone();
                    let abort = tasks.spawn(async move {
                        // A failed connection concerns only its client.
                        let _ = serve_connection(stream, &metrics, limits, &flag).await;
                    });
                    conns.push(Conn { abort, head_read });
                }
                Err(_) => {
                    // A full file table, say: wait, so the loop does not spin.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                // An evicted connection was removed already.
                conns.retain(|c| c.abort.id() != id);
            }
        }
    }
}

/// A connection being served.
#[derive(Debug)]
struct Conn {
    /// Aborts its task (closing the socket).
    abort: AbortHandle,
    /// Set once its request head has been read (or the head phase ended otherwise): from then
    /// on it is being answered and keeps its slot.
    head_read: Arc<AtomicBool>,
}

/// The oldest connection (they are in accept order) still waiting for its request head.
fn oldest_without_head(conns: &[Conn]) -> Option<usize> {
    conns
        .iter()
        .position(|c| !c.head_read.load(Ordering::Acquire))
}

/// Serves one request on `stream` with hyper and closes the connection. Sets `head_read` once
/// the request head has been read (hyper calls the service only then).
async fn serve_connection(
    stream: TcpStream,
    metrics: &Metrics,
    limits: ServerLimits,
    head_read: &AtomicBool,
) -> Result<(), hyper::Error> {
    let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| {
        head_read.store(true, Ordering::Release);
        let response = route(&request, metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.io_timeout)
        .max_buf_size(limits.max_head_bytes.max(MIN_BUF_SIZE))
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    // The head within `io_timeout` (hyper's timer), the answer within as long again.
    match tokio::time::timeout(limits.io_timeout.saturating_mul(2), connection).await {
        Ok(result) => result,
        Err(_elapsed) => Ok(()), // Dropped: closed.
    }
}

/// The least read buffer hyper accepts (`max_buf_size` panics below it).
const MIN_BUF_SIZE: usize = 8 * 1024;

/// The answer to a request.
fn route<B>(request: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND);
    }
    match *request.method() {
        Method::GET | Method::HEAD => {}
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
    }
    let openmetrics = request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_openmetrics);
    let (body, content_type) = if openmetrics {
        (metrics.encode(), CONTENT_TYPE)
    } else {
        (metrics.encode_prometheus(), TEXT_CONTENT_TYPE)
    };
    // For HEAD, hyper sends the length of this body and leaves the body out.
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether an `Accept` header value lists OpenMetrics text with a non-zero quality.
fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut params = item.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        let refused = params.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// A short `text/plain` answer for `status`.
fn plain(status: StatusCode) -> Response<Full<Bytes>> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE_HEADER,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn routes_and_formats() {
        let m = Metrics::new();
        let request = |method: &str, path: &str, accept: Option<&str>| {
            let mut b = Request::builder().method(method).uri(path);
            if let Some(a) = accept {
                b = b.header(ACCEPT, a);
            }
            route(&b.body(()).unwrap(), &m)
        };
        assert_eq!(request("GET", "/metrics", None).status(), 200);
        assert_eq!(request("HEAD", "/metrics", None).status(), 200);
        assert_eq!(request("GET", "/", None).status(), 404);
        let post = request("POST", "/metrics", None);
        assert_eq!(post.status(), 405);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        let content_type =
            |accept| request("GET", "/metrics?x=1", accept).headers()[CONTENT_TYPE_HEADER].clone();
        // What Prometheus sends, and what curl sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(content_type(Some(prometheus)), CONTENT_TYPE);
        assert_eq!(content_type(Some("*/*")), TEXT_CONTENT_TYPE);
        assert_eq!(content_type(None), TEXT_CONTENT_TYPE);
        assert_eq!(
            content_type(Some("application/openmetrics-text; q=0, text/plain")),
            TEXT_CONTENT_TYPE
        );
    }

    #[test]
    fn accept_lists_are_read_item_by_item() {
        assert!(accepts_openmetrics("application/openmetrics-text"));
        assert!(accepts_openmetrics(
            "text/plain, APPLICATION/OpenMetrics-Text;q=0.5"
        ));
        assert!(!accepts_openmetrics("application/openmetrics-text;q=0"));
        assert!(!accepts_openmetrics("text/plain;version=0.0.4"));
        assert!(!accepts_openmetrics(""));
    }

    /// A server on 127.0.0.1:0 with `limits`.
    async fn server(limits: ServerLimits) -> MetricsServer {
        MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Metrics::new(), limits)
            .await
            .unwrap()
    }

    /// Writes `request`, then reads everything until the server closes (bounded by a
    /// generous timeout that only a broken server reaches).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("server did not close the connection")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let server = server(ServerLimits::default()).await;
        let addr = server.local_addr();
        let ok = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n",
        )
        .await;
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(
            head.contains(&format!(
                "content-type: {}",
                CONTENT_TYPE.to_ascii_lowercase()
            )),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"));
        let text = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            text.to_ascii_lowercase()
                .contains(&format!("content-type: {}", TEXT_CONTENT_TYPE)),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");

        let lf_only = exchange(addr, b"GET /metrics HTTP/1.0\n\n").await;
        // hyper answers in the request's version.
        assert!(lf_only.starts_with("HTTP/1.0 200 OK\r\n"), "{lf_only}");
        let missing = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let bad = exchange(addr, b"GET\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        // A client that ends its side before its head ends: closed without an answer.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("server did not close")
            .unwrap();
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    }

    #[tokio::test]
    async fn an_oversized_head_gets_431() {
        let server = server(ServerLimits {
            max_head_bytes: 8 * 1024,
            ..ServerLimits::default()
        })
        .await;
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 9000));
        request.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(server.local_addr(), &request).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_head_is_cut_off() {
        // A slowloris: sends part of a head and then nothing, keeping its side open. The
        // server must close the connection after its (short) timeout, unanswered; the test
        // only waits for that close.
        let server = server(ServerLimits {
            io_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        })
        .await;
        let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("server did not close a stalled connection")
            .unwrap();
        let answer = String::from_utf8(out).unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_connection_without_a_head_gives_its_slot_to_a_new_one() {
        let server = server(ServerLimits {
            max_connections: 1,
            io_timeout: Duration::from_secs(120),
            ..ServerLimits::default()
        })
        .await;
        let addr = server.local_addr();
        // The first connection holds the only slot (its head is never finished)...
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET /metrics").await.unwrap();
        // ...until a scrape arrives: it is served, and the idle one is closed unanswered.
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), first.read_to_end(&mut out))
            .await
            .expect("the evicted connection stayed open");
        assert!(read.is_err() || out.is_empty(), "{out:?}");
    }

    #[tokio::test]
    async fn only_connections_still_waiting_for_their_head_are_evicted() {
        let flags = |heads: &[bool]| -> Vec<Conn> {
            heads
                .iter()
                .map(|&h| Conn {
                    abort: tokio::spawn(async {}).abort_handle(),
                    head_read: Arc::new(AtomicBool::new(h)),
                })
                .collect()
        };
        assert_eq!(oldest_without_head(&flags(&[true, false, false])), Some(1));
        assert_eq!(oldest_without_head(&flags(&[false, true])), Some(0));
        assert_eq!(oldest_without_head(&flags(&[true, true])), None);
        assert_eq!(oldest_without_head(&flags(&[])), None);
    }

    #[tokio::test]
    async fn stop_releases_the_port() {
        let server = server(ServerLimits::default()).await;
        let addr = server.local_addr();
        server.stop().await;
        server.stop().await;
        TcpListener::bind(addr).await.unwrap();
    }
}
