//! The worker's built-in live log server: serves each running task's log over HTTP while it is written,
//! as the `livelog` binary did, but from inside the worker process.
//!
//! The task's backing log file is the source of truth. Its sink in the [`LogStreamActor`] publishes a
//! [`LogProgress`] after every chunk it has written and flushed; a reader opens the file and tails it
//! from disk at its own pace, woken by that watch. So the writer never waits for a reader, a slow
//! reader slows nobody else, and a reader holds at most one read buffer ([`READ_CHUNK`] bytes), however
//! far behind it is.
//!
//! `GET /log/<token>` behaves like livelog: `200`, chunked, from byte 0, following the log until it is
//! finished; `401 Access denied` for a token that is not registered.
//!
//! **Range.** livelog ignores `Range` (it always serves from byte 0). We honour exactly one form,
//! `Range: bytes=N-`, so a viewer can resume: `206` from byte N, with `Content-Range: bytes N-*/*`
//! while the log is still written (its end is not known yet), or `bytes N-<last>/<length>` once it is
//! finished. N past the end of a finished log gets `416` with `Content-Range: bytes */<length>`; N
//! past the end of a live log waits for the log to get there. Every other `Range` (several ranges,
//! closed or suffix ranges, garbage) is ignored as livelog ignores it: `200` from byte 0.
//!
//! **Slow readers.** A reader may be any distance behind: it reads from disk. A reader whose connection
//! accepts no bytes at all for [`LiveLogSettings::reader_idle_timeout`] (default 5 minutes) while the
//! server has bytes for it is disconnected; the response then ends without its final chunk, so the
//! client sees it incomplete. Waiting for a quiet task to log more is not idleness.
//!
//! **Serving.** [`LiveLogServer`] serves an actix-web `App` through actix-http's HTTP/1 service from an
//! accept loop spawned on the current actix System, so it needs no thread or runtime of its own and
//! never blocks its caller. actix-web's `HttpServer` can't do that (it always starts an acceptor
//! thread and worker threads with their own runtimes), and it has no way to drop a connection whose
//! peer stopped reading, which the slow-reader policy needs: we wrap each socket to enforce it.
//!
//! **Tokens.** 16 bytes from the OS's CSPRNG, base64url without padding: 22 characters of
//! `[A-Za-z0-9_-]`, the shape of the slugid docker-worker used. A request's token is compared in
//! constant time against every registered token (see [`LiveLogs`]).
//!
//! [`LogStreamActor`]: crate::log_stream::LogStreamActor

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::body::BoxBody;
use actix_http::{HttpService, KeepAlive};
use actix_service::{map_config, Service, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpResponseBuilder};
use base64::Engine as _;
use bytes::Bytes;
use slog::{debug, info, o, warn, Logger};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::log_stream::LogProgress;

/// The most a reader reads from the file at once, so the most it holds in memory.
pub const READ_CHUNK: usize = 64 * 1024;

/// How many random bytes make a token (128 bits).
const TOKEN_BYTES: usize = 16;

/// How long to back off after `accept` fails (e.g. out of file descriptors), so the loop doesn't spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A live log could not be served.
#[derive(Debug, thiserror::Error)]
pub enum LiveLogError {
    /// The backing file could not be read.
    #[error("could not read the live log {} at byte {offset}: {error}", .path.display())]
    Read {
        /// The backing file.
        path: PathBuf,
        /// Where the read began.
        offset: u64,
        /// The I/O error.
        error: io::Error,
    },
    /// The backing file is shorter than its writer said it had written.
    #[error("the live log {} ends at byte {offset}, before the {written} bytes written", .path.display())]
    Truncated {
        /// The backing file.
        path: PathBuf,
        /// Where the file ended.
        offset: u64,
        /// What the writer reported.
        written: u64,
    },
}

struct Entry {
    token: String,
    path: PathBuf,
    progress: watch::Receiver<LogProgress>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

/// The logs the server may serve, by token; cloneable and shared between the tasks and the server.
///
/// Entries are keyed by a non-secret id. A lookup compares the candidate against every registered
/// token with a constant-time equality and picks the hit without branching, so its time depends only
/// on how many logs are registered (a handful: one per running task), never on how much of a token a
/// guess got right. A `HashMap` keyed by the token would hash the guess and then compare it with an
/// early-exit `==`, which is what we want to rule out.
#[derive(Clone, Default)]
pub struct LiveLogs {
    inner: Arc<Mutex<Registry>>,
}

impl fmt::Debug for LiveLogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the tokens.
        f.debug_struct("LiveLogs")
            .field("registered", &self.len())
            .finish()
    }
}

