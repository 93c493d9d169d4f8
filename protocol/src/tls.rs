//! What a guest may learn of a connection's TLS: the host makes it from its
//! rustls session (`host/src/net/tls.rs`), the SDK hands it to the service
//! (`Connection::tls`). The WIT's `tls-info` carries it between them.

/// What a TLS connection's handshake agreed on. The host holds the keys:
/// the guest reads and writes plaintext.
///
/// ```
/// let tls = portcullis_protocol::tls::TlsInfo {
///     protocol: "TLSv1.3".into(),
///     cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
///     alpn: Some("http/1.1".into()),
///     server_name: Some("example.com".into()),
///     peer_subject: None,
/// };
/// assert_eq!(tls.protocol, "TLSv1.3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub protocol: String,
    /// The cipher suite as rustls names it, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    /// The protocol ALPN agreed on (`h2`, `http/1.1`...), if any.
    pub alpn: Option<String>,
    /// The name the client asked for (SNI), on an accepted connection.
    pub server_name: Option<String>,
    /// The peer certificate's subject as RFC 4514 text (`CN=alice,O=Example`,
    /// every special character escaped): a client's, verified against the
    /// operator's `--tls-client-ca`, when the listener asks for one; the
    /// server's on a client connection.
    pub peer_subject: Option<String>,
}
