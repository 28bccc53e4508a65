//! MeshPolicy on the HTTP path, through real proxies on loopback: load
//! balancing, outlier detection, timeouts, retries and their budget, and
//! traffic split.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::web::*;
use support::*;
use weft_api::routes::*;

/// `n` pods serving `shop/cart` and a client pod calling it with `policy`.
async fn pods(
    ca: &Ca,
    n: usize,
    policy: OutboundPolicy,
) -> (Vec<WebPod>, Proxy, tempfile::TempDir) {
    const NAMES: [&str; 3] = ["b1", "b2", "b3"];
    let mut pods = Vec::new();
    for name in &NAMES[..n] {
        pods.push(WebPod::start(ca, name, InboundPolicy::default()).await);
    }
    let svc = web_service("cart", VIP, &pods.iter().collect::<Vec<_>>(), policy);
    let (client, dir) = client_proxy(ca, vec![svc]).await;
    (pods, client, dir)
}

fn retries(attempts: u32, retry_on: &[&str], budget_percent: u32, min_per_second: u32) -> Retries {
    Retries {
        attempts,
        retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
        per_try_timeout_ms: None,
        budget_percent,
        min_per_second,
    }
}

/// Sends `n` requests over one connection; counts the answers by app name
/// (or status, for errors).
async fn tally(
    client: &Proxy,
    n: usize,
    method: &str,
    body: &'static [u8],
) -> HashMap<String, usize> {
    let mut conn = h1(client.outbound).await;
    let mut seen = HashMap::new();
    for _ in 0..n {
        let answer = send1(&mut conn, request(method, "/", body)).await;
        let key = match answer.status {
            200 => answer.body,
            status => status.to_string(),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn p2c_ewma_sends_most_requests_away_from_a_slow_endpoint() {
    let ca = Ca::new("root");
    let (pods, client, _dir) = pods(&ca, 3, OutboundPolicy::default()).await;
    pods[0].app.delay(Duration::from_millis(40));
    let seen = tally(&client, 150, "GET", b"").await;
    let slow = seen.get("b1").copied().unwrap_or(0);
    assert!(slow <= 15, "the slow endpoint got {slow} of 150: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 150, "{seen:?}");
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_returns_after_its_penalty() {
    let ca = Ca::new("root");
    let policy = OutboundPolicy {
        load_balancer: LoadBalancer::RoundRobin,
        outlier_detection: Some(OutlierDetection {
            consecutive_failures: 2,
            base_ejection_ms: 500,
            max_ejected_percent: 50,
        }),
        ..OutboundPolicy::default()
    };
    let (pods, client, _dir) = pods(&ca, 2, policy).await;
    pods[0].app.fail_with(500);
    // Round-robin: the failing endpoint sees every other request until its
    // second consecutive failure ejects it.
    let first = tally(&client, 4, "GET", b"").await;
    assert_eq!(first.get("500"), Some(&2), "{first:?}");
    client
        .wait_metric(
            "weft_endpoint_ejections_total",
            &["destination=\"shop/cart:80\""],
            1.0,
        )
        .await;
    let ejected = tally(&client, 10, "GET", b"").await;
    assert_eq!(ejected.get("b2"), Some(&10), "{ejected:?}");

    pods[0].app.fail_with(0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let back = tally(&client, 10, "GET", b"").await;
    assert!(back.get("b1").is_some_and(|n| *n >= 4), "{back:?}");
}

#[tokio::test]
async fn the_request_timeout_answers_504() {
    let ca = Ca::new("root");
    let mut policy = OutboundPolicy::default();
    policy.timeouts.request_ms = Some(200);
    let (pods, client, _dir) = pods(&ca, 1, policy).await;
    pods[0].app.delay(Duration::from_secs(20));
    let answer = get(client.outbound, "/").await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.header("weft-error"), Some("request timeout"));
    assert!(answer.header("x-request-id").is_some());
    let labels = ["destination=\"shop/cart:80\""];
    client
        .wait_metric("weft_request_timeouts_total", &labels, 1.0)
        .await;
}

#[tokio::test]
async fn a_slow_attempt_is_cut_by_the_per_try_timeout_and_retried() {
    let ca = Ca::new("root");
    let mut slow_then_fast = retries(2, &["gateway-error"], 100, 10);
    slow_then_fast.per_try_timeout_ms = Some(150);
    let policy = OutboundPolicy {
        load_balancer: LoadBalancer::RoundRobin,
        retries: Some(slow_then_fast),
        ..OutboundPolicy::default()
    };
    let (pods, client, _dir) = pods(&ca, 2, policy).await;
    pods[0].app.delay(Duration::from_secs(20));
    let seen = tally(&client, 4, "GET", b"").await;
    assert_eq!(seen.get("b2"), Some(&4), "{seen:?}");
}

/// Two pods taking turns (round-robin), the first answering 503, and a
/// policy of 2 attempts on `5xx` with a generous budget.
async fn one_of_two_failing() -> (Vec<WebPod>, Proxy, tempfile::TempDir) {
    let ca = Ca::new("root");
    let policy = OutboundPolicy {
        load_balancer: LoadBalancer::RoundRobin,
        retries: Some(retries(2, &["5xx"], 100, 10)),
        ..OutboundPolicy::default()
    };
    let (pods, client, dir) = pods(&ca, 2, policy).await;
    pods[0].app.fail_with(503);
    (pods, client, dir)
}

#[tokio::test]
async fn a_retry_succeeds_on_another_endpoint() {
    let (pods, client, _dir) = one_of_two_failing().await;
    let seen = tally(&client, 10, "GET", b"").await;
    assert_eq!(seen.get("b2"), Some(&10), "{seen:?}");
    assert!(pods[0].app.hits() >= 4, "the failing replica was tried");
    let labels = ["destination=\"shop/cart:80\""];
    client.wait_metric("weft_retries_total", &labels, 4.0).await;
}

#[tokio::test]
async fn only_idempotent_requests_with_small_bodies_are_retried() {
    let (_pods, client, _dir) = one_of_two_failing().await;
    static LARGE: [u8; 100 * 1024] = [b'x'; 100 * 1024];

    let small_put = tally(&client, 6, "PUT", b"small").await;
    assert_eq!(small_put.get("b2"), Some(&6), "{small_put:?}");
    // A body over 64 KiB is streamed once: never retried.
    let large_put = tally(&client, 6, "PUT", &LARGE).await;
    assert_eq!(large_put.get("503"), Some(&3), "{large_put:?}");
    // POST is not idempotent: a 503 is passed on.
    let post = tally(&client, 6, "POST", b"small").await;
    assert_eq!(post.get("503"), Some(&3), "{post:?}");
}

#[tokio::test]
async fn the_budget_stops_retries_when_everything_fails() {
    let ca = Ca::new("root");
    let policy = OutboundPolicy {
        retries: Some(retries(3, &["5xx"], 0, 1)),
        ..OutboundPolicy::default()
    };
    let (pods, client, _dir) = pods(&ca, 2, policy).await;
    for pod in &pods {
        pod.app.fail_with(503);
    }
    let seen = tally(&client, 30, "GET", b"").await;
    assert_eq!(seen.get("503"), Some(&30), "{seen:?}");
    // 1 per second over the 10-second window, and not one more.
    let labels = ["destination=\"shop/cart:80\""];
    client
        .wait_metric("weft_retry_budget_exhausted_total", &labels, 1.0)
        .await;
    assert_eq!(client.metric("weft_retries_total", &labels).await, 10.0);
    let hits: usize = pods.iter().map(|p| p.app.hits()).sum();
    assert_eq!(hits, 40, "30 requests and 10 retries reached the apps");
}

#[tokio::test]
async fn a_90_10_split_holds_over_1000_requests() {
    let ca = Ca::new("root");
    let stable = WebPod::start(&ca, "stable", InboundPolicy::default()).await;
    let canary = WebPod::start(&ca, "canary", InboundPolicy::default()).await;
    let split = OutboundPolicy {
        split: vec![
            WeightedBackend {
                service: "cart".into(),
                weight: 90,
            },
            WeightedBackend {
                service: "cart-canary".into(),
                weight: 10,
            },
        ],
        ..OutboundPolicy::default()
    };
    let services = vec![
        web_service("cart", VIP, &[&stable], split),
        web_service(
            "cart-canary",
            "198.19.0.11",
            &[&canary],
            OutboundPolicy::default(),
        ),
    ];
    let (client, _dir) = client_proxy(&ca, services).await;
    let seen = tally(&client, 1000, "GET", b"").await;
    let canary_share = seen.get("canary").copied().unwrap_or(0);
    // Binomial(1000, 0.1): σ ≈ 9.5, so 60..=140 is beyond 4σ.
    assert!((60..=140).contains(&canary_share), "{seen:?}");
    assert_eq!(
        seen.get("stable").copied().unwrap_or(0) + canary_share,
        1000
    );
}
