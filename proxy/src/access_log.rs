//! Access logs: one JSON line per HTTP request on standard output, off by
//! default (`--access-log json`, or the pod annotation
//! `weft.dev/access-log: json`). Records are built only when enabled, so a
//! proxy without access logs pays nothing for them.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use http::{HeaderValue, Request, StatusCode};
use serde::Serialize;

use crate::metrics::Direction;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum AccessLog {
    #[default]
    Off,
    Json,
}

/// What is known of a request when it arrives.
pub struct AccessRecord {
    direction: Direction,
    method: String,
    authority: String,
    path: String,
    peer_identity: String,
    request_id: String,
    start: SystemTime,
}

impl AccessRecord {
    /// A record for `req` when access logs are on.
    pub fn start<B>(
        mode: AccessLog,
        direction: Direction,
        req: &Request<B>,
        peer_identity: &str,
        request_id: &HeaderValue,
    ) -> Option<Box<Self>> {
        if mode == AccessLog::Off {
            return None;
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
            .unwrap_or_default();
        Some(Box::new(Self {
            direction,
            method: req.method().as_str().to_owned(),
            authority: authority.to_owned(),
            path: req.uri().path().to_owned(),
            peer_identity: peer_identity.to_owned(),
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
            start: SystemTime::now(),
        }))
    }

    /// Writes the line for the finished request.
    pub fn write(&self, status: StatusCode, duration: Duration, bytes: u64) {
        if let Some(line) = self.line(status, duration, bytes) {
            // A log line that cannot be written (stdout closed) is dropped.
            let _ = std::io::stdout().lock().write_all(&line);
        }
    }

    /// The JSON line, newline included.
    fn line(&self, status: StatusCode, duration: Duration, bytes: u64) -> Option<Vec<u8>> {
        let line = Line {
            time: rfc3339(self.start),
            direction: self.direction.as_str(),
            method: &self.method,
            authority: &self.authority,
            path: &self.path,
            status: status.as_u16(),
            duration_ms: duration.as_secs_f64() * 1000.0,
            response_bytes: bytes,
            peer_identity: &self.peer_identity,
            request_id: &self.request_id,
        };
        let mut json = serde_json::to_vec(&line).ok()?;
        json.push(b'\n');
        Some(json)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    time: String,
    direction: &'static str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    response_bytes: u64,
    peer_identity: &'a str,
    request_id: &'a str,
}

/// `t` as RFC 3339 UTC with milliseconds (civil date from days since the
/// epoch, Howard Hinnant's algorithm).
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        let at = |s: u64, ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_391_999, 999), "2026-11-22T23:59:59.999Z");
    }

    #[test]
    fn off_builds_no_record() {
        let req = Request::new(());
        let id = HeaderValue::from_static("id");
        assert!(AccessRecord::start(AccessLog::Off, Direction::Outbound, &req, "", &id).is_none());
    }

    #[test]
    fn a_line_holds_the_request_and_its_outcome() {
        let req = Request::builder()
            .method("POST")
            .uri("/cart/items?x=1")
            .header("host", "cart.shop:80")
            .body(())
            .unwrap();
        let id = HeaderValue::from_static("4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
        let peer = "spiffe://cluster.local/ns/web/sa/frontend";
        let record = AccessRecord::start(AccessLog::Json, Direction::Inbound, &req, peer, &id);
        let line = record
            .unwrap()
            .line(StatusCode::CREATED, Duration::from_micros(1500), 42)
            .unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["direction"], "inbound");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["authority"], "cart.shop:80");
        assert_eq!(json["path"], "/cart/items");
        assert_eq!(json["status"], 201);
        assert_eq!(json["durationMs"], 1.5);
        assert_eq!(json["responseBytes"], 42);
        assert_eq!(json["peerIdentity"], peer);
        assert_eq!(json["requestId"], "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
    }
}
