//! What the webhook injects: the `InjectConfig` from flags (each with an
//! environment fallback, so the Helm chart can set them), and whether the
//! proxy runs as a native sidecar.
//!
//! `--native-sidecar auto` (the default) asks the API server its version
//! once at start: native sidecars (an init container with
//! `restartPolicy: Always`) are on by default from Kubernetes 1.29. If the
//! version cannot be read, the classic sidecar is used: it works on every
//! version, while a native sidecar on a cluster without the feature would
//! be an init container that never exits, and the pod would never start.

use clap::{Args, ValueEnum};
use k8s_openapi::apimachinery::pkg::version::Info;

use crate::inject::{InjectConfig, Resources, is_quantity};

/// The first minor version of Kubernetes 1 with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecar {
    /// Native from Kubernetes 1.29 on (asked of the API server at start).
    Auto,
    True,
    False,
}

/// Flags for the injected containers. An empty resource value leaves that
/// request or limit unset.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// Inject the proxy as a native sidecar: `auto`, `true` or `false`.
    #[arg(long, env = "WEFT_NATIVE_SIDECAR", value_enum, default_value = "auto")]
    pub native_sidecar: NativeSidecar,
    /// The proxy image [default: weft-proxy:<operator version>].
    #[arg(long, env = "WEFT_PROXY_IMAGE")]
    pub proxy_image: Option<String>,
    /// The init container's image (iptables) [default: weft-init:<operator version>].
    #[arg(long, env = "WEFT_INIT_IMAGE")]
    pub init_image: Option<String>,
    /// The proxy's log filter (`WEFT_LOG` of the proxy) [default: info].
    #[arg(long, env = "WEFT_PROXY_LOG_LEVEL")]
    pub proxy_log_level: Option<String>,
    /// [default: 10m]
    #[arg(long, env = "WEFT_PROXY_CPU_REQUEST")]
    pub proxy_cpu_request: Option<String>,
    /// [default: none]
    #[arg(long, env = "WEFT_PROXY_CPU_LIMIT")]
    pub proxy_cpu_limit: Option<String>,
    /// [default: 20Mi]
    #[arg(long, env = "WEFT_PROXY_MEMORY_REQUEST")]
    pub proxy_memory_request: Option<String>,
    /// [default: 128Mi]
    #[arg(long, env = "WEFT_PROXY_MEMORY_LIMIT")]
    pub proxy_memory_limit: Option<String>,
}

/// A sidecar flag that cannot be used; names the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("--{flag}: {value:?} is not a Kubernetes quantity (like 100m, 1, 64Mi)")]
    Quantity { flag: &'static str, value: String },
    #[error("--proxy-log-level: {value:?} is not a log filter: {reason}")]
    LogLevel { value: String, reason: String },
    #[error("--{flag}: must not be empty")]
    Empty { flag: &'static str },
}

impl SidecarArgs {
    /// The injection settings, `native_sidecar` set to `native` (the
    /// resolved mode). Unset flags keep `InjectConfig::default()`.
    pub fn inject_config(&self, native: bool) -> Result<InjectConfig, SidecarError> {
        let defaults = InjectConfig::default();
        let image = |flag: &'static str, value: &Option<String>, default: String| match value {
            Some(v) if v.trim().is_empty() => Err(SidecarError::Empty { flag }),
            Some(v) => Ok(v.clone()),
            None => Ok(default),
        };
        let quantity =
            |flag: &'static str, value: &Option<String>, default: Option<String>| match value
                .as_deref()
            {
                None => Ok(default),
                Some("") => Ok(None),
                Some(v) if is_quantity(v) => Ok(Some(v.to_owned())),
                Some(v) => Err(SidecarError::Quantity {
                    flag,
                    value: v.to_owned(),
                }),
            };
        let log_level = match &self.proxy_log_level {
            None => defaults.log_level.clone(),
            Some(v) => tracing_subscriber::EnvFilter::try_new(v)
                .map(|_| v.clone())
                .map_err(|e| SidecarError::LogLevel {
                    value: v.clone(),
                    reason: e.to_string(),
                })?,
        };
        let d = defaults.resources.clone();
        Ok(InjectConfig {
            proxy_image: image("proxy-image", &self.proxy_image, defaults.proxy_image)?,
            init_image: image("init-image", &self.init_image, defaults.init_image)?,
            version: defaults.version,
            native_sidecar: native,
            resources: Resources {
                cpu_request: quantity("proxy-cpu-request", &self.proxy_cpu_request, d.cpu_request)?,
                cpu_limit: quantity("proxy-cpu-limit", &self.proxy_cpu_limit, d.cpu_limit)?,
                memory_request: quantity(
                    "proxy-memory-request",
                    &self.proxy_memory_request,
                    d.memory_request,
                )?,
                memory_limit: quantity(
                    "proxy-memory-limit",
                    &self.proxy_memory_limit,
                    d.memory_limit,
                )?,
            },
            log_level,
        })
    }
}

/// Whether the API server of `info` runs native sidecars by default;
/// `None` when its version cannot be read. Reads `major`/`minor` (a minor
/// may carry a suffix, `29+` on some distributions), else `gitVersion`
/// (`v1.29.3-eks-…`).
pub fn supports_native_sidecars(info: &Info) -> Option<bool> {
    fn number(s: &str) -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
    let (major, minor) = match (number(&info.major), number(&info.minor)) {
        (Some(major), Some(minor)) => (major, minor),
        _ => {
            let mut parts = info.git_version.strip_prefix('v')?.split('.');
            (number(parts.next()?)?, number(parts.next()?)?)
        }
    };
    Some(major > 1 || (major == 1 && minor >= NATIVE_SIDECAR_MINOR))
}

/// Resolves `mode`: `auto` asks the API server once. Logs the choice.
pub async fn resolve(mode: NativeSidecar, client: &kube::Client) -> bool {
    let native = match mode {
        NativeSidecar::True => true,
        NativeSidecar::False => false,
        NativeSidecar::Auto => match client.apiserver_version().await {
            Ok(info) => match supports_native_sidecars(&info) {
                Some(native) => {
                    tracing::info!(
                        version = %info.git_version,
                        native,
                        "native sidecars chosen from the API server version"
                    );
                    native
                }
                None => {
                    tracing::warn!(version = ?info, "unreadable API server version; injecting the classic sidecar");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API server version; injecting the classic sidecar");
                false
            }
        },
    };
    tracing::info!(
        native_sidecar = native,
        mode = ?mode,
        "the proxy is injected as a {}",
        if native { "native sidecar (init container, restartPolicy Always)" } else { "classic sidecar (first container)" }
    );
    native
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Default::default()
        }
    }

    #[test]
    fn native_sidecars_from_1_29() {
        for (major, minor, git, want) in [
            ("1", "28", "v1.28.7", Some(false)),
            ("1", "29", "v1.29.0", Some(true)),
            ("1", "33", "v1.33.1", Some(true)),
            ("1", "29+", "v1.29.3-eks-1234", Some(true)),
            ("1", "28+", "v1.28.9-gke.100", Some(false)),
            ("", "", "v1.30.2-k3s1", Some(true)),
            ("", "", "v1.27.0", Some(false)),
            ("2", "0", "v2.0.0", Some(true)),
            ("", "", "unknown", None),
            ("", "", "", None),
        ] {
            assert_eq!(
                supports_native_sidecars(&info(major, minor, git)),
                want,
                "{major} {minor} {git}"
            );
        }
    }
}
