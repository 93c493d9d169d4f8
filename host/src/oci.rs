//! Components in an OCI registry: `oci://HOST/REPO:TAG` or
//! `oci://HOST/REPO@sha256:...` wherever a component path goes (the
//! command line, a manifest's `component`), and `portcullis push`.
//!
//! An artifact is the CNCF wasm layout that `wkg` publishes: a config of
//! media type [`WASM_CONFIG`] and one layer of type [`WASM_LAYER`] (the
//! component's bytes). The OCI client (`oci-client`) checks every digest
//! it is given: the manifest's against a `@sha256:` reference, the layer's
//! bytes against the manifest's digest of them; a mismatch is an error and
//! nothing runs.
//!
//! Pulled components are kept under `CACHE/oci/` (beside the compiled
//! ones): `blobs/sha256/HEX.wasm` by the layer's digest, and one file per
//! reference under `refs/` with the digests it resolved to, so that
//! `--pull missing` (the default) needs no registry for a reference seen
//! before. Plain HTTP is used only for a loopback registry (`127.0.0.0/8`,
//! `[::1]`, `localhost`) or one named by `--insecure-registry`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::config::ServiceSpec;
use crate::engine::MAX_COMPONENT_FILE;

/// The config media type of a wasm component artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a wasm component artifact.
pub const WASM_LAYER: &str = "application/wasm";
/// The older `wasm-to-oci` layout's types, also pulled.
const OLD_WASM_CONFIG: &str = "application/vnd.wasm.config.v1+json";
const OLD_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// The scheme of a component in a registry.
const SCHEME: &str = "oci://";

/// How long a registry has to accept a connection, to send the next bytes
/// of an answer, and to finish a whole pull.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// The most of a registry's text an error repeats.
const MAX_QUOTED: usize = 300;

/// When a component is pulled from its registry (`--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only from the cache: a reference not pulled before is an error.
    Never,
    /// From the cache when the reference was pulled before, else pulled.
    #[default]
    Missing,
    /// Pulled every time (a tag may have moved); the bytes are reused when
    /// the digest is one already in the cache.
    Always,
}

/// Whether `component` names a registry artifact (`oci://...`), not a file.
pub fn is_reference(component: &Path) -> bool {
    component.to_str().is_some_and(|text| text.starts_with(SCHEME))
}

/// A component pulled, or found in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The component's bytes, in the cache.
    pub path: PathBuf,
    /// The artifact's manifest digest (`sha256:...`): what ran.
    pub digest: String,
}

/// Where components are pulled from and kept.
#[derive(Debug, Clone)]
pub struct Registries {
    policy: PullPolicy,
    cache: PathBuf,
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP besides loopback ones.
    insecure: Vec<String>,
}

impl Registries {
    /// Pulls under `policy` into `cache/oci` (`cache`: the compile cache's
    /// folder); `insecure`: registries plain HTTP is allowed for.
    pub fn new(policy: PullPolicy, cache: PathBuf, insecure: Vec<String>) -> Registries {
        Registries { policy, cache: cache.join("oci"), insecure }
    }

    /// The local copy of `component` (`oci://HOST/REPO:TAG` or
    /// `oci://HOST/REPO@sha256:...`), pulled as the policy says.
    ///
    /// # Errors
    /// A reference that does not parse; `--pull never` and nothing in the
    /// cache; the registry unreachable or refusing; an artifact that is not
    /// a wasm component (its config or layer types), has more than one
    /// layer, or a layer over 512 MiB; a digest that does not match.
    pub async fn fetch(&self, component: &str) -> Result<Fetched> {
        match tokio::time::timeout(PULL_TIMEOUT, self.fetch_now(component)).await {
            Ok(fetched) => fetched.map_err(|e| anyhow::anyhow!(quoted(&format!("{e:#}")))),
            Err(_) => bail!("pulling {component}: not done in {}s", PULL_TIMEOUT.as_secs()),
        }
    }

