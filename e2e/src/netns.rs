//! Pods as Linux network namespaces on one host.
//!
//! A `Lan` is a private "hub" namespace holding a bridge, and one namespace
//! per pod joined to it by a veth pair, addressed from 198.18.0.0/16. Nothing
//! touches the host's own namespace, so parallel tests and the host's
//! network cannot interfere. Everything is torn down on drop (or by
//! [`Cleanup::run`], e.g. from a signal handler): processes first, then
//! namespaces. Every process is started in its own process group, so a
//! Ctrl-C in the terminal reaches only the program that owns the LAN, which
//! then stops them all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why this host cannot run namespace tests, or `None` when it can.
pub fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!("running as UID {uid}, not root"));
    }
    let probe = format!("weft-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            None
        }
        Ok(out) => Some(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run ip (iproute2): {e}")),
    }
}

/// Runs `cmd`, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Sends `signal` (`TERM`, `INT`, …) to `pid`, a process this program started.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The network namespaces whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Kills every process inside namespace `ns` and deletes it. Returns how
/// many processes were killed.
pub fn delete_namespace(ns: &str) -> usize {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    pids.len()
}

/// What a LAN has created, shared with its pods and cleanup handles.
#[derive(Default)]
struct Registry {
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    veths: AtomicUsize,
}

impl Registry {
    fn keep(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Kills the processes, then deletes the namespaces (with anything
    /// still running inside). Idempotent.
    fn teardown(&self) -> (usize, usize) {
        let mut children = std::mem::take(&mut *self.children.lock().unwrap());
        for child in &mut children {
            let _ = child.kill();
        }
        for child in &mut children {
            let _ = child.wait();
        }
        let namespaces = std::mem::take(&mut *self.namespaces.lock().unwrap());
        for ns in namespaces.iter().rev() {
            delete_namespace(ns);
        }
        (children.len(), namespaces.len())
    }
}

/// Tears a LAN down from elsewhere, e.g. a signal handler's thread.
#[derive(Clone)]
pub struct Cleanup(Arc<Registry>);

impl Cleanup {
    /// Kills every process and deletes every namespace of the LAN; returns
    /// `(processes, namespaces)` removed.
    pub fn run(&self) -> (usize, usize) {
        self.0.teardown()
    }
}

/// A bridge in its own namespace, and the pods attached to it.
pub struct Lan {
    prefix: String,
    hub: String,
    registry: Arc<Registry>,
}

/// One pod: a namespace with `eth0` on the LAN and loopback up. `veth` is
/// its peer on the bridge, in the hub (where packets can be captured).
#[derive(Clone)]
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub veth: String,
    registry: Arc<Registry>,
}

/// How to start a process in a pod.
pub struct Spawn<'a> {
    pub uid: Option<u32>,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, String)],
    /// Standard output (and standard error unless `stderr` is set).
    pub stdout: &'a Path,
    pub stderr: Option<&'a Path>,
}

impl Lan {
    /// A new LAN for a test; `tag` and the process ID keep names of
    /// concurrent tests apart.
    pub fn new(tag: &str) -> Self {
        Self::named(&format!("weft-{tag}-{}", std::process::id()))
    }

