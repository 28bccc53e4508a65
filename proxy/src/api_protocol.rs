//! The Kubernetes API's side of the routes watch, as data: the request
//! paths, the watch events, and the ConfigMap fields the proxy reads,
//! turned into the routes keys `routes_doc` decodes.
//!
//! Pure (serde and strings, no I/O), so every shape the API server sends is
//! tested without one.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use weft_api::names::{ROUTES_CONFIGMAP, ROUTES_FILE, ROUTES_FILE_GZ};

use crate::routes_doc::{Refusal, RoutesKeys};

/// The routes keys of one version of the ConfigMap, as the API gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRoutes {
    pub namespace: String,
    pub resource_version: String,
    /// `data["routes.json"]`.
    pub plain: Option<String>,
    /// `binaryData["routes.json.gz"]`, base64 as the API carries it.
    pub gzip_base64: Option<String>,
}

impl ApiRoutes {
    /// The keys as bytes (`binaryData` travels as base64).
    pub fn keys(&self) -> Result<RoutesKeys, Refusal> {
        let gzip = match &self.gzip_base64 {
            None => None,
            Some(text) => Some(BASE64.decode(text).map_err(|e| Refusal {
                key: Some(ROUTES_FILE_GZ),
                reason: format!("is not valid base64: {e}"),
            })?),
        };
        Ok(RoutesKeys {
            plain: self.plain.clone().map(String::into_bytes),
            gzip,
        })
    }
}

/// `GET` path of the LIST: the one ConfigMap, by name.
pub fn list_path(namespace: &str) -> String {
    format!(
        "/api/v1/namespaces/{namespace}/configmaps?fieldSelector=metadata.name%3D{ROUTES_CONFIGMAP}"
    )
}

/// `GET` path of the WATCH from `resource_version`.
pub fn watch_path(namespace: &str, resource_version: &str, timeout_seconds: u64) -> String {
    format!(
        "{}&watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={timeout_seconds}",
        list_path(namespace),
        query_escape(resource_version)
    )
}

/// Resource versions are opaque: escape anything but unreserved characters.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One watch event, as the API server writes it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "object")]
pub enum Event {
    #[serde(rename = "ADDED")]
    Added(ConfigMap),
    #[serde(rename = "MODIFIED")]
    Modified(ConfigMap),
    #[serde(rename = "DELETED")]
    Deleted(ConfigMap),
    /// Only `metadata.resourceVersion` is meaningful.
    #[serde(rename = "BOOKMARK")]
    Bookmark(ConfigMap),
    #[serde(rename = "ERROR")]
    Error(Status),
}

/// Parses one line of a watch stream.
pub fn parse_event(line: &[u8]) -> Result<Event, serde_json::Error> {
    serde_json::from_slice(line)
}

/// The parts of a ConfigMap the proxy reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub binary_data: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_version: String,
}

/// A `metav1.Status`: what an `ERROR` event or an error response carries.
#[derive(Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// A `ConfigMapList`: the LIST response.
#[derive(Debug, Deserialize)]
pub struct List {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub items: Vec<ConfigMap>,
}

/// The routes keys of `cm`; other keys are ignored.
pub fn routes_of(mut cm: ConfigMap, namespace: &str) -> ApiRoutes {
    let take = |map: &mut Option<BTreeMap<String, String>>, key: &str| {
        map.as_mut().and_then(|m| m.remove(key))
    };
    ApiRoutes {
        namespace: namespace.to_owned(),
        plain: take(&mut cm.data, ROUTES_FILE),
        gzip_base64: take(&mut cm.binary_data, ROUTES_FILE_GZ),
        resource_version: cm.metadata.resource_version,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cm_event(kind: &str, rv: &str) -> String {
        format!(
            r#"{{"type":"{kind}","object":{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"weft-routes","namespace":"web","resourceVersion":"{rv}"}},"data":{{"routes.json":"{{}}","other":"x"}},"binaryData":{{"routes.json.gz":"H4sI"}}}}}}"#
        )
    }

    #[test]
    fn parses_configmap_events_into_routes_keys() {
        for kind in ["ADDED", "MODIFIED"] {
            let event = parse_event(cm_event(kind, "42").as_bytes()).unwrap();
            let (Event::Added(cm) | Event::Modified(cm)) = event else {
                panic!("{kind}: {event:?}");
            };
            assert_eq!(
                routes_of(cm, "web"),
                ApiRoutes {
                    namespace: "web".into(),
                    resource_version: "42".into(),
                    plain: Some("{}".into()),
                    gzip_base64: Some("H4sI".into()),
                }
            );
        }
        let Event::Deleted(cm) = parse_event(cm_event("DELETED", "43").as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(cm.metadata.resource_version, "43");
    }

    #[test]
    fn parses_bookmarks_errors_and_refuses_the_rest() {
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"resourceVersion":"77","annotations":{"k8s.io/initial-events-end":"true"}}}}"#;
        let Event::Bookmark(b) = parse_event(bookmark).unwrap() else {
            panic!()
        };
        assert_eq!(b.metadata.resource_version, "77");
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}"#;
        let Event::Error(status) = parse_event(gone).unwrap() else {
            panic!()
        };
        assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        assert!(parse_event(br#"{"type":"SURPRISE","object":{}}"#).is_err());
        assert!(parse_event(b"{not json").is_err());
        assert!(parse_event(br#"{"object":{}}"#).is_err());
    }

    #[test]
    fn binary_data_is_base64() {
        let routes = |gzip: &str| ApiRoutes {
            namespace: "web".into(),
            resource_version: "1".into(),
            plain: Some("{}".into()),
            gzip_base64: Some(gzip.into()),
        };
        let keys = routes("H4sI").keys().unwrap();
        assert_eq!(keys.plain.as_deref(), Some(&b"{}"[..]));
        assert_eq!(keys.gzip.as_deref(), Some(&[0x1f, 0x8b, 0x08][..]));
        let refusal = routes("not base64!").keys().unwrap_err();
        assert_eq!(refusal.key, Some(ROUTES_FILE_GZ));
    }

    #[test]
    fn a_configmap_without_routes_keys_gives_none() {
        let cm: ConfigMap =
            serde_json::from_str(r#"{"metadata":{"name":"weft-routes","resourceVersion":"1"}}"#)
                .unwrap();
        let routes = routes_of(cm, "web");
        assert_eq!((routes.plain, routes.gzip_base64), (None, None));
    }

    #[test]
    fn request_paths_are_exact() {
        assert_eq!(
            list_path("web"),
            "/api/v1/namespaces/web/configmaps?fieldSelector=metadata.name%3Dweft-routes"
        );
        assert_eq!(
            watch_path("web", "12/3", 300),
            "/api/v1/namespaces/web/configmaps?fieldSelector=metadata.name%3Dweft-routes\
             &watch=1&resourceVersion=12%2F3&allowWatchBookmarks=true&timeoutSeconds=300"
        );
    }
}
