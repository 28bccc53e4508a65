//! Pods as Linux network namespaces on one host.
//!
//! A `Lan` is a private "hub" namespace holding a bridge, and one namespace
//! per pod joined to it by a veth pair, addressed from 198.18.0.0/16. Nothing
//! touches the host's own namespace, so parallel tests and the host's
//! network cannot interfere. Everything is torn down on drop: processes
//! first, then namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::Mutex;

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

/// A bridge in its own namespace, and the pods attached to it.
pub struct Lan {
    prefix: String,
    hub: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
}

/// One pod: a namespace with `eth0` on the LAN and loopback up.
pub struct Pod<'a> {
    lan: &'a Lan,
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Lan {
    /// A new LAN; `tag` keeps names of concurrent tests apart.
    pub fn new(tag: &str) -> Self {
        let prefix = format!("weft-{tag}-{}", std::process::id());
        let hub = format!("{prefix}-hub");
        let lan = Self {
            prefix,
            hub: hub.clone(),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        };
        lan.add_namespace(&hub);
        lan.hub(&["ip", "link", "add", "br0", "type", "bridge"]);
        lan.hub(&["ip", "link", "set", "br0", "up"]);
        lan.hub(&["ip", "link", "set", "lo", "up"]);
        lan
    }

    fn add_namespace(&self, name: &str) {
        run(Command::new("ip").args(["netns", "add", name]));
        self.namespaces.lock().unwrap().push(name.to_owned());
    }

    fn hub(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.hub])
            .args(args))
    }

    /// Adds pod `name` at `ip`/16 with a default route on the LAN.
    pub fn pod(&self, name: &str, ip: Ipv4Addr) -> Pod<'_> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns);
        let veth = format!("v-{name}");
        self.hub(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.hub(&["ip", "link", "set", &veth, "master", "br0", "up"]);
        let pod = Pod { lan: self, ns, ip };
        pod.run(&["ip", "link", "set", "lo", "up"]);
        pod.run(&["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
        pod.run(&["ip", "link", "set", "eth0", "up"]);
        // Virtual service IPs (198.19.0.0/16) need a route to be connected
        // to at all; iptables then redirects them to the proxy.
        pod.run(&["ip", "route", "add", "default", "dev", "eth0"]);
        pod
    }

    /// Starts `args` in the hub namespace (e.g. a packet capture on
    /// `br0`), logging to `log`.
    pub fn spawn_in_hub(&self, args: &[&str], log: &Path) -> u32 {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hub])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?}: {e}"));
        self.keep(child)
    }

    fn keep(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Takes the child started as `pid` back, e.g. to wait for it.
    pub fn take_child(&self, pid: u32) -> Option<Child> {
        let mut children = self.children.lock().unwrap();
        let i = children.iter().position(|c| c.id() == pid)?;
        Some(children.remove(i))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for child in self.children.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.lock().unwrap().iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Pod<'_> {
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

    /// Runs `args` as `uid` in the pod and returns what happened.
    pub fn try_run_as(&self, uid: u32, args: &[&str]) -> Output {
        let mut cmd = self.command(Some(uid), args);
        cmd.output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    }

    /// Starts `args` as `uid` in the pod with `env`, logging to `log`.
    pub fn spawn_as(&self, uid: u32, args: &[&str], env: &[(&str, String)], log: &Path) -> u32 {
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = self.command(Some(uid), args);
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        self.lan.keep(child)
    }
}
