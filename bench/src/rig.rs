//! The processes under test, on 127.0.0.1: the backend, the Weft proxy pair
//! and the HAProxy pair, each started from release binaries with its
//! certificates, and killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use weft_api::names::env;
use weft_api::routes::{
    Defaults, Endpoint, InboundPolicy, MtlsMode, Policy, Protocol, RoutesTable, Service,
    ServicePort,
};
use weft_operator::ca::{Authority, IssuedIdentity, TrustAnchor};

use crate::load::Proto;

const TRUST_DOMAIN: &str = "cluster.local";
const NAMESPACE: &str = "bench";
/// The virtual address the client "calls"; the client proxy is told every
/// connection was going there (no interception on loopback).
const VIP: &str = "198.19.0.10:80";
/// The name HAProxy's client side checks on the server side's certificate.
const SERVER_NAME: &str = "server.bench";
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Where the release binaries are, and how the proxies are started.
#[derive(Debug, Clone)]
pub struct Bins {
    pub proxy: PathBuf,
    pub app: PathBuf,
    pub haproxy: PathBuf,
    /// Proxies (not the backend) run under `valgrind --tool=callgrind`, to
    /// count their instructions (see `instructions`), with their control
    /// FIFOs under this prefix: in the run's directory, they go with it,
    /// and `callgrind_control` sees only these processes.
    pub callgrind: Option<PathBuf>,
}

impl Bins {
    /// A command starting the proxy `program`, under callgrind if asked.
    fn proxy_command(&self, program: &Path) -> Command {
        let Some(vgdb) = &self.callgrind else {
            return Command::new(program);
        };
        let mut command = Command::new("valgrind");
        command
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(format!("--vgdb-prefix={}", vgdb.display()))
            .arg(program);
        command
    }

    /// How long a proxy may take to start: valgrind makes a start (and the
    /// TLS setup in it) some fifty times slower.
    fn startup(&self) -> Duration {
        if self.callgrind.is_some() {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(20)
        }
    }
}

/// A child process, killed (and reaped) when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, command: &mut Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {log:?}"))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!(
                "{} exited: {status}; its log ends:\n{}",
                self.name,
                self.log_tail()
            ),
            None => Ok(()),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `addr` accepts connections, failing early if the
    /// process exits.
    fn wait_listening(&mut self, addr: SocketAddr, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            self.check_running()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not listen on {addr} within {within:?}; its log ends:\n{}",
            self.name,
            self.log_tail()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// `GET path` over HTTP/1.1; the status code.
pub fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{addr}{path}: not an HTTP answer: {answer:?}"))
}

fn wait_ready(admin: SocketAddr, what: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if http_status(admin, "/ready").ok() == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} was not ready within {within:?} (GET {admin}/ready)")
}

/// The backend every path ends at.
pub fn backend(bins: &Bins, dir: &Path) -> Result<(Proc, SocketAddr)> {
    let addr = free_port()?;
    let mut command = Command::new(&bins.app);
    command.args(["serve", "--listen", &addr.to_string(), "--name", "bench"]);
    let mut proc = Proc::spawn("backend", &mut command, &dir.join("backend.log"))?;
    proc.wait_listening(addr, bins.startup())?;
    Ok((proc, addr))
}

/// Certificates from the operator's certificate authority.
pub struct Pki {
    authority: Authority,
}

impl Pki {
    pub fn new() -> Result<Self> {
        let anchor = TrustAnchor::generate(SystemTime::now(), LIFETIME)?;
        Ok(Self {
            authority: Authority::new(anchor),
        })
    }

    fn identity(&self, service_account: &str) -> Result<IssuedIdentity> {
        let now = SystemTime::now();
        Ok(self
            .authority
            .issue(TRUST_DOMAIN, NAMESPACE, service_account, now, LIFETIME)?)
    }
}

/// A running pair of proxies: the client-side entry and their processes.
pub struct Pair {
    /// Where the load generator sends requests.
    pub entry: SocketAddr,
    pub client: Proc,
    pub server: Proc,
    /// The Weft pair's mounted files, rewritten to reload it under load.
    pub files: Option<WeftFiles>,
}

