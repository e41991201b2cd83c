//! Connection limits shared by every listener (tenant API, operator API,
//! S3): without them a client that sends a byte every few seconds, or
//! opens connections and never uses them, holds server resources forever.
//!
//! [`GuardAcceptor`] sits where axum-server hands over each accepted TCP
//! connection (below TLS, so the handshake counts too). It refuses a
//! connection over the per-IP limit, and wraps the stream and the
//! connection's service so that:
//!
//! - a new connection must deliver its first request's headers within the
//!   header timeout, and a later request's headers within the header
//!   timeout of its first byte;
//! - a connection with no request in flight is closed after the idle
//!   timeout (an upgraded connection, a console WebSocket, is exempt);
//! - a request body that delivers no byte for the body stall timeout ends
//!   the request with a timeout answer (408 problem for the REST listeners,
//!   S3's `RequestTimeout` for S3), however long the whole body takes while
//!   bytes keep coming;
//! - a response the client does not read for the same stall timeout closes
//!   the connection.
//!
//! A request being handled has no time limit of its own here: the server,
//! not the client, decides how long that takes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, Ready};
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use axum::BoxError;
use axum_server::accept::Accept;
use http::{HeaderValue, Request, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// The limits every listener applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to receive a request's headers (a new connection's first
    /// request, TLS handshake included, counts from the accept).
    pub header_read_timeout: Duration,
    /// Longest wait for the next byte of a request body (or for the
    /// client to take the next piece of a response).
    pub body_stall_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// Connections one client address may hold open on one listener (0:
    /// no limit). IPv6 addresses count by /64.
    pub max_connections_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            body_stall_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            max_connections_per_ip: 256,
        }
    }
}

/// How a listener words the answer to a request whose body stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `408` `application/problem+json`, code `request_timeout`.
    Rest,
    /// S3's `400 RequestTimeout` XML error.
    S3,
}

/// The error a stalled request body yields to whoever reads it.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: no byte arrived for {0:?}")]
pub struct BodyStalled(pub Duration);

/// Whether `err`, or an error it wraps, is a stalled request body.
pub fn is_body_stall(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(err);
    while let Some(cur) = e {
        if cur.is::<BodyStalled>() {
            return true;
        }
        e = cur.source();
    }
    false
}

/// The key a client address is counted under: IPv6 hosts usually hold a
/// whole /64, so that is one client.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in its address's count, given back on drop.
struct IpSlot {
    counts: Counts,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Counts a listener's limit hits for `/metrics`.
#[derive(Clone)]
struct Hits {
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl Hits {
    fn hit(&self, limit: &'static str) {
        self.metrics.limit_hit(self.listener, limit);
    }
}

/// The axum-server acceptor of a listener: per-IP limit, `TCP_NODELAY`,
/// and the timeouts described in the module documentation.
#[derive(Clone)]
pub struct GuardAcceptor {
    limits: ConnectionLimits,
    dialect: Dialect,
    counts: Counts,
    hits: Hits,
}

impl GuardAcceptor {
    /// `listener` names the listener in metrics (`tenant`, `operator`, `s3`).
    pub fn new(
        limits: ConnectionLimits,
        dialect: Dialect,
        metrics: Arc<Metrics>,
        listener: &'static str,
    ) -> Self {
        GuardAcceptor {
            limits,
            dialect,
            counts: Counts::default(),
            hits: Hits { metrics, listener },
        }
    }

