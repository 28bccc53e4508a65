//! The routes fast path: the proxy watches its `weft-routes` ConfigMap
//! through a (mock) API server as well as the mounted file; the higher
//! generation wins, bad input from either is refused and counted, and API
//! trouble never costs the proxy its routes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::api::*;
use support::*;
use weft_api::RoutesTable;
use weft_api::routes::{InboundPolicy, Service};

fn routes(generation: u64, services: Vec<Service>) -> RoutesTable {
    let mut t = table(NS, generation, InboundPolicy::default());
    t.services = services;
    t
}

fn generation(c: &serde_json::Value) -> u64 {
    c["routes"]["generation"].as_u64().unwrap_or(0)
}

fn source(c: &serde_json::Value) -> String {
    c["routes"]["source"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn from_file(c: &serde_json::Value) -> bool {
    source(c).contains("/routes/..")
}

/// Pod "A" (web/frontend) with `mounted` in its routes directory, watching `api`.
async fn client(
    ca: &Ca,
    api: &MockApi,
    mounted: Option<&RoutesTable>,
) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf(NS, "frontend"),
        &ca.pem(),
    );
    std::fs::create_dir_all(dir.path().join("routes")).unwrap();
    if let Some(t) = mounted {
        write_routes(&dir.path().join("routes"), t);
    }
    let cfg = ProxyConfig::new(dir.path(), NS, "frontend", vip()).with_api(api.flags());
    (Proxy::start(cfg).await, dir)
}

async fn errors(a: &Proxy, reason: &str) -> f64 {
    a.metric(
        "weft_api_watch_errors_total",
        &[&format!("reason=\"{reason}\"")],
    )
    .await
}

#[tokio::test]
async fn the_higher_generation_wins_whichever_path_brings_it() {
    let ca = Ca::new("root");
    let b1 = Server::start("b1", &ca, "shop", "cart", InboundPolicy::default()).await;
    let b2 = Server::start("b2", &ca, "shop", "cart", InboundPolicy::default()).await;
    let to_b1 = || vec![cart(b1.proxy.inbound, "cart")];
    let to_b2 = || vec![cart(b2.proxy.inbound, "cart")];
    let mut api = MockApi::start().await;
    let (a, dir) = client(&ca, &api, Some(&routes(1, to_b1()))).await;

    // The file alone at first; the API then delivers generation 5.
    let req = api.next().await;
    req.assert_list("token-1");
    a.wait_config("the file", |c| generation(c) == 1).await;
    req.json(
        200,
        &list("100", vec![configmap("100", &routes(5, to_b2()))]),
    );
    a.wait_config("generation 5", |c| generation(c) == 5).await;
    let config = a.config().await;
    assert_eq!(source(&config), "api:configmap/web/weft-routes@100");
    assert_eq!(config["routes"]["key"], "routes.json");
    assert_eq!(exchange(a.outbound, b"x").await, b"xEND b2");

    let req = api.next().await;
    req.assert_watch("100", "token-1");
    let watch = req.stream();

    // A later file with a higher generation wins back.
    write_routes(&dir.path().join("routes"), &routes(9, to_b1()));
    a.wait_config("generation 9 from the file", |c| {
        generation(c) == 9 && from_file(c)
    })
    .await;
    assert_eq!(exchange(a.outbound, b"y").await, b"yEND b1");

    // A lower generation from the API is kept aside, not used.
    watch.send(event("MODIFIED", configmap("101", &routes(8, to_b2()))));
    a.wait_metric("weft_routes_source_generation", &["source=\"api\""], 8.0)
        .await;
    let config = a.config().await;
    assert!(generation(&config) == 9 && from_file(&config), "{config}");
    assert_eq!(exchange(a.outbound, b"z").await, b"zEND b1");

    // A higher one is used at once.
    watch.send(event("MODIFIED", configmap("102", &routes(10, to_b2()))));
    a.wait_config("generation 10 from the API", |c| {
        generation(c) == 10 && source(c).ends_with("@102")
    })
    .await;
    assert_eq!(exchange(a.outbound, b"w").await, b"wEND b2");
    assert_eq!(
        a.metric("weft_config_generation", &["kind=\"routes\""])
            .await,
        10.0
    );
    assert_eq!(a.metric("weft_config_reload_errors_total", &[]).await, 0.0);
    assert_eq!(a.metric("weft_api_watch_errors_total", &[]).await, 0.0);
}