/// Where the Weft pair's files are, and what its client's table holds.
#[derive(Clone)]
pub struct WeftFiles {
    client: PathBuf,
    server: PathBuf,
    services: Vec<Service>,
}

impl WeftFiles {
    /// Reloads both proxies as the operator and the kubelet would: a new
    /// certificate for each (same identity) and a new generation of the
    /// client's routing table (same routes), each written with the
    /// kubelet's `..data` swap.
    pub fn reload(&self, pki: &Pki, generation: u64) -> Result<()> {
        for (dir, service_account) in [(&self.client, "client"), (&self.server, "server")] {
            write_identity(pki, dir, service_account)?;
        }
        let mut table = routes(&self.services);
        table.generation = generation;
        weft_operator::kubelet::write_atomic(
            &self.client.join("routes"),
            &[("routes.json", &serde_json::to_vec(&table)?)],
        )?;
        Ok(())
    }
}

fn write_identity(pki: &Pki, dir: &Path, service_account: &str) -> Result<()> {
    let identity = pki.identity(service_account)?;
    let files = identity.secret_data().map(|(k, v)| (k, v.as_bytes()));
    weft_operator::kubelet::write_atomic(&dir.join("identity"), &files)?;
    Ok(())
}

impl Pair {
    pub fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.server.pid()]
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.client.check_running()?;
        self.server.check_running()
    }
}

/// The Weft pair: client → outbound proxy → mesh TLS → inbound proxy → backend.
pub fn weft(bins: &Bins, pki: &Pki, dir: &Path, backend: SocketAddr) -> Result<Pair> {
    let server_in = free_port()?;
    let server = weft_proxy(bins, pki, &dir.join("weft-server"), "server", &[], backend)?;
    let server = server.with_inbound(server_in)?;
    let vip: SocketAddr = VIP.parse()?;
    let services = [vip_service(vip, server_in)];
    let entry = free_port()?;
    let client = weft_proxy(
        bins,
        pki,
        &dir.join("weft-client"),
        "client",
        &services,
        vip,
    )?;
    let client = client.with_outbound(entry)?;
    Ok(Pair {
        entry,
        client,
        server,
        files: Some(WeftFiles {
            client: dir.join("weft-client"),
            server: dir.join("weft-server"),
            services: services.to_vec(),
        }),
    })
}

/// One Weft proxy's files and flags, before it starts.
struct WeftProxy {
    command: Command,
    dir: PathBuf,
    admin: SocketAddr,
    startup: Duration,
}

fn weft_proxy(
    bins: &Bins,
    pki: &Pki,
    dir: &Path,
    service_account: &str,
    services: &[Service],
    original_dst: SocketAddr,
) -> Result<WeftProxy> {
    write_identity(pki, dir, service_account)?;
    let table = routes(services);
    weft_operator::kubelet::write_atomic(
        &dir.join("routes"),
        &[("routes.json", &serde_json::to_vec(&table)?)],
    )?;
    let admin = free_port()?;
    let mut command = bins.proxy_command(&bins.proxy);
    command
        .arg("run")
        .arg("--routes-dir")
        .arg(dir.join("routes"))
        .arg("--identity-dir")
        .arg(dir.join("identity"))
        .args(["--admin-addr", &admin.to_string()])
        .args(["--original-dst", &original_dst.to_string()])
        .args(["--api-watch", "off", "--log", "warn"])
        .env(env::POD_NAMESPACE, NAMESPACE)
        .env(env::SERVICE_ACCOUNT, service_account)
        // As injected: the proxy's malloc settings are part of it.
        .env(env::GLIBC_TUNABLES, env::PROXY_GLIBC_TUNABLES);
    Ok(WeftProxy {
        command,
        dir: dir.to_path_buf(),
        admin,
        startup: bins.startup(),
    })
}

impl WeftProxy {
    fn with_inbound(mut self, inbound: SocketAddr) -> Result<Proc> {
        let outbound = free_port()?;
        self.command
            .args(["--inbound-addr", &inbound.to_string()])
            .args(["--outbound-addr", &outbound.to_string()]);
        self.start("the server-side weft-proxy")
    }

