//! Real interception: pods as network namespaces on a bridge, `weft-proxy
//! init` installing iptables in each, `weft-proxy run` as UID 7102 and the
//! apps as another user. A plain HTTP client in pod A calls a Service's
//! virtual IP and reaches the server in pod B; the packets between the pods
//! are TLS (a capture on the bridge never sees the response); a pod outside
//! the mesh calling B directly is refused in strict mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_api::routes::*;
use weft_api::{RoutesTable, SpiffeId};
use weft_e2e::mount::{write_identity, write_routes};
use weft_e2e::netns::{self, Lan, Pod};
use weft_e2e::pki::{Ca, TRUST_DOMAIN, spiffe};

const APP_UID: u32 = 1000;
const PROXY_UID: u32 = weft_api::names::PROXY_UID;
const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const C_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const VIP: &str = "198.19.0.10";
const APP_PORT: u16 = 8080;

/// The binaries, where the unprivileged users can run them.
struct Bins {
    proxy: String,
    app: String,
}

fn bins(dir: &Path) -> Bins {
    let app = PathBuf::from(env!("CARGO_BIN_EXE_weft-e2e-app"));
    let bins = weft_e2e::mesh::Bins::in_dir(app.parent().unwrap(), dir);
    Bins {
        proxy: bins.proxy.display().to_string(),
        app: bins.app.display().to_string(),
    }
}

fn cart_service(identity: SpiffeId) -> Service {
    Service {
        name: "cart".into(),
        namespace: "shop".into(),
        cluster_ips: vec![VIP.parse().unwrap()],
        ports: vec![ServicePort {
            port: 80,
            name: Some("http".into()),
            protocol: Protocol::Detect,
            endpoints: vec![Endpoint {
                address: B_IP.into(),
                port: APP_PORT,
                identity: Some(identity),
                zone: None,
                ready: true,
            }],
        }],
        policy: Policy::default(),
    }
}

fn table(namespace: &str) -> RoutesTable {
    RoutesTable {
        version: 1,
        generation: 1,
        digest: None,
        trust_domain: TRUST_DOMAIN.into(),
        namespace: namespace.into(),
        defaults: Defaults::default(),
        services: vec![cart_service(spiffe("shop", "cart"))],
    }
}

/// Writes the pod's mounts and starts its proxy as UID 7102.
fn start_proxy(pod: &Pod, bins: &Bins, dir: &Path, ca: &Ca, ns: &str, sa: &str) {
    let root = dir.join(&pod.ns);
    write_identity(&root.join("identity"), &ca.leaf(ns, sa), &ca.pem());
    write_routes(&root.join("routes"), &table(ns));
    pod.run(&[&bins.proxy, "init"]);
    let env = [
        ("WEFT_ROUTES_DIR", root.join("routes").display().to_string()),
        (
            "WEFT_IDENTITY_DIR",
            root.join("identity").display().to_string(),
        ),
        ("WEFT_POD_NAMESPACE", ns.to_owned()),
        ("WEFT_SERVICE_ACCOUNT", sa.to_owned()),
        ("WEFT_POD_IP", pod.ip.to_string()),
        ("WEFT_LOG", "info".to_owned()),
    ];
    pod.spawn_as(
        PROXY_UID,
        &[&bins.proxy, "run"],
        &env,
        &root.join("proxy.log"),
    );
}

fn get(pod: &Pod, bins: &Bins, addr: SocketAddr, path: &str) -> Result<String, String> {
    let out = pod.try_run_as(APP_UID, &[&bins.app, "get", &addr.to_string(), path]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn admin(pod: &Pod, bins: &Bins, path: &str) -> Result<String, String> {
    get(pod, bins, SocketAddr::from(([127, 0, 0, 1], 7191)), path)
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn plain_client_reaches_a_service_vip_over_mesh_tls() {
    if let Some(why) = netns::unsupported() {
        eprintln!("skipping: needs root and network namespaces ({why})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bins = bins(dir.path());
    let ca = Ca::new("e2e root");
    let lan = Lan::new("icpt");
    let (a, b, c) = (lan.pod("a", A_IP), lan.pod("b", B_IP), lan.pod("c", C_IP));

    let token = format!("secret-answer-{}", std::process::id());
    let app_log = dir.path().join("app.log");
    let listen = format!("0.0.0.0:{APP_PORT}");
    b.spawn_as(
        APP_UID,
        &[&bins.app, "serve", "--listen", &listen, "--name", &token],
        &[],
        &app_log,
    );
    start_proxy(&a, &bins, dir.path(), &ca, "web", "frontend");
    start_proxy(&b, &bins, dir.path(), &ca, "shop", "cart");
    wait_until("both proxies ready", || {
        admin(&a, &bins, "/ready").is_ok() && admin(&b, &bins, "/ready").is_ok()
    });

    let capture = lan.capture("v-b", dir.path());

    // A plain client in pod A calls the virtual IP; iptables sends it through
    // both proxies and it gets the answer.
    let vip = SocketAddr::new(VIP.parse().unwrap(), 80);
    assert_eq!(get(&a, &bins, vip, "/").unwrap(), format!("{token}\n"));

    // A pod outside the mesh calling B directly in plaintext is refused.
    let outside = get(&c, &bins, SocketAddr::new(B_IP.into(), APP_PORT), "/");
    assert!(
        outside.is_err(),
        "strict mode must refuse plaintext: {outside:?}"
    );

    let wire = capture.finish();
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(token.as_bytes()),
        "the answer crossed the wire in plaintext"
    );
    assert!(
        contains(b"GET / HTTP/1.1"),
        "the capture missed pod C's plaintext attempt"
    );
    assert!(
        contains(&[0x16, 0x03, 0x01]),
        "no TLS handshake record on the wire"
    );
    assert!(
        contains(&[0x17, 0x03, 0x03]),
        "no TLS application data on the wire"
    );

    // Both proxies saw the other's verified identity; B counted the refusal.
    let a_metrics = admin(&a, &bins, "/metrics").unwrap();
    assert!(a_metrics.contains(
        r#"weft_connections_opened_total{direction="outbound",peer_identity="spiffe://cluster.local/ns/shop/sa/cart",tls="true"} 1"#
    ), "{a_metrics}");
    let b_metrics = admin(&b, &bins, "/metrics").unwrap();
    assert!(b_metrics.contains(
        r#"weft_connections_opened_total{direction="inbound",peer_identity="spiffe://cluster.local/ns/web/sa/frontend",tls="true"} 1"#
    ), "{b_metrics}");
    assert!(b_metrics.contains(
        r#"weft_requests_denied_total{direction="inbound",peer_identity="",reason="plaintext_refused"} 1"#
    ), "{b_metrics}");
}