#[tokio::test]
async fn the_kubelet_catching_up_does_not_displace_the_api_table() {
    let ca = Ca::new("root");
    let mut api = MockApi::start().await;
    let (a, dir) = client(&ca, &api, Some(&routes(1, vec![]))).await;

    let t5 = serde_json::to_string(&routes(5, vec![])).unwrap();
    let cm = configmap_with("50", json!({"data": {"routes.json": t5}}));
    api.next().await.json(200, &list("50", vec![cm]));
    a.wait_config("generation 5", |c| generation(c) == 5).await;
    let before = a.config().await["routes"].clone();

    // The same bytes reach the mounted file later: same generation, same
    // digest, so the table in use and its source stay.
    kubelet_write(
        &dir.path().join("routes"),
        &[("routes.json", t5.as_bytes())],
    );
    a.wait_metric("weft_routes_source_generation", &["source=\"file\""], 5.0)
        .await;
    assert_eq!(a.config().await["routes"], before);
    assert_eq!(before["source"], "api:configmap/web/weft-routes@50");
}

#[tokio::test]
async fn bad_tables_from_the_api_are_refused_and_the_table_in_use_stays() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;
    let svc = cart(b.proxy.inbound, "cart");
    let mut api = MockApi::start().await;
    let (a, _dir) = client(&ca, &api, Some(&routes(1, vec![svc.clone()]))).await;

    api.next().await.json(
        200,
        &list("10", vec![configmap("10", &routes(5, vec![svc.clone()]))]),
    );
    a.wait_config("generation 5", |c| generation(c) == 5).await;
    let good = a.config().await["routes"].clone();
    let watch = api.next().await.stream();

    let mut other_ns = routes(7, vec![svc.clone()]);
    other_ns.namespace = "shop".into();
    let bomb = bomb();
    let bad = [
        (
            "unknown version",
            configmap_with(
                "11",
                json!({"data": {"routes.json": r#"{"version":2,"generation":99}"#}}),
            ),
        ),
        (
            "truncated",
            configmap_with(
                "12",
                json!({"data": {"routes.json": r#"{"version":1,"gener"#}}),
            ),
        ),
        ("other namespace", configmap("13", &other_ns)),
        (
            "no routes key",
            configmap_with("14", json!({"data": {"unrelated": "x"}})),
        ),
        (
            "not base64",
            configmap_with("15", json!({"binaryData": {"routes.json.gz": "%%%"}})),
        ),
        ("not gzip", configmap_gz("16", b"plain bytes")),
        ("gzip bomb", configmap_gz("17", &bomb)),
    ];
    for (i, (what, cm)) in bad.into_iter().enumerate() {
        watch.send(event("MODIFIED", cm));
        a.wait_metric(
            "weft_config_reload_errors_total",
            &["kind=\"routes\""],
            (i + 1) as f64,
        )
        .await;
        assert_eq!(a.config().await["routes"], good, "after {what}");
        assert_eq!(exchange(a.outbound, b"x").await, b"xEND b", "after {what}");
    }

    // Deleting the ConfigMap keeps the table in use (the mounted file
    // still works); the next bad version shows the watch went on.
    watch.send(event(
        "DELETED",
        configmap("18", &routes(5, vec![svc.clone()])),
    ));
    watch.send(event(
        "MODIFIED",
        configmap_with("19", json!({"data": {"routes.json": "["}})),
    ));
    a.wait_metric("weft_config_reload_errors_total", &["kind=\"routes\""], 8.0)
        .await;
    assert_eq!(a.config().await["routes"], good, "after DELETED");
    assert_eq!(a.get("/ready").await.0, 200);

    // A good version after bad ones is taken.
    watch.send(event("ADDED", configmap("20", &routes(6, vec![svc]))));
    a.wait_config("generation 6", |c| generation(c) == 6).await;
    assert_eq!(a.metric("weft_api_watch_errors_total", &[]).await, 0.0);
}

#[tokio::test]
async fn the_proxy_runs_on_the_file_while_the_api_is_down_and_recovers() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;
    let svc = cart(b.proxy.inbound, "cart");
    let mut api = MockApi::start().await;
    api.set_down(true);
    let (a, _dir) = client(&ca, &api, Some(&routes(1, vec![svc.clone()]))).await;

    // Unreachable: ready on the file alone, errors counted and retried.
    a.wait_config("ready", |c| c["ready"] == true).await;
    a.wait_metric("weft_api_watch_errors_total", &["reason=\"connect\""], 3.0)
        .await;
    assert_eq!(exchange(a.outbound, b"x").await, b"xEND b");

    // Back, but failing.
    api.set_down(false);
    api.fail(2, 500).await;
    a.wait_metric("weft_api_watch_errors_total", &["reason=\"status\""], 2.0)
        .await;
    // The token rotates; the next connection reads the new one.
    let req = api.next().await;
    req.assert_list("token-1");
    api.rotate_token("token-2");
    req.json(
        403,
        &json!({"kind": "Status", "code": 403, "message": "forbidden"}),
    );
    a.wait_metric(
        "weft_api_watch_errors_total",
        &["reason=\"forbidden\""],
        1.0,
    )
    .await;
    assert!(from_file(&a.config().await));

    // Healthy again.
    let req = api.next().await;
    req.assert_list("token-2");
    req.json(200, &list("7", vec![configmap("7", &routes(2, vec![svc]))]));
    a.wait_config("generation 2 from the API", |c| {
        generation(c) == 2 && source(c).starts_with("api:")
    })
    .await;
    api.next().await.assert_watch("7", "token-2");
    assert_eq!(exchange(a.outbound, b"y").await, b"yEND b");
    assert_eq!(a.metric("weft_config_reload_errors_total", &[]).await, 0.0);
}

#[tokio::test]
async fn an_expired_resource_version_means_list_again() {
    let ca = Ca::new("root");
    let mut api = MockApi::start().await;
    let (a, _dir) = client(&ca, &api, Some(&routes(1, vec![]))).await;

    api.next().await.json(
        200,
        &list("100", vec![configmap("100", &routes(2, vec![]))]),
    );
    let req = api.next().await;
    req.assert_watch("100", "token-1");
    let watch = req.stream();
    watch.send(event(
        "BOOKMARK",
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "150"}}),
    ));
    watch.send(gone());

    // 410 as an ERROR event: list again, then watch from the new version.
    let req = api.next().await;
    req.assert_list("token-1");
    req.json(
        200,
        &list("200", vec![configmap("200", &routes(3, vec![]))]),
    );
    a.wait_config("generation 3", |c| generation(c) == 3).await;
    let req = api.next().await;
    req.assert_watch("200", "token-1");

    // 410 as the HTTP status of the watch: the same.
    req.json(
        410,
        &json!({"kind": "Status", "code": 410, "reason": "Expired"}),
    );
    let req = api.next().await;
    req.assert_list("token-1");
    req.json(
        200,
        &list("300", vec![configmap("300", &routes(4, vec![]))]),
    );
    a.wait_config("generation 4", |c| generation(c) == 4).await;
    api.next().await.assert_watch("300", "token-1");
    assert_eq!(errors(&a, "expired").await, 2.0);
    drop(watch);
}

#[tokio::test]
async fn a_watch_resumes_from_the_last_version_seen() {
    let ca = Ca::new("root");
    let mut api = MockApi::start().await;
    let (a, _dir) = client(&ca, &api, Some(&routes(1, vec![]))).await;

    api.next().await.json(200, &list("5", vec![]));
    let watch = api.next().await.stream();
    // An event split across chunks, then a bookmark.
    let added = event("ADDED", configmap("6", &routes(2, vec![])));
    let line = format!("{added}\n");
    let (first, rest) = line.as_bytes().split_at(line.len() / 2);
    watch.send_raw(first);
    watch.send_raw(rest);
    a.wait_config("generation 2", |c| generation(c) == 2).await;
    watch.send(event(
        "BOOKMARK",
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}}),
    ));
    // The bookmark is processed before the stream ends; the watch ended
    // early, so it is counted and retried from version 9 without a list.
    drop(watch);
    let req = api.next().await;
    req.assert_watch("9", "token-1");
    assert_eq!(errors(&a, "closed").await, 1.0);
}

