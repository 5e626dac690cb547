//! LogStreamActor: fans one task's log out to its sinks (terminal, backing file; later HTTP readers),
//! in order, with backpressure: a chunk is accepted only once every sink has room for it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll};

use actix::prelude::*;
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How many chunks each sink may hold before the writer has to wait.
pub const SINK_QUEUE_CHUNKS: usize = 16;

/// A piece of the task log.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), LogError>")]
pub struct LogChunk(pub Bytes);

impl LogChunk {
    /// A chunk of text.
    pub fn text(s: impl Into<String>) -> LogChunk {
        LogChunk(Bytes::from(s.into()))
    }
}

/// Flush every sink and stop accepting chunks.
#[derive(Message, Debug)]
#[rtype(result = "Result<LogSummary, LogError>")]
pub struct CloseLog;

/// What the log came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSummary {
    /// Bytes written.
    pub bytes: u64,
}

/// The log could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// A sink the log can't do without failed.
    #[error("log sink {sink} failed: {error}")]
    SinkFailed {
        /// The sink's name.
        sink: String,
        /// The I/O error.
        error: String,
    },
    /// The log was closed already.
    #[error("the task log is already closed")]
    Closed,
    /// The LogStreamActor is gone.
    #[error("the log actor stopped: {0}")]
    ActorGone(String),
}

impl From<MailboxError> for LogError {
    fn from(e: MailboxError) -> Self {
        LogError::ActorGone(e.to_string())
    }
}

/// How far a sink has got: what HTTP readers of the backing file may read, and whether more will come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogProgress {
    /// Bytes written and flushed to the OS so far.
    pub written: u64,
    /// The sink has stopped for good (closed, or its writer failed); `written` is final.
    pub finished: bool,
}

impl LogProgress {
    /// A channel to hand to [`LogSink::with_progress`], starting at nothing written.
    pub fn channel() -> (watch::Sender<LogProgress>, watch::Receiver<LogProgress>) {
        watch::channel(LogProgress::default())
    }
}

/// One destination of the log.
pub struct LogSink {
    name: String,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    required: bool,
    flush_each_chunk: bool,
    progress: Option<watch::Sender<LogProgress>>,
}

impl LogSink {
    /// A sink whose failure fails the log (the backing file).
    pub fn required(name: impl Into<String>, writer: impl AsyncWrite + Send + Unpin + 'static) -> LogSink {
        LogSink {
            name: name.into(),
            writer: Box::new(writer),
            required: true,
            flush_each_chunk: false,
            progress: None,
        }
    }

    /// A sink that may go away without harm (a terminal someone closed).
    pub fn optional(name: impl Into<String>, writer: impl AsyncWrite + Send + Unpin + 'static) -> LogSink {
        LogSink {
            name: name.into(),
            writer: Box::new(writer),
            required: false,
            flush_each_chunk: false,
            progress: None,
        }
    }

    /// Flush after every chunk, so a person watching sees output as it comes.
    pub fn live(mut self) -> LogSink {
        self.flush_each_chunk = true;
        self
    }

    /// Publish how many bytes have reached the OS after each chunk, and `finished` once the sink
    /// stops however it stops; implies [`LogSink::live`], so readers of the file see a chunk at once.
    pub fn with_progress(mut self, progress: watch::Sender<LogProgress>) -> LogSink {
        self.flush_each_chunk = true;
        self.progress = Some(progress);
        self
    }
}

/// Marks the progress finished when the drain ends, also on an error, a panic or an abort, so a
/// reader following the sink never waits forever.
struct ProgressGuard(Option<watch::Sender<LogProgress>>);

impl ProgressGuard {
    fn written(&self, written: u64) {
        if let Some(tx) = &self.0 {
            // send_modify, not send: the value must move on even while nobody is subscribed.
            tx.send_modify(|p| p.written = written);
        }
    }
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        if let Some(tx) = &self.0 {
            tx.send_modify(|p| p.finished = true);
        }
    }
}

struct SinkHandle {
    name: String,
    required: bool,
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// One per task.
pub struct LogStreamActor {
    sinks: Vec<SinkHandle>,
    bytes: u64,
    closed: bool,
}

impl LogStreamActor {
    /// Start writer tasks for the sinks; call from within the actor system.
    pub fn new(sinks: Vec<LogSink>) -> LogStreamActor {
        let sinks = sinks
            .into_iter()
            .map(|sink| {
                let (tx, rx) = mpsc::channel(SINK_QUEUE_CHUNKS);
                let progress = ProgressGuard(sink.progress);
                let task = tokio::spawn(drain(sink.writer, rx, sink.flush_each_chunk, progress));
                SinkHandle {
                    name: sink.name,
                    required: sink.required,
                    tx: Some(tx),
                    task: Some(task),
                }
            })
            .collect();
        LogStreamActor {
            sinks,
            bytes: 0,
            closed: false,
        }
    }
}

async fn drain(
    mut writer: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<Bytes>,
    flush_each_chunk: bool,
    progress: ProgressGuard,
) -> io::Result<()> {
    let mut written = 0u64;
    while let Some(chunk) = rx.recv().await {
        writer.write_all(&chunk).await?;
        written += chunk.len() as u64;
        // Chunks that queued up while this one was written go out with it, under one flush: a fast
        // producer costs a flush (and a wake-up of every live reader) per batch, not per chunk.
        // At most one queue's worth, so a producer that keeps the queue full can't hold off the flush.
        for _ in 0..SINK_QUEUE_CHUNKS {
            let Ok(more) = rx.try_recv() else { break };
            writer.write_all(&more).await?;
            written += more.len() as u64;
        }
        if flush_each_chunk {
            writer.flush().await?;
        }
        // Only published once flushed (with_progress implies flush_each_chunk): readers of the file
        // never look past what the OS has.
        progress.written(written);
    }
    writer.flush().await?;
    let shut = writer.shutdown().await;
    drop(progress);
    shut
}

impl Actor for LogStreamActor {
    type Context = Context<Self>;
}

impl Handler<LogChunk> for LogStreamActor {
    type Result = AtomicResponse<Self, Result<(), LogError>>;

