//! `weft-proxy wait-ready`: blocks until the proxy's `/ready` answers 200.
//!
//! Injection runs it as the classic sidecar's `postStart` hook: the kubelet
//! starts the next container only when the hook returns, so the app never
//! opens a connection before the proxy can carry it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use weft_api::duration::parse_duration;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Args)]
pub struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:7191")]
    pub admin_addr: SocketAddr,
    /// Give up (exit 1) after this long.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub timeout: Duration,
}

pub fn run(args: &WaitReadyArgs) -> Result<()> {
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match probe(args.admin_addr) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("status {status}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "the proxy at {} was not ready within {:?} (last: {last})",
                args.admin_addr,
                args.timeout
            );
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// The status code of `GET /ready`.
fn probe(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}
