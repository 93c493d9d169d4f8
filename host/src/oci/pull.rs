//! The pull side of the registry protocol (the OCI distribution spec's
//! `GET /v2/<name>/manifests/<reference>` and `GET /v2/<name>/blobs/<digest>`,
//! with the bearer-token exchange, anonymous or with a login), bounded
//! against a registry that may be hostile.
//!
//! `oci-client` (which `push` uses) reads whole answers into memory and
//! follows every redirect (rust-oci-client#206), so a registry could send
//! a manifest of gigabytes, or send a pull on to plain HTTP. Here every
//! answer is read against a bound, a layer goes to disk as it arrives and
//! is hashed on the way, and a redirect may neither leave HTTPS nor take
//! plain HTTP to another host.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::credentials::Login;
use super::reference::{Reference, is_digest};
use super::{digest_of, quoted, sha256_digest};
use crate::partial_file::Partial;

/// The largest manifest read. The OCI spec asks registries to take
/// manifests of at least 4 MiB; twice that leaves room.
pub const MAX_MANIFEST: u64 = 8 << 20;
/// The largest token answer read (a JSON object with a token in it).
const MAX_TOKEN_ANSWER: u64 = 64 << 10;
/// The most of an error answer's body read, for the error's text.
const MAX_ERROR_BODY: u64 = 4 << 10;
/// Redirects followed for one request (blobs go to a CDN: one or two).
const MAX_REDIRECTS: usize = 5;

/// How long a registry has to accept a connection, and to send the next
/// bytes of an answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The manifest types asked for: an image manifest or an index, OCI's or
/// Docker's.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest as the registry sent it.
pub struct Manifest {
    /// Its bytes (at most [`MAX_MANIFEST`]).
    pub bytes: Vec<u8>,
    /// `sha256:` of the bytes: the manifest's digest.
    pub digest: String,
    /// Its media type: the document's `mediaType`, else the answer's
    /// `Content-Type`.
    pub media_type: String,
}

impl Manifest {
    /// Whether it lists manifests (an image index) rather than layers.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }
}

/// What a request carries to a registry that asked.
pub enum Authorization {
    Bearer(String),
    Basic(Login),
}

/// Pulls from one repository.
pub struct Puller {
    http: reqwest::Client,
    /// `http` or `https`.
    scheme: &'static str,
    reference: Reference,
    /// The login for this repository (`--registry-auth`), if any.
    login: Option<Login>,
    /// What to tell a registry's demand for a login when there is none.
    no_login: String,
    /// What the requests carry, once the registry asked for something.
    authorization: Option<Authorization>,
}

