//! Accepting connections and relaying bytes: the pieces inbound and
//! outbound share.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::idle::copy_until_idle;
use crate::metrics::{BytesLabels, ConnLabels, Direction, Metrics, Stream};

/// Accepts until `shutdown`, handing each connection to `handle` on a task
/// tracked by `tracker` (so shutdown can wait for them to drain). Accept
/// errors (e.g. out of file descriptors) back off instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                tune(&stream);
                tracker.spawn(handle(stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Copies both ways until both sides are done (or, with an `idle` limit,
/// nothing moved for that long), passing each half-close on, then counts
/// the bytes and the close.
pub async fn relay<A, B>(
    metrics: &Metrics,
    labels: ConnLabels,
    mut client: A,
    mut upstream: B,
    idle: Option<Duration>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    metrics.opened.get_or_create(&labels).inc();
    let (request, response) = match idle {
        Some(limit) => copy_until_idle(client, upstream, limit).await,
        None => match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::debug!(error = %e, "connection ended with an error");
                (0, 0)
            }
        },
    };
    count_bytes(metrics, &labels, Stream::Request, request);
    count_bytes(metrics, &labels, Stream::Response, response);
    metrics.closed.get_or_create(&labels).inc();
}

fn count_bytes(metrics: &Metrics, labels: &ConnLabels, stream: Stream, n: u64) {
    metrics
        .bytes
        .get_or_create(&BytesLabels {
            direction: labels.direction,
            peer_identity: labels.peer_identity.clone(),
            stream,
        })
        .inc_by(n);
}

/// Connects with a deadline; `TCP_NODELAY` on.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tune(&stream);
    Ok(stream)
}

/// Per-socket options: no Nagle delay for small writes (request heads,
/// TLS records), and TCP keepalive so a peer that vanished without a FIN
/// (a crashed node) does not hold a relay and two descriptors forever.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

pub fn conn_labels(direction: Direction, peer: Option<&weft_api::SpiffeId>) -> ConnLabels {
    ConnLabels {
        direction,
        peer_identity: peer.map(|p| p.to_string()).unwrap_or_default(),
        tls: peer.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_get_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = connect(listener.local_addr().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(stream.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 6);
    }
}
