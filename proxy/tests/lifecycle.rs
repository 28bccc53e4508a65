//! Shutdown: stop accepting, let open connections finish within the grace
//! period, exit 0 — in-process and as a real process receiving SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_api::routes::InboundPolicy;

#[tokio::test]
async fn drain_lets_open_connections_finish_and_refuses_new_ones() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", permissive()).await;
    let mut open = TcpStream::connect(b.proxy.inbound).await.unwrap();
    open.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();

    b.proxy.shutdown.cancel();
    // Draining: not ready any more, and the listener is closed.
    for _ in 0..200 {
        if b.proxy.get("/ready").await.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.proxy.get("/ready").await.0, 503);
    assert!(TcpStream::connect(b.proxy.inbound).await.is_err());
    assert!(
        !b.proxy.task.is_finished(),
        "must wait for the open connection"
    );

    // The open connection still works and, once it ends, the proxy exits.
    open.write_all(b"y").await.unwrap();
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"yEND b");
    tokio::time::timeout(Duration::from_secs(30), b.proxy.task)
        .await
        .expect("proxy exits once drained")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let ca = Ca::new("root");
    let app = EchoApp::start("b").await;
    let dir = mounts(&ca, "shop", "cart", &table("shop", 1, permissive()));
    let mut cfg = ProxyConfig::new(dir.path(), "shop", "cart", app.addr);
    cfg.grace = Duration::from_millis(200);
    let proxy = Proxy::start(cfg).await;
    let mut stuck = TcpStream::connect(proxy.inbound).await.unwrap();
    stuck.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    stuck.read_exact(&mut one).await.unwrap();

    proxy.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), proxy.task)
        .await
        .expect("the grace period ends the drain")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_endpoint_drains_like_sigterm() {
    let ca = Ca::new("root");
    let b = Server::start("b", &ca, "shop", "cart", InboundPolicy::default()).await;
    assert_eq!(http(b.proxy.admin, "POST", "/shutdown").await.0, 200);
    tokio::time::timeout(Duration::from_secs(30), b.proxy.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn the_binary_exits_zero_on_sigterm() {
    let ca = Ca::new("root");
    let dir = mounts(&ca, "shop", "cart", &table("shop", 1, permissive()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args([
            "run",
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("WEFT_ROUTES_DIR", dir.path().join("routes"))
        .env("WEFT_IDENTITY_DIR", dir.path().join("identity"))
        .env("WEFT_POD_NAMESPACE", "shop")
        .env("WEFT_SERVICE_ACCOUNT", "cart")
        .env("WEFT_LOG_FORMAT", "json")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the startup log line, then ask it to stop.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("weft-proxy serving") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0,
            "exited early"
        );
    }
    assert!(line.starts_with('{'), "json logs: {line}");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn access_logs_are_json_lines_on_stdout_when_enabled() {
    let ca = Ca::new("root");
    let app = support::web::WebApp::start("app").await;
    let dir = mounts(&ca, "shop", "cart", &table("shop", 1, permissive()));
    let inbound = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args([
            "run",
            "--outbound-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--inbound-addr", &inbound.to_string()])
        .args([
            "--original-dst",
            &app.addr.to_string(),
            "--access-log",
            "json",
        ])
        .env("WEFT_ROUTES_DIR", dir.path().join("routes"))
        .env("WEFT_IDENTITY_DIR", dir.path().join("identity"))
        .env("WEFT_POD_NAMESPACE", "shop")
        .env("WEFT_SERVICE_ACCOUNT", "cart")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, mut seen) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    while !seen.recv().await.unwrap().contains("weft-proxy serving") {}

    let mut req = support::web::request("GET", "/cart/items?page=2", "");
    req.headers_mut()
        .insert("x-request-id", http::HeaderValue::from_static("req-42"));
    let answer = support::web::send1(&mut support::web::h1(inbound).await, req).await;
    assert_eq!(answer.status, 200);
    let line = loop {
        let line = seen
            .recv()
            .await
            .expect("stdout ended before the access log line");
        if line.contains("req-42") {
            break line;
        }
    };
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["direction"], "inbound");
    assert_eq!(log["method"], "GET");
    assert_eq!(log["authority"], "cart.shop");
    assert_eq!(log["path"], "/cart/items");
    assert_eq!(log["status"], 200);
    assert_eq!(log["responseBytes"], 3);
    assert_eq!(log["peerIdentity"], "");
    assert!(log["durationMs"].as_f64().unwrap() >= 0.0);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn invalid_flags_fail_with_a_message_naming_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["run", "--connect-timeout", "5 parsecs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--connect-timeout") && stderr.contains("5 parsecs"),
        "{stderr}"
    );
}

/// Runs `weft-proxy wait-ready` against `admin`; its exit status.
async fn wait_ready(
    admin: std::net::SocketAddr,
    timeout: &'static str,
) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .args([
                "wait-ready",
                "--admin-addr",
                &admin.to_string(),
                "--timeout",
                timeout,
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn wait_ready_returns_once_the_proxy_is_ready() {
    let ca = Ca::new("root");
    let app = EchoApp::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(ProxyConfig::new(dir.path(), "shop", "cart", app.addr)).await;

    assert!(
        !wait_ready(proxy.admin, "300ms").await.success(),
        "no files: not ready"
    );
    let waiting = tokio::spawn(wait_ready(proxy.admin, "60s"));
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf("shop", "cart"),
        &ca.pem(),
    );
    write_routes(&dir.path().join("routes"), &table("shop", 1, permissive()));
    assert!(waiting.await.unwrap().success());
}
