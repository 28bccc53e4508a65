//! The HTTP data path through two real proxies on loopback (mesh TLS
//! between them): HTTP/1.1, HTTP/2, gRPC, upgrades, correlation IDs,
//! authorization, and protocol detection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::HeaderValue;
use support::web::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_api::routes::*;

/// One pod serving `shop/cart` (HTTP detected) and a client pod calling it.
async fn one_pod(ca: &Ca, inbound: InboundPolicy) -> (WebPod, Proxy, tempfile::TempDir) {
    let pod = WebPod::start(ca, "b1", inbound).await;
    let svc = web_service("cart", VIP, &[&pod], OutboundPolicy::default());
    let (client, dir) = client_proxy(ca, vec![svc]).await;
    (pod, client, dir)
}

#[tokio::test]
async fn http1_round_trips_on_one_connection_with_correlation_ids() {
    let ca = Ca::new("root");
    let (pod, client, _dir) = one_pod(&ca, InboundPolicy::default()).await;

    let mut conn = h1(client.outbound).await;
    let first = send1(&mut conn, request("GET", "/", "")).await;
    assert_eq!((first.status, first.body.as_str()), (200, "b1"));
    // A request ID was made, sent to the app and returned to the caller.
    let id = first.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        pod.app.last_seen("x-request-id").as_deref(),
        Some(id.as_str())
    );
    let traceparent = pod.app.last_seen("traceparent").unwrap();
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-00"),
        "{traceparent}"
    );

    // Present ones are kept; the same connection carries the next request.
    let mut req = request("POST", "/", "twelve bytes");
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    req.headers_mut()
        .insert("x-request-id", HeaderValue::from_static("abc-1"));
    req.headers_mut()
        .insert("traceparent", HeaderValue::from_static(given));
    let second = send1(&mut conn, req).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-request-id"), Some("abc-1"));
    assert_eq!(second.header("x-body-len"), Some("12"));
    assert_eq!(pod.app.last_seen("x-request-id").as_deref(), Some("abc-1"));
    assert_eq!(pod.app.last_seen("traceparent").as_deref(), Some(given));

    let labels = [
        "direction=\"outbound\"",
        "destination=\"shop/cart:80\"",
        "status_code=\"200\"",
    ];
    client
        .wait_metric("weft_responses_total", &labels, 2.0)
        .await;
    let outbound = [
        "direction=\"outbound\"",
        "peer_identity=\"spiffe://cluster.local/ns/shop/sa/cart\"",
        "tls=\"true\"",
    ];
    assert_eq!(client.metric("weft_requests_total", &outbound).await, 2.0);
    let inbound = [
        "direction=\"inbound\"",
        "peer_identity=\"spiffe://cluster.local/ns/web/sa/frontend\"",
    ];
    pod.proxy
        .wait_metric("weft_requests_total", &inbound, 2.0)
        .await;
    // One mesh connection carried both requests.
    assert_eq!(
        pod.proxy
            .metric("weft_connections_opened_total", &["direction=\"inbound\""])
            .await,
        1.0
    );
}

/// The request ID goes back to the caller from the proxy nearest it: the
/// inbound returns it to a plaintext caller, not to a mesh client, whose
/// outbound proxy returns it to its app (the test above).
#[tokio::test]
async fn the_inbound_returns_the_request_id_only_to_callers_outside_the_mesh() {
    let ca = Ca::new("root");
    let pod = WebPod::start(&ca, "b1", permissive()).await;

    let plain = get(pod.proxy.inbound, "/").await;
    assert_eq!((plain.status, plain.body.as_str()), (200, "b1"));
    let id = plain.header("x-request-id").unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(pod.app.last_seen("x-request-id").as_deref(), Some(id));

    let leaf = ca.leaf("web", "frontend");
    let mesh = |id: &'static str| {
        let mut req = request("GET", "/", "");
        req.headers_mut()
            .insert("x-request-id", HeaderValue::from_static(id));
        req
    };
    let http1 = weft_proxy::tls::MeshProtocol::Http1;
    let tls = mesh_connect(pod.proxy.inbound, &ca, &leaf, http1).await;
    let answer = send1(&mut h1_on(tls.unwrap()).await, mesh("mesh-7")).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "b1"));
    assert_eq!(answer.header("x-request-id"), None);
    assert_eq!(pod.app.last_seen("x-request-id").as_deref(), Some("mesh-7"));

    let http2 = weft_proxy::tls::MeshProtocol::Http2;
    let tls = mesh_connect(pod.proxy.inbound, &ca, &leaf, http2).await;
    let mut sender = h2_on(tls.unwrap()).await;
    let answer = read(sender.send_request(mesh("mesh-8")).await.unwrap()).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "b1"));
    assert_eq!(answer.header("x-request-id"), None);
    assert_eq!(pod.app.last_seen("x-request-id").as_deref(), Some("mesh-8"));
}