impl LiveLogs {
    /// An empty registry.
    pub fn new() -> LiveLogs {
        LiveLogs::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry stays consistent even if a holder panicked: every update is one map operation.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serve the file at `path`, written by a sink publishing `progress`, under a new secret token.
    pub fn register(
        &self,
        path: impl Into<PathBuf>,
        progress: watch::Receiver<LogProgress>,
    ) -> io::Result<LiveLogRegistration> {
        let token = new_token()?;
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.entries.insert(
            id,
            Entry {
                token: token.clone(),
                path: path.into(),
                progress,
            },
        );
        Ok(LiveLogRegistration {
            token,
            id,
            logs: self.clone(),
        })
    }

    /// How many logs are registered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no log is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, candidate: &str) -> Option<(PathBuf, watch::Receiver<LogProgress>)> {
        let registry = self.lock();
        let mut hit = Choice::from(0);
        let mut hit_id = 0u64;
        for (id, entry) in &registry.entries {
            // ct_eq returns early only on a length mismatch; every token has the same public length.
            let eq = entry.token.as_bytes().ct_eq(candidate.as_bytes());
            hit_id.conditional_assign(id, eq);
            hit |= eq;
        }
        if !bool::from(hit) {
            return None;
        }
        registry
            .entries
            .get(&hit_id)
            .map(|e| (e.path.clone(), e.progress.clone()))
    }

    fn remove(&self, id: u64) {
        self.lock().entries.remove(&id);
    }
}

/// One log's place in [`LiveLogs`]; dropping it (or [`unregister`](Self::unregister)) withdraws the log.
///
/// Readers already streaming keep their open file and finish; new requests for the token get `401`.
pub struct LiveLogRegistration {
    token: String,
    id: u64,
    logs: LiveLogs,
}

impl fmt::Debug for LiveLogRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveLogRegistration")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LiveLogRegistration {
    /// The secret path component: the log is at `/log/<token>`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Withdraw the log now.
    pub fn unregister(self) {}
}

impl Drop for LiveLogRegistration {
    fn drop(&mut self) {
        self.logs.remove(self.id);
    }
}

fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The public URL of a live log: `<public_base>/log/<token>`, e.g. base `http://host:port`.
pub fn live_log_url(public_base: &str, token: &str) -> String {
    format!("{}/log/{token}", public_base.trim_end_matches('/'))
}

/// The actix-web resource serving `GET /log/{token}` from `logs`, to mount in an `App`.
///
/// The slow-reader timeout is the [`LiveLogServer`]'s: mounted elsewhere, the host server's own
/// connection policy applies.
pub fn live_log_service(logs: LiveLogs) -> actix_web::Resource {
    web::resource("/log/{token}")
        .app_data(web::Data::new(logs))
        .route(web::get().to(get_log))
}

fn plain(status: StatusCode) -> HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder
        .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"));
    builder
}

/// The first byte asked for by `Range: bytes=N-`; `None` for no `Range` or any other form, which we
/// ignore as livelog does.
fn range_start(value: Option<&HeaderValue>) -> Option<u64> {
    let value = value?.to_str().ok()?.trim();
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let first = spec.trim().strip_suffix('-')?.trim_end();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    first.parse().ok()
}

async fn get_log(req: HttpRequest, logs: web::Data<LiveLogs>) -> HttpResponse {
    let candidate = req.match_info().get("token").unwrap_or_default();
    let Some((path, progress)) = logs.find(candidate) else {
        return plain(StatusCode::UNAUTHORIZED).body("Access denied");
    };
    let opened = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || File::open(path)).await
    };
    let file = match opened {
        Ok(Ok(file)) => Arc::new(file),
        // The log was withdrawn (its scratch dir removed) between the lookup and the open.
        _ => return plain(StatusCode::NOT_FOUND).body("Log not found"),
    };
    let now = *progress.borrow();
    let start = range_start(req.headers().get(header::RANGE));
    let mut response = match start {
        None => plain(StatusCode::OK),
        Some(first) if now.finished && first >= now.written => {
            return plain(StatusCode::RANGE_NOT_SATISFIABLE)
                .insert_header((header::CONTENT_RANGE, format!("bytes */{}", now.written)))
                .finish();
        }
        Some(first) => {
            let mut partial = plain(StatusCode::PARTIAL_CONTENT);
            let range = if now.finished {
                format!("bytes {first}-{}/{}", now.written - 1, now.written)
            } else {
                // RFC 9110 has no form for "from N to an end not known yet"; livelog's README promised
                // ranges without defining one, so we say it as plainly as we can.
                format!("bytes {first}-*/*")
            };
            partial.insert_header((header::CONTENT_RANGE, range));
            partial
        }
    };
    response
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header(("X-Streaming", "true"))
        .insert_header((
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "Transfer-Encoding, Content-Range, X-Streaming",
        ));
    let tail = Tail {
        file,
        path,
        pos: start.unwrap_or(0),
        progress,
        writer_gone: false,
        done: false,
    };
    response.streaming(futures_util::stream::unfold(tail, Tail::next))
}