    fn admit<S>(
        &self,
        stream: TcpStream,
        service: S,
    ) -> io::Result<(GuardedStream<TcpStream>, GuardedService<S>)> {
        // TCP_NODELAY: a response whose body is streamed (S3 GET) is
        // written in several pieces, and Nagle's algorithm would hold the
        // later ones until the client acknowledges the first.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let key = ip_key(peer.ip());
        let max = self.limits.max_connections_per_ip;
        {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(key).or_insert(0);
            if max > 0 && *n >= max {
                drop(counts);
                self.hits.hit("per_ip");
                tracing::debug!(peer = %peer, max, "connection refused: per-IP limit reached");
                // Dropping the stream closes it.
                return Err(io::Error::other("per-IP connection limit reached"));
            }
            *n += 1;
        }
        let slot = IpSlot {
            counts: self.counts.clone(),
            key,
        };
        let conn = Arc::new(ConnState::default());
        let stream = GuardedStream {
            inner: stream,
            conn: conn.clone(),
            _slot: slot,
            limits: self.limits,
            phase: Phase::Headers,
            seen: 0,
            read_deadline: Box::pin(tokio::time::sleep(self.limits.header_read_timeout)),
            write_stall: None,
            hits: self.hits.clone(),
        };
        let service = GuardedService {
            inner: service,
            conn,
            stall: self.limits.body_stall_timeout,
            dialect: self.dialect,
            hits: self.hits.clone(),
        };
        Ok((stream, service))
    }
}

impl<S> Accept<TcpStream, S> for GuardAcceptor {
    type Stream = GuardedStream<TcpStream>;
    type Service = GuardedService<S>;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.admit(stream, service))
    }
}

/// What the stream and the service of one connection share.
#[derive(Default)]
struct ConnState {
    /// Requests begun on this connection.
    started: AtomicU64,
    /// Requests begun and not yet fully answered.
    in_flight: AtomicU64,
    /// The connection switched protocols (WebSocket).
    upgraded: AtomicBool,
    /// The task reading the connection, woken when the last request in
    /// flight ends: the HTTP machinery need not read again by itself, and
    /// the idle deadline starts with a read.
    reader: Mutex<Option<Waker>>,
}

impl ConnState {
    fn set_reader(&self, waker: &Waker) {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        match &*r {
            Some(w) if w.will_wake(waker) => {}
            _ => *r = Some(waker.clone()),
        }
    }
}

/// Marks a request in flight until dropped: with the response body once
/// it is sent, or with the request's future if that is abandoned.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(conn: &Arc<ConnState>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.started.fetch_add(1, Ordering::AcqRel);
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = self
                .0
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// Where a connection is between requests, as its reads see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's headers; the deadline is running.
    Headers,
    /// No request in flight and no byte of the next; the deadline is running.
    Idle,
    /// A request is in flight: the connection has no deadline.
    Busy,
    /// Switched protocols: no read deadline any more.
    Upgraded,
}

/// An accepted connection's stream, enforcing the header and idle
/// deadlines on reads and the stall timeout on writes.
pub struct GuardedStream<T> {
    inner: T,
    conn: Arc<ConnState>,
    _slot: IpSlot,
    limits: ConnectionLimits,
    phase: Phase,
    /// `conn.started` when the phase was last brought up to date.
    seen: u64,
    read_deadline: Pin<Box<Sleep>>,
    write_stall: Option<Pin<Box<Sleep>>>,
    hits: Hits,
}

impl<T> GuardedStream<T> {
    /// Brings the phase up to date with the requests the service saw.
    fn refresh(&mut self) {
        if self.conn.upgraded.load(Ordering::Acquire) {
            self.phase = Phase::Upgraded;
            return;
        }
        let started = self.conn.started.load(Ordering::Acquire);
        if self.conn.in_flight.load(Ordering::Acquire) > 0 {
            self.phase = Phase::Busy;
            self.seen = started;
        } else if self.phase == Phase::Busy || started != self.seen {
            // A request ended since the last look: the connection is idle.
            self.seen = started;
            self.phase = Phase::Idle;
            let at = Instant::now() + self.limits.idle_timeout;
            self.read_deadline.as_mut().reset(at);
        }
    }