#[tokio::test]
async fn http2_and_grpc_keep_trailers_and_are_classified_by_grpc_status() {
    let ca = Ca::new("root");
    let (_pod, client, _dir) = one_pod(&ca, InboundPolicy::default()).await;
    let mut conn = h2(client.outbound).await;

    let plain = read(
        conn.send_request(request("GET", "http://cart.shop/", ""))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((plain.status, plain.body.as_str()), (200, "b1"));

    let mut call = request("POST", "http://cart.shop/grpc", "\0\0\0\0\0");
    call.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    call.headers_mut()
        .insert("te", HeaderValue::from_static("trailers"));
    let ok = read(conn.send_request(call).await.unwrap()).await;
    assert_eq!(ok.trailers.unwrap()["grpc-status"], "0");

    let mut call = request("POST", "http://cart.shop/grpc", "\0\0\0\0\0");
    call.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    call.headers_mut()
        .insert("x-grpc-status", HeaderValue::from_static("14"));
    let unavailable = read(conn.send_request(call).await.unwrap()).await;
    assert_eq!(unavailable.status, 200);
    assert_eq!(unavailable.trailers.unwrap()["grpc-status"], "14");

    let failure = ["grpc_status=\"14\"", "classification=\"failure\""];
    client
        .wait_metric("weft_responses_total", &failure, 1.0)
        .await;
    let success = ["grpc_status=\"0\"", "classification=\"success\""];
    client
        .wait_metric("weft_responses_total", &success, 1.0)
        .await;
}

#[tokio::test]
async fn websocket_upgrade_becomes_a_tunnel_through_both_proxies() {
    let ca = Ca::new("root");
    let (_pod, client, _dir) = one_pod(&ca, InboundPolicy::default()).await;
    let mut conn = h1(client.outbound).await;
    let mut req = request("GET", "/ws", "");
    req.headers_mut()
        .insert("connection", HeaderValue::from_static("upgrade"));
    req.headers_mut()
        .insert("upgrade", HeaderValue::from_static("websocket"));
    conn.ready().await.unwrap();
    let response = conn.send_request(req).await.unwrap();
    assert_eq!(response.status(), 101);
    echoes_through(response, &[b"hello", b"again"]).await;
}

/// Upgrades `response` and checks each message comes back through it.
async fn echoes_through(response: http::Response<hyper::body::Incoming>, messages: &[&[u8]]) {
    let mut tunnel = hyper_util::rt::TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    for message in messages {
        tunnel.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tunnel.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, message);
    }
}

#[tokio::test]
async fn connect_becomes_a_tunnel_too() {
    let ca = Ca::new("root");
    let (_pod, client, _dir) = one_pod(&ca, InboundPolicy::default()).await;
    let mut conn = h1(client.outbound).await;
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("cart.shop:80")
        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
        .unwrap();
    conn.ready().await.unwrap();
    let response = conn.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    echoes_through(response, &[b"through"]).await;
}

#[tokio::test]
async fn an_http2_connect_tunnels_through_both_proxies_as_http2_streams() {
    let ca = Ca::new("root");
    let (_pod, client, _dir) = one_pod(&ca, InboundPolicy::default()).await;
    let mut conn = h2(client.outbound).await;
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("cart.shop:80")
        .version(http::Version::HTTP_2)
        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
        .unwrap();
    conn.ready().await.unwrap();
    let response = conn.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    echoes_through(response, &[b"through", b"and back again"]).await;
}

#[tokio::test]
async fn a_reload_moves_new_requests_and_lets_in_flight_ones_finish() {
    let ca = Ca::new("root");
    let old = WebPod::start(&ca, "old", InboundPolicy::default()).await;
    let new = WebPod::start(&ca, "new", InboundPolicy::default()).await;
    let (client, dir) = client_proxy(
        &ca,
        vec![web_service("cart", VIP, &[&old], OutboundPolicy::default())],
    )
    .await;
    old.app.delay(std::time::Duration::from_millis(800));
    let outbound = client.outbound;
    let in_flight = tokio::spawn(async move { get(outbound, "/").await });
    while old.app.hits() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut t = table("web", 2, InboundPolicy::default());
    t.services = vec![web_service("cart", VIP, &[&new], OutboundPolicy::default())];
    write_routes(&dir.path().join("routes"), &t);
    client
        .wait_config("generation 2", |c| c["routes"]["generation"] == 2)
        .await;

    let after = get(client.outbound, "/").await;
    assert_eq!((after.status, after.body.as_str()), (200, "new"));
    let finished = in_flight.await.unwrap();
    assert_eq!((finished.status, finished.body.as_str()), (200, "old"));
}

#[tokio::test]
async fn a_denied_caller_gets_403_naming_the_reason() {
    let ca = Ca::new("root");
    let only_admin = InboundPolicy {
        mtls: MtlsMode::Strict,
        authorization: Authorization {
            default: AuthzDefault::Deny,
            allow_identities: vec![spiffe("ops", "admin")],
            ..Authorization::default()
        },
    };
    let (pod, client, _dir) = one_pod(&ca, only_admin).await;
    let answer = get(client.outbound, "/").await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.header("weft-error"), Some("not_authorized"));
    assert!(answer.header("x-request-id").is_some());
    assert_eq!(pod.app.hits(), 0);
}

