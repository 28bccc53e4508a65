//! Well-known names shared by the operator and the proxy: ports, the proxy's
//! user, mount paths, file names, environment variables and object names.
//!
//! Both sides import these constants so a rename is a compile error, not an
//! outage.

/// Where the outbound proxy listens; the pod's outbound TCP is redirected here.
pub const OUTBOUND_PORT: u16 = 7140;
/// Where the inbound proxy listens; the pod's inbound TCP is redirected here.
pub const INBOUND_PORT: u16 = 7143;
/// The admin server: metrics, readiness, liveness, config, shutdown.
pub const ADMIN_PORT: u16 = 7191;
/// The UID the proxy runs as; its own traffic is never redirected.
pub const PROXY_UID: u32 = 7102;

/// The ALPN protocols the proxies offer each other: they tell mesh TLS
/// apart from other TLS arriving at a pod (an HTTPS probe, a TLS client
/// outside the mesh), which the inbound proxy passes through untouched, and
/// say what the connection carries, so the server side need not sniff it.
/// A client offers exactly one.
pub const MESH_ALPN: &[u8] = b"weft/1";
/// Mesh TLS carrying HTTP/1.1 requests.
pub const MESH_ALPN_HTTP1: &[u8] = b"weft/h1";
/// Mesh TLS carrying HTTP/2 (and so gRPC) requests.
pub const MESH_ALPN_HTTP2: &[u8] = b"weft/h2";
/// Every mesh ALPN protocol; `MESH_ALPN` (opaque bytes) first.
pub const MESH_ALPNS: [&[u8]; 3] = [MESH_ALPN, MESH_ALPN_HTTP1, MESH_ALPN_HTTP2];

/// Ports whose traffic is never inspected unless a Service says otherwise:
/// server-first protocols (SMTP, MySQL) and protocols that are never HTTP.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// Where the routing table is mounted in the pod.
pub const ROUTES_DIR: &str = "/var/run/weft/routes";
/// Where the workload identity is mounted in the pod.
pub const IDENTITY_DIR: &str = "/var/run/weft/identity";

/// The routing table's key in the `weft-routes` ConfigMap and its file name.
pub const ROUTES_FILE: &str = "routes.json";
/// The routing table gzip-compressed: a `binaryData` key of the `weft-routes`
/// ConfigMap, used instead of [`ROUTES_FILE`] when the JSON is too large for
/// the ConfigMap to stay under the API server's 1 MiB object limit. The
/// kubelet mounts it as a file of this name.
pub const ROUTES_FILE_GZ: &str = "routes.json.gz";
/// The largest routing table (JSON bytes, after decompression) a proxy
/// accepts; a bigger one is refused, so a gzip bomb cannot exhaust the
/// sidecar's memory. The operator must never write a bigger table.
pub const ROUTES_MAX_JSON_BYTES: usize = 64 * 1024 * 1024;
/// The workload certificate, leaf first then chain (PEM).
pub const CERT_FILE: &str = "tls.crt";
/// The workload private key (PKCS#8 PEM).
pub const KEY_FILE: &str = "tls.key";
/// The trust bundle: one or more root certificates (PEM).
pub const TRUST_BUNDLE_FILE: &str = "ca.crt";

/// The kubelet's pointer to the current snapshot of a mounted volume.
pub const KUBELET_DATA_LINK: &str = "..data";

/// The ConfigMap holding each meshed namespace's routing table.
pub const ROUTES_CONFIGMAP: &str = "weft-routes";
/// Prefix of the Secret holding a service account's identity.
pub const IDENTITY_SECRET_PREFIX: &str = "weft-identity-";

/// Environment variables the proxy reads (set by injection from the downward API).
pub mod env {
    pub const POD_NAME: &str = "WEFT_POD_NAME";
    pub const POD_NAMESPACE: &str = "WEFT_POD_NAMESPACE";
    pub const POD_IP: &str = "WEFT_POD_IP";
    pub const SERVICE_ACCOUNT: &str = "WEFT_SERVICE_ACCOUNT";
    pub const ROUTES_DIR: &str = "WEFT_ROUTES_DIR";
    pub const IDENTITY_DIR: &str = "WEFT_IDENTITY_DIR";
    pub const LOG: &str = "WEFT_LOG";
    pub const LOG_FORMAT: &str = "WEFT_LOG_FORMAT";
    /// Read by glibc, not by the proxy: see [`PROXY_GLIBC_TUNABLES`].
    pub const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES";

    /// glibc's malloc settings the proxy runs with, set by injection (and
    /// by the demo and the benchmark, which run the proxy as injected).
    /// The per-thread cache keeps 128 free chunks of each size instead of
    /// 7: with hundreds of streams in flight a proxy allocates and frees
    /// in bursts that emptied the default cache, sending ~10 allocations a
    /// request to malloc's slow path. −3% instructions per HTTP/2 request
    /// for ~0.7 MiB more RSS under load; larger caches cost more memory
    /// (1,024: +5 MiB) than the 20 MiB budget allows (`bench/README.md`).
    pub const PROXY_GLIBC_TUNABLES: &str = "glibc.malloc.tcache_count=128";
}

/// The name of the Secret that holds `service_account`'s identity.
pub fn identity_secret_name(service_account: &str) -> String {
    format!("{IDENTITY_SECRET_PREFIX}{service_account}")
}

/// Annotations and labels users and the operator put on Kubernetes objects.
pub mod annotations {
    /// `enabled` on a Namespace or Pod meshes it; `disabled` on a Pod opts out.
    pub const INJECT: &str = "weft.dev/inject";
    /// Set by injection to the proxy version; a pod with it has the sidecar.
    pub const INJECTED: &str = "weft.dev/injected";
    /// Comma-separated ports whose traffic is never inspected (on a Service or Pod).
    pub const OPAQUE_PORTS: &str = "weft.dev/opaque-ports";
    /// The label EndpointSlices carry naming their Service.
    pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
}