impl Puller {
    /// A puller for `reference`'s repository, over plain HTTP if `plain`,
    /// with `login` if the registry asks for one (else `no_login` says
    /// why there is none). A loopback registry is reached directly, never
    /// through `HTTP_PROXY`.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS roots).
    pub fn new(reference: &Reference, plain: bool, login: Option<Login>, no_login: String) -> Result<Puller> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let refused = refused_redirect(attempt.url(), attempt.previous());
                match refused {
                    Some(why) => attempt.error(why),
                    None => attempt.follow(),
                }
            }));
        if reference.is_loopback() {
            builder = builder.no_proxy();
        }
        let http = builder.build().context("building the HTTP client")?;
        let scheme = if plain { "http" } else { "https" };
        Ok(Puller { http, scheme, reference: reference.clone(), login, no_login, authorization: None })
    }

    /// The manifest `wanted` (a tag or a digest) names.
    ///
    /// # Errors
    /// The registry refuses or cannot be reached; the manifest is over
    /// [`MAX_MANIFEST`]; `wanted` is a digest and the bytes have another.
    pub async fn manifest(&mut self, wanted: &str) -> Result<Manifest> {
        let url = self.url("manifests", wanted);
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let response = self.get(&url, Some(&accept)).await?;
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.split(';').next().unwrap_or("").trim().to_string());
        let bytes = read_bounded(response, MAX_MANIFEST, "the manifest").await?;
        let digest = digest_of(&bytes);
        if is_digest(wanted) && digest != wanted {
            bail!("the registry sent a manifest whose digest is {digest}, not {wanted}");
        }
        #[derive(serde::Deserialize)]
        struct MediaType {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let field = serde_json::from_slice::<MediaType>(&bytes)
            .map_err(|e| anyhow::anyhow!("the manifest is not JSON: {e}"))?
            .media_type;
        let media_type = field.or(header_type).unwrap_or_default();
        Ok(Manifest { bytes, digest, media_type })
    }

    /// Writes the blob `digest`, of `size` bytes, to `path` (through a
    /// file of its own beside it, moved into place once the bytes have
    /// their digest).
    ///
    /// # Errors
    /// The registry refuses; it sends more or fewer than `size` bytes, or
    /// bytes of another digest (nothing is left at `path` then); the file
    /// cannot be written.
    pub async fn blob_to_file(&mut self, digest: &str, size: u64, path: &Path) -> Result<()> {
        let url = self.url("blobs", digest);
        let response = self.get(&url, None).await?;
        if let Some(length) = response.content_length().filter(|&length| length != size) {
            bail!("the registry sends {length} bytes for a layer of {size}");
        }
        // Dropped (an error, the pull's time-out), the partial file goes.
        let (partial, file) = Partial::create(path)?;
        write_blob(response, digest, size, tokio::fs::File::from_std(file)).await?;
        partial.keep()
    }

    /// The registry's API root: `SCHEME://HOST[:PORT]/v2/`.
    fn base(&self) -> String {
        format!("{}://{}/v2/", self.scheme, self.reference.registry())
    }

    fn url(&self, kind: &str, wanted: &str) -> String {
        format!("{}{}/{kind}/{wanted}", self.base(), self.reference.repository())
    }

    /// GET `url`. A 401 is answered once: a `Bearer` challenge with a
    /// token from its realm, a `Basic` one with the login; then the request
    /// is sent again.
    async fn get(&mut self, url: &str, accept: Option<&str>) -> Result<Response> {
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            request = match &self.authorization {
                Some(Authorization::Bearer(token)) => request.bearer_auth(token),
                Some(Authorization::Basic(login)) => request.basic_auth(&login.user, Some(&login.password)),
                None => request,
            };
            let response = request.send().await?;
            if response.status() == StatusCode::UNAUTHORIZED && self.authorization.is_none() {
                // Only the registry's own challenge is answered, never one
                // from where a redirect led (a CDN, or anyone).
                let asked = Url::parse(url).context("the request's URL")?;
                if response.url().origin() != asked.origin() {
                    bail!("a redirect target ({}) asked for credentials: refused", quoted(response.url().as_str()));
                }
                let challenge = response.headers().get(WWW_AUTHENTICATE).and_then(|value| value.to_str().ok());
                self.authorization = Some(self.answer(challenge.unwrap_or(""), "pull").await?);
                continue;
            }
            if response.status() == StatusCode::UNAUTHORIZED && self.login.is_some() {
                bail!("the registry refused the login for {} (401)", self.reference.registry());
            }
            return successful(response).await;
        }
    }

    /// How `portcullis push` is to authenticate, found out here so that
    /// the realm rules above hold for it too (oci-client would send the
    /// login to any realm): a bearer token for `pull,push`, the login, or
    /// nothing (the registry asked for none).
    ///
    /// # Errors
    /// As for a pull: the registry unreachable, a realm refused, no token.
    pub async fn push_authorization(&self) -> Result<Option<Authorization>> {
        let response = self.http.get(self.base()).send().await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        let challenge = response.headers().get(WWW_AUTHENTICATE).and_then(|value| value.to_str().ok());
        Ok(Some(self.answer(challenge.unwrap_or(""), "pull,push").await?))
    }

    /// Whether a login was given for this repository.
    pub fn has_login(&self) -> bool {
        self.login.is_some()
    }

    /// What answers the challenge of a `WWW-Authenticate` header, for
    /// `actions` (`pull`, `pull,push`).
    async fn answer(&self, challenge: &str, actions: &str) -> Result<Authorization> {
        let challenges = http_auth::parse_challenges(challenge).unwrap_or_default();
        let scheme = |name: &str| challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case(name));
        if let Some(bearer) = scheme("bearer") {
            return Ok(Authorization::Bearer(self.token(bearer, actions).await?));
        }
        match (&self.login, scheme("basic")) {
            (Some(login), Some(_)) => Ok(Authorization::Basic(login.clone())),
            (Some(_), None) => bail!("the registry asks for credentials of another kind (`{}`)", quoted(challenge)),
            (None, _) => bail!("the registry asks for credentials (`{}`): {}", quoted(challenge), self.no_login),
        }
    }

    /// A pull token from the realm a `Bearer` challenge names: anonymous,
    /// or for the login.
    async fn token(&self, bearer: &http_auth::ChallengeRef<'_>, actions: &str) -> Result<String> {
        let param = |name: &str| {
            bearer.params.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.to_unescaped())
        };
        let realm = param("realm").context("the registry's bearer challenge names no realm")?;
        let realm = Url::parse(&realm).with_context(|| format!("the token realm `{}` is not a URL", quoted(&realm)))?;
        let registry = Url::parse(&self.base()).context("the registry's URL")?;
        // The token request may carry the login, and its answer is trusted:
        // over plain HTTP only to the plain registry's own origin (scheme,
        // host and port).
        if realm.scheme() != "https" && realm.origin() != registry.origin() {
            bail!(
                "the registry names a token realm over {} at another host: {}",
                realm.scheme(),
                quoted(realm.as_str())
            );
        }
        let scope = format!("repository:{}:{actions}", self.reference.repository());
        let mut query = vec![("scope", scope)];
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(login) = &self.login {
            request = request.basic_auth(&login.user, Some(&login.password));
        }
        let response = request.send().await.context("asking for a token")?;
        let response = successful(response).await.context("asking for a token")?;
        let answer = read_bounded(response, MAX_TOKEN_ANSWER, "the token answer").await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&answer).context("the token answer is not JSON")?;
        answer
            .token
            .or(answer.access_token)
            .filter(|token| {
                !token.is_empty() && reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_ok()
            })
            .context("the token answer holds no token (or one no header can carry)")
    }
}