    async fn fetch_now(&self, component: &str) -> Result<Fetched> {
        let reference = parse(component)?;
        let known = self.cached(component, &reference);
        match (self.policy, known) {
            (PullPolicy::Never | PullPolicy::Missing, Some(fetched)) => return Ok(fetched),
            (PullPolicy::Never, None) => bail!(
                "{component} is not in the cache ({}), or its copy there is damaged, and --pull never",
                self.cache.display()
            ),
            _ => {}
        }
        tracing::info!("pulling {component} from {}", reference.resolve_registry());
        let client = self.client(&reference);
        let auth = RegistryAuth::Anonymous;
        let (manifest, digest) = client
            .pull_image_manifest(&reference, &auth)
            .await
            .with_context(|| format!("pulling {component}: its manifest"))?;
        let config = manifest.config.media_type.as_str();
        if config != WASM_CONFIG && config != OLD_WASM_CONFIG {
            bail!("{component} is not a wasm component artifact: its config is `{config}`, not `{WASM_CONFIG}`");
        }
        let [layer] = manifest.layers.as_slice() else {
            bail!("{component} has {} layers; a wasm component artifact has one", manifest.layers.len());
        };
        if layer.media_type != WASM_LAYER && layer.media_type != OLD_WASM_LAYER {
            bail!("{component}: its layer is `{}`, not `{WASM_LAYER}`", layer.media_type);
        }
        if layer.size < 0 || layer.size as u64 > MAX_COMPONENT_FILE {
            bail!("{component}: its layer is {} bytes, more than a component may be (512 MiB)", layer.size);
        }
        // Bytes from elsewhere than the registry asked (a "foreign layer")
        // would reach any address the registry names.
        if layer.urls.as_ref().is_some_and(|urls| !urls.is_empty()) {
            bail!("{component}: its layer is to be fetched from other addresses (`urls`): refused");
        }
        let blob = self.blob_path(&layer.digest)?;
        // A copy in the cache counts only if its bytes still have their
        // digest (a file changed on disk is pulled again).
        let have = std::fs::read(&blob).is_ok_and(|bytes| digest_of(&bytes) == layer.digest);
        if !have {
            // No more than the manifest says (its digest binds the bytes).
            let mut bytes = Bounded { bytes: Vec::with_capacity(layer.size as usize), limit: layer.size as u64 };
            client
                .pull_blob(&reference, layer, &mut bytes)
                .await
                .with_context(|| format!("pulling {component}: its layer {}", layer.digest))?;
            write_atomically(&blob, &bytes.bytes)?;
            tracing::info!("pulled {component} ({digest})");
        }
        let fetched = Fetched { path: blob, digest };
        let record = format!("{}\n{}\n", fetched.digest, layer.digest);
        write_atomically(&self.ref_path(component), record.as_bytes())?;
        Ok(fetched)
    }

    /// Replaces each `oci://` component of `specs` with its local copy,
    /// pulled as the policy says, noting in `pulled` what it was.
    ///
    /// # Errors
    /// As [`Registries::fetch`], naming the service.
    pub async fn resolve(&self, specs: &mut [ServiceSpec]) -> Result<()> {
        for spec in specs.iter_mut().filter(|spec| is_reference(&spec.component)) {
            let reference = spec.component.to_string_lossy().into_owned();
            let fetched = self.fetch(&reference).await.with_context(|| format!("service `{}`", spec.name))?;
            spec.component = fetched.path;
            spec.pulled = Some(format!("{reference} ({})", fetched.digest));
        }
        Ok(())
    }

    /// `component` as the cache has it, if it was pulled before (and, for a
    /// `@sha256:` reference, with that digest).
    fn cached(&self, component: &str, reference: &Reference) -> Option<Fetched> {
        let record = std::fs::read_to_string(self.ref_path(component)).ok()?;
        let mut lines = record.lines();
        let (digest, layer) = (lines.next()?.to_string(), lines.next()?);
        if reference.digest().is_some_and(|wanted| wanted != digest) {
            return None;
        }
        let path = self.blob_path(layer).ok()?;
        // The bytes are checked again: a cache file changed on disk is pulled anew.
        let bytes = std::fs::read(&path).ok()?;
        (digest_of(&bytes) == layer).then_some(Fetched { path, digest })
    }

