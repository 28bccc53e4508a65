//! The idle timeout of a relayed connection (`timeouts.idle` of the
//! caller's policy): a connection that moves no byte either way for that
//! long is closed, so a peer that vanished without a FIN or RST does not
//! hold a connection, its buffers and an upstream slot for ever.
//!
//! Activity is a timestamp each successful read stores (a relaxed atomic:
//! the relay and its watchdog run in one task, so nothing contends), and
//! the watchdog sleeps until the last activity plus the limit, checking
//! again when something moved in between: one timer per connection, not
//! one reset per read.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copies both ways, passing each half-close on, until both sides are done
/// or nothing has moved for `limit`. Returns the bytes read from `client`
/// and from `upstream`, whichever way it ended.
pub async fn copy_until_idle<A, B>(client: A, upstream: B, limit: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Tracked::new(client, &activity);
    let mut upstream = Tracked::new(upstream, &activity);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = activity.idle_for(limit) => {
            tracing::debug!(?limit, "connection idle; closing");
        }
    }
    (client.read, upstream.read)
}

/// When a byte last moved, in milliseconds since `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Rounded up, so the connection is never closed early.
    fn touch(&self) {
        let ms = self.start.elapsed().as_micros().div_ceil(1000);
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records activity on every read that returns bytes and
/// counts them.
struct Tracked<'a, S> {
    inner: S,
    activity: &'a Activity,
    read: u64,
}

impl<'a, S> Tracked<'a, S> {
    fn new(inner: S, activity: &'a Activity) -> Self {
        Self {
            inner,
            activity,
            read: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read += n as u64;
            this.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A relay between two in-memory pipes, and the far ends of both.
    fn relayed() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<(u64, u64, Instant)>,
    ) {
        let (app, client) = duplex(64);
        let (upstream, server) = duplex(64);
        let relay = tokio::spawn(async move {
            let counts = copy_until_idle(client, upstream, LIMIT).await;
            (counts.0, counts.1, Instant::now())
        });
        (app, server, relay)
    }

    #[tokio::test(start_paused = true)]
    async fn closes_a_connection_idle_for_the_limit_counting_each_way() {
        let (mut app, mut server, relay) = relayed();
        let mut byte = [0; 1];
        app.write_all(b"a").await.unwrap();
        server.read_exact(&mut byte).await.unwrap();
        // Traffic before the limit keeps the connection open...
        tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
        server.write_all(b"bc").await.unwrap();
        let mut two = [0; 2];
        app.read_exact(&mut two).await.unwrap();
        let last = Instant::now();
        // ...then it is closed the limit after the last byte.
        let ended = tokio::time::timeout(LIMIT * 10, relay).await;
        let (from_client, from_upstream, ended) = ended.expect("closed when idle").unwrap();
        assert_eq!((from_client, from_upstream), (1, 2));
        let quiet = ended - last;
        assert!(
            quiet >= LIMIT && quiet < LIMIT + Duration::from_millis(50),
            "{quiet:?}"
        );
        assert_eq!(
            app.read(&mut byte).await.unwrap(),
            0,
            "the app sees the close"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_outlives_the_limit() {
        let (mut app, mut server, relay) = relayed();
        let mut byte = [0; 1];
        for _ in 0..5 {
            tokio::time::sleep(LIMIT / 2).await;
            app.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
        }
        assert!(!relay.is_finished(), "closed after 2.5 limits of traffic");
        // Both sides closing ends it at once, without waiting for the limit.
        let closing = Instant::now();
        drop((app, server));
        let (from_client, _, ended) = relay.await.unwrap();
        assert_eq!(from_client, 5);
        assert!(ended - closing < LIMIT);
    }
}
