//! Where an intercepted connection was going before iptables redirected it.
//!
//! Behind a trait so that tests run the whole proxy on loopback with a fixed
//! destination and no iptables.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

pub trait OriginalDst: Send + Sync + 'static {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
}

/// The real thing: `SO_ORIGINAL_DST` (`IP6T_SO_ORIGINAL_DST` for IPv6),
/// filled in by the kernel's NAT for a REDIRECTed connection.
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        let sock = SockRef::from(stream);
        let addr = match stream.local_addr()? {
            SocketAddr::V4(_) => sock.original_dst_v4()?,
            SocketAddr::V6(_) => sock.original_dst_v6()?,
        };
        addr.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "original destination is not IP")
        })
    }
}

/// Every connection "was going to" the same address: for tests and for
/// benchmarks that reach the proxy's ports directly.
pub struct FixedDst(pub SocketAddr);

impl OriginalDst for FixedDst {
    fn original_dst(&self, _stream: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}
