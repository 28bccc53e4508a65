//! Correlation IDs, so one request can be followed through every proxy's
//! logs and traces: `x-request-id` (the de-facto request ID, kept when the
//! client or an earlier hop set one) and the W3C Trace Context
//! `traceparent` (level 1), kept when valid and otherwise started afresh,
//! unsampled: the proxy records no spans itself, it only makes sure the
//! apps behind it receive a well-formed context to continue. Both are
//! formatted into stack buffers; the only allocation is the header value.
//!
//! Both values are unique per request, so they are marked sensitive: HPACK
//! then sends them as never-indexed literals. Indexed, each request would
//! insert two entries into every HTTP/2 connection's dynamic table, evicting
//! the entries worth reusing (authority, user agent, content type) and
//! costing a table search and insert per header per hop (measured below).

use bytes::Bytes;
use http::HeaderMap;
use http::header::{Entry, HeaderName, HeaderValue};

// Header names as constants: inserting by `&str` would allocate a copy of
// a non-standard name on every request.
/// The request ID header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C Trace Context header carrying trace ID, parent ID and flags.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor state belonging to the trace `traceparent` identifies.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `version-traceid-parentid-flags` of version 00: 2+1+32+1+16+1+2.
const TRACEPARENT_LEN: usize = 55;
/// `8-4-4-4-12` hex digits and hyphens.
const UUID_LEN: usize = 36;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The request's ID: the one present if non-empty, else a new UUID v4,
/// which is inserted. Either way marked sensitive (see the module doc).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let fresh = || ascii_value(uuid_v4());
    match headers.entry(REQUEST_ID) {
        Entry::Occupied(mut found) if !found.get().is_empty() => {
            found.get_mut().set_sensitive(true);
            found.get().clone()
        }
        Entry::Occupied(mut found) => {
            let id = fresh();
            found.insert(id.clone());
            id
        }
        Entry::Vacant(missing) => missing.insert(fresh()).clone(),
    }
}

/// Keeps a valid `traceparent`; otherwise (absent or malformed) starts a
/// new, unsampled trace and drops any `tracestate`, whose entries describe
/// a trace this request no longer belongs to.
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    let fresh = || ascii_value(new_traceparent());
    match headers.entry(TRACEPARENT) {
        Entry::Occupied(mut found) if valid_traceparent(found.get().as_bytes()) => {
            found.get_mut().set_sensitive(true);
            return;
        }
        Entry::Occupied(mut found) => drop(found.insert(fresh())),
        Entry::Vacant(missing) => drop(missing.insert(fresh())),
    }
    headers.remove(TRACESTATE);
}

/// A random UUID v4 (RFC 9562 §5.4) in its lowercase text form.
fn uuid_v4() -> [u8; UUID_LEN] {
    const VERSION_MASK: u128 = 0xf << 76;
    const VARIANT_MASK: u128 = 0b11 << 62;
    const V4_RFC_VARIANT: u128 = (0x4 << 76) | (0b10 << 62);
    let bits = (fastrand::u128(..) & !VERSION_MASK & !VARIANT_MASK) | V4_RFC_VARIANT;
    let bytes = bits.to_be_bytes();
    let mut out = [b'-'; UUID_LEN];
    write_hex(&mut out[0..8], &bytes[0..4]);
    write_hex(&mut out[9..13], &bytes[4..6]);
    write_hex(&mut out[14..18], &bytes[6..8]);
    write_hex(&mut out[19..23], &bytes[8..10]);
    write_hex(&mut out[24..36], &bytes[10..16]);
    out
}

/// `00-<trace-id>-<parent-id>-00`, both IDs random and never all zeros.
fn new_traceparent() -> [u8; TRACEPARENT_LEN] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(&mut out[3..35], &fastrand::u128(1..).to_be_bytes());
    write_hex(&mut out[36..52], &fastrand::u64(1..).to_be_bytes());
    out
}

