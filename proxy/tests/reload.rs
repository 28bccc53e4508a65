//! Hot reload: new routes and certificates apply to new connections while
//! open ones carry on; bad files are refused, counted, and the last good
//! configuration stays in use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_api::routes::InboundPolicy;

fn generation(kind: &'static str) -> impl Fn(&serde_json::Value) -> u64 {
    move |c| c[kind]["generation"].as_u64().unwrap_or(0)
}

async fn echo_round(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn reload_applies_to_new_connections_and_open_streams_survive() {
    let ca = Ca::new("root");
    let b1 = Server::start("b1", &ca, "shop", "cart", InboundPolicy::default()).await;
    let b2 = Server::start("b2", &ca, "shop", "cart", InboundPolicy::default()).await;
    let cart = spiffe("shop", "cart");
    let (a, dir) = client_proxy(
        &ca,
        vec![service(
            "cart",
            "shop",
            VIP,
            &[(b1.proxy.inbound, Some(cart.clone()))],
        )],
    )
    .await;
    let first_cert = a.config().await["identity"]["digest"].clone();

    let mut open = TcpStream::connect(a.outbound).await.unwrap();
    echo_round(&mut open, b"before").await;

    // New routes (endpoint moves to b2) and a new certificate, the kubelet way.
    let mut t = table("web", 2, InboundPolicy::default());
    t.services = vec![service(
        "cart",
        "shop",
        VIP,
        &[(b2.proxy.inbound, Some(cart))],
    )];
    write_routes(&dir.path().join("routes"), &t);
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf("web", "frontend"),
        &ca.pem(),
    );
    a.wait_config("routes generation 2", |c| generation("routes")(c) == 2)
        .await;
    a.wait_config("identity generation 2", |c| generation("identity")(c) == 2)
        .await;
    assert_ne!(a.config().await["identity"]["digest"], first_cert);

    // The stream opened before the reload carries on, to b1.
    echo_round(&mut open, b"after").await;
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"END b1");

    // A new connection uses the new table.
    assert_eq!(exchange(a.outbound, b"new").await, b"newEND b2");
    assert_eq!(
        a.metric("weft_config_generation", &["kind=\"routes\""])
            .await,
        2.0
    );
    assert_eq!(a.metric("weft_config_reload_errors_total", &[]).await, 0.0);
}

#[tokio::test]
async fn bad_files_are_refused_and_the_last_good_config_stays() {
    let ca = Ca::new("root");
    let rogue = Ca::new("rogue");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;
    let svc = cart(b.proxy.inbound, "cart");
    let (a, dir) = client_proxy(&ca, vec![svc.clone()]).await;
    let good = a.config().await;
    let routes_dir = dir.path().join("routes");
    let identity_dir = dir.path().join("identity");

    let mut good_table = table("web", 5, InboundPolicy::default());
    good_table.services = vec![svc];
    let good_json = serde_json::to_vec(&good_table).unwrap();
    let mut other_ns = good_table.clone();
    other_ns.namespace = "shop".into();
    let bad_routes: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good_json[..good_json.len() / 2].to_vec()),
        (
            "unknown version",
            br#"{"version": 2, "generation": 9}"#.to_vec(),
        ),
        (
            "invalid field",
            serde_json::to_vec(&{
                let mut t = good_table.clone();
                t.services[0].ports[0].port = 0;
                t
            })
            .unwrap(),
        ),
        ("other namespace", serde_json::to_vec(&other_ns).unwrap()),
    ];
    for (i, (what, bytes)) in bad_routes.iter().enumerate() {
        kubelet_write(&routes_dir, &[("routes.json", bytes)]);
        a.wait_metric(
            "weft_config_reload_errors_total",
            &["kind=\"routes\""],
            (i + 1) as f64,
        )
        .await;
        assert_eq!(a.config().await["routes"], good["routes"], "after {what}");
        assert_eq!(exchange(a.outbound, b"x").await, b"xEND b", "after {what}");
    }

    let fresh = ca.leaf("web", "frontend");
    let other_key = ca.leaf("web", "frontend").key;
    let bad_identities: Vec<(&str, Leaf, String)> = vec![
        (
            "key of another certificate",
            Leaf {
                cert: fresh.cert.clone(),
                key: other_key,
            },
            ca.pem(),
        ),
        (
            "expired certificate",
            ca.expired_leaf("web", "frontend"),
            ca.pem(),
        ),
        ("another identity", ca.leaf("web", "admin"), ca.pem()),
        ("untrusted issuer", rogue.leaf("web", "frontend"), ca.pem()),
        ("garbage bundle", fresh.clone(), "not a pem".into()),
    ];
    for (i, (what, leaf, bundle)) in bad_identities.iter().enumerate() {
        write_identity(&identity_dir, leaf, bundle);
        a.wait_metric(
            "weft_config_reload_errors_total",
            &["kind=\"identity\""],
            (i + 1) as f64,
        )
        .await;
        assert_eq!(
            a.config().await["identity"],
            good["identity"],
            "after {what}"
        );
        assert_eq!(exchange(a.outbound, b"y").await, b"yEND b", "after {what}");
    }

    // The same bad file seen again by the poll is not counted twice.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        a.metric("weft_config_reload_errors_total", &["kind=\"identity\""])
            .await,
        5.0
    );

    // A good file after bad ones is taken.
    write_identity(&identity_dir, &fresh, &ca.pem());
    a.wait_config("identity generation 2", |c| generation("identity")(c) == 2)
        .await;
    assert!(a.get("/ready").await.0 == 200);
}

