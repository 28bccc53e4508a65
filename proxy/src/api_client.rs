//! A minimal HTTPS client for the Kubernetes API server: `GET` with the
//! pod's service-account token, over TLS verified (WebPKI, name included)
//! against the cluster CA, one HTTP/1.1 connection per request. Just enough
//! for the LIST and WATCH of one ConfigMap: the `kube` crate would cost the
//! sidecar more memory and binary size than the rest of the proxy.
//!
//! The token and the CA are read again for every connection: bound
//! service-account tokens rotate (the kubelet refreshes the file), and so
//! can the cluster CA.
//!
//! Also the two bounded readers the watch needs: a whole body up to a size,
//! and newline-delimited lines up to a length.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The service-account token the kubelet mounts in every pod.
pub const IN_CLUSTER_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA the kubelet mounts next to the token.
pub const IN_CLUSTER_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Where the API server is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct ApiServer {
    host: String,
    port: u16,
    /// `host[:port]` as given, for the `Host` header.
    authority: String,
    /// A path prefix (an API server behind a proxy), without trailing `/`.
    base_path: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the service-account token {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("reading the API server CA {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("connecting to the API server {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no response from the API server within {0:?}")]
    Timeout(Duration),
    #[error("talking HTTP to the API server: {0}")]
    Http(String),
}

/// A response whose body is still to be read; the connection lives as long
/// as this value.
pub struct Response {
    pub status: StatusCode,
    pub body: Incoming,
    _connection: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ApiServer {
    /// `url` is `https://host[:port][/prefix]`.
    pub fn new(url: &str, token_file: PathBuf, ca_file: PathBuf) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("API server URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("API server URL {url:?}: only https is supported"));
        }
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return Err(format!("API server URL {url:?} has no host"));
        };
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            token_file,
            ca_file,
        })
    }

    /// `https://authority/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.authority, self.base_path)
    }

    /// Sends `GET path_and_query`; `timeout` bounds everything up to the
    /// response head (the body is the caller's to bound).
    pub async fn get(
        &self,
        path_and_query: &str,
        provider: &Arc<CryptoProvider>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        tokio::time::timeout(timeout, self.get_now(path_and_query, provider))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn get_now(
        &self,
        path_and_query: &str,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Response, ClientError> {
        let token = self.token().await?;
        let tls = self.tls_config(provider).await?;
        let request = Request::get(format!("{}{path_and_query}", self.base_path))
            .header(HOST, &self.authority)
            .header(AUTHORIZATION, token)
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("weft-proxy/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let io = self.connect(tls).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let connection = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API server connection ended");
            }
        }));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Response {
            status: response.status(),
            body: response.into_body(),
            _connection: connection,
        })
    }

    async fn connect(
        &self,
        tls: ClientConfig,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let failed = |reason: String| ClientError::Connect {
            addr: self.authority.clone(),
            reason,
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|e| failed(e.to_string()))?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| failed(e.to_string()))?;
        TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("TLS: {e}")))
    }

    /// `Bearer <token>`, read from the file now.
    async fn token(&self) -> Result<HeaderValue, ClientError> {
        let failed = |reason: String| ClientError::Token {
            path: self.token_file.display().to_string(),
            reason,
        };
        let raw = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(failed("the file is empty".into()));
        }
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| failed("the token has characters a header cannot carry".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// TLS to the API server: the cluster CA from the file now, names
    /// checked, HTTP/1.1.
    async fn tls_config(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ClientConfig, ClientError> {
        let failed = |reason: String| ClientError::Ca {
            path: self.ca_file.display().to_string(),
            reason,
        };
        let pem = tokio::fs::read(&self.ca_file)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| failed(e.to_string()))?;
            roots.add(cert).map_err(|e| failed(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(failed("no certificate in the file".into()));
        }
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The whole body, refusing more than `limit` bytes or taking longer than
/// `timeout`.
pub async fn read_body(body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, String> {
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(format!(
            "reading the response body (limit {limit} bytes): {e}"
        )),
        Err(_) => Err(format!("the response body took longer than {timeout:?}")),
    }
}

/// Splits a byte stream into lines (without the `\n`), none longer than
/// `max` bytes: a single watch event must not grow without bound.
pub struct Lines {
    partial: Vec<u8>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Self {
            partial: Vec::new(),
            max,
        }
    }

    /// Adds `chunk`; returns the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut lines = Vec::new();
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            let (text, complete) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            if self.partial.len() + text.len() > self.max {
                return Err(format!("a watch event is longer than {} bytes", self.max));
            }
            self.partial.extend_from_slice(text);
            if complete {
                lines.push(std::mem::take(&mut self.partial));
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_bounded() {
        let mut lines = Lines::new(8);
        assert_eq!(lines.push(b"ab").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(lines.push(b"c\nd\n\nef").unwrap(), [&b"abc"[..], b"d", b""]);
        assert_eq!(lines.push(b"gh\n").unwrap(), [b"efgh"]);
        assert_eq!(lines.push(b"12345678\n").unwrap(), [b"12345678"]);
        assert!(lines.push(b"1234").is_ok());
        assert!(
            lines
                .push(b"56789")
                .unwrap_err()
                .contains("longer than 8 bytes")
        );
    }

    #[test]
    fn url_parts() {
        let s = |url: &str| ApiServer::new(url, "t".into(), "c".into());
        let a = s("https://10.96.0.1").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.base_path.as_str()),
            ("10.96.0.1", 443, "")
        );
        let b = s("https://[fd00::1]:6443/k8s/").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("fd00::1", 6443));
        assert_eq!(b.authority, "[fd00::1]:6443");
        assert_eq!(b.url(), "https://[fd00::1]:6443/k8s");
        assert!(s("http://10.0.0.1").unwrap_err().contains("only https"));
        assert!(s("not a url").is_err());
    }
}