    fn handle(&mut self, msg: LogChunk, _: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return AtomicResponse::new(Box::pin(fut::ready(Err(LogError::Closed))));
        }
        self.bytes += msg.0.len() as u64;
        let targets: Vec<(usize, mpsc::Sender<Bytes>)> = self
            .sinks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.tx.clone().map(|tx| (i, tx)))
            .collect();
        let chunk = msg.0;
        let send_all = async move {
            let mut gone = Vec::new();
            for (i, tx) in targets {
                if tx.send(chunk.clone()).await.is_err() {
                    gone.push(i);
                }
            }
            gone
        };
        AtomicResponse::new(Box::pin(send_all.into_actor(self).map(|gone, act, _| {
            let mut result = Ok(());
            for i in gone {
                let sink = &mut act.sinks[i];
                sink.tx = None;
                if sink.required && result.is_ok() {
                    result = Err(LogError::SinkFailed {
                        sink: sink.name.clone(),
                        error: "its writer stopped".into(),
                    });
                }
            }
            result
        })))
    }
}

impl Handler<CloseLog> for LogStreamActor {
    type Result = AtomicResponse<Self, Result<LogSummary, LogError>>;

    fn handle(&mut self, _: CloseLog, _: &mut Context<Self>) -> Self::Result {
        self.closed = true;
        let bytes = self.bytes;
        let pending: Vec<(String, bool, JoinHandle<io::Result<()>>)> = self
            .sinks
            .iter_mut()
            .filter_map(|s| {
                s.tx = None;
                s.task.take().map(|t| (s.name.clone(), s.required, t))
            })
            .collect();
        AtomicResponse::new(Box::pin(
            async move {
                let mut result = Ok(LogSummary { bytes });
                for (name, required, task) in pending {
                    let outcome = match task.await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let (Err(error), true, true) = (outcome, required, result.is_ok()) {
                        result = Err(LogError::SinkFailed { sink: name, error });
                    }
                }
                result
            }
            .into_actor(self),
        ))
    }
}

/// An in-memory log sink that can be read while it is written.
#[derive(Clone, Default)]
pub struct MemorySink(pub Arc<Mutex<Vec<u8>>>);

impl MemorySink {
    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().expect("memory sink lock").clone()
    }
}