/// One reader's position in one backing file.
struct Tail {
    file: Arc<File>,
    path: PathBuf,
    pos: u64,
    progress: watch::Receiver<LogProgress>,
    /// The sink went away without saying it finished: what it wrote is all there will be.
    writer_gone: bool,
    done: bool,
}

impl Tail {
    async fn next(mut self) -> Option<(Result<Bytes, LiveLogError>, Tail)> {
        if self.done {
            return None;
        }
        loop {
            let now = *self.progress.borrow_and_update();
            if self.pos < now.written {
                let want = (now.written - self.pos).min(READ_CHUNK as u64) as usize;
                let offset = self.pos;
                let read = read_at(self.file.clone(), offset, want).await;
                let item = match read {
                    Ok(bytes) if !bytes.is_empty() => {
                        self.pos += bytes.len() as u64;
                        Ok(bytes)
                    }
                    Ok(_) => Err(LiveLogError::Truncated {
                        path: self.path.clone(),
                        offset,
                        written: now.written,
                    }),
                    Err(error) => Err(LiveLogError::Read {
                        path: self.path.clone(),
                        offset,
                        error,
                    }),
                };
                // An error aborts the response, so the client sees it incomplete rather than ended.
                self.done = item.is_err();
                return Some((item, self));
            }
            if now.finished || self.writer_gone {
                return None;
            }
            if self.progress.changed().await.is_err() {
                self.writer_gone = true;
            }
        }
    }
}

async fn read_at(file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    // Reads may block on the disk: keep them off the System's thread. The handle is this reader's
    // own, so seeking it disturbs nobody.
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        let mut file = &*file;
        file.seek(SeekFrom::Start(offset))?;
        let n = file.read(&mut buf)?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

async fn not_found() -> HttpResponse {
    plain(StatusCode::NOT_FOUND).body("Not found")
}

/// How the live log server treats its connections.
#[derive(Clone)]
pub struct LiveLogSettings {
    /// A connection that accepts no bytes for this long while we have bytes for it is closed.
    pub reader_idle_timeout: Duration,
    /// Connections beyond this many wait in the listen backlog until one ends.
    pub max_connections: usize,
    /// On a graceful stop, how long open responses may run before they are cut.
    pub shutdown_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive: Duration,
    /// How long a client may take to send its request head.
    pub request_timeout: Duration,
    /// Where the server logs.
    pub logger: Logger,
}

impl Default for LiveLogSettings {
    fn default() -> Self {
        LiveLogSettings {
            reader_idle_timeout: Duration::from_secs(5 * 60),
            max_connections: 256,
            shutdown_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            logger: Logger::root(slog::Discard, o!()),
        }
    }
}

/// The HTTP server for live logs, run on the current actix System's thread.
pub struct LiveLogServer;

impl LiveLogServer {
    /// Listen on `bind` (port 0 picks one) and serve `logs` with default settings; call inside a System.
    pub fn start(bind: SocketAddr, logs: LiveLogs) -> io::Result<LiveLogServerHandle> {
        LiveLogServer::start_with(bind, logs, LiveLogSettings::default())
    }

    /// Listen on `bind` and serve `logs` with `settings`; returns at once, the server runs as a task.
    pub fn start_with(
        bind: SocketAddr,
        logs: LiveLogs,
        settings: LiveLogSettings,
    ) -> io::Result<LiveLogServerHandle> {
        if actix_rt::System::try_current().is_none() {
            return Err(io::Error::other(
                "the live log server must start inside an actix System",
            ));
        }
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (count_tx, count_rx) = watch::channel(0usize);
        info!(settings.logger, "live log server listening"; "addr" => %addr);
        let task = actix_rt::spawn(serve(listener, addr, logs, settings, stop_rx, count_tx));
        Ok(LiveLogServerHandle {
            addr,
            stop: Some(stop_tx),
            task: Some(task),
            connections: count_rx,
        })
    }
}

/// A running [`LiveLogServer`]; dropping it stops the server at once, cutting open responses.
pub struct LiveLogServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    connections: watch::Receiver<usize>,
}

impl LiveLogServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections are open now, as a watch.
    pub fn open_connections(&self) -> watch::Receiver<usize> {
        self.connections.clone()
    }

    /// Stop accepting, let open responses finish within the shutdown timeout, cut the rest, then return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LiveLogServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept task drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

/// Counts a connection while its task lives, however the task ends.
struct Counted(Rc<watch::Sender<usize>>);

