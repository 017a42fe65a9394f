//! [`MetricsServer`]: the minimal HTTP/1.1 responder that serves [`Metrics`] (see the
//! [parent module](super), "The HTTP responder").
//!
//! One route, one request per connection, no keep-alive. Everything a client can make it do is
//! bounded: the bytes of a request head, the time to send it and to read the answer, and the
//! connections served at once, where a connection still waiting for its head gives way to a
//! newer one, so idle connections cannot keep a scraper out.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use super::{Metrics, lock};

/// The `Content-Type` of a scrape: the OpenMetrics text format, which is what
/// prometheus-client writes (counters end in `_total`, the body ends with `# EOF`). Prometheus
/// asks for it by default.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bounds of the [`MetricsServer`] against hostile or broken clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// The longest request head (request line and headers) read; a longer one gets 431.
    /// Default 8 KiB.
    pub max_head_bytes: usize,
    /// The time a client has to send its whole request head, counted from the accept; then
    /// it gets 408. Writing the response has as long again. Default 5 s.
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

/// Reads one request head, answers it and closes the connection. Sets `head_read` when the
/// head phase ends.
async fn serve_connection(
    mut stream: TcpStream,
    metrics: &Metrics,
    limits: ServerLimits,
    head_read: &AtomicBool,
) -> io::Result<()> {
    let head = tokio::time::timeout(
        limits.io_timeout,
        read_head(&mut stream, limits.max_head_bytes),
    )
    .await;
    head_read.store(true, Ordering::Release);
    let response = match head {
        Err(_elapsed) => Response::error(408, "Request Timeout"),
        Ok(Err(HeadError::Io(e))) => return Err(e),
        // The client stopped sending before the head ended: nobody to answer.
        Ok(Err(HeadError::Eof)) => return Ok(()),
        Ok(Err(HeadError::TooLarge)) => Response::error(431, "Request Header Fields Too Large"),
        Ok(Ok(head)) => route(parse_request(&head), metrics),
    };
    let bytes = response.into_bytes();
    tokio::time::timeout(limits.io_timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response write timed out"))?
}

/// Why a request head could not be read.
#[derive(Debug)]
enum HeadError {
    /// The socket failed.
    Io(io::Error),
    /// The connection ended before the blank line that ends the head.
    Eof,
    /// No blank line within the limit.
    TooLarge,
}

/// Reads until the blank line ending the request head (CRLF CRLF, or LF LF as RFC 9112 lets
/// a server accept), never more than `max` bytes. Returns the head without the blank line.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf = vec![0u8; max];
    let mut len = 0;
    loop {
        if len == max {
            return Err(HeadError::TooLarge);
        }
        let n = stream.read(&mut buf[len..]).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        // The end may straddle two reads: look back three bytes.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Ok(buf);
        }
    }
}

/// Where the blank line ending a head starts in `bytes`, if it is there: the length of the
/// head, its last line's end included.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).enumerate().find_map(|(i, w)| match w {
        b"\n\n" => Some(i + 1),
        b"\n\r" if bytes.get(i + 2) == Some(&b'\n') => Some(i + 1),
        _ => None,
    })
}

/// A parsed request line (headers are read but not needed).
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    /// The method, e.g. `GET`.
    method: &'a str,
    /// The target's path, without the query.
    path: &'a str,
}

/// Why a request line is refused.
#[derive(Debug, PartialEq, Eq)]
enum RequestError {
    /// Not `METHOD SP /target SP HTTP/x.y`.
    Malformed,
    /// A well-formed line with a version other than HTTP/1.0 or HTTP/1.1.
    UnsupportedVersion,
}

/// Parses the request line, the first line of `head`.
fn parse_request(head: &[u8]) -> Result<Request<'_>, RequestError> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| RequestError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed);
    };
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(RequestError::Malformed);
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::Malformed);
    }
    let Some(digits) = version.strip_prefix("HTTP/") else {
        return Err(RequestError::Malformed);
    };
    match digits.as_bytes() {
        b"1.0" | b"1.1" => {}
        [major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            return Err(RequestError::UnsupportedVersion);
        }
        _ => return Err(RequestError::Malformed),
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(Request { method, path })
}

