//! The HTTP listener. Accepts connections while fewer than `settings.connections.max` are open
//! (past that it stops accepting: new connections wait in the system's accept queue, up to
//! [`ACCEPT_QUEUE`], until one ends), serves each with hyper (HTTP/1.1), and cuts a connection that takes too long: a
//! request head not complete `header_read_timeout` after its first byte (or after the
//! connection opened), a kept-alive connection without a request for `idle_timeout`. A body
//! not complete `body_read_timeout` after its head is an error for the handler reading it,
//! which answers (ingest: `408`) and the connection closes. On shutdown it stops accepting,
//! lets the requests in progress end, and waits for every connection to close.
//!
//! Knows nothing of routes or handlers: it serves any `Router`.

use crate::config::ConnectionLimits;
use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};

/// The largest request head (request line and headers) and read buffer of one connection; a
/// larger head is answered `431`.
pub const MAX_HEAD_SIZE: usize = 64 * 1024;

/// Connections that may wait to be accepted while Ferry is at its cap: the listen backlog
/// (the system lowers it to `net.core.somaxconn` when that is smaller). Past it, the system
/// drops new connection attempts and clients try again later, as TCP does.
pub const ACCEPT_QUEUE: u32 = 1024;

/// A listener on `addr` with a backlog of [`ACCEPT_QUEUE`] (`TcpListener::bind` gives 128).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restart can listen again at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_QUEUE)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests end
/// and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max));
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A slot before accepting: at the cap, new connections wait in the accept queue and
        // cost this process nothing.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::error!(error = %e, "cannot accept a connection; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            limits.clone(),
            stopped.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Each connection holds its slot until it ends. `max` is at most 1 000 000 (config).
    let all = u32::try_from(limits.max).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Arc<ConnectionLimits>,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let phase = Arc::new(Phase::new());
    let io = hyper_util::rt::TokioIo::new(Watched {
        stream,
        phase: phase.clone(),
    });
    let router = hyper_util::service::TowerToHyperService::new(router);
    let body_read_timeout = limits.body_read_timeout;
    let service_phase = phase.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        service_phase.set(Phase::BUSY);
        let request = request.map(|body| Body::new(TimedBody::new(body, body_read_timeout)));
        let response = hyper::service::Service::call(&router, request);
        let phase = service_phase.clone();
        async move {
            let response = response.await;
            phase.set(Phase::IDLE);
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_header_size(MAX_HEAD_SIZE)
        .max_buf_size(MAX_HEAD_SIZE)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut deadline = Deadline::new(phase, limits);
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            cut = deadline.passed() => {
                tracing::debug!(timeout = cut, "connection cut: it took too long");
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is: each change bumps a counter, so a deadline armed for one phase is
/// never taken for a later one. Changed only from the connection's own task (its reads and
/// its service run inside it).
struct Phase(AtomicU32);

impl Phase {
    /// Reading a request head (or waiting for the first one).
    const HEAD: u32 = 0;
    /// A request is being handled (its body read, its response made).
    const BUSY: u32 = 1;
    /// Between requests, kept alive.
    const IDLE: u32 = 2;

    fn new() -> Phase {
        Phase(AtomicU32::new(Phase::HEAD))
    }

    /// Phase in the low two bits, the count of changes above them.
    fn state(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    fn get(&self) -> u32 {
        self.state() & 3
    }

    fn set(&self, phase: u32) {
        let changes = (self.state() & !3).wrapping_add(4);
        self.0.store(changes | phase, Ordering::Relaxed);
    }
}

/// The deadline of the connection's current phase.
struct Deadline {
    phase: Arc<Phase>,
    limits: Arc<ConnectionLimits>,
    /// The phase state the sleep was armed for.
    armed_for: u32,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Deadline {
    fn new(phase: Arc<Phase>, limits: Arc<ConnectionLimits>) -> Deadline {
        let sleep = Box::pin(tokio::time::sleep(limits.header_read_timeout));
        Deadline {
            armed_for: phase.state(),
            phase,
            limits,
            sleep,
            armed: true,
        }
    }

    /// Resolves, with the name of the timeout, when the current phase has lasted too long.
    /// Phases change while the connection is polled, so this is polled after it.
    fn passed(&mut self) -> impl Future<Output = &'static str> + '_ {
        std::future::poll_fn(move |cx| {
            let state = self.phase.state();
            if state != self.armed_for {
                self.armed_for = state;
                let timeout = match state & 3 {
                    Phase::HEAD => Some(self.limits.header_read_timeout),
                    Phase::IDLE => Some(self.limits.idle_timeout),
                    _ => None,
                };
                self.armed = timeout.is_some();
                if let Some(timeout) = timeout {
                    self.sleep.as_mut().reset(Instant::now() + timeout);
                }
            }
            if self.armed && self.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(match state & 3 {
                    Phase::HEAD => "header_read_timeout",
                    _ => "idle_timeout",
                });
            }
            Poll::Pending
        })
    }
}

/// The socket, telling the connection's phase when a request starts arriving after an idle
/// time.
struct Watched {
    stream: TcpStream,
    phase: Arc<Phase>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before && this.phase.get() == Phase::IDLE {
            this.phase.set(Phase::HEAD);
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the body did not arrive within {}", humantime::format_duration(*.0))]
pub struct BodyTimedOut(pub Duration);

impl BodyTimedOut {
    /// Whether `error`, or one of its causes, is a body that did not arrive in time.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.is::<BodyTimedOut>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// A request body that fails with [`BodyTimedOut`] when it is not complete by its deadline.
/// The timer is made only when the body has to be waited for: a body that came with its
/// head costs none.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> TimedBody {
        TimedBody {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
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