impl AsyncWrite for MemorySink {
    fn poll_write(self: Pin<&mut Self>, _: &mut TaskCx<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.lock().expect("memory sink lock").extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A writer that accepts nothing until its gate opens.
    struct Gated {
        open: Arc<tokio::sync::Semaphore>,
        inner: MemorySink,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        waiting: Option<Pin<Box<dyn std::future::Future<Output = tokio::sync::OwnedSemaphorePermit> + Send>>>,
    }

    impl AsyncWrite for Gated {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            if self.permit.is_none() {
                let open = self.open.clone();
                let fut = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(async move { open.acquire_owned().await.unwrap() }));
                match fut.as_mut().poll(cx) {
                    Poll::Ready(p) => {
                        self.permit = Some(p);
                        self.waiting = None;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[actix_rt::test]
    async fn chunks_reach_every_sink_in_order() {
        let a = MemorySink::default();
        let b = MemorySink::default();
        let log = LogStreamActor::new(vec![
            LogSink::required("a", a.clone()),
            LogSink::optional("b", b.clone()).live(),
        ])
        .start();
        let mut want = Vec::new();
        for i in 0..500 {
            let line = format!("line {i}\n");
            want.extend_from_slice(line.as_bytes());
            log.send(LogChunk::text(line)).await.unwrap().unwrap();
        }
        let summary = log.send(CloseLog).await.unwrap().unwrap();
        assert_eq!(summary.bytes, want.len() as u64);
        assert_eq!(a.contents(), want);
        assert_eq!(b.contents(), want);
        assert_eq!(
            log.send(LogChunk::text("late")).await.unwrap(),
            Err(LogError::Closed)
        );
    }

    #[actix_rt::test]
    async fn a_stalled_sink_holds_the_writer_back() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let inner = MemorySink::default();
        let gated = Gated {
            open: gate.clone(),
            inner: inner.clone(),
            permit: None,
            waiting: None,
        };
        let log = LogStreamActor::new(vec![LogSink::required("gated", gated)]).start();
        let accepted = Arc::new(AtomicUsize::new(0));
        let writer = {
            let log = log.clone();
            let accepted = accepted.clone();
            actix_rt::spawn(async move {
                for i in 0..200 {
                    log.send(LogChunk::text(format!("{i}\n"))).await.unwrap().unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        for _ in 0..2000 {
            tokio::task::yield_now().await;
        }
        let held = accepted.load(Ordering::SeqCst);
        // The writer's first chunk is taken by the stalled write, then the queue fills, then it waits.
        assert!(
            held <= SINK_QUEUE_CHUNKS + 2,
            "accepted {held} chunks while the sink was stalled"
        );
        assert!(held < 200);
        gate.add_permits(1);
        writer.await.unwrap();
        log.send(CloseLog).await.unwrap().unwrap();
        let want: String = (0..200).map(|i| format!("{i}\n")).collect();
        assert_eq!(String::from_utf8(inner.contents()).unwrap(), want);
    }

    struct Broken;
    impl AsyncWrite for Broken {
        fn poll_write(self: Pin<&mut Self>, _: &mut TaskCx<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed")))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[actix_rt::test]
    async fn an_optional_sink_may_fail_a_required_one_may_not() {
        let kept = MemorySink::default();
        let log = LogStreamActor::new(vec![
            LogSink::optional("terminal", Broken),
            LogSink::required("file", kept.clone()),
        ])
        .start();
        for _ in 0..5 {
            log.send(LogChunk::text("x")).await.unwrap().unwrap();
        }
        log.send(CloseLog).await.unwrap().unwrap();
        assert_eq!(kept.contents(), b"xxxxx");

        let log = LogStreamActor::new(vec![LogSink::required("file", Broken)]).start();
        let mut failed = false;
        for _ in 0..5 {
            failed |= log.send(LogChunk::text("x")).await.unwrap().is_err();
        }
        let closed = log.send(CloseLog).await.unwrap();
        assert!(failed || closed.is_err(), "a broken required sink must surface");
    }

    async fn progress_reaches(
        rx: &mut watch::Receiver<LogProgress>,
        what: &str,
        f: impl FnMut(&LogProgress) -> bool,
    ) -> LogProgress {
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            rx.wait_for(f).await.map(|p| *p)
        })
        .await;
        match seen {
            Ok(progress) => progress.expect("progress sender gone"),
            Err(_) => panic!("progress never reached {what}: {:?}", *rx.borrow()),
        }
    }

    #[actix_rt::test]
    async fn progress_counts_bytes_on_disk_and_finishes_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live_backing.log");
        let file = tokio::fs::File::create(&path).await.unwrap();
        // A buffer far bigger than the log: only the per-chunk flush gets bytes to the file.
        let writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let (tx, mut rx) = LogProgress::channel();
        let log =
            LogStreamActor::new(vec![LogSink::required("backing log", writer).with_progress(tx)]).start();
        let mut total = 0u64;
        for i in 0..50 {
            let line = format!("line {i}\n");
            total += line.len() as u64;
            log.send(LogChunk::text(line)).await.unwrap().unwrap();
            let now = progress_reaches(&mut rx, "the chunk just sent", |p| p.written == total).await;
            assert!(!now.finished);
            let on_disk = std::fs::read(&path).unwrap().len() as u64;
            assert!(
                on_disk >= now.written,
                "{on_disk} bytes on disk, {} published",
                now.written
            );
        }
        log.send(CloseLog).await.unwrap().unwrap();
        let end = progress_reaches(&mut rx, "finished", |p| p.finished).await;
        assert_eq!(end.written, total);
        assert_eq!(std::fs::read(&path).unwrap().len() as u64, total);
    }

    #[actix_rt::test]
    async fn progress_finishes_when_the_writer_fails() {
        let (tx, mut rx) = LogProgress::channel();
        let log = LogStreamActor::new(vec![LogSink::optional("broken", Broken).with_progress(tx)]).start();
        let _ = log.send(LogChunk::text("x")).await.unwrap();
        let end = progress_reaches(&mut rx, "finished", |p| p.finished).await;
        assert_eq!(end.written, 0);
        log.send(CloseLog).await.unwrap().unwrap();
    }

    #[actix_rt::test]
    async fn progress_finishes_when_the_log_actor_goes_away_unclosed() {
        let kept = MemorySink::default();
        let (tx, mut rx) = LogProgress::channel();
        let log = LogStreamActor::new(vec![LogSink::required("mem", kept.clone()).with_progress(tx)]).start();
        log.send(LogChunk::text("abc")).await.unwrap().unwrap();
        drop(log);
        let end = progress_reaches(&mut rx, "finished", |p| p.finished).await;
        assert_eq!(end.written, 3);
        assert_eq!(kept.contents(), b"abc");
    }
}