    fn with_outbound(mut self, outbound: SocketAddr) -> Result<Proc> {
        let inbound = free_port()?;
        self.command
            .args(["--inbound-addr", &inbound.to_string()])
            .args(["--outbound-addr", &outbound.to_string()]);
        self.start("the client-side weft-proxy")
    }

    fn start(mut self, what: &str) -> Result<Proc> {
        let proc = Proc::spawn(what, &mut self.command, &self.dir.join("proxy.log"))?;
        wait_ready(self.admin, what, self.startup)?;
        Ok(proc)
    }
}

/// The routing table of namespace `bench`: `services`, inbound strict mTLS.
fn routes(services: &[Service]) -> RoutesTable {
    RoutesTable {
        version: 1,
        generation: 1,
        digest: None,
        trust_domain: TRUST_DOMAIN.into(),
        namespace: NAMESPACE.into(),
        defaults: Defaults {
            inbound: InboundPolicy {
                mtls: MtlsMode::Strict,
                ..InboundPolicy::default()
            },
        },
        services: services.to_vec(),
    }
}

/// Service `bench/server` at `vip`, its one endpoint the server proxy.
fn vip_service(vip: SocketAddr, endpoint: SocketAddr) -> Service {
    Service {
        name: "server".into(),
        namespace: NAMESPACE.into(),
        cluster_ips: vec![vip.ip()],
        ports: vec![ServicePort {
            port: vip.port(),
            name: Some("http".into()),
            protocol: Protocol::Detect,
            endpoints: vec![Endpoint {
                address: endpoint.ip(),
                port: endpoint.port(),
                identity: weft_api::SpiffeId::workload(TRUST_DOMAIN, NAMESPACE, "server").ok(),
                zone: None,
                ready: true,
            }],
        }],
        policy: Policy::default(),
    }
}

/// The HAProxy pair, the shape of the Weft pair: client-side HAProxy →
/// TLS 1.3 with client certificates → server-side HAProxy → backend.
pub fn haproxy(
    bins: &Bins,
    pki: &Pki,
    dir: &Path,
    backend: SocketAddr,
    proto: Proto,
) -> Result<Pair> {
    let dir = dir.join(format!("haproxy-{}", proto.name()));
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.authority.bundle_pem())?;
    let client_pem = dir.join("client.pem");
    let client = pki.identity("client")?;
    std::fs::write(
        &client_pem,
        format!("{}{}", client.cert_pem, client.key_pem),
    )?;
    let server_pem = dir.join("server.pem");
    let server =
        pki.authority
            .issue_server(&[SERVER_NAME.to_owned()], SystemTime::now(), LIFETIME)?;
    std::fs::write(
        &server_pem,
        format!("{}{}", server.cert_pem, server.key_pem),
    )?;

    let (entry, middle) = (free_port()?, free_port()?);
    let h2 = proto == Proto::Http2;
    let server_cfg = crate::haproxy::server_side(middle, &server_pem, &ca, backend, h2);
    let client_cfg = crate::haproxy::client_side(entry, &client_pem, &ca, middle, SERVER_NAME, h2);
    let server = start_haproxy(bins, &dir, "server", &server_cfg, middle)?;
    let client = start_haproxy(bins, &dir, "client", &client_cfg, entry)?;
    Ok(Pair {
        entry,
        client,
        server,
        files: None,
    })
}

fn start_haproxy(
    bins: &Bins,
    dir: &Path,
    side: &str,
    config: &str,
    listen: SocketAddr,
) -> Result<Proc> {
    let path = dir.join(format!("{side}.cfg"));
    std::fs::write(&path, config)?;
    let mut command = bins.proxy_command(&bins.haproxy);
    command.arg("-db").arg("-f").arg(&path);
    let what = format!("the {side}-side haproxy");
    let mut proc = Proc::spawn(&what, &mut command, &dir.join(format!("{side}.log")))?;
    proc.wait_listening(listen, bins.startup())?;
    Ok(proc)
}
