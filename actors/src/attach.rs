//! Attaching to a TTY container's output without losing bytes.
//!
//! bollard's attach decoder guesses, per chunk, whether the stream is multiplexed: a chunk of a TTY
//! container's output that starts with byte 0, 1 or 2 is taken for a frame header and its first eight
//! bytes are lost. Task containers always have a TTY, so docker-worker reads the upgraded connection
//! itself and passes every byte through unchanged.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::io::ReaderStream;

use crate::docker::{ByteStream, DockerError};

/// Where the Docker engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// Plain TCP, `host:port`.
    Tcp(String),
}

impl Endpoint {
    /// The socket Docker listens on by default.
    pub const DEFAULT: &'static str = "unix:///var/run/docker.sock";

    /// Parse `unix:///path`, `/path`, `tcp://host:port` or `http://host:port`.
    pub fn parse(host: &str) -> Result<Endpoint, String> {
        if let Some(path) = host.strip_prefix("unix://") {
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if host.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(host)))
        } else if let Some(addr) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            Ok(Endpoint::Tcp(addr.trim_end_matches('/').to_string()))
        } else {
            Err(format!(
                "Docker host {host:?} is not supported: use unix:///path/to/docker.sock or tcp://host:port"
            ))
        }
    }
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// `POST /containers/{id}/attach` with an upgrade, returning the raw output stream.
pub async fn attach_raw(
    endpoint: &Endpoint,
    api_version: &str,
    container: &str,
) -> Result<ByteStream, DockerError> {
    let unreachable = |e: std::io::Error| DockerError::Unreachable(e.to_string());
    let mut conn: Box<dyn Conn> = match endpoint {
        Endpoint::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(unreachable)?),
        Endpoint::Tcp(addr) => Box::new(TcpStream::connect(addr).await.map_err(unreachable)?),
    };
    let request = format!(
        "POST /v{api_version}/containers/{container}/attach?logs=1&stream=1&stdout=1&stderr=1 HTTP/1.1\r\n\
         Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.map_err(unreachable)?;
    let mut reader = BufReader::new(conn);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.map_err(unreachable)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| DockerError::Unreachable(format!("unexpected attach answer {status_line:?}")))?;
    let mut content_length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.map_err(unreachable)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse::<u64>().ok();
            }
        }
    }
    if status == 101 || status == 200 {
        // A read returns what is there, so a bigger buffer adds no delay; it only spares a fast
        // producer's output the cost of being handled 4 KiB (ReaderStream's default) at a time.
        return Ok(Box::pin(ReaderStream::with_capacity(reader, 64 * 1024)));
    }
    let mut body = String::new();
    let limit = content_length.unwrap_or(64 * 1024).min(64 * 1024);
    let _ = (&mut reader).take(limit).read_to_string(&mut body).await;
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    Err(match status {
        404 => DockerError::NotFound(message),
        400..=499 => DockerError::Rejected { status, message },
        _ => DockerError::Daemon { status, message },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock"),
            Ok(Endpoint::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("/tmp/d.sock"),
            Ok(Endpoint::Unix("/tmp/d.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375"),
            Ok(Endpoint::Tcp("127.0.0.1:2375".into()))
        );
        assert!(Endpoint::parse("ssh://host")
            .unwrap_err()
            .contains("not supported"));
    }

    #[tokio::test]
    async fn bytes_pass_through_unchanged_and_errors_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            // First connection: upgrade, then output starting with bytes a multiplexing decoder would eat.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n\x01\x02abcdefghijkl\r\n").await.unwrap();
            s.write_all(b"\x00after\r\n").await.unwrap();
            drop(s);
            // Second: no such container.
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            let body = br#"{"message":"No such container: nope"}"#;
            let head = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body).await.unwrap();
            req
        });
        let endpoint = Endpoint::Unix(sock);
        let stream = attach_raw(&endpoint, "1.41", "abc").await.unwrap();
        let bytes = crate::docker::collect(stream).await.unwrap();
        assert_eq!(bytes, b"\x01\x02abcdefghijkl\r\n\x00after\r\n");
        let err = attach_raw(&endpoint, "1.41", "nope").await.err().unwrap();
        assert_eq!(err, DockerError::NotFound("No such container: nope".into()));
        let req = server.await.unwrap();
        assert!(req
            .starts_with("POST /v1.41/containers/abc/attach?logs=1&stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"));
    }
}