    fn timed_out(&self, what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} timeout"))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.refresh();
                    if this.phase == Phase::Idle {
                        // The first byte of the next request.
                        this.phase = Phase::Headers;
                        let at = Instant::now() + this.limits.header_read_timeout;
                        this.read_deadline.as_mut().reset(at);
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Registered before looking at the requests in flight, so the end
        // of the last one cannot go unnoticed.
        this.conn.set_reader(cx.waker());
        this.refresh();
        let limit = match this.phase {
            Phase::Busy | Phase::Upgraded => return Poll::Pending,
            Phase::Headers => "header_read",
            Phase::Idle => "idle",
        };
        if this.read_deadline.as_mut().poll(cx).is_ready() {
            this.hits.hit(limit);
            tracing::debug!(limit, "connection closed at its deadline");
            return Poll::Ready(Err(this.timed_out(limit)));
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> GuardedStream<T> {
    /// Passes on a write's outcome; a write that cannot progress for the
    /// stall timeout fails the connection.
    fn stall_check(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if r.is_ready() {
            self.write_stall = None;
            return r;
        }
        let stall = self.limits.body_stall_timeout;
        let sleep = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.hits.hit("send_stall");
            tracing::debug!("connection closed: the client stopped reading");
            return Poll::Ready(Err(self.timed_out("send stall")));
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stall_check(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stall_check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's service: times request bodies, answers for a stalled
/// one, and tells the stream when requests begin and end.
#[derive(Clone)]
pub struct GuardedService<S> {
    inner: S,
    conn: Arc<ConnState>,
    stall: Duration,
    dialect: Dialect,
    hits: Hits,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<Request<B>> for GuardedService<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let in_flight = InFlight::begin(&self.conn);
        let stalled = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| {
            Body::new(StallBody {
                inner: body,
                timeout: self.stall,
                sleep: None,
                armed: false,
                stalled: stalled.clone(),
            })
        });
        let fut = self.inner.call(req);
        let conn = self.conn.clone();
        let dialect = self.dialect;
        let hits = self.hits.clone();
        Box::pin(async move {
            let Ok(mut resp) = fut.await;
            if stalled.load(Ordering::Acquire) {
                hits.hit("body_stall");
                resp = stall_answer(dialect, &resp);
            }
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                conn.upgraded.store(true, Ordering::Release);
            }
            Ok(resp.map(|body| {
                Body::new(Tracked {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// The answer to a request whose body stalled, whatever the handler made
/// of the read error, keeping the request id the handler's answer carries.
fn stall_answer(dialect: Dialect, handled: &Response) -> Response {
    let id_header = match dialect {
        Dialect::Rest => "x-request-id",
        Dialect::S3 => "x-amz-request-id",
    };
    let id = handled.headers().get(id_header).cloned();
    let id_text = id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut r = match dialect {
        Dialect::Rest => crate::problem::render(&crate::ctx::stalled_body(), &id_text),
        Dialect::S3 => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>RequestTimeout</Code>\
                 <Message>Your socket connection to the server was not read from or written to \
                 within the timeout period.</Message><RequestId>{id_text}</RequestId></Error>"
            );
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
            r
        }
    };
    if let Some(v) = id {
        r.headers_mut().insert(id_header, v);
    }
    r
}

/// A request body that fails with [`BodyStalled`] when its reader waits
/// longer than the timeout for the next frame.
struct StallBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current wait.
    armed: bool,
    stalled: Arc<AtomicBool>,
}

impl<B> HttpBody for StallBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !this.armed {
            // A new wait begins: the stall timeout counts from now.
            sleep.as_mut().reset(Instant::now() + timeout);
            this.armed = true;
        }
        if sleep.as_mut().poll(cx).is_ready() {
            this.stalled.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in flight until it is sent.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(ip_key(mapped), IpAddr::V4([10, 0, 0, 7].into()));
    }

    #[test]
    fn a_wrapped_stall_is_recognized() {
        let e = axum::Error::new(BodyStalled(Duration::from_secs(1)));
        assert!(is_body_stall(&e));
        let other = axum::Error::new(io::Error::other("x"));
        assert!(!is_body_stall(&other));
    }
}
