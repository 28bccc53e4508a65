//! HAProxy configurations for the peer pair, as `../shared/BENCH.md`
//! describes it: one thread each, TLS 1.3 only, keep-alive, connection
//! reuse between the two, client certificates verified.

use std::net::SocketAddr;
use std::path::Path;

const COMMON: &str = "\
global
    nbthread 1
    maxconn 4096
    tune.ssl.default-dh-param 2048

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
";

/// Plain HTTP in (HTTP/1.1, or HTTP/2 with prior knowledge), TLS with a
/// client certificate to the server side, which must prove `server_name`.
pub fn client_side(
    listen: SocketAddr,
    client_pem: &Path,
    ca: &Path,
    server: SocketAddr,
    server_name: &str,
    h2: bool,
) -> String {
    let (bind_proto, alpn) = if h2 {
        (" proto h2", " alpn h2")
    } else {
        ("", "")
    };
    format!(
        "{COMMON}
frontend entry
    bind {listen}{bind_proto}
    default_backend peer

backend peer
    server peer {server} ssl crt {client_pem} ca-file {ca} verify required verifyhost {server_name} sni str({server_name}) ssl-min-ver TLSv1.3{alpn} pool-max-conn 1000
",
        client_pem = client_pem.display(),
        ca = ca.display(),
    )
}

/// TLS in, client certificate required, to the backend (HTTP/2 with prior
/// knowledge when `h2`).
pub fn server_side(
    listen: SocketAddr,
    server_pem: &Path,
    ca: &Path,
    backend: SocketAddr,
    h2: bool,
) -> String {
    let (alpn, backend_proto) = if h2 {
        (" alpn h2", " proto h2")
    } else {
        ("", "")
    };
    format!(
        "{COMMON}
frontend tls
    bind {listen} ssl crt {server_pem} ca-file {ca} verify required ssl-min-ver TLSv1.3{alpn}
    default_backend app

backend app
    server app {backend}{backend_proto}
",
        server_pem = server_pem.display(),
        ca = ca.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_is_negotiated_between_the_proxies_and_spoken_to_the_backend() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let client = client_side(
            addr,
            Path::new("c.pem"),
            Path::new("ca.pem"),
            addr,
            "s.b",
            true,
        );
        assert!(client.contains("bind 127.0.0.1:1 proto h2\n"), "{client}");
        assert!(
            client.contains(
                "verify required verifyhost s.b sni str(s.b) ssl-min-ver TLSv1.3 alpn h2"
            )
        );
        let server = server_side(addr, Path::new("s.pem"), Path::new("ca.pem"), addr, true);
        assert!(server.contains(
            "ssl crt s.pem ca-file ca.pem verify required ssl-min-ver TLSv1.3 alpn h2\n"
        ));
        assert!(server.contains("server app 127.0.0.1:1 proto h2\n"));
        let plain = server_side(addr, Path::new("s.pem"), Path::new("ca.pem"), addr, false);
        assert!(!plain.contains("h2"), "{plain}");
        assert!(client.contains("nbthread 1") && plain.contains("http-reuse always"));
    }
}