/// The answer to a request.
fn route(request: Result<Request<'_>, RequestError>, metrics: &Metrics) -> Response {
    let request = match request {
        Ok(r) => r,
        Err(RequestError::Malformed) => return Response::error(400, "Bad Request"),
        Err(RequestError::UnsupportedVersion) => {
            return Response::error(505, "HTTP Version Not Supported");
        }
    };
    if request.path != "/metrics" {
        return Response::error(404, "Not Found");
    }
    match request.method {
        "GET" => Response::ok(metrics.encode(), false),
        "HEAD" => Response::ok(metrics.encode(), true),
        _ => {
            let mut r = Response::error(405, "Method Not Allowed");
            r.allow = true;
            r
        }
    }
}

/// A response, written with `Connection: close`.
#[derive(Debug)]
struct Response {
    /// Status code.
    status: u16,
    /// Reason phrase.
    reason: &'static str,
    /// `Content-Type`.
    content_type: &'static str,
    /// The body (its length is sent even when `head_only`).
    body: String,
    /// A HEAD request: the body is not sent.
    head_only: bool,
    /// Send `Allow: GET, HEAD` (405).
    allow: bool,
}

impl Response {
    fn ok(body: String, head_only: bool) -> Self {
        Self {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            body,
            head_only,
            allow: false,
        }
    }

    fn error(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status} {reason}\n"),
            head_only: false,
            allow: false,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

    use super::*;

    #[test]
    fn request_lines() {
        let ok = |method, path| Ok(Request { method, path });
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1"),
            ok("GET", "/metrics")
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\nHost: a"),
            ok("GET", "/metrics")
        );
        assert_eq!(parse_request(b"POST / HTTP/1.1\r\n"), ok("POST", "/"));
        for bad in [
            &b""[..],
            b"GET",
            b"GET /metrics",
            b"GET  /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"GET metrics HTTP/1.1",
            b"GET /met\x01rics HTTP/1.1",
            b"G(T /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.x",
            b"GET /metrics FTP/1.1",
            b"GET /metrics HTTP/11",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(
                parse_request(bad),
                Err(RequestError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_request(b"GET /metrics HTTP/2.0"),
            Err(RequestError::UnsupportedVersion)
        );
    }

    #[test]
    fn head_ends_at_the_first_blank_line() {
        // The head's length includes its last line's end.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(15));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"\n\r"), None);
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        let status = |line: &[u8]| route(parse_request(line), &m).status;
        assert_eq!(status(b"GET /metrics HTTP/1.1"), 200);
        assert_eq!(status(b"HEAD /metrics HTTP/1.1"), 200);
        assert_eq!(status(b"GET / HTTP/1.1"), 404);
        assert_eq!(status(b"POST /metrics HTTP/1.1"), 405);
        assert_eq!(status(b"nonsense"), 400);
        assert_eq!(status(b"GET /metrics HTTP/3.0"), 505);

        let head =
            String::from_utf8(route(parse_request(b"HEAD /metrics HTTP/1.1"), &m).into_bytes())
                .unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(len > 0);
        let not_allowed =
            String::from_utf8(route(parse_request(b"PUT /metrics HTTP/1.1"), &m).into_bytes())
                .unwrap();
        assert!(
            not_allowed.contains("\r\nAllow: GET, HEAD\r\n"),
            "{not_allowed}"
        );
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
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"));

        let lf_only = exchange(addr, b"GET /metrics HTTP/1.0\n\n").await;
        assert!(lf_only.starts_with("HTTP/1.1 200 OK\r\n"), "{lf_only}");
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
            max_head_bytes: 64,
            ..ServerLimits::default()
        })
        .await;
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 200));
        request.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(server.local_addr(), &request).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_head_is_cut_off() {
        // A slowloris: sends part of a head and then nothing, keeping its side open. The
        // server must answer 408 and close after its (short) timeout; the test only waits
        // for that close.
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
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
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
