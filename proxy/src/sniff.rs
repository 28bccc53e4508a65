//! Peeks at a new connection's first bytes, without consuming them, until
//! `detect` can tell what protocol it speaks or the client has been quiet
//! for the detect timeout.

use std::time::Duration;

use tokio::net::TcpStream;
use weft_api::names::DEFAULT_OPAQUE_PORTS;
use weft_api::net::{PortRange, parse_list, parse_port_range};

use crate::detect::{Detected, MAX_PEEK, detect};
use crate::upstream::HttpVersion;

/// Ports whose traffic is never inspected: the defaults and the pod's own.
#[derive(Debug, Clone, Default)]
pub struct OpaquePorts(pub Vec<PortRange>);

impl OpaquePorts {
    /// `list` (comma-separated ports and ranges, may be empty) and the
    /// defaults.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut ports = parse_list(list, parse_port_range).map_err(|e| e.to_string())?;
        ports.extend(DEFAULT_OPAQUE_PORTS.map(|p| PortRange { first: p, last: p }));
        Ok(Self(ports))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }
}

/// How long to wait before peeking again at first bytes that are still
/// arriving — a request line here, a ClientHello on the inbound side (rare:
/// both usually come in one segment).
pub const PEEK_RETRY: Duration = Duration::from_millis(1);

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http(HttpVersion),
    Opaque,
    /// The client sent nothing (or not enough) within the timeout.
    Timeout,
}

/// Peeks at `stream` until its protocol is known, at most `timeout`.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_PEEK];
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            Ok(_) => return Sniffed::Opaque,
            Err(_) => return Sniffed::Timeout,
        };
        match detect(&buf[..n]) {
            Detected::Http1 => return Sniffed::Http(HttpVersion::Http1),
            Detected::Http2 => return Sniffed::Http(HttpVersion::Http2),
            Detected::Opaque => return Sniffed::Opaque,
            Detected::NeedMore if n == seen => {
                // Nothing new yet: peek returns at once while data is queued.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(PEEK_RETRY))
                    .await
                    .is_err()
                {
                    return Sniffed::Timeout;
                }
            }
            Detected::NeedMore => seen = n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn tells_http_from_bytes_without_consuming_them() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            sniff(&server, Duration::from_secs(30)).await,
            Sniffed::Http(HttpVersion::Http1)
        );
        let mut first = [0u8; 3];
        server.peek(&mut first).await.unwrap();
        assert_eq!(&first, b"GET");

        let (mut client, server) = pair().await;
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            sniff(&server, Duration::from_secs(30)).await,
            Sniffed::Http(HttpVersion::Http2)
        );

        let (mut client, server) = pair().await;
        client
            .write_all(b"\x16\x03\x01\x00\x05hello")
            .await
            .unwrap();
        assert_eq!(
            sniff(&server, Duration::from_secs(30)).await,
            Sniffed::Opaque
        );
    }

    #[tokio::test]
    async fn a_request_line_split_across_writes_is_still_http() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET /pa").await.unwrap();
        let sniffing = tokio::spawn(async move { sniff(&server, Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"th HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniffing.await.unwrap(), Sniffed::Http(HttpVersion::Http1));
    }

    #[test]
    fn opaque_ports_are_the_defaults_and_the_pods_own() {
        let ports = OpaquePorts::parse("8000-8010, 9999").unwrap();
        for port in [25, 3306, 5432, 8000, 8005, 8010, 9999] {
            assert!(ports.contains(port), "{port}");
        }
        for port in [80, 7999, 8011] {
            assert!(!ports.contains(port), "{port}");
        }
        assert!(OpaquePorts::parse("").unwrap().contains(6379));
        let bad = OpaquePorts::parse("http").unwrap_err();
        assert!(bad.contains("http"), "{bad}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (_client, server) = pair().await;
        assert_eq!(
            sniff(&server, Duration::from_secs(1)).await,
            Sniffed::Timeout
        );
    }
}
