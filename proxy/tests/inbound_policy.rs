//! Inbound policy: mTLS mode and authorization decide who reaches the app;
//! a denied connection is counted and never forwarded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;
use weft_api::routes::{Authorization, AuthzDefault, InboundPolicy, MtlsMode};

fn deny_except(authorization: Authorization) -> InboundPolicy {
    InboundPolicy {
        mtls: MtlsMode::Strict,
        authorization: Authorization {
            default: AuthzDefault::Deny,
            ..authorization
        },
    }
}

#[tokio::test]
async fn strict_mode_refuses_plaintext_and_never_forwards_it() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;

    // Bytes that are not HTTP: the connection is closed unanswered.
    assert_eq!(exchange(b.proxy.inbound, b"plain").await, b"");
    // HTTP is answered 403, naming the reason.
    let answer = exchange(b.proxy.inbound, b"GET / HTTP/1.1\r\nHost: cart\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(
        answer.contains("weft-error: plaintext_refused\r\n"),
        "{answer}"
    );
    let refused = ["reason=\"plaintext_refused\""];
    b.proxy
        .wait_metric("weft_connections_denied_total", &refused, 1.0)
        .await;
    b.proxy
        .wait_metric("weft_requests_denied_total", &refused, 1.0)
        .await;
    assert_eq!(b.app.accepted(), 0);
}

#[tokio::test]
async fn permissive_mode_accepts_plaintext_and_mesh_tls() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", permissive()).await;
    assert_eq!(exchange(b.proxy.inbound, b"plain").await, b"plainEND b");

    let svc = cart(b.proxy.inbound, "cart");
    let (a, _dir) = client_proxy(&ca, vec![svc]).await;
    assert_eq!(exchange(a.outbound, b"tls").await, b"tlsEND b");
    b.proxy
        .wait_metric("weft_connections_closed_total", &["tls=\"true\""], 1.0)
        .await;
    assert_eq!(
        b.proxy
            .metric("weft_connections_closed_total", &["tls=\"false\""])
            .await,
        1.0
    );
}

#[tokio::test]
async fn authorization_allows_listed_identities_and_denies_the_rest() {
    let ca = Ca::new("root");
    let allowed = deny_except(Authorization {
        allow_identities: vec![spiffe("web", "frontend")],
        ..Default::default()
    });
    let b = Server::start("b", &ca, "shop", "cart", allowed).await;
    let svc = cart(b.proxy.inbound, "cart");
    let (a, _dir) = client_proxy(&ca, vec![svc.clone()]).await;
    assert_eq!(exchange(a.outbound, b"ok").await, b"okEND b");

    // Another client identity is denied after the handshake.
    let b2 = Server::start(
        "b2",
        &ca,
        "shop",
        "cart",
        deny_except(Authorization {
            allow_namespaces: vec!["ops".into()],
            ..Default::default()
        }),
    )
    .await;
    let svc2 = cart(b2.proxy.inbound, "cart");
    let (a2, _dir2) = client_proxy(&ca, vec![svc2]).await;
    assert_eq!(exchange(a2.outbound, b"no").await, b"");
    b2.proxy
        .wait_metric(
            "weft_connections_denied_total",
            &[
                "reason=\"not_authorized\"",
                "peer_identity=\"spiffe://cluster.local/ns/web/sa/frontend\"",
            ],
            1.0,
        )
        .await;
    assert_eq!(b2.app.accepted(), 0);
}

#[tokio::test]
async fn a_service_policy_applies_to_its_target_port_only() {
    let ca = Ca::new("root");
    let app = EchoApp::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf("shop", "cart"),
        &ca.pem(),
    );
    // The namespace default is permissive; the Service that lists this pod
    // (127.0.0.1) at the app's port is strict.
    let mut t = table("shop", 1, permissive());
    let mut svc = service("cart", "shop", "198.19.0.20", &[(app.addr, None)]);
    svc.policy.inbound = InboundPolicy::default();
    t.services = vec![svc];
    write_routes(&dir.path().join("routes"), &t);
    let mut cfg = ProxyConfig::new(dir.path(), "shop", "cart", app.addr);
    cfg.pod_ip = Some("127.0.0.1".parse().unwrap());
    let strict = Proxy::start(cfg).await;
    assert_eq!(exchange(strict.inbound, b"plain").await, b"");

    // The same table, a connection to another port: the default applies.
    let other = EchoApp::start("other").await;
    let mut cfg = ProxyConfig::new(dir.path(), "shop", "cart", other.addr);
    cfg.pod_ip = Some("127.0.0.1".parse().unwrap());
    let default = Proxy::start(cfg).await;
    assert_eq!(exchange(default.inbound, b"plain").await, b"plainEND other");
}

