//! TLS with rustls: the server side of a `tls://` listener and the client
//! side of a guest connection that asks for it. The guest only ever sees
//! plaintext; the host holds the keys.
//!
//! - [`ServerTls`]: a service's certificate, key, client CAs and ALPN list,
//!   read from files when the service loads (so a reload reads them again).
//! - [`ServerTls::handshake`]: one accepted connection's handshake, before
//!   any instance hears of it, bounded in time (rustls bounds its size).
//! - [`ClientTls`]: the roots a guest's TLS connections are verified
//!   against (`--tls-ca`, or the system's), and the handshake to the host
//!   name the grant was checked for.
//! - [`info_of`]: what the guest may learn of a connection's TLS.
//!
//! After the handshake, `net::tcp` drives the `rustls::Connection` on the
//! same socket readiness as a plain connection.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::admission::PerAddress;
use super::error::{CONNECT_FAILED, SocketError};
use crate::metrics::HandshakeFailure;

/// How long a client has for its handshake by default, in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// How many handshakes one service runs at once by default (over all its
/// listeners and workers); more clients wait in the listen backlog, as at
/// `--max-connections`.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;

/// How many handshakes one client address (an IPv4 address or an IPv6
/// /64) may have under way at once by default; a further one is closed
/// at once, so that one client cannot hold every place of
/// [`DEFAULT_MAX_HANDSHAKES`].
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 64;

/// The longest ALPN protocol name (RFC 7301 allows 255 bytes).
const MAX_ALPN: usize = 255;

/// A service's TLS settings as the operator gave them (`--tls-cert`,
/// `--tls-key`, `--tls-client-ca`, `--tls-alpn`, `--tls-ca`,
/// `--tls-handshake-timeout-ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM: the certificate chain, the service's own first.
    pub cert: Option<PathBuf>,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM: the CAs a client certificate must chain to; with it, a client
    /// without a valid certificate is refused in the handshake.
    pub client_ca: Option<PathBuf>,
    /// ALPN protocols offered, in order of preference (`h2`, `http/1.1`...).
    pub alpn: Vec<String>,
    /// PEM: the CAs a guest's TLS connections are verified against, instead
    /// of the system's.
    pub ca: Option<PathBuf>,
    /// How long a client has to finish its handshake.
    pub handshake_timeout: Duration,
    /// How many handshakes the service runs at once; further clients wait
    /// in the listen backlog.
    pub max_handshakes: usize,
    /// How many of them one client address may have; a further one is
    /// closed at once.
    pub max_handshakes_per_ip: usize,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert: None,
            key: None,
            client_ca: None,
            alpn: Vec::new(),
            ca: None,
            handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
        }
    }
}

/// A `tls://` listener's side of the handshake: the server configuration
/// made from [`TlsSettings`], shared by every connection of one version of
/// a service.
pub struct ServerTls {
    /// Swapped whole by [`ServerTls::renew`]; read once per handshake.
    acceptor: std::sync::RwLock<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
    /// A place per handshake under way (`max_handshakes`).
    pub handshakes: Arc<Semaphore>,
    /// A place per handshake under way, per client address (`max_handshakes_per_ip`).
    pub per_address: Arc<PerAddress>,
}

/// Why a handshake did not finish; counted by this name
/// (`portcullis_tls_handshake_failures{reason}`).
#[derive(Debug)]
pub enum HandshakeError {
    /// The client did not finish within the time-out.
    Timeout,
    /// The client sent something that is not a TLS handshake this server
    /// takes (junk, an old version, a bad or missing client certificate).
    Refused(std::io::Error),
}

