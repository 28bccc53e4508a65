//! Mesh TLS between two whole proxies on loopback: identity checks in both
//! directions, large transfers with half-close, plaintext endpoints and
//! passthrough, and failover to another endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::TcpListener;
use weft_api::routes::InboundPolicy;

#[tokio::test]
async fn right_identity_passes_and_traffic_is_relayed_both_ways() {
    let ca = Ca::new("root");
    let (b, a, _dir) = pair(&ca, InboundPolicy::default()).await;

    assert_eq!(exchange(a.outbound, b"hello").await, b"helloEND b");

    let client_id = r#"peer_identity="spiffe://cluster.local/ns/web/sa/frontend""#;
    let server_id = r#"peer_identity="spiffe://cluster.local/ns/shop/sa/cart""#;
    b.proxy
        .wait_metric(
            "weft_connections_closed_total",
            &["direction=\"inbound\"", client_id, "tls=\"true\""],
            1.0,
        )
        .await;
    assert_eq!(
        a.metric(
            "weft_connections_opened_total",
            &["direction=\"outbound\"", server_id, "tls=\"true\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        b.proxy
            .metric("weft_bytes_total", &["stream=\"request\"", client_id])
            .await,
        5.0
    );
}

#[tokio::test]
async fn large_transfer_with_half_close_arrives_intact() {
    let ca = Ca::new("root");
    let (_b, a, _dir) = pair(&ca, InboundPolicy::default()).await;

    let payload: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let got = exchange(a.outbound, &payload).await;
    // The app writes END only after it has read EOF: the half-close crossed
    // both proxies while the other direction stayed open.
    assert_eq!(got.len(), payload.len() + 5);
    assert!(got[..payload.len()] == payload[..], "payload corrupted");
    assert_eq!(&got[payload.len()..], b"END b");
}

#[tokio::test]
async fn wrong_server_identity_is_refused() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;
    // The table says the endpoint is shop/payments; it presents shop/cart.
    let svc = cart(b.proxy.inbound, "payments");
    let (a, _dir) = client_proxy(&ca, vec![svc]).await;

    assert_eq!(exchange(a.outbound, b"secret").await, b"");
    assert_eq!(
        a.metric(
            "weft_tls_handshake_failures_total",
            &["reason=\"identity_mismatch\""]
        )
        .await,
        1.0
    );
    assert_eq!(a.metric("weft_connections_opened_total", &[]).await, 0.0);
}

#[tokio::test]
async fn server_from_untrusted_ca_is_refused_by_both_sides() {
    let ca = Ca::new("root");
    let rogue = Ca::new("rogue");
    let b = Server::start("b", &rogue, "shop", "cart", InboundPolicy::default()).await;
    let svc = cart(b.proxy.inbound, "cart");
    let (a, _dir) = client_proxy(&ca, vec![svc]).await;

    assert_eq!(exchange(a.outbound, b"secret").await, b"");
    assert_eq!(
        a.metric(
            "weft_tls_handshake_failures_total",
            &["direction=\"outbound\"", "reason=\"handshake\""]
        )
        .await,
        1.0
    );
    assert_eq!(b.app.accepted(), 0);
}

#[tokio::test]
async fn expired_server_certificate_is_refused() {
    let ca = Ca::new("root");
    // A TLS server that presents an expired (but otherwise right) certificate.
    let leaf = ca.expired_leaf("shop", "cart");
    let config =
        weft_proxy::tls::server_config(&weft_proxy::tls::provider(), roots(&ca), certified(&leaf))
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        acceptor.accept(s).await.is_ok()
    });
    let svc = cart(addr, "cart");
    let (a, _dir) = client_proxy(&ca, vec![svc]).await;

    assert_eq!(exchange(a.outbound, b"secret").await, b"");
    assert!(!server.await.unwrap(), "the handshake must not complete");
    assert_eq!(
        a.metric(
            "weft_tls_handshake_failures_total",
            &["reason=\"handshake\""]
        )
        .await,
        1.0
    );
}

