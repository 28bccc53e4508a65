//! Tells HTTP/1, HTTP/2 and anything else apart from the first bytes a
//! client sent (peeked, not read), so an intercepted connection on a port
//! the routes say nothing about can still get HTTP routing, retries and
//! metrics when it speaks HTTP, and is relayed byte for byte when it does
//! not. Detection must never misfire on a non-HTTP protocol, so it is
//! strict: one SP between the parts of the request line, a version of
//! exactly `HTTP/1.<digit>`, and a line that fits in [`MAX_PEEK`] bytes.
//! Server-first protocols (the client waits for a greeting and sends
//! nothing) must skip detection altogether: see
//! `weft_api::names::DEFAULT_OPAQUE_PORTS`.

/// The most bytes peeked before giving up: a request line longer than this
/// is treated as not HTTP.
pub const MAX_PEEK: usize = 8 * 1024;

/// The HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longer method tokens than this are not worth waiting for.
const MAX_METHOD: usize = 20;

/// The version prefix of an HTTP/1.x request line, before the minor digit.
const HTTP1_VERSION: &[u8] = b"HTTP/1.";

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A complete HTTP/1.x request line.
    Http1,
    /// The whole HTTP/2 connection preface.
    Http2,
    /// Not HTTP (or not HTTP this proxy will parse): relay as bytes.
    Opaque,
    /// Consistent with HTTP so far: peek again once more bytes arrived.
    NeedMore,
}

/// Classifies the bytes peeked so far; `buf` always starts at the first
/// byte of the connection.
pub fn detect(buf: &[u8]) -> Detected {
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Detected::NeedMore;
    }
    if buf.starts_with(H2_PREFACE) {
        return Detected::Http2;
    }
    let line = &buf[..buf.len().min(MAX_PEEK)];
    match request_line(line) {
        Detected::NeedMore if buf.len() >= MAX_PEEK => Detected::Opaque,
        detected => detected,
    }
}

/// Checks `method SP target SP HTTP/1.d CRLF` (or a bare LF), returning
/// `NeedMore` when `line` ends before the line does.
fn request_line(line: &[u8]) -> Detected {
    let method = line.iter().take_while(|b| is_tchar(**b)).count();
    if method > MAX_METHOD || (method == 0 && !line.is_empty()) {
        return Detected::Opaque;
    }
    let Some(rest) = after_space(&line[method..]) else {
        return Detected::NeedMore;
    };
    let Some(rest) = rest else {
        return Detected::Opaque;
    };
    let target = rest.iter().take_while(|b| is_target_byte(**b)).count();
    if target == 0 && !rest.is_empty() {
        return Detected::Opaque;
    }
    match after_space(&rest[target..]) {
        None => Detected::NeedMore,
        Some(None) => Detected::Opaque,
        Some(Some(version)) => http1_version(version),
    }
}

/// What follows a single SP at the start of `bytes`: `None` when `bytes` is
/// empty (more is needed), `Some(None)` when the next byte is not SP.
fn after_space(bytes: &[u8]) -> Option<Option<&[u8]>> {
    let (first, rest) = bytes.split_first()?;
    Some((*first == b' ').then_some(rest))
}

/// Checks `HTTP/1.d` then CRLF or LF at the start of `bytes`.
fn http1_version(bytes: &[u8]) -> Detected {
    let known = bytes.len().min(HTTP1_VERSION.len());
    if bytes[..known] != HTTP1_VERSION[..known] {
        return Detected::Opaque;
    }
    let Some((minor, end)) = bytes
        .get(HTTP1_VERSION.len()..)
        .and_then(<[u8]>::split_first)
    else {
        return Detected::NeedMore;
    };
    if !minor.is_ascii_digit() {
        return Detected::Opaque;
    }
    match end {
        [] | [b'\r'] => Detected::NeedMore,
        [b'\n', ..] | [b'\r', b'\n', ..] => Detected::Http1,
        _ => Detected::Opaque,
    }
}

/// A `tchar` of RFC 9110 §5.6.2, the characters of a method token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte a request target may hold: anything but space, controls and DEL
/// (raw UTF-8 in paths is sent by real clients, so bytes above 0x7f pass).
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /api/v1/items?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PATCH /x HTTP/1.0\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"get /lower HTTP/1.1\r\n",
            b"X-CUSTOM.METHOD /x HTTP/1.1\r\n",
            b"GET /bare-lf HTTP/1.1\n",
            "GET /caf\u{e9} HTTP/1.1\r\n".as_bytes(),
        ] {
            assert_eq!(detect(line), Detected::Http1, "{line:?}");
        }
    }

    #[test]
    fn request_line_split_over_reads() {
        let line = b"GET /index.html HTTP/1.1\r\n";
        for end in 0..line.len() {
            assert_eq!(detect(&line[..end]), Detected::NeedMore, "{end}");
        }
        assert_eq!(detect(line), Detected::Http1);
    }

    #[test]
    fn http2_preface() {
        assert_eq!(detect(H2_PREFACE), Detected::Http2);
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(detect(&with_frames), Detected::Http2);
        for end in 0..H2_PREFACE.len() {
            assert_eq!(detect(&H2_PREFACE[..end]), Detected::NeedMore, "{end}");
        }
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Detected::Opaque
        );
    }

    #[test]
    fn not_http1() {
        for bytes in [
            &b"GET /x HTTP/2.0\r\n"[..],
            b"GET /x HTTP/1.x\r\n",
            b"GET /x http/1.1\r\n",
            b"GET /x HTTP/1.1\rX",
            b"GET /x HTTP/1.1 \r\n",
            b"GET  /x HTTP/1.1\r\n",
            b"GET /a\tb HTTP/1.1\r\n",
            b"GET\r\n",
            b"EHLO x\r\n",
            b"\r\n",
            b" GET / HTTP/1.1\r\n",
            b"\0\0\0\x08\x04\xd2\x16\x2f",
            b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n",
        ] {
            assert_eq!(detect(bytes), Detected::Opaque, "{bytes:?}");
        }
    }

    #[test]
    fn tls_client_hello_is_opaque() {
        assert_eq!(
            detect(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            Detected::Opaque
        );
        assert_eq!(detect(&[0x16]), Detected::Opaque);
    }

    #[test]
    fn gives_up_at_max_peek() {
        assert_eq!(detect(&[b'A'; MAX_PEEK]), Detected::Opaque);
        let mut long = b"GET /".to_vec();
        long.resize(MAX_PEEK, b'a');
        assert_eq!(detect(&long[..MAX_PEEK - 1]), Detected::NeedMore);
        assert_eq!(detect(&long), Detected::Opaque);
        long.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(detect(&long), Detected::Opaque);
    }
}