#[tokio::test]
async fn proxy_starts_unready_and_becomes_ready_when_files_arrive() {
    let ca = Ca::new("root");
    let app = EchoApp::start("late").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("routes")).unwrap();
    std::fs::create_dir_all(dir.path().join("identity")).unwrap();
    let a = Proxy::start(ProxyConfig::new(dir.path(), "web", "frontend", app.addr)).await;

    assert_eq!(a.get("/ready").await.0, 503);
    assert_eq!(a.get("/live").await.0, 200);
    assert_eq!(a.config().await["routes"], serde_json::Value::Null);

    write_routes(
        &dir.path().join("routes"),
        &table("web", 1, InboundPolicy::default()),
    );
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf("web", "frontend"),
        &ca.pem(),
    );
    a.wait_config("ready", |c| c["ready"] == true).await;
    assert_eq!(a.get("/ready").await.0, 200);
    let config = a.config().await;
    assert_eq!(
        config["identity"]["spiffeId"],
        "spiffe://cluster.local/ns/web/sa/frontend"
    );
    assert!(
        config["routes"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let source = config["routes"]["source"].as_str().unwrap();
    assert!(
        source.contains("/routes/.."),
        "the resolved ..data snapshot: {source}"
    );
    assert!(
        a.metric("weft_identity_certificate_expiry_timestamp_seconds", &[])
            .await
            > 1.7e9
    );
}

#[tokio::test]
async fn a_certificate_not_valid_yet_is_taken_once_it_is() {
    let ca = Ca::new("root");
    let app = EchoApp::start("b").await;
    let dir = mounts(
        &ca,
        "web",
        "frontend",
        &table("web", 1, InboundPolicy::default()),
    );
    let a = Proxy::start(ProxyConfig::new(dir.path(), "web", "frontend", app.addr)).await;
    a.wait_config("ready", |c| c["ready"] == true).await;

    // Issued by a clock a few seconds ahead of this node's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let early = ca.leaf_with(spiffe("web", "frontend").as_str(), now + 3, now + 3600);
    write_identity(&dir.path().join("identity"), &early, &ca.pem());
    a.wait_metric(
        "weft_config_reload_errors_total",
        &["kind=\"identity\""],
        1.0,
    )
    .await;
    assert_eq!(
        generation("identity")(&a.config().await),
        1,
        "refused while early"
    );

    // The same files, unchanged, are taken once their time has come.
    a.wait_config("the early certificate", |c| generation("identity")(c) == 2)
        .await;
}
