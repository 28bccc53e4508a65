//! Reads the ALPN protocols a TLS ClientHello offers, from bytes peeked off
//! a socket, so the inbound side can tell mesh TLS (our proxies offer
//! `weft_api::names::MESH_ALPNS`) from any other TLS — an HTTPS probe, a
//! client outside the mesh speaking TLS to the app — which it must pass
//! through rather than terminate.

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// The first TLS record is not complete yet: this many bytes are needed.
    Incomplete(usize),
    /// A ClientHello, and whether it offers the protocol asked about.
    ClientHello { offers: bool },
    /// Not a TLS ClientHello (or not one that fits in one record).
    Other,
}

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const ALPN_EXTENSION: u16 = 0x0010;
/// A TLS record's header: type, version, length.
const RECORD_HEADER: usize = 5;

/// Parses the first record of `bytes`; `protos` are the ALPN protocols
/// sought (offering any of them counts).
pub fn parse(bytes: &[u8], protos: &[&[u8]]) -> Hello {
    if bytes.first() != Some(&HANDSHAKE) {
        return Hello::Other;
    }
    let Some(len) = bytes
        .get(3..5)
        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
    else {
        return Hello::Incomplete(RECORD_HEADER);
    };
    let Some(record) = bytes.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Hello::Incomplete(RECORD_HEADER + len);
    };
    match offers(record, protos) {
        Some(offers) => Hello::ClientHello { offers },
        None => Hello::Other,
    }
}

/// A cursor over big-endian fields; `None` when the input runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a length prefix of `len_bytes` bytes.
    fn vec(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let len = self
            .take(len_bytes)?
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        self.take(len)
    }
}

/// Whether the ClientHello in `record` offers one of `protos`; `None` when
/// the record does not hold a whole, well-formed ClientHello.
fn offers(record: &[u8], protos: &[&[u8]]) -> Option<bool> {
    let mut r = Reader(record);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let mut hello = Reader(r.vec(3)?);
    hello.take(2 + 32)?; // legacy version, random
    hello.vec(1)?; // session id
    hello.vec(2)?; // cipher suites
    hello.vec(1)?; // compression methods
    let mut extensions = Reader(hello.vec(2)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec(2)?;
        if kind == ALPN_EXTENSION {
            let mut list = Reader(Reader(data).vec(2)?);
            while !list.0.is_empty() {
                if protos.contains(&list.vec(1)?) {
                    return Some(true);
                }
            }
            return Some(false);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The ClientHello rustls really sends with `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let provider = crate::tls::provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("example.test").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn any_mesh_protocol_counts() {
        let mesh = weft_api::names::MESH_ALPNS;
        for alpn in mesh {
            let hello = client_hello(&[b"h2", alpn]);
            assert_eq!(parse(&hello, &mesh), Hello::ClientHello { offers: true });
        }
        let other = client_hello(&[b"h2", b"weft/9"]);
        assert_eq!(parse(&other, &mesh), Hello::ClientHello { offers: false });
    }

    #[test]
    fn finds_the_protocol_among_those_offered() {
        let hello = client_hello(&[b"h2", b"weft/1"]);
        assert_eq!(
            parse(&hello, &[b"weft/1"]),
            Hello::ClientHello { offers: true }
        );
        assert_eq!(
            parse(&hello, &[b"http/1.1"]),
            Hello::ClientHello { offers: false }
        );
        let none = client_hello(&[]);
        assert_eq!(
            parse(&none, &[b"weft/1"]),
            Hello::ClientHello { offers: false }
        );
    }

    #[test]
    fn asks_for_the_rest_of_a_partial_record() {
        let hello = client_hello(&[b"weft/1"]);
        assert_eq!(parse(&hello[..3], &[b"weft/1"]), Hello::Incomplete(5));
        assert_eq!(
            parse(&hello[..100], &[b"weft/1"]),
            Hello::Incomplete(hello.len())
        );
    }

    #[test]
    fn anything_else_is_other() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n", &[b"weft/1"]), Hello::Other);
        assert_eq!(parse(b"", &[b"weft/1"]), Hello::Other);
        // A handshake record that is not a ClientHello, or is cut short inside.
        assert_eq!(
            parse(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0], &[b"weft/1"]),
            Hello::Other
        );
        assert_eq!(
            parse(&[0x16, 3, 1, 0, 4, 1, 0, 0, 9], &[b"weft/1"]),
            Hello::Other
        );
    }
}