    /// Publishes the component `file` as `component` (`oci://HOST/REPO:TAG`;
    /// no tag: `latest`) in the wasm artifact layout, and returns the
    /// manifest's digest.
    ///
    /// # Errors
    /// `file` unreadable or not a component; the reference does not parse;
    /// the registry refuses.
    pub async fn push(&self, file: &Path, component: &str) -> Result<String> {
        let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
        if !std::fs::metadata(file).is_ok_and(|m| m.is_file()) || size > MAX_COMPONENT_FILE {
            bail!("{} is not a component file of at most 512 MiB", file.display());
        }
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        if !bytes.starts_with(b"\0asm") || bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            bail!("{} is not a WebAssembly component (build it for wasm32-wasip2)", file.display());
        }
        let reference = parse(component)?;
        if reference.digest().is_some() {
            bail!("push to a tag (oci://HOST/REPO:TAG): a digest is what the registry answers");
        }
        let layer_digest = digest_of(&bytes);
        let config = serde_json::json!({
            "created": created_now(),
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        });
        let config = Config::new(config.to_string().into_bytes(), WASM_CONFIG.to_string(), None);
        let layer = ImageLayer::new(bytes, WASM_LAYER.to_string(), None);
        let client = self.client(&reference);
        let auth = RegistryAuth::Anonymous;
        // The manifest says its own media type, as the OCI spec asks and
        // wasm tools (oci-wasm, wkg) expect.
        let mut manifest = oci_client::manifest::OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        manifest.media_type = Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string());
        client
            .push(&reference, &[layer], config, &auth, Some(manifest))
            .await
            .with_context(|| format!("pushing {} to {component}", file.display()))?;
        let digest = client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .with_context(|| format!("reading back the digest of {component}"))?;
        Ok(digest)
    }

    /// A client for `reference`'s registry: HTTPS, or plain HTTP for a
    /// loopback or `--insecure-registry` one.
    fn client(&self, reference: &Reference) -> Client {
        let registry = reference.resolve_registry().to_string();
        let plain = is_loopback(&registry) || self.insecure.contains(&registry);
        let protocol = if plain { ClientProtocol::Http } else { ClientProtocol::Https };
        Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        })
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(hex) = hex else { bail!("unsupported layer digest `{digest}` (sha256 expected)") };
        Ok(self.cache.join("blobs/sha256").join(format!("{hex}.wasm")))
    }

    fn ref_path(&self, component: &str) -> PathBuf {
        let key = digest_of(component.as_bytes());
        self.cache.join("refs").join(&key["sha256:".len()..])
    }
}

/// Now, as RFC 3339 in UTC.
fn created_now() -> String {
    crate::guest_output::rfc3339(std::time::SystemTime::now())
}

/// `oci://HOST/REPO:TAG` as the OCI client takes it.
pub fn parse(component: &str) -> Result<Reference> {
    let Some(rest) = component.strip_prefix(SCHEME) else {
        bail!("`{component}` is not an oci:// reference");
    };
    // The first part must name a registry (a dot, a port, or localhost):
    // else the client takes it for a Docker Hub namespace, which anyone may own.
    let registry = rest.split('/').next().unwrap_or("");
    let names_registry = registry.contains('.') || registry.contains(':') || registry == "localhost";
    if !rest.contains('/') || !names_registry {
        bail!(
            "`{component}`: give the registry and the repository (oci://HOST[:PORT]/REPO:TAG; the host with a dot \
             or a port, or localhost)"
        );
    }
    rest.parse::<Reference>().with_context(|| {
        format!("`{component}` is not a reference (oci://HOST/REPO:TAG or @sha256:...; repository names are lowercase)")
    })
}

/// A registry on this machine, spoken to over plain HTTP.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `text` for a log line or an error: a registry's words are its own
/// (bodies, media types), so at most [`MAX_QUOTED`] characters, control
/// characters escaped.
fn quoted(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_QUOTED).flat_map(char::escape_debug).collect();
    if text.chars().count() > MAX_QUOTED {
        out.push_str("...");
    }
    out
}

fn digest_of(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// A layer's bytes, refused past `limit`: the size its manifest declared
/// (at most [`MAX_COMPONENT_FILE`]), counted as they arrive.
struct Bounded {
    bytes: Vec<u8>,
    limit: u64,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.limit {
            let too_big = std::io::Error::other("the registry sent more bytes than the layer's size");
            return std::task::Poll::Ready(Err(too_big));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_loopback_registries_speak_plain_http() {
        assert_eq!(parse("oci://127.0.0.1:5000/team/echo:v1").unwrap().repository(), "team/echo");
        let pinned = format!("oci://localhost:5000/echo@sha256:{}", "a".repeat(64));
        assert_eq!(parse(&pinned).unwrap().digest(), Some(format!("sha256:{}", "a".repeat(64)).as_str()));
        assert!(parse("oci://echo").is_err(), "no registry");
        assert!(parse("echo.wasm").is_err());
        for (registry, plain) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(is_loopback(registry), plain, "{registry}");
        }
        assert!(parse("oci://registry/echo:v1").is_err(), "a Docker Hub namespace, not a registry");
        assert!(is_reference(Path::new("oci://ghcr.io/a/b:1")));
        assert_eq!(quoted("a\nb"), "a\\nb");
        assert!(quoted(&"x".repeat(10_000)).len() < 400);
        let created = created_now();
        assert!(created.starts_with("20") && created.ends_with('Z'), "{created}");
        assert!(!is_reference(Path::new("b.wasm")));
    }
}