#[tokio::test]
async fn a_connection_addressed_to_the_inbound_port_itself_is_refused() {
    use std::sync::Arc;
    use weft_proxy::orig_dst::FixedDst;
    use weft_proxy::run::{Listeners, serve};

    let ca = Ca::new("root");
    let dir = mounts(&ca, "shop", "cart", &table("shop", 1, permissive()));
    let mut proxy = ProxyConfig::new(dir.path(), "shop", "cart", "127.0.0.1:1".parse().unwrap());
    proxy.grace = std::time::Duration::from_millis(100);
    // Bind first, so the "original destination" can be the inbound listener
    // itself: what SO_ORIGINAL_DST reports for a connection never redirected.
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners {
        outbound: tokio::net::TcpListener::bind(any).await.unwrap(),
        inbound: tokio::net::TcpListener::bind(any).await.unwrap(),
        admin: tokio::net::TcpListener::bind(any).await.unwrap(),
    };
    let (inbound, admin) = (
        listeners.inbound.local_addr().unwrap(),
        listeners.admin.local_addr().unwrap(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(serve(
        proxy.run_args(),
        listeners,
        Arc::new(FixedDst(inbound)),
        shutdown.clone(),
    ));

    assert_eq!(exchange(inbound, b"loop?").await, b"");
    let metrics = http(admin, "GET", "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "weft_connections_denied_total",
            &["reason=\"addressed_to_proxy\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "weft_connections_opened_total", &[]), 0.0);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A TLS ClientHello from a client outside the mesh (no mesh ALPN).
fn foreign_client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(weft_proxy::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("app.example").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[tokio::test]
async fn tls_that_is_not_mesh_tls_passes_through_where_permissive() {
    let ca = Ca::new("root");
    let hello = foreign_client_hello();

    // Permissive: the app gets the client's TLS bytes untouched (an HTTPS
    // probe reaches an app that terminates TLS itself).
    let b = Server::start("b", &ca, "shop", "cart", permissive()).await;
    let echoed = exchange(b.proxy.inbound, &hello).await;
    assert_eq!(&echoed[..hello.len()], &hello[..]);
    assert_eq!(&echoed[hello.len()..], b"END b");

    // Strict: refused, never forwarded.
    let strict = Server::start("s", &ca, "shop", "cart", InboundPolicy::default()).await;
    assert_eq!(exchange(strict.proxy.inbound, &hello).await, b"");
    strict
        .proxy
        .wait_metric(
            "weft_connections_denied_total",
            &["reason=\"plaintext_refused\""],
            1.0,
        )
        .await;
    assert_eq!(strict.app.accepted(), 0);
}

#[tokio::test]
async fn two_services_on_one_pod_port_the_stricter_still_holds() {
    let ca = Ca::new("root");
    let app = EchoApp::start("b").await;
    // Both Services list this pod (127.0.0.1) at the app's port: one strict,
    // one added later with no policy of its own (permissive here).
    let mut strict = service("cart", "shop", "198.19.0.20", &[(app.addr, None)]);
    strict.policy.inbound = InboundPolicy::default();
    let mut lax = service("admin-cart", "shop", "198.19.0.21", &[(app.addr, None)]);
    lax.policy.inbound = permissive();
    let mut t = table("shop", 1, permissive());
    t.services = vec![lax, strict];
    let dir = mounts(&ca, "shop", "cart", &t);
    let mut cfg = ProxyConfig::new(dir.path(), "shop", "cart", app.addr);
    cfg.pod_ip = Some("127.0.0.1".parse().unwrap());
    let proxy = Proxy::start(cfg).await;
    proxy.wait_config("ready", |c| c["ready"] == true).await;

    assert_eq!(exchange(proxy.inbound, b"plain").await, b"");
    assert_eq!(app.accepted(), 0);
}