#[tokio::test]
async fn the_api_alone_makes_a_proxy_without_a_mounted_table_ready() {
    let ca = Ca::new("root");
    let mut api = MockApi::start().await;
    let (a, _dir) = client(&ca, &api, None).await;

    let req = api.next().await;
    assert_eq!(a.get("/ready").await.0, 503);
    req.json(200, &list("1", vec![configmap("1", &routes(4, vec![]))]));
    a.wait_config("ready", |c| c["ready"] == true).await;
    assert_eq!(generation(&a.config().await), 4);
}

#[tokio::test]
async fn the_gzip_key_is_read_from_the_mount_and_from_the_configmap() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;
    let svc = cart(b.proxy.inbound, "cart");
    let mut api = MockApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes_dir = dir.path().join("routes");
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf(NS, "frontend"),
        &ca.pem(),
    );
    let json2 = serde_json::to_vec(&routes(2, vec![svc.clone()])).unwrap();
    kubelet_write(&routes_dir, &[("routes.json.gz", &gzip(&json2))]);
    let cfg = ProxyConfig::new(dir.path(), NS, "frontend", vip()).with_api(api.flags());
    let a = Proxy::start(cfg).await;

    // From the mount.
    let req = api.next().await;
    a.wait_config("generation 2", |c| generation(c) == 2).await;
    let config = a.config().await;
    assert_eq!(config["routes"]["key"], "routes.json.gz");
    assert!(from_file(&config), "{config}");
    assert_eq!(exchange(a.outbound, b"x").await, b"xEND b");

    // From the ConfigMap's binaryData.
    let json3 = serde_json::to_vec(&routes(3, vec![svc.clone()])).unwrap();
    req.json(200, &list("40", vec![configmap_gz("40", &gzip(&json3))]));
    a.wait_config("generation 3", |c| generation(c) == 3).await;
    let config = a.config().await;
    assert_eq!(config["routes"]["key"], "routes.json.gz");
    assert_eq!(source(&config), "api:configmap/web/weft-routes@40");
    let _watch = api.next().await.stream();

    // A gzip bomb on the mount is refused; the table stays.
    let bomb = bomb();
    kubelet_write(&routes_dir, &[("routes.json.gz", &bomb)]);
    a.wait_metric("weft_config_reload_errors_total", &["kind=\"routes\""], 1.0)
        .await;
    assert_eq!(generation(&a.config().await), 3);

    // Back to the plain key on the mount, at a higher generation.
    let json4 = serde_json::to_vec(&routes(4, vec![svc])).unwrap();
    kubelet_write(&routes_dir, &[("routes.json", &json4)]);
    a.wait_config("generation 4", |c| generation(c) == 4 && from_file(c))
        .await;
    assert_eq!(a.config().await["routes"]["key"], "routes.json");
    assert_eq!(exchange(a.outbound, b"y").await, b"yEND b");
}