impl HandshakeError {
    /// The reason it is counted under.
    pub fn reason(&self) -> HandshakeFailure {
        match self {
            HandshakeError::Timeout => HandshakeFailure::timeout,
            HandshakeError::Refused(_) => HandshakeFailure::error,
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Timeout => write!(f, "TLS handshake not finished in time"),
            HandshakeError::Refused(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl ServerTls {
    /// Reads the certificate chain and key (and the client CAs, if any) and
    /// makes the server configuration: TLS 1.2 and 1.3, rustls's safe
    /// defaults, `settings.alpn` offered.
    ///
    /// # Errors
    /// No certificate or key given; a file that cannot be read or holds no
    /// PEM item of its kind; a key that does not match the certificate; an
    /// ALPN name that is empty or longer than 255 bytes. Each names its file.
    pub fn new(settings: &TlsSettings) -> Result<ServerTls> {
        let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
            bail!("a tls:// listener needs tls-cert and tls-key");
        };
        let chain = read_certs(cert, "tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            let problem = match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no unencrypted private key in it (PEM: PKCS#8, PKCS#1 or SEC1; an encrypted key is not read)"
                        .to_string()
                }
                e => pem_problem(&e),
            };
            anyhow::anyhow!("tls-key {}: {problem}", key.display())
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?;
        let builder = match &settings.client_ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(path, "tls-client-ca")? {
                    roots.add(ca).with_context(|| format!("tls-client-ca {}", path.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .with_context(|| format!("tls-client-ca {}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                "tls-key does not match the first certificate of tls-cert {} (the service's own certificate \
                 comes first, then its issuers)",
                cert.display()
            ),
            e => anyhow::anyhow!("tls-cert {} with its tls-key: {e}", cert.display()),
        })?;
        config.alpn_protocols = alpn_list(&settings.alpn)?;
        Ok(ServerTls {
            acceptor: std::sync::RwLock::new(Arc::new(config).into()),
            timeout: settings.handshake_timeout,
            handshakes: Arc::new(Semaphore::new(settings.max_handshakes.clamp(1, Semaphore::MAX_PERMITS))),
            per_address: PerAddress::new(
                NonZeroUsize::new(settings.max_handshakes_per_ip).unwrap_or(NonZeroUsize::MIN),
            ),
        })
    }

    /// Runs the server side of the handshake on `stream`, within the
    /// handshake time-out. What the client sent after its handshake stays
    /// in the returned connection, for the first read.
    pub async fn handshake(&self, stream: TcpStream) -> Result<(TcpStream, rustls::Connection), HandshakeError> {
        let acceptor = self.acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
        match tokio::time::timeout(self.timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let (stream, conn) = tls.into_inner();
                Ok((stream, rustls::Connection::Server(conn)))
            }
            Ok(Err(e)) => Err(HandshakeError::Refused(e)),
            Err(_) => Err(HandshakeError::Timeout),
        }
    }
}

impl ServerTls {
    /// Serves `renewed`'s certificate (and client CAs, ALPN) from the next
    /// handshake on; handshakes under way finish with the one they began
    /// with. A reload that changes only these files renews in place: the
    /// service's instances and open connections go on.
    pub fn renew(&self, renewed: ServerTls) {
        let acceptor = renewed.acceptor.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
    }
}

/// The client side: what a guest's TLS connections are verified against.
/// The roots are read the first time a guest asks for TLS.
pub struct ClientTls {
    ca: Option<PathBuf>,
    config: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl ClientTls {
    /// Roots from `ca` (PEM), or the system's when `None`. A file that
    /// cannot be read is reported now; the system's store at first use.
    ///
    /// # Errors
    /// `ca` cannot be read or holds no certificate.
    pub fn new(ca: Option<&Path>) -> Result<ClientTls> {
        let client = ClientTls { ca: ca.map(Path::to_path_buf), config: OnceLock::new() };
        if ca.is_some() {
            client.config().map_err(anyhow::Error::msg)?;
        }
        Ok(client)
    }

    fn config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.config
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                match &self.ca {
                    Some(path) => {
                        for ca in read_certs(path, "tls-ca").map_err(|e| e.to_string())? {
                            roots.add(ca).map_err(|e| format!("tls-ca {}: {e}", path.display()))?;
                        }
                    }
                    None => {
                        let found = rustls_native_certs::load_native_certs();
                        let (added, _) = roots.add_parsable_certificates(found.certs);
                        if added == 0 {
                            return Err("no system CA certificates found (give --tls-ca)".into());
                        }
                    }
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(Arc::new(config))
            })
            .clone()
    }

    /// Runs the client side of the handshake on `stream`, verifying the
    /// server's certificate for `host` (the name or address the guest asked
    /// for, which its grant was checked for), within `timeout`.
    ///
    /// # Errors
    /// `generic` `unable to start the client socket: TLS ...`: no roots, a
    /// host that is no server name, a certificate that does not verify,
    /// the time-out.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        host: &str,
        timeout: Duration,
    ) -> Result<(TcpStream, rustls::Connection), SocketError> {
        let failed = |why: String| SocketError::generic(format!("{CONNECT_FAILED}TLS {why}"));
        let config = self.config().map_err(failed)?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
            .map_err(|_| failed(format!("`{host}` is not a server name")))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
            Ok(Ok(tls)) => {
                let (stream, conn) = tls.into_inner();
                Ok((stream, rustls::Connection::Client(conn)))
            }
            Ok(Err(e)) => {
                let hint = match e.to_string() {
                    text if text.contains("UnknownIssuer") => {
                        " (the operator's --tls-ca, or the system's roots, do not hold its CA)"
                    }
                    _ => "",
                };
                Err(failed(format!("handshake failed: {e}{hint}")))
            }
            Err(_) => Err(failed("handshake timed out".into())),
        }
    }
}

pub use portcullis_protocol::tls::TlsInfo;

/// What `conn`'s finished handshake agreed on.
pub fn info_of(conn: &rustls::Connection) -> TlsInfo {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    };
    let cipher_suite = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    let alpn = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let server_name = match conn {
        rustls::Connection::Server(server) => server.server_name().map(str::to_string),
        rustls::Connection::Client(_) => None,
    };
    let peer_subject = conn.peer_certificates().and_then(|chain| chain.first()).and_then(|cert| subject(cert));
    TlsInfo { protocol, cipher_suite, alpn, server_name, peer_subject }
}

