//! The built-in live log server over real sockets: a LogStreamActor writes a backing file exactly as a
//! task does, and HTTP readers on 127.0.0.1 tail it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use docker_worker_actors::live_log::{
    live_log_url, LiveLogRegistration, LiveLogServer, LiveLogServerHandle, LiveLogSettings, LiveLogs,
};
use docker_worker_actors::log_stream::{CloseLog, LogChunk, LogProgress, LogSink, LogStreamActor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// For waits on events that come at once unless something is broken.
const SHORT: Duration = Duration::from_secs(10);
/// For waits that move hundreds of MiB through an unoptimised build.
const LONG: Duration = Duration::from_secs(300);

async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// A task's log as `TaskResources::start` makes it, registered with a running live log server.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: Addr<LogStreamActor>,
    logs: LiveLogs,
    registration: Option<LiveLogRegistration>,
    server: Option<LiveLogServerHandle>,
    client: reqwest::Client,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_settings(LiveLogSettings::default()).await
    }

    async fn with_settings(settings: LiveLogSettings) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live_backing.log");
        let file = tokio::fs::File::create(&path).await.unwrap();
        let (progress_tx, progress_rx) = LogProgress::channel();
        let sink =
            LogSink::required("backing log", tokio::io::BufWriter::new(file)).with_progress(progress_tx);
        let log = LogStreamActor::new(vec![sink]).start();
        let logs = LiveLogs::new();
        let registration = logs.register(&path, progress_rx).unwrap();
        let server =
            LiveLogServer::start_with("127.0.0.1:0".parse().unwrap(), logs.clone(), settings).unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Fixture {
            _dir: dir,
            path,
            log,
            logs,
            registration: Some(registration),
            server: Some(server),
            client,
        }
    }

    fn server(&self) -> &LiveLogServerHandle {
        self.server.as_ref().unwrap()
    }

    fn addr(&self) -> SocketAddr {
        self.server().local_addr()
    }

    fn token(&self) -> String {
        self.registration.as_ref().unwrap().token().to_owned()
    }

    fn url(&self) -> String {
        live_log_url(&format!("http://{}", self.addr()), &self.token())
    }

    async fn write(&self, bytes: impl Into<Bytes>) {
        within(SHORT, "log write", self.log.send(LogChunk(bytes.into())))
            .await
            .unwrap()
            .unwrap();
    }

    async fn close(&self) {
        within(SHORT, "log close", self.log.send(CloseLog))
            .await
            .unwrap()
            .unwrap();
    }

    async fn get(&self, range: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(self.url());
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        within(SHORT, "response head", req.send()).await.unwrap()
    }
}