/// Connects to an inbound proxy as a mesh client with `leaf`; returns
/// whether the app's greeting came back.
async fn raw_mesh_client(inbound: std::net::SocketAddr, ca: &Ca, leaf: &Leaf) -> Vec<u8> {
    let opaque = weft_proxy::tls::MeshProtocol::Opaque;
    let Ok(mut tls) = mesh_connect(inbound, ca, leaf, opaque).await else {
        return Vec::new();
    };
    let _ = tls.write_all(b"hi").await;
    let _ = tls.shutdown().await;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    out
}

#[tokio::test]
async fn inbound_refuses_expired_and_untrusted_client_certificates() {
    let ca = Ca::new("root");
    let rogue = Ca::new("rogue");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;

    assert_eq!(
        raw_mesh_client(b.proxy.inbound, &ca, &ca.leaf("web", "frontend")).await,
        b"hiEND b"
    );
    assert_eq!(
        raw_mesh_client(b.proxy.inbound, &ca, &ca.expired_leaf("web", "frontend")).await,
        b""
    );
    assert_eq!(
        raw_mesh_client(b.proxy.inbound, &ca, &rogue.leaf("web", "frontend")).await,
        b""
    );
    assert_eq!(b.app.accepted(), 1, "only the valid client reaches the app");
    b.proxy
        .wait_metric(
            "weft_tls_handshake_failures_total",
            &["direction=\"inbound\"", "reason=\"handshake\""],
            2.0,
        )
        .await;
}

#[tokio::test]
async fn endpoint_without_identity_gets_plaintext() {
    let ca = Ca::new("root");
    let app = EchoApp::start("plain").await;
    let svc = service("legacy", "shop", VIP, &[(app.addr, None)]);
    let (a, _dir) = client_proxy(&ca, vec![svc]).await;

    assert_eq!(exchange(a.outbound, b"x").await, b"xEND plain");
    assert_eq!(
        a.metric("weft_connections_opened_total", &["tls=\"false\""])
            .await,
        1.0
    );
}

#[tokio::test]
async fn unknown_destination_passes_through_unchanged() {
    let ca = Ca::new("root");
    let app = EchoApp::start("outside").await;
    let dir = tempfile::tempdir().unwrap();
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf("web", "frontend"),
        &ca.pem(),
    );
    write_routes(
        &dir.path().join("routes"),
        &table("web", 1, InboundPolicy::default()),
    );
    let a = Proxy::start(ProxyConfig::new(dir.path(), "web", "frontend", app.addr)).await;

    assert_eq!(
        exchange(a.outbound, b"raw bytes").await,
        b"raw bytesEND outside"
    );
    assert_eq!(app.accepted(), 1);
}

#[tokio::test]
async fn failed_connect_moves_on_to_another_endpoint() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }; // closed again: connecting is refused
    let svc = service(
        "cart",
        "shop",
        VIP,
        &[
            (dead, Some(spiffe("shop", "cart"))),
            (b.proxy.inbound, Some(spiffe("shop", "cart"))),
        ],
    );
    let (a, _dir) = client_proxy(&ca, vec![svc]).await;

    for _ in 0..4 {
        assert_eq!(exchange(a.outbound, b"x").await, b"xEND b");
    }
    assert!(
        a.metric("weft_connect_failures_total", &["direction=\"outbound\""])
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_call_that_lands_on_this_pod_itself_stays_plain_inside_it() {
    let ca = Ca::new("root");
    // The Service's only endpoint is this very pod (a plain app on 127.0.0.1,
    // meshed as shop/cart): the proxy must not speak TLS to its own app.
    let app = EchoApp::start("self").await;
    let svc = cart(app.addr, "cart");
    let dir = mounts(&ca, "shop", "cart", &{
        let mut t = table("shop", 1, InboundPolicy::default());
        t.services = vec![svc];
        t
    });
    let mut cfg = ProxyConfig::new(dir.path(), "shop", "cart", vip());
    cfg.pod_ip = Some("127.0.0.1".parse().unwrap());
    let a = Proxy::start(cfg).await;
    assert_eq!(exchange(a.outbound, b"me").await, b"meEND self");
}
