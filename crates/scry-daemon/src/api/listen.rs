//! Serving HTTP connections on the daemon's two listeners (the local API socket and TCP), with
//! the limits `axum::serve` does not offer.
//!
//! - **A connection cap** ([`MAX_CONNECTIONS`] per listener): beyond it the listener stops
//!   accepting, so the connections wait in the kernel's backlog instead of using up the
//!   daemon's file descriptors (which starved every other socket and file of the daemon).
//! - **A header-read timeout** ([`HEADER_TIMEOUT`], hyper's own): a request whose headers do
//!   not arrive in time closes its connection, so half-sent requests cannot hold slots.
//! - **An idle timeout** ([`IDLE_TIMEOUT`]): a connection with no request in progress, no
//!   response streaming and no bytes either way for that long is closed. Long polls and
//!   server-sent-event streams are requests in progress, so they are never cut.
//!
//! Handlers see the same `ConnectInfo` as under `axum::serve` (`SocketAddr` on TCP,
//! [`UnixPeer`] on the socket), so the access checks are unchanged.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::api::access::UnixPeer;

/// Connections served at once per listener; more wait in the backlog until one closes.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may sit with nothing to do.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connections get to finish when the daemon stops.
const DRAIN: Duration = Duration::from_secs(5);

/// A listener whose connections carry some `ConnectInfo`.
trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Info: Clone + Send + Sync + 'static;
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = io::Result<(Self::Io, Self::Info)>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    type Info = SocketAddr;
    async fn accept(&self) -> io::Result<(Self::Io, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    type Info = UnixPeer;
    async fn accept(&self) -> io::Result<(Self::Io, UnixPeer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let cred = stream.peer_cred().ok();
        let peer = UnixPeer {
            uid: cred.as_ref().map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        };
        Ok((stream, peer))
    }
}

/// Serves `app` on a TCP listener until `shutdown` turns true.
pub async fn serve_tcp(listener: TcpListener, app: Router, shutdown: watch::Receiver<bool>) {
    serve_loop(listener, app, shutdown, "http").await
}

/// Serves `app` on the local API socket until `shutdown` turns true.
pub async fn serve_unix(listener: UnixListener, app: Router, shutdown: watch::Receiver<bool>) {
    serve_loop(listener, app, shutdown, "api socket").await
}

async fn stopping(rx: &mut watch::Receiver<bool>) {
    // A dropped sender means the daemon is going away too.
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve_loop<L: Accept>(
    listener: L,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopping(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping(&mut shutdown) => break,
        };
        match accepted {
            Ok((io, info)) => {
                conns.spawn(serve_conn(io, info, app.clone(), shutdown.clone(), permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning (the log
                // line is rate-limited like every other).
                tracing::warn!(target: "http", "{what}: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
}

/// When a connection last moved bytes, and how many of its requests are still in progress
/// (a response body still streaming counts).
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    in_progress: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_progress: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        if self.in_progress.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// Ends a request's "in progress" when dropped (with its response body).
struct InProgress(Arc<Activity>);

impl InProgress {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(Arc::clone(activity))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The connection's stream, noting every byte read or written.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_conn<I, T>(
    io: I,
    info: T,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        inner: io,
        activity: Arc::clone(&activity),
    };
    let act = Arc::clone(&activity);
    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(info.clone()));
        let guard = InProgress::begin(&act);
        let app = app.clone();
        async move {
            let Ok(resp) = app.oneshot(req.map(Body::new)).await;
            // The request stays in progress until its body is sent (or dropped).
            Ok::<_, Infallible>(resp.map(move |body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &guard;
                    frame
                }))
            }))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 4);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(target: "http", "connection ended: {e}");
                }
                return;
            }
            _ = stopping(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                break;
            }
            _ = tick.tick() => {
                if activity.idle_for() >= IDLE_TIMEOUT {
                    tracing::debug!(target: "http", "closing an idle connection");
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(DRAIN, conn).await;
}
