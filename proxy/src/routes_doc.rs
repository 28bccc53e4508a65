//! The routing table as the operator delivers it: the `weft-routes`
//! ConfigMap's key `routes.json` (plain JSON), or `routes.json.gz` (gzip, in
//! `binaryData`, when the JSON is too large for a ConfigMap), read from the
//! mounted directory or from the API server alike, turned into this pod's
//! [`Table`].
//!
//! Pure: bytes in, a table or the reason for refusing it out. The callers do
//! the I/O and name the source in their messages. Decompression stops at
//! [`ROUTES_MAX_JSON_BYTES`], so a gzip bomb is refused instead of
//! exhausting the sidecar's memory.

use std::borrow::Cow;
use std::io::Read;

use weft_api::RoutesTable;
use weft_api::names::{ROUTES_FILE, ROUTES_FILE_GZ, ROUTES_MAX_JSON_BYTES};

use crate::state::digest;
use crate::table::{Pod, Table};

/// The keys of one routes document, each present or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutesKeys {
    /// `routes.json`.
    pub plain: Option<Vec<u8>>,
    /// `routes.json.gz`, compressed (as mounted; base64-decoded from the API).
    pub gzip: Option<Vec<u8>>,
}

impl RoutesKeys {
    /// The `sha256:` digest of the keys present: the same for a ConfigMap
    /// and its mounted copy.
    pub fn digest(&self) -> String {
        digest(self.present().map(|(_, bytes)| bytes))
    }

    /// Whether both keys are present; the operator writes only one.
    pub fn both(&self) -> bool {
        self.plain.is_some() && self.gzip.is_some()
    }

    fn present(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        [(ROUTES_FILE, &self.plain), (ROUTES_FILE_GZ, &self.gzip)]
            .into_iter()
            .filter_map(|(key, bytes)| Some((key, bytes.as_deref()?)))
    }
}

/// A valid table for this pod, and the key it came from.
pub struct Parsed {
    pub table: Table,
    pub generation: u64,
    pub key: &'static str,
}

/// Why a document was refused; `key` is `None` when no key was usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: Option<&'static str>,
    pub reason: String,
}

/// Decodes, validates and indexes the document for `pod`.
///
/// Every key present must be valid. With both keys (a mistake: the
/// operator writes one), the higher generation is used, the plain key on a
/// tie, so a stale leftover key can never hold back the one being updated.
pub fn parse(keys: &RoutesKeys, pod: &Pod) -> Result<Parsed, Refusal> {
    let parsed = keys
        .present()
        .map(|(key, bytes)| parse_key(key, bytes, pod))
        .collect::<Result<Vec<_>, _>>()?;
    parsed
        .into_iter()
        .reduce(|plain, gzip| {
            if gzip.generation > plain.generation {
                gzip
            } else {
                plain
            }
        })
        .ok_or_else(|| Refusal {
            key: None,
            reason: format!("neither {ROUTES_FILE} nor {ROUTES_FILE_GZ} is present"),
        })
}

fn parse_key(key: &'static str, bytes: &[u8], pod: &Pod) -> Result<Parsed, Refusal> {
    let refuse = |reason: String| Refusal {
        key: Some(key),
        reason,
    };
    let json = decode(key, bytes, ROUTES_MAX_JSON_BYTES).map_err(refuse)?;
    let routes = RoutesTable::from_json(&json).map_err(|e| refuse(e.to_string()))?;
    if let Some(ns) = &pod.namespace
        && &routes.namespace != ns
    {
        return Err(refuse(format!(
            "table is for namespace {:?}, this pod is in {ns:?}",
            routes.namespace
        )));
    }
    Ok(Parsed {
        generation: routes.generation,
        table: Table::new(routes, pod),
        key,
    })
}

/// The JSON of `key`: as it is, or decompressed, at most `limit` bytes.
fn decode<'a>(key: &str, bytes: &'a [u8], limit: usize) -> Result<Cow<'a, [u8]>, String> {
    if key == ROUTES_FILE_GZ {
        return gunzip(bytes, limit).map(Cow::Owned);
    }
    if bytes.len() > limit {
        return Err(too_big(limit));
    }
    Ok(Cow::Borrowed(bytes))
}