/// Why a redirect to `next` (after `previous`, the first being the URL
/// asked for) is not followed, if it is not.
fn refused_redirect(next: &Url, previous: &[Url]) -> Option<String> {
    if previous.len() > MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    let first = previous.first()?;
    if next.scheme() == "https" {
        return None;
    }
    // Plain HTTP (or anything else) only back to a plain first origin, with
    // no HTTPS on the way.
    let left_https = previous.iter().any(|url| url.scheme() == "https");
    if left_https || next.origin() != first.origin() {
        return Some(format!(
            "a redirect to {} refused (HTTPS only, or plain HTTP on the registry's own host)",
            quoted(next.as_str())
        ));
    }
    None
}

/// `response` if it is a success; else an error with its status and the
/// start of its body.
async fn successful(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = read_bounded_cut(response, MAX_ERROR_BODY).await;
    let body = String::from_utf8_lossy(&body);
    let detail = if body.trim().is_empty() { String::new() } else { format!(": {}", quoted(body.trim())) };
    bail!("the registry answered {status}{detail}")
}

/// The whole body, refused past `limit` bytes.
async fn read_bounded(mut response: Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    if let Some(length) = response.content_length().filter(|&length| length > limit) {
        bail!("{what} is {length} bytes, more than the {limit} read");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            bail!("{what} is more than the {limit} bytes read");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body's first `limit` bytes, or what arrived before an error.
async fn read_bounded_cut(mut response: Response, limit: u64) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit as usize - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() as u64 >= limit {
            break;
        }
    }
    body
}

async fn write_blob(mut response: Response, digest: &str, size: u64, mut file: tokio::fs::File) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await? {
        received += chunk.len() as u64;
        if received > size {
            bail!("the registry sent more bytes than the layer's size ({size})");
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.context("writing the layer to the cache")?;
    }
    file.flush().await?;
    if received != size {
        bail!("the registry sent {received} bytes of a layer of {size}");
    }
    let received = sha256_digest(hasher);
    if received != digest {
        bail!("the layer's bytes have digest {received}, not {digest}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_https_or_on_the_registry_s_own_plain_host() {
        let url = |text: &str| Url::parse(text).unwrap();
        let from_tls = [url("https://ghcr.io/v2/a/blobs/x")];
        assert_eq!(refused_redirect(&url("https://cdn.example/blob"), &from_tls), None);
        assert!(refused_redirect(&url("http://ghcr.io/v2/a/blobs/x"), &from_tls).is_some(), "a downgrade");
        let from_plain = [url("http://127.0.0.1:5000/v2/a/blobs/x")];
        assert_eq!(refused_redirect(&url("http://127.0.0.1:5000/elsewhere"), &from_plain), None);
        assert_eq!(refused_redirect(&url("https://cdn.example/blob"), &from_plain), None);
        assert!(refused_redirect(&url("http://169.254.169.254/latest"), &from_plain).is_some());
        assert!(refused_redirect(&url("http://127.0.0.1:6000/"), &from_plain).is_some(), "another port");
        assert!(refused_redirect(&url("ftp://127.0.0.1:5000/"), &from_plain).is_some());
        let hops = vec![url("https://a.example/"); MAX_REDIRECTS + 1];
        assert!(refused_redirect(&url("https://b.example/"), &hops).is_some(), "too many");
    }
}