fn lines(range: std::ops::Range<usize>) -> Vec<u8> {
    range
        .map(|i| format!("line {i}: {}\n", "x".repeat(i % 37)))
        .collect::<String>()
        .into_bytes()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

/// Read the body until it holds at least `want` bytes (the log stays open meanwhile).
async fn read_at_least(resp: &mut reqwest::Response, body: &mut Vec<u8>, want: usize) {
    within(SHORT, "live bytes to arrive", async {
        while body.len() < want {
            let chunk = resp.chunk().await.unwrap().expect("the body ended early");
            body.extend_from_slice(&chunk);
        }
    })
    .await
}

#[actix_rt::test]
async fn bytes_before_and_after_connecting_arrive_in_order_and_the_body_ends_with_the_log() {
    let fx = Fixture::new().await;
    let before = lines(0..100);
    fx.write(before.clone()).await;
    let resp = fx.get(None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(header(&resp, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&resp, "x-streaming"), Some("true"));
    assert_eq!(header(&resp, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&resp, "content-length"), None);
    let reader = actix_rt::spawn(resp.bytes());
    for i in 100..200 {
        fx.write(lines(i..i + 1)).await;
    }
    fx.close().await;
    let body = within(SHORT, "the body to end after the log closed", reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, lines(0..200));
}

#[actix_rt::test]
async fn a_reader_sees_a_new_chunk_while_the_log_is_still_open() {
    let fx = Fixture::new().await;
    fx.write("first\n").await;
    let mut resp = fx.get(None).await;
    let mut body = Vec::new();
    read_at_least(&mut resp, &mut body, 6).await;
    assert_eq!(body, b"first\n");
    fx.write("second\n").await;
    read_at_least(&mut resp, &mut body, 13).await;
    assert_eq!(body, b"first\nsecond\n");
    fx.close().await;
    let rest = within(SHORT, "the body to end", resp.bytes()).await.unwrap();
    assert!(rest.is_empty());
}

#[actix_rt::test]
async fn two_concurrent_readers_get_identical_bodies() {
    let fx = Fixture::new().await;
    fx.write(lines(0..10)).await;
    let a = actix_rt::spawn(fx.get(None).await.bytes());
    let b = actix_rt::spawn(fx.get(None).await.bytes());
    for i in 10..3000 {
        fx.write(lines(i..i + 1)).await;
    }
    fx.close().await;
    let a = within(SHORT, "reader a", a).await.unwrap().unwrap();
    let b = within(SHORT, "reader b", b).await.unwrap().unwrap();
    assert_eq!(a, lines(0..3000));
    assert_eq!(a, b);
}

#[actix_rt::test]
async fn range_resumes_from_the_given_byte() {
    let fx = Fixture::new().await;
    let all = lines(0..400);
    let (first, second) = all.split_at(all.len() / 2);
    fx.write(first.to_vec()).await;

    // While the log is written, the end is unknown.
    let live = fx.get(Some("bytes=300-")).await;
    assert_eq!(live.status(), 206);
    assert_eq!(header(&live, "content-range"), Some("bytes 300-*/*"));
    assert_eq!(header(&live, "x-streaming"), Some("true"));
    let live = actix_rt::spawn(live.bytes());
    // Past what is written so far: served once the log gets there.
    let ahead_at = first.len() + 10;
    let ahead = actix_rt::spawn(fx.get(Some(&format!("bytes={ahead_at}-"))).await.bytes());
    fx.write(second.to_vec()).await;
    fx.close().await;
    assert_eq!(
        within(SHORT, "live range", live).await.unwrap().unwrap(),
        &all[300..]
    );
    assert_eq!(
        within(SHORT, "range ahead", ahead).await.unwrap().unwrap(),
        &all[ahead_at..]
    );

    // Once it is finished, the length is known.
    let len = all.len();
    let done = fx.get(Some("bytes=10-")).await;
    assert_eq!(done.status(), 206);
    assert_eq!(
        header(&done, "content-range"),
        Some(format!("bytes 10-{}/{len}", len - 1).as_str())
    );
    assert_eq!(
        within(SHORT, "finished range", done.bytes()).await.unwrap(),
        &all[10..]
    );

    let past = fx.get(Some(&format!("bytes={len}-"))).await;
    assert_eq!(past.status(), 416);
    assert_eq!(
        header(&past, "content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    // Any other form is ignored, as livelog ignores Range: the whole log.
    for ignored in ["bytes=5-10", "bytes=-5", "bytes=1-,9-", "lines=3-", "nonsense"] {
        let whole = fx.get(Some(ignored)).await;
        assert_eq!(whole.status(), 200, "{ignored}");
        assert_eq!(header(&whole, "content-range"), None, "{ignored}");
        assert_eq!(
            within(SHORT, "whole log", whole.bytes()).await.unwrap(),
            all,
            "{ignored}"
        );
    }
}

#[actix_rt::test]
async fn a_wrong_token_is_denied() {
    let fx = Fixture::new().await;
    fx.write("secret\n").await;
    let token = fx.token();
    let base = format!("http://{}", fx.addr());
    let mut flipped = token.clone();
    flipped.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
    for wrong in [flipped.as_str(), &token[..21], "nope", &format!("{token}x")] {
        let resp = within(
            SHORT,
            "response",
            fx.client.get(live_log_url(&base, wrong)).send(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 401, "{wrong}");
        assert_eq!(header(&resp, "content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(header(&resp, "access-control-allow-origin"), Some("*"));
        assert_eq!(resp.text().await.unwrap(), "Access denied");
    }
    fx.close().await;
}

#[actix_rt::test]
async fn a_finished_log_still_registered_is_served_whole() {
    let fx = Fixture::new().await;
    fx.write(lines(0..50)).await;
    fx.close().await;
    let resp = fx.get(None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        within(SHORT, "whole log", resp.bytes()).await.unwrap(),
        lines(0..50)
    );
}

#[actix_rt::test]
async fn unregistering_denies_new_readers_while_an_ongoing_one_completes() {
    let mut fx = Fixture::new().await;
    fx.write(lines(0..10)).await;
    let url = fx.url();
    let mut resp = fx.get(None).await;
    let mut body = Vec::new();
    read_at_least(&mut resp, &mut body, lines(0..10).len()).await;

    fx.registration.take().unwrap().unregister();
    assert!(fx.logs.is_empty());
    // As when the task's scratch directory goes: the reader keeps its open file.
    std::fs::remove_file(&fx.path).unwrap();
    let denied = within(SHORT, "response", fx.client.get(&url).send())
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    fx.write(lines(10..20)).await;
    fx.close().await;
    let rest = within(SHORT, "the ongoing body", resp.bytes()).await.unwrap();
    body.extend_from_slice(&rest);
    assert_eq!(body, lines(0..20));
}

/// Decodes a chunked body incrementally, counting (and optionally keeping) its payload.
#[derive(Default)]
struct Dechunk {
    line: Vec<u8>,
    data_left: u64,
    crlf_left: u8,
    payload: u64,
    done: bool,
}

impl Dechunk {
    fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && !self.done {
            if self.data_left > 0 {
                let n = self.data_left.min(buf.len() as u64);
                self.payload += n;
                self.data_left -= n;
                buf = &buf[n as usize..];
                if self.data_left == 0 {
                    self.crlf_left = 2;
                }
            } else if self.crlf_left > 0 {
                self.crlf_left -= 1;
                buf = &buf[1..];
            } else {
                let b = buf[0];
                buf = &buf[1..];
                if b != b'\n' {
                    self.line.push(b);
                    continue;
                }
                let line = String::from_utf8(std::mem::take(&mut self.line)).unwrap();
                let size = line.trim().split(';').next().unwrap();
                let size = u64::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size {line:?}"));
                if size == 0 {
                    self.done = true;
                } else {
                    self.data_left = size;
                }
            }
        }
    }
}

/// A raw HTTP/1.1 GET that reads the response head and then nothing more.
async fn stalled_reader(addr: SocketAddr, token: &str) -> (TcpStream, Dechunk) {
    let mut stream = within(SHORT, "connect", TcpStream::connect(addr)).await.unwrap();
    let request = format!("GET /log/{token} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let head_end = within(SHORT, "response head", async {
        loop {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the head");
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        }
    })
    .await;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut body = Dechunk::default();
    body.feed(&got[head_end..]);
    (stream, body)
}

/// Read to the end of the connection; Ok if it closed cleanly, Err if it was reset.
async fn read_to_end(stream: &mut TcpStream, body: &mut Dechunk) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        body.feed(&buf[..n]);
        if body.done {
            return Ok(());
        }
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// 256 MiB through a reader that reads nothing: the writer must finish regardless, and the process
/// must not keep what the reader hasn't taken. A stalled reader holds one 64 KiB read chunk and
/// actix's write buffer; the writer holds its 16-chunk sink queue (1 MiB) and the file's buffer. The
/// rest sits in the file and the kernel's socket buffers, outside our RSS. So growth should be a few
/// MiB; 32 MiB leaves room for allocator slack and the other tests running beside this one, and is
/// still an eighth of what was written: any buffering of the stream would blow it.
#[actix_rt::test]
async fn a_stalled_reader_neither_holds_the_writer_back_nor_grows_memory() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: u64 = 256 << 20;
    let fx = Fixture::new().await;
    let chunk = Bytes::from((0..CHUNK).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>());
    // Warm up every path once (file, HTTP, allocator) before the baseline.
    fx.write(chunk.clone()).await;
    let (mut stream, mut body) = stalled_reader(fx.addr(), &fx.token()).await;
    let before = rss_bytes();

    within(LONG, "the writer to finish beside a stalled reader", async {
        for _ in 1..TOTAL / CHUNK as u64 {
            fx.log.send(LogChunk(chunk.clone())).await.unwrap().unwrap();
        }
        fx.log.send(CloseLog).await.unwrap().unwrap();
    })
    .await;
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 32 << 20,
        "RSS grew {} MiB ({before} -> {after}) while writing 256 MiB past a stalled reader",
        growth >> 20
    );
    assert_eq!(std::fs::metadata(&fx.path).unwrap().len(), TOTAL);

    // The reader was never cut off: far behind, it still gets everything, from disk.
    within(
        LONG,
        "the stalled reader to catch up",
        read_to_end(&mut stream, &mut body),
    )
    .await
    .unwrap();
    assert!(body.done, "the body ended without its last chunk");
    assert_eq!(body.payload, TOTAL);
}

#[actix_rt::test]
async fn a_reader_that_takes_nothing_for_the_idle_timeout_is_disconnected() {
    let settings = LiveLogSettings {
        reader_idle_timeout: Duration::from_millis(300),
        ..LiveLogSettings::default()
    };
    let fx = Fixture::with_settings(settings).await;
    let mut connections = fx.server().open_connections();
    let (mut stream, mut body) = stalled_reader(fx.addr(), &fx.token()).await;
    assert_eq!(*connections.borrow(), 1);
    // Far more than loopback socket buffers hold, so the server's writes block.
    let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
    for _ in 0..512 {
        fx.log.send(LogChunk(chunk.clone())).await.unwrap().unwrap();
    }
    fx.close().await;
    within(
        SHORT,
        "the stalled connection to be dropped",
        connections.wait_for(|n| *n == 0),
    )
    .await
    .unwrap();
    // What the kernel had already queued still arrives, then the connection ends short.
    let _ = within(
        SHORT,
        "the rest of the cut response",
        read_to_end(&mut stream, &mut body),
    )
    .await;
    assert!(!body.done, "a cut response must not end cleanly");
    assert!(body.payload < 512 * 64 * 1024);

    // Waiting for a quiet log is not idleness: a reader of an idle log stays.
    let quiet = Fixture::with_settings(LiveLogSettings {
        reader_idle_timeout: Duration::from_millis(300),
        ..LiveLogSettings::default()
    })
    .await;
    quiet.write("a\n").await;
    let mut resp = quiet.get(None).await;
    let mut got = Vec::new();
    read_at_least(&mut resp, &mut got, 2).await;
    // Quiet for several idle timeouts (a window, since what we check is that nothing happens): the
    // read must end only because the log got more, not by a cut.
    let mut more = actix_rt::spawn(async move {
        let chunk = resp.chunk().await;
        (chunk, resp)
    });
    let waited = tokio::time::timeout(Duration::from_secs(1), &mut more).await;
    assert!(waited.is_err(), "the quiet reader's read ended: {waited:?}");
    quiet.write("b\n").await;
    let (chunk, resp) = within(SHORT, "the next chunk", more).await.unwrap();
    assert_eq!(chunk.unwrap().unwrap(), "b\n");
    quiet.close().await;
    assert!(within(SHORT, "the end", resp.bytes()).await.unwrap().is_empty());
}

#[actix_rt::test]
async fn stopping_refuses_new_connections_and_cuts_open_responses_after_the_grace() {
    let settings = LiveLogSettings {
        shutdown_timeout: Duration::from_millis(200),
        ..LiveLogSettings::default()
    };
    let mut fx = Fixture::with_settings(settings).await;
    fx.write("running\n").await;
    let addr = fx.addr();
    let mut resp = fx.get(None).await;
    let mut body = Vec::new();
    read_at_least(&mut resp, &mut body, 8).await;

    within(SHORT, "stop", fx.server.take().unwrap().stop()).await;
    let rest = within(SHORT, "the cut response", resp.bytes()).await;
    assert!(
        rest.is_err(),
        "an unfinished log's response must end as an error: {rest:?}"
    );
    let refused = within(SHORT, "connect", TcpStream::connect(addr)).await;
    assert!(refused.is_err(), "the stopped server still accepts connections");
    fx.close().await;
}

#[test]
fn starting_outside_a_system_fails_rather_than_panicking() {
    let result = std::thread::spawn(|| {
        LiveLogServer::start("127.0.0.1:0".parse().unwrap(), LiveLogs::new()).map(|_| ())
    })
    .join()
    .unwrap();
    assert!(result.is_err());
}