/// Decompresses gzip (every member), refusing output over `limit` bytes
/// without ever holding more than `limit + 1` of it.
pub fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| format!("is not valid gzip: {e}"))?;
    if out.len() > limit {
        return Err(too_big(limit));
    }
    Ok(out)
}

fn too_big(limit: usize) -> String {
    format!("the table is larger than the {limit}-byte limit; refused")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn json(namespace: &str, generation: u64) -> Vec<u8> {
        format!(
            r#"{{"version":1,"generation":{generation},"trustDomain":"cluster.local","namespace":"{namespace}"}}"#
        )
        .into_bytes()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn pod() -> Pod {
        Pod {
            namespace: Some("web".into()),
            ..Pod::default()
        }
    }

    fn keys(plain: Option<Vec<u8>>, gzip: Option<Vec<u8>>) -> RoutesKeys {
        RoutesKeys { plain, gzip }
    }

    #[test]
    fn reads_either_key() {
        let p = parse(&keys(Some(json("web", 3)), None), &pod()).unwrap();
        assert_eq!((p.generation, p.key), (3, ROUTES_FILE));
        let p = parse(&keys(None, Some(gz(&json("web", 4)))), &pod()).unwrap();
        assert_eq!((p.generation, p.key), (4, ROUTES_FILE_GZ));
    }

    #[test]
    fn with_both_keys_the_higher_generation_wins_and_plain_on_a_tie() {
        let p = parse(
            &keys(Some(json("web", 3)), Some(gz(&json("web", 4)))),
            &pod(),
        )
        .unwrap();
        assert_eq!((p.generation, p.key), (4, ROUTES_FILE_GZ));
        let p = parse(
            &keys(Some(json("web", 5)), Some(gz(&json("web", 4)))),
            &pod(),
        )
        .unwrap();
        assert_eq!((p.generation, p.key), (5, ROUTES_FILE));
        let p = parse(
            &keys(Some(json("web", 4)), Some(gz(&json("web", 4)))),
            &pod(),
        )
        .unwrap();
        assert_eq!(p.key, ROUTES_FILE);
    }

    #[test]
    fn every_key_present_must_be_valid() {
        let r = parse(
            &keys(Some(json("web", 9)), Some(b"not gzip".to_vec())),
            &pod(),
        );
        let refusal = r.err().unwrap();
        assert_eq!(refusal.key, Some(ROUTES_FILE_GZ));
        assert!(refusal.reason.contains("not valid gzip"), "{refusal:?}");
    }

    #[test]
    fn refuses_no_key_another_namespace_and_a_bad_table() {
        let r = parse(&RoutesKeys::default(), &pod()).err().unwrap();
        assert_eq!(r.key, None);
        assert!(r.reason.contains("neither routes.json nor routes.json.gz"));
        let r = parse(&keys(None, Some(gz(&json("shop", 1)))), &pod());
        assert!(r.err().unwrap().reason.contains("namespace \"shop\""));
        let r = parse(&keys(Some(br#"{"version":2}"#.to_vec()), None), &pod());
        assert_eq!(r.err().unwrap().key, Some(ROUTES_FILE));
    }

    #[test]
    fn decompression_is_bounded() {
        let bomb = gz(&vec![b' '; 10_000]);
        assert!(bomb.len() < 200);
        assert_eq!(gunzip(&bomb, 10_000).unwrap().len(), 10_000);
        let err = gunzip(&bomb, 9_999).unwrap_err();
        assert!(err.contains("larger than the 9999-byte limit"), "{err}");
        assert!(decode(ROUTES_FILE, &[b' '; 11], 10).is_err());
    }

    #[test]
    fn concatenated_gzip_members_are_one_document() {
        let doc = json("web", 7);
        let (a, b) = doc.split_at(10);
        let two = [gz(a), gz(b)].concat();
        assert_eq!(gunzip(&two, 1 << 20).unwrap(), doc);
    }

    #[test]
    fn digest_covers_the_keys_present() {
        let plain = keys(Some(json("web", 1)), None);
        assert_eq!(plain.digest(), digest([json("web", 1).as_slice()]));
        assert_ne!(plain.digest(), keys(Some(json("web", 2)), None).digest());
        let both = keys(Some(json("web", 1)), Some(gz(&json("web", 1))));
        assert_ne!(plain.digest(), both.digest());
        assert!(keys(Some(vec![]), Some(vec![])).both());
    }
}