impl Counted {
    fn new(count: Rc<watch::Sender<usize>>) -> Counted {
        count.send_modify(|n| *n += 1);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    logs: LiveLogs,
    settings: LiveLogSettings,
    mut stop: oneshot::Receiver<()>,
    count: watch::Sender<usize>,
) {
    let logger = settings.logger.clone();
    let app = App::new()
        .service(live_log_service(logs))
        .default_service(web::to(not_found));
    let factory = HttpService::<IdleIo, _, BoxBody>::build()
        .keep_alive(KeepAlive::Timeout(settings.keep_alive))
        .client_request_timeout(settings.request_timeout)
        .local_addr(addr)
        .h1(map_config(app, |()| AppConfig::default()));
    let service = match factory.new_service(()).await {
        Ok(service) => service,
        Err(e) => {
            warn!(logger, "live log server failed to start"; "error" => ?e);
            return;
        }
    };
    let count = Rc::new(count);
    let max_connections = settings.max_connections.max(1);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if connections.len() < max_connections => match accepted {
                Ok((stream, peer)) => {
                    // The log is written in chunks already; don't hold them back for Nagle.
                    let _ = stream.set_nodelay(true);
                    let io = IdleIo::new(stream, settings.reader_idle_timeout, peer, logger.clone());
                    let connection = service.call((io, Some(peer)));
                    let counted = Counted::new(count.clone());
                    let logger = logger.clone();
                    connections.spawn_local(async move {
                        let _counted = counted;
                        if let Err(e) = connection.await {
                            debug!(logger, "live log connection failed"; "peer" => %peer, "error" => %e);
                        }
                    });
                }
                Err(e) => {
                    warn!(logger, "live log accept failed"; "error" => %e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    info!(logger, "live log server stopping"; "open_connections" => connections.len());
    let drained = tokio::time::timeout(settings.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        info!(logger, "live log server cut open responses"; "open_connections" => connections.len());
    }
    connections.shutdown().await;
}

/// A connection that fails its pending write once the peer has taken no bytes for `idle`: the only
/// way to drop a reader that stopped reading, since the HTTP dispatcher waits on the socket, not on us.
struct IdleIo {
    io: TcpStream,
    idle: Duration,
    /// Armed when a write would block; disarmed by any write that gets through.
    stalled: Option<Pin<Box<Sleep>>>,
    peer: SocketAddr,
    logger: Logger,
}

impl IdleIo {
    fn new(io: TcpStream, idle: Duration, peer: SocketAddr, logger: Logger) -> IdleIo {
        IdleIo {
            io,
            idle,
            stalled: None,
            peer,
            logger,
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                warn!(this.logger, "live log reader stalled"; "peer" => %this.peer, "idle_secs" => idle.as_secs());
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the reader accepted no data within the idle timeout",
                )))
            }
            ready => {
                if matches!(ready, Poll::Ready(Ok(n)) if n > 0) {
                    this.stalled = None;
                }
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn tokens_are_22_url_safe_chars_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 22);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn only_open_ended_byte_ranges_count() {
        let parse = |s: &str| range_start(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(parse("bytes=10-"), Some(10));
        assert_eq!(parse("bytes=0-"), Some(0));
        assert_eq!(parse(" Bytes = 7 - "), Some(7));
        for ignored in [
            "bytes=10-20",
            "bytes=-5",
            "bytes=1-,5-",
            "items=1-",
            "bytes=x-",
            "bytes=-",
            "10-",
        ] {
            assert_eq!(parse(ignored), None, "{ignored}");
        }
        assert_eq!(range_start(None), None);
    }

    #[test]
    fn lookup_finds_only_the_exact_token() {
        let logs = LiveLogs::new();
        let (_tx, rx) = LogProgress::channel();
        let a = logs.register("/a", rx.clone()).unwrap();
        let b = logs.register("/b", rx).unwrap();
        assert_eq!(logs.find(a.token()).unwrap().0, Path::new("/a"));
        assert_eq!(logs.find(b.token()).unwrap().0, Path::new("/b"));
        assert!(logs.find(&a.token()[..21]).is_none());
        assert!(logs.find("").is_none());
        let mut wrong = a.token().to_owned();
        wrong.replace_range(21.., if wrong.ends_with('A') { "B" } else { "A" });
        assert!(logs.find(&wrong).is_none());
        a.unregister();
        assert_eq!(logs.len(), 1);
        drop(b);
        assert!(logs.is_empty());
    }

    #[test]
    fn urls_join_base_and_token() {
        assert_eq!(live_log_url("http://h:1", "tok"), "http://h:1/log/tok");
        assert_eq!(live_log_url("http://h:1/", "tok"), "http://h:1/log/tok");
    }
}