#[tokio::test]
async fn a_policy_change_applies_to_requests_on_open_connections() {
    let ca = Ca::new("root");
    let (pod, client, _dir) = one_pod(&ca, InboundPolicy::default()).await;
    let mut conn = h1(client.outbound).await;
    assert_eq!(send1(&mut conn, request("GET", "/", "")).await.status, 200);

    // The server pod's policy now denies everyone: the caller's pooled
    // connection stays open, but its next request is refused...
    let mut deny = table("shop", 2, InboundPolicy::default());
    deny.defaults.inbound.authorization.default = AuthzDefault::Deny;
    write_routes(&pod.proxy.routes_dir, &deny);
    pod.proxy
        .wait_config("generation 2", |c| c["routes"]["generation"] == 2)
        .await;
    let refused = send1(&mut conn, request("GET", "/", "")).await;
    assert_eq!(
        (refused.status, refused.header("weft-error")),
        (403, Some("not_authorized"))
    );

    // ...and allowed again once the policy says so.
    write_routes(
        &pod.proxy.routes_dir,
        &table("shop", 3, InboundPolicy::default()),
    );
    pod.proxy
        .wait_config("generation 3", |c| c["routes"]["generation"] == 3)
        .await;
    assert_eq!(send1(&mut conn, request("GET", "/", "")).await.status, 200);
    assert_eq!(pod.app.hits(), 2);
    assert_eq!(
        pod.proxy
            .metric("weft_connections_opened_total", &["direction=\"inbound\""])
            .await,
        1.0,
        "one connection carried all three requests"
    );
    let labels = ["direction=\"outbound\"", "tls=\"true\""];
    assert_eq!(
        client
            .metric("weft_connections_opened_total", &labels)
            .await,
        1.0
    );
}

#[tokio::test]
async fn proxy_errors_say_what_failed() {
    let ca = Ca::new("root");
    let mut svc = web_service("cart", VIP, &[], OutboundPolicy::default());
    let (client, _dir) = client_proxy(&ca, vec![svc.clone()]).await;
    let none = get(client.outbound, "/").await;
    assert_eq!(
        (none.status, none.header("weft-error")),
        (503, Some("no endpoints"))
    );
    assert_eq!(none.body, "weft: no endpoints\n");

    // An endpoint nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    svc.ports[0].endpoints = service("x", "shop", VIP, &[(closed, None)]).ports[0]
        .endpoints
        .clone();
    let (client, _dir) = client_proxy(&ca, vec![svc]).await;
    let refused = get(client.outbound, "/").await;
    assert_eq!(
        (refused.status, refused.header("weft-error")),
        (502, Some("connect refused"))
    );
}

#[tokio::test]
async fn a_client_that_waits_for_the_server_is_relayed_as_bytes_after_the_detect_timeout() {
    let ca = Ca::new("root");
    // A server-first app (not meshed): it greets, then echoes.
    let greeter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let greeter_addr = greeter.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = greeter.accept().await.unwrap();
        s.write_all(b"220 hello\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(&buf[..n]).await.unwrap();
    });
    let mut svc = service("mail", "shop", VIP, &[(greeter_addr, None)]);
    svc.ports[0].protocol = Protocol::Detect;
    let (client, _dir) = client_proxy(&ca, vec![svc]).await;

    let mut conn = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    let mut greeting = [0u8; 11];
    conn.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    conn.write_all(b"EHLO x").await.unwrap();
    let mut echo = [0u8; 6];
    conn.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO x");
    let labels = ["direction=\"outbound\"", "port=\"80\""];
    client
        .wait_metric("weft_protocol_detect_timeouts_total", &labels, 1.0)
        .await;
}

#[tokio::test]
async fn opaque_ports_are_never_sniffed() {
    let ca = Ca::new("root");
    let (b, a, _dir) = pair(&ca, InboundPolicy::default()).await;
    // `pair` declares the port opaque: HTTP-looking bytes are relayed as they are.
    let raw = exchange(a.outbound, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(raw, b"GET / HTTP/1.1\r\n\r\nEND b");
    assert_eq!(b.app.accepted(), 1);
}

#[tokio::test]
async fn an_opaque_connection_quiet_for_the_idle_timeout_is_closed() {
    let ca = Ca::new("root");
    // An app that echoes once and then holds the connection open.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(&buf[..n]).await.unwrap();
        let _ = s.read(&mut buf).await;
    });
    let idle_ms = 300;
    let idle = std::time::Duration::from_millis(idle_ms);
    let mut svc = service("db", "shop", VIP, &[(app_addr, None)]);
    svc.ports[0].protocol = Protocol::Opaque;
    svc.policy.outbound.timeouts.idle_ms = Some(idle_ms);
    let (client, _dir) = client_proxy(&ca, vec![svc]).await;

    let mut conn = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    conn.read_exact(&mut echo).await.unwrap();
    let quiet_since = std::time::Instant::now();
    let mut rest = [0u8; 1];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), conn.read(&mut rest))
        .await
        .expect("the proxy closes the idle connection");
    assert_eq!(closed.unwrap(), 0, "closed, not more bytes");
    assert!(quiet_since.elapsed() >= idle, "{:?}", quiet_since.elapsed());
}