/// Writes `bytes` as lowercase hex into `out`, two digits a byte.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// W3C Trace Context level 1 §3.2: a version other than `ff`; for version
/// 00 exactly 55 characters, for a later version at least the level-1
/// fields followed by nothing or `-`; non-zero IDs; lowercase hex.
fn valid_traceparent(v: &[u8]) -> bool {
    let Some(head) = v.get(..TRACEPARENT_LEN) else {
        return false;
    };
    let version = &head[..2];
    let length_ok = match version {
        b"00" => v.len() == TRACEPARENT_LEN,
        b"ff" => false,
        _ => v.get(TRACEPARENT_LEN).is_none_or(|b| *b == b'-'),
    };
    length_ok
        && is_lower_hex(version)
        && head[2] == b'-'
        && is_id(&head[3..35])
        && head[35] == b'-'
        && is_id(&head[36..52])
        && head[52] == b'-'
        && is_lower_hex(&head[53..55])
}

/// Lowercase hex and not all zeros, as trace and parent IDs must be.
fn is_id(field: &[u8]) -> bool {
    is_lower_hex(field) && field.iter().any(|b| *b != b'0')
}

fn is_lower_hex(field: &[u8]) -> bool {
    field.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A sensitive header value from bytes this module formatted: hex digits
/// and `-` are always valid, so the empty fallback is never used. The
/// bytes are shared from the start (one allocation holding them and their
/// count): a request ID is cloned for the response, and a value copied
/// from a slice would allocate again on its first clone.
fn ascii_value<const N: usize>(bytes: [u8; N]) -> HeaderValue {
    let shared = HeaderValue::from_maybe_shared(Bytes::from_owner(bytes));
    let mut value = shared.unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn assert_uuid_v4(id: &str) {
        let groups: Vec<&str> = id.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
        assert!(is_lower_hex(id.replace('-', "").as_bytes()), "{id}");
        assert!(groups[2].starts_with('4'), "version nibble: {id}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "variant bits 10xx: {id}"
        );
    }

    #[test]
    fn generated_request_ids_are_unique_uuid_v4() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let mut headers = HeaderMap::new();
            let id = ensure_request_id(&mut headers);
            let text = id.to_str().unwrap().to_owned();
            assert_uuid_v4(&text);
            assert_eq!(headers[REQUEST_ID], id);
            assert!(id.is_sensitive() && headers[REQUEST_ID].is_sensitive());
            assert!(seen.insert(text), "duplicate");
        }
    }

    #[test]
    fn present_request_id_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        let id = ensure_request_id(&mut headers);
        assert_eq!(id, "abc-123");
        assert_eq!(headers[REQUEST_ID], "abc-123");
        assert!(id.is_sensitive() && headers[REQUEST_ID].is_sensitive());
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn empty_request_id_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static(""));
        let id = ensure_request_id(&mut headers);
        assert_uuid_v4(id.to_str().unwrap());
        assert_eq!(headers[REQUEST_ID], id);
        assert_eq!(headers.get_all(REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn valid_traceparent_kept_with_tracestate() {
        for value in [
            VALID,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_static(value));
            headers.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
            ensure_traceparent(&mut headers);
            assert_eq!(headers[TRACEPARENT], value);
            assert!(headers[TRACEPARENT].is_sensitive());
            assert_eq!(headers[TRACESTATE], "vendor=x");
        }
    }

    #[test]
    fn traceparent_created_when_absent() {
        let mut headers = HeaderMap::new();
        ensure_traceparent(&mut headers);
        let value = headers[TRACEPARENT].to_str().unwrap().to_owned();
        assert!(valid_traceparent(value.as_bytes()), "{value}");
        assert!(headers[TRACEPARENT].is_sensitive());
        assert!(
            value.starts_with("00-") && value.ends_with("-00"),
            "{value}"
        );
        ensure_traceparent(&mut headers);
        assert_eq!(headers[TRACEPARENT], value.as_str(), "stable once valid");
    }

    #[test]
    fn malformed_traceparent_replaced() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_static(bad));
            headers.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
            ensure_traceparent(&mut headers);
            let value = headers[TRACEPARENT].as_bytes();
            assert!(valid_traceparent(value), "{bad}");
            assert_ne!(value, bad.as_bytes());
            assert!(!headers.contains_key(TRACESTATE), "{bad}");
        }
    }

    #[test]
    fn generated_ids_differ() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert_ne!(a[3..35], b[3..35]);
        assert_ne!(a[36..52], b[36..52]);
    }
}