/// A certificate's subject as RFC 4514 text (`CN=alice,O=Example`): the
/// last RDN first, `TYPE=value` with RFC 4514's short names (`CN`, `L`,
/// `ST`, `O`, `OU`, `C`, `STREET`, `DC`, `UID`) or the dotted OID, `+`
/// between the attributes of one RDN. Every special character of a value is
/// escaped (`\,`, control characters as `\0A`), so two different subjects
/// never read the same; a value that is not text is `#` and its DER in hex.
/// `None` if the certificate does not parse (rustls verified it; a subject
/// it cannot print is no reason to refuse).
fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::ToDer;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut rdns: Vec<String> = parsed
        .subject()
        .iter_rdn()
        .map(|rdn| {
            let attributes: Vec<String> = rdn
                .iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    let value = match attr.as_str() {
                        Ok(text) => rfc4514_escape(text),
                        Err(_) => {
                            let der = attr.attr_value().to_der_vec().unwrap_or_default();
                            format!("#{}", der.iter().map(|b| format!("{b:02x}")).collect::<String>())
                        }
                    };
                    format!("{}={value}", short_name(&oid).unwrap_or(&oid))
                })
                .collect();
            attributes.join("+")
        })
        .collect();
    rdns.reverse();
    Some(rdns.join(","))
}

/// RFC 4514's short name of an attribute type (section 3).
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// A value as RFC 4514 writes it (section 2.4): `"+,;<>\` escaped, a
/// leading space or `#` and a trailing space escaped, control characters
/// as `\XX`.
fn rfc4514_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '#' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut bytes = [0u8; 4];
                for b in c.encode_utf8(&mut bytes).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Every certificate in the PEM file at `path`; at least one.
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("{key} {}: {}", path.display(), pem_problem(&e)))?;
    if certs.is_empty() {
        bail!("{key} {}: no CERTIFICATE in it (PEM expected)", path.display());
    }
    Ok(certs)
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of this kind in it".into(),
        other => format!("not PEM ({other:?})"),
    }
}

/// The ALPN list as rustls takes it.
fn alpn_list(names: &[String]) -> Result<Vec<Vec<u8>>> {
    names
        .iter()
        .map(|name| {
            if name.is_empty() || name.len() > MAX_ALPN {
                bail!("tls-alpn `{name}` must be 1 to {MAX_ALPN} bytes");
            }
            Ok(name.as_bytes().to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_escaped_so_that_none_reads_as_another() {
        assert_eq!(rfc4514_escape("alice"), "alice");
        // A CN chosen to look like two attributes stays one.
        assert_eq!(rfc4514_escape("alice, O=Example"), "alice\\, O=Example");
        assert_eq!(rfc4514_escape(" #lead"), "\\ #lead");
        assert_eq!(rfc4514_escape("#x trail "), "\\#x trail\\ ");
        assert_eq!(rfc4514_escape("a+b;c<d>e\"f\\g"), "a\\+b\\;c\\<d\\>e\\\"f\\\\g");
        assert_eq!(rfc4514_escape("line\nbreak"), "line\\0Abreak");
        assert_eq!(short_name("2.5.4.3"), Some("CN"));
        assert_eq!(short_name("1.2.840.113549.1.9.1"), None, "emailAddress is no RFC 4514 name: its OID");
    }
}
