//! The objects the operator writes, as exact JSON; the routing table's
//! switch to gzip at the threshold and its refusal when even that is too
//! large.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use weft_api::SpiffeId;
use weft_api::routes::{Defaults, ROUTES_VERSION, RoutesTable};
use weft_operator::ca::IssuedIdentity;
use weft_operator::k8s::objects::{
    DATA_LIMIT, EncodeError, Limits, PLAIN_LIMIT, ROUTES_FILE_GZ, RoutesData, encode_routes,
    identity_secret, routes_config_map, routes_reader_binding, routes_reader_role,
};

fn json_of<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).unwrap()
}

fn labels() -> Value {
    json!({"app.kubernetes.io/managed-by": "weft", "app.kubernetes.io/part-of": "weft"})
}

fn table() -> RoutesTable {
    RoutesTable {
        version: ROUTES_VERSION,
        generation: 1_700_000_000_000,
        digest: Some("sha256:abc".into()),
        trust_domain: "cluster.local".into(),
        namespace: "shop".into(),
        defaults: Defaults::default(),
        services: vec![],
    }
}

#[test]
fn k8s_routes_reader_role_is_exact() {
    assert_eq!(
        json_of(&routes_reader_role("shop")),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "weft-routes-reader", "namespace": "shop", "labels": labels()},
            "rules": [{
                "apiGroups": [""], "resources": ["configmaps"],
                "resourceNames": ["weft-routes"], "verbs": ["get", "list", "watch"],
            }],
        })
    );
}

#[test]
fn k8s_routes_reader_binding_is_exact() {
    assert_eq!(
        json_of(&routes_reader_binding("shop")),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "weft-routes-reader", "namespace": "shop", "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weft-routes-reader"},
            "subjects": [{
                "apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                "name": "system:serviceaccounts:shop",
            }],
        })
    );
}

#[test]
fn k8s_identity_secret_is_exact() {
    let issued = IssuedIdentity {
        id: SpiffeId::workload("cluster.local", "shop", "cart").unwrap(),
        cert_pem: "CERT".into(),
        key_pem: "KEY".into(),
        bundle_pem: "BUNDLE".into(),
        not_before: UNIX_EPOCH + Duration::from_secs(1_699_999_940),
        not_after: UNIX_EPOCH + Duration::from_secs(1_700_086_400),
    };
    assert_eq!(
        json_of(&identity_secret("shop", "cart", &issued)),
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {
                "name": "weft-identity-cart", "namespace": "shop", "labels": labels(),
                "annotations": {
                    "weft.dev/identity": "spiffe://cluster.local/ns/shop/sa/cart",
                    "weft.dev/not-after": "2023-11-15T22:13:20Z",
                },
            },
            "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ", "ca.crt": "QlVORExF"},
        })
    );
}

#[test]
fn k8s_routes_config_map_is_exact() {
    let table = table();
    assert_eq!(
        json_of(&routes_config_map(&table, Limits::default()).unwrap()),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "weft-routes", "namespace": "shop", "labels": labels(),
                "annotations": {
                    "weft.dev/routes-digest": "sha256:abc",
                    "weft.dev/routes-generation": "1700000000000",
                },
            },
            "data": {"routes.json": serde_json::to_string(&table).unwrap()},
        })
    );
}

#[test]
fn k8s_a_large_table_is_gzipped_into_binary_data() {
    let table = table();
    let json = serde_json::to_string(&table).unwrap();
    let limits = Limits {
        plain: json.len() - 1,
        ..Limits::default()
    };
    let cm = json_of(&routes_config_map(&table, limits).unwrap());
    assert_eq!(cm.get("data"), None, "the plain key is gone: {cm}");
    let b64 = cm["binaryData"][ROUTES_FILE_GZ].as_str().unwrap();
    let gz: k8s_openapi::ByteString = serde_json::from_value(json!(b64)).unwrap();
    assert_eq!(gunzip(&gz.0), json);
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// `len` bytes of JSON string that gzip cannot shrink much (hex digits of
/// an LCG: four bits of entropy a byte).
fn noisy_json(len: usize) -> String {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let hex: String = (0..len - 2)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b"0123456789abcdef"[usize::try_from(x >> 60).unwrap()])
        })
        .collect();
    format!("\"{hex}\"")
}

#[test]
fn k8s_gzip_switches_over_exactly_past_512_kib() {
    let at_limit = "x".repeat(PLAIN_LIMIT);
    assert_eq!(
        encode_routes("shop", at_limit.clone(), Limits::default()).unwrap(),
        RoutesData::Plain(at_limit)
    );
    let over = "x".repeat(PLAIN_LIMIT + 1);
    let RoutesData::Gzip(gz) = encode_routes("shop", over.clone(), Limits::default()).unwrap()
    else {
        panic!("not gzipped");
    };
    assert!(gz.len() < 4096, "{} bytes", gz.len());
    assert_eq!(gunzip(&gz), over);
}

#[test]
fn k8s_gzip_is_deterministic() {
    let json = noisy_json(PLAIN_LIMIT + 10);
    assert_eq!(
        encode_routes("shop", json.clone(), Limits::default()).unwrap(),
        encode_routes("shop", json, Limits::default()).unwrap()
    );
}

#[test]
fn k8s_a_table_too_large_even_gzipped_is_refused_with_sizes() {
    let json = noisy_json(3 * 1024 * 1024);
    let err = encode_routes("shop", json, Limits::default()).unwrap_err();
    let EncodeError::TooLarge {
        namespace,
        json_bytes,
        gzip_bytes,
        limit,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(namespace, "shop");
    assert_eq!(*json_bytes, 3 * 1024 * 1024);
    assert!(*gzip_bytes > DATA_LIMIT, "{gzip_bytes}");
    assert_eq!(*limit, DATA_LIMIT);
    let message = err.to_string();
    assert!(
        message.contains("namespace shop") && message.contains("3145728 bytes"),
        "{message}"
    );
}

#[test]
fn k8s_the_gzip_limit_counts_the_key() {
    let json = noisy_json(4096);
    let RoutesData::Gzip(gz) = encode_routes(
        "shop",
        json.clone(),
        Limits {
            plain: 0,
            ..Limits::default()
        },
    )
    .unwrap() else {
        panic!("not gzipped");
    };
    let exact = Limits {
        plain: 0,
        data: ROUTES_FILE_GZ.len() + gz.len(),
        ..Limits::default()
    };
    assert!(encode_routes("shop", json.clone(), exact).is_ok());
    let short = Limits {
        data: exact.data - 1,
        ..exact
    };
    assert!(matches!(
        encode_routes("shop", json, short),
        Err(EncodeError::TooLarge { .. })
    ));
}

#[test]
fn k8s_a_table_larger_than_a_proxy_reads_is_refused_however_well_it_compresses() {
    let limits = Limits {
        plain: 10,
        json: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        encode_routes("shop", "x".repeat(1000), limits),
        Ok(RoutesData::Gzip(_))
    ));
    let err = encode_routes("shop", "x".repeat(1001), limits).unwrap_err();
    assert!(
        matches!(
            err,
            EncodeError::TooLarge {
                json_limit: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        Limits::default().json,
        weft_api::names::ROUTES_MAX_JSON_BYTES
    );
}