    /// A new LAN whose namespaces are all named `<prefix>-…`.
    pub fn named(prefix: &str) -> Self {
        let hub = format!("{prefix}-hub");
        let lan = Self {
            prefix: prefix.to_owned(),
            hub: hub.clone(),
            registry: Arc::default(),
        };
        lan.add_namespace(&hub);
        lan.hub(&["ip", "link", "add", "br0", "type", "bridge"]);
        lan.hub(&["ip", "link", "set", "br0", "up"]);
        lan.hub(&["ip", "link", "set", "lo", "up"]);
        lan
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hub namespace's name.
    pub fn hub_ns(&self) -> &str {
        &self.hub
    }

    /// A handle that tears this LAN down.
    pub fn cleanup(&self) -> Cleanup {
        Cleanup(self.registry.clone())
    }

    fn add_namespace(&self, name: &str) {
        run(Command::new("ip").args(["netns", "add", name]));
        self.registry
            .namespaces
            .lock()
            .unwrap()
            .push(name.to_owned());
    }

    fn hub(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.hub])
            .args(args))
    }

    /// Adds pod `name` at `ip`/16 with a default route on the LAN.
    pub fn pod(&self, name: &str, ip: Ipv4Addr) -> Pod {
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns);
        // Interface names have at most 15 bytes.
        let index = self.registry.veths.fetch_add(1, Ordering::Relaxed);
        let veth = Some(format!("v-{name}"))
            .filter(|v| v.len() <= 15)
            .unwrap_or_else(|| format!("v-{index}"));
        self.hub(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.hub(&["ip", "link", "set", &veth, "master", "br0", "up"]);
        let pod = Pod {
            ns,
            ip,
            veth,
            registry: self.registry.clone(),
        };
        pod.run(&["ip", "link", "set", "lo", "up"]);
        pod.run(&["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
        pod.run(&["ip", "link", "set", "eth0", "up"]);
        // Virtual service IPs (198.19.0.0/16) need a route to be connected
        // to at all; iptables then redirects them to the proxy.
        pod.run(&["ip", "route", "add", "default", "dev", "eth0"]);
        pod
    }

    /// Starts `args` in the hub namespace (e.g. a packet capture on
    /// `br0`, or the operator, which needs no network), logging to `log`.
    pub fn spawn_in_hub(&self, args: &[&str], env: &[(&str, String)], log: &Path) -> u32 {
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hub])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?}: {e}"));
        self.registry.keep(child)
    }

    /// Takes the child started as `pid` back, e.g. to wait for it.
    /// Starts a packet capture of TCP on `interface` (of the hub: `br0`, or
    /// a pod's `v-<pod>` veth) into `dir/wire.pcap`; returns once tcpdump
    /// is listening.
    pub fn capture(&self, interface: &str, dir: &Path) -> Capture<'_> {
        let pcap = dir.join("wire.pcap");
        let log = dir.join("tcpdump.log");
        let file = pcap.display().to_string();
        let args = [
            "tcpdump",
            "-i",
            interface,
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
            &file,
            "tcp",
        ];
        let pid = self.spawn_in_hub(&args, &[], &log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")) {
            assert!(
                std::time::Instant::now() < deadline,
                "tcpdump did not start (is it installed? apt-get install tcpdump): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Capture {
            lan: self,
            pid,
            pcap,
        }
    }

    pub fn take_child(&self, pid: u32) -> Option<Child> {
        take_child(&self.registry, pid)
    }

    /// Kills the child started as `pid` and waits for it.
    pub fn kill(&self, pid: u32) {
        if let Some(mut child) = self.take_child(pid) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn take_child(registry: &Registry, pid: u32) -> Option<Child> {
    let mut children = registry.children.lock().unwrap();
    let i = children.iter().position(|c| c.id() == pid)?;
    Some(children.remove(i))
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.registry.teardown();
    }
}

impl Pod {
    fn command(&self, uid: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        if let Some(uid) = uid {
            let id = uid.to_string();
            cmd.args([
                "setpriv",
                "--reuid",
                &id,
                "--regid",
                &id,
                "--clear-groups",
                "--",
            ]);
        }
        cmd.args(args);
        cmd
    }

    /// Runs `args` as root in the pod; panics on failure.
    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(None, args))
    }

    /// Runs `args` as `uid` (root when `None`) in the pod and returns what
    /// happened.
    pub fn try_run(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut cmd = self.command(uid, args);
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    }

    /// Runs `args` as `uid` in the pod and returns what happened.
    pub fn try_run_as(&self, uid: u32, args: &[&str]) -> Output {
        self.try_run(Some(uid), args)
    }

    /// Starts `args` as `uid` in the pod with `env`, logging to `log`.
    pub fn spawn_as(&self, uid: u32, args: &[&str], env: &[(&str, String)], log: &Path) -> u32 {
        self.spawn(&Spawn {
            uid: Some(uid),
            args,
            env,
            stdout: log,
            stderr: None,
        })
    }

    /// Starts a process in the pod; it lives until the LAN is torn down or
    /// it is killed.
    pub fn spawn(&self, spec: &Spawn<'_>) -> u32 {
        let stdout = std::fs::File::create(spec.stdout).unwrap();
        let stderr = match spec.stderr {
            Some(path) => std::fs::File::create(path).unwrap(),
            None => stdout.try_clone().unwrap(),
        };
        let mut cmd = self.command(spec.uid, spec.args);
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        self.registry.keep(child)
    }

    /// Takes the child started as `pid` back, e.g. to wait for it.
    pub fn take_child(&self, pid: u32) -> Option<Child> {
        take_child(&self.registry, pid)
    }
}

/// A running packet capture; `finish` stops it and returns what it saw.
pub struct Capture<'a> {
    lan: &'a Lan,
    pid: u32,
    pcap: std::path::PathBuf,
}

impl Capture<'_> {
    /// Stops tcpdump (it flushes on SIGINT) and returns the pcap file's bytes.
    pub fn finish(self) -> Vec<u8> {
        signal(self.pid, "INT");
        if let Some(mut child) = self.lan.take_child(self.pid) {
            let _ = child.wait();
        }
        std::fs::read(&self.pcap).unwrap()
    }
}
