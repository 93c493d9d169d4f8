//! Components in an OCI registry: `oci://HOST/REPO:TAG` or
//! `oci://HOST/REPO@sha256:...` wherever a component path goes (the
//! command line, a manifest's `component`), and `portcullis push`.
//!
//! An artifact is the CNCF wasm layout that `wkg` publishes: a config of
//! media type [`WASM_CONFIG`] and one layer of type [`WASM_LAYER`] (the
//! component's bytes), or an image index with such a manifest for the
//! `wasm` architecture. Every digest is checked: the manifest's against a
//! `@sha256:` reference, an index entry's against the manifest it names,
//! the layer's bytes against the manifest's digest of them; a mismatch is
//! an error and nothing runs. Pulling is `oci::pull`'s (bounded against a
//! hostile registry); pushing goes through `oci-client`.
//!
//! Pulled components are kept under `CACHE/oci/` (beside the compiled
//! ones): `blobs/sha256/HEX.wasm` by the layer's digest, and one file per
//! reference under `refs/` with the digests it resolved to, so that
//! `--pull missing` (the default) needs no registry for a reference seen
//! before. Plain HTTP is used only for a loopback registry (`127.0.0.0/8`,
//! `[::1]`, `localhost`) or one named by `--insecure-registry`.

mod cache;
mod credentials;
mod pull;
mod reference;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};

pub use credentials::Credentials;
pub use reference::Reference;

use crate::config::ServiceSpec;
use crate::engine::MAX_COMPONENT_FILE;
use cache::{Cache, Record};
use pull::{CONNECT_TIMEOUT, Puller, READ_TIMEOUT};

/// The config media type of a wasm component artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a wasm component artifact.
pub const WASM_LAYER: &str = "application/wasm";
/// The older `wasm-to-oci` layout's types, also pulled.
const OLD_WASM_CONFIG: &str = "application/vnd.wasm.config.v1+json";
const OLD_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// How long a whole pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// The most of a registry's text an error repeats.
const MAX_QUOTED: usize = 300;
/// The longest error a pull reports.
const MAX_ERROR_TEXT: usize = 2000;

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
    component.to_str().is_some_and(|text| text.starts_with(reference::SCHEME))
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
    cache: Cache,
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP besides loopback ones.
    insecure: Vec<String>,
    /// The file of logins for private registries (`--registry-auth`), read
    /// at each pull (a rotated Secret is taken up by the next reload).
    logins: Option<PathBuf>,
}

impl Registries {
    /// Pulls under `policy` into `cache/oci` (`cache`: the compile cache's
    /// folder); `insecure`: registries plain HTTP is allowed for.
    pub fn new(policy: PullPolicy, cache: PathBuf, insecure: Vec<String>) -> Registries {
        Registries { policy, cache: Cache::new(cache.join("oci")), insecure, logins: None }
    }

    /// The same, with the logins of `file` for the registries that ask for
    /// them (read now, to fail early, and again at each pull).
    ///
    /// # Errors
    /// As [`Credentials::load`].
    pub fn with_logins(self, file: PathBuf) -> Result<Registries> {
        Credentials::load(&file)?;
        Ok(Registries { logins: Some(file), ..self })
    }

    fn login_for(&self, reference: &Reference) -> Result<Option<credentials::Login>> {
        let Some(file) = &self.logins else { return Ok(None) };
        Ok(Credentials::load(file)?.login_for(reference.registry(), reference.repository()))
    }

    fn puller(&self, reference: &Reference) -> Result<Puller> {
        let no_login = match &self.logins {
            Some(file) => format!(
                "{} has no login for {}/{} (its keys must name the registry as the reference does)",
                file.display(),
                reference.registry(),
                reference.repository()
            ),
            None => "give them with --registry-auth FILE".to_string(),
        };
        Puller::new(reference, self.is_plain(reference), self.login_for(reference)?, no_login)
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
        self.fetch_as(component, self.policy).await
    }

    async fn fetch_as(&self, component: &str, policy: PullPolicy) -> Result<Fetched> {
        match tokio::time::timeout(PULL_TIMEOUT, self.fetch_now(component, policy)).await {
            // The registry's words are quoted where they are met; this cut
            // is for any that reached a message unquoted (a JSON error).
            Ok(fetched) => fetched.map_err(|e| anyhow::anyhow!(cut(&format!("{e:#}"), MAX_ERROR_TEXT))),
            Err(_) => bail!("pulling {component}: not done in {}s", PULL_TIMEOUT.as_secs()),
        }
    }

    async fn fetch_now(&self, component: &str, policy: PullPolicy) -> Result<Fetched> {
        let reference = Reference::parse(component)?;
        let known = self.cached(component, &reference).await;
        match (policy, known) {
            (PullPolicy::Never | PullPolicy::Missing, Some(fetched)) => return Ok(fetched),
            (PullPolicy::Never, None) => bail!(
                "{component} has not been pulled into the cache ({}) under this reference (or its copy there was \
                 changed), and --pull never",
                self.cache.root().display()
            ),
            _ => {}
        }
        tracing::info!("pulling {component} from {}", reference.registry());
        let mut puller = self.puller(&reference)?;
        let top =
            puller.manifest(reference.wanted()).await.with_context(|| format!("pulling {component}: its manifest"))?;
        let chosen = if top.is_index() {
            let entry = wasm_entry(&top.bytes).with_context(|| format!("pulling {component}: its image index"))?;
            let chosen =
                puller.manifest(&entry).await.with_context(|| format!("pulling {component}: the manifest {entry}"))?;
            if chosen.is_index() {
                bail!("{component}: its index names another index ({entry}); one level is followed");
            }
            Some(chosen)
        } else {
            None
        };
        let manifest = chosen.as_ref().unwrap_or(&top);
        let manifest: OciImageManifest = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| anyhow::anyhow!("{component}: its manifest is not an image manifest: {e}"))?;
        let config = manifest.config.media_type.as_str();
        if config != WASM_CONFIG && config != OLD_WASM_CONFIG {
            bail!(
                "{component} is not a wasm component artifact: its config is `{}`, not `{WASM_CONFIG}`",
                quoted(config)
            );
        }
        let [layer] = manifest.layers.as_slice() else {
            bail!("{component} has {} layers; a wasm component artifact has one", manifest.layers.len());
        };
        if layer.media_type != WASM_LAYER && layer.media_type != OLD_WASM_LAYER {
            bail!("{component}: its layer is `{}`, not `{WASM_LAYER}`", quoted(&layer.media_type));
        }
        if layer.size < 0 || layer.size as u64 > MAX_COMPONENT_FILE {
            bail!("{component}: its layer's size is {}; a component is at most 512 MiB", layer.size);
        }
        // Bytes from elsewhere than the registry asked (a "foreign layer")
        // would reach any address the registry names.
        if layer.urls.as_ref().is_some_and(|urls| !urls.is_empty()) {
            bail!("{component}: its layer is to be fetched from other addresses (`urls`): refused");
        }
        let blob = self.cache.blob_path(&layer.digest)?;
        // A copy in the cache counts only if its bytes still have their
        // digest (a file changed on disk is pulled again).
        if !self.cache.has_blob(&layer.digest).await {
            puller
                .blob_to_file(&layer.digest, layer.size as u64, &blob)
                .await
                .with_context(|| format!("pulling {component}: its layer {}", layer.digest))?;
            tracing::info!("pulled {component} ({})", top.digest);
        } else {
            tracing::info!("pulled {component} ({}; its layer was in the cache)", top.digest);
        }
        let record = Record { digest: top.digest, layer: layer.digest.clone() };
        self.cache.write_record(component, &record)?;
        // The digest that is logged runs from the cache too, pinned.
        let pinned =
            format!("{}{}/{}@{}", reference::SCHEME, reference.registry(), reference.repository(), record.digest);
        self.cache.write_record(&pinned, &record)?;
        self.cache.collect();
        Ok(Fetched { path: blob, digest: record.digest })
    }

    /// Replaces each `oci://` component of `specs` with its local copy,
    /// pulled as the policy says, noting in `pulled` what it was. The pulls
    /// run at once: a slow registry holds the start up by its own pull, not
    /// by every one before it.
    ///
    /// # Errors
    /// As [`Registries::fetch`], naming the service.
    pub async fn resolve(&self, specs: &mut [ServiceSpec]) -> Result<()> {
        self.resolve_each(specs, |reference| async move { self.fetch(&reference).await }).await
    }

    /// [`Registries::resolve`] for a reload. Under `--pull missing` a
    /// reference by tag is asked of the registry again (a moved tag is
    /// what a reload is sent for); if the registry cannot answer, the copy
    /// in the cache goes on and a warning says why.
    ///
    /// # Errors
    /// As [`Registries::fetch`], naming the service.
    pub async fn resolve_at_reload(&self, specs: &mut [ServiceSpec]) -> Result<()> {
        self.resolve_each(specs, |reference| async move { self.fetch_at_reload(&reference).await }).await
    }

    async fn fetch_at_reload(&self, reference: &str) -> Result<Fetched> {
        let by_tag = Reference::parse(reference).is_ok_and(|parsed| parsed.digest().is_none());
        if self.policy != PullPolicy::Missing || !by_tag {
            return self.fetch(reference).await;
        }
        let asked = match self.fetch_as(reference, PullPolicy::Always).await {
            Ok(fetched) => return Ok(fetched),
            Err(asked) => asked,
        };
        let why = format!("{asked:#}");
        let kept = self.fetch_as(reference, PullPolicy::Never).await.map_err(|_| asked)?;
        tracing::warn!(
            "reload: {reference} could not be pulled ({why}); its copy in the cache ({}) goes on",
            kept.digest
        );
        Ok(kept)
    }

    async fn resolve_each<F, Pull>(&self, specs: &mut [ServiceSpec], fetch: F) -> Result<()>
    where
        F: Fn(String) -> Pull,
        Pull: std::future::Future<Output = Result<Fetched>>,
    {
        let wanted: Vec<(usize, String)> = specs
            .iter()
            .enumerate()
            .filter(|(_, spec)| is_reference(&spec.component))
            .map(|(index, spec)| (index, spec.component.to_string_lossy().into_owned()))
            .collect();
        let pulls = futures::future::join_all(wanted.iter().map(|(_, reference)| fetch(reference.clone()))).await;
        for ((index, reference), fetched) in wanted.into_iter().zip(pulls) {
            let spec = &mut specs[index];
            let fetched = fetched.with_context(|| format!("service `{}`", spec.name))?;
            spec.component = fetched.path;
            spec.pulled = Some(format!("{reference} ({})", fetched.digest));
        }
        Ok(())
    }

    /// `component` as the cache has it, if it was pulled before (and, for a
    /// `@sha256:` reference, with that digest).
    async fn cached(&self, component: &str, reference: &Reference) -> Option<Fetched> {
        let Record { digest, layer } = self.cache.record(component)?;
        if reference.digest().is_some_and(|wanted| wanted != digest) {
            return None;
        }
        // The bytes are checked again: a cache file changed on disk is pulled anew.
        let path = self.cache.blob_path(&layer).ok()?;
        self.cache.has_blob(&layer).await.then_some(Fetched { path, digest })
    }

    /// Publishes the component `file` as `component` (`oci://HOST/REPO:TAG`;
    /// no tag: `latest`) in the wasm artifact layout, and returns the
    /// manifest's digest.
    ///
    /// # Errors
    /// `file` unreadable or not a component; the reference does not parse;
    /// the registry refuses.
    pub async fn push(&self, file: &Path, component: &str) -> Result<String> {
        let meta = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        if !meta.is_file() || meta.len() > MAX_COMPONENT_FILE {
            bail!("{} is not a component file of at most 512 MiB", file.display());
        }
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        if !bytes.starts_with(b"\0asm") || bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            bail!("{} is not a WebAssembly component (build it for wasm32-wasip2)", file.display());
        }
        let reference = Reference::parse(component)?;
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
        let protocol = if self.is_plain(&reference) { ClientProtocol::Http } else { ClientProtocol::Https };
        let mut settings = ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        };
        if reference.is_loopback() {
            // A proxy named here turns the environment's (HTTP_PROXY) off,
            // and the loopback addresses are exempt from it: a loopback
            // registry is reached directly, as a pull reaches it.
            settings.http_proxy = Some("http://127.0.0.1:9".to_string());
            settings.no_proxy = Some("127.0.0.0/8,::1/128,localhost".to_string());
        }
        let client = Client::new(settings);
        // The token, if any, is asked for here, under the pull's rules.
        let mut puller = self.puller(&reference)?;
        let auth = match puller.push_authorization().await.context("asking the registry how to push")? {
            Some(pull::Authorization::Bearer(token)) => RegistryAuth::Bearer(token),
            Some(pull::Authorization::Basic(login)) => RegistryAuth::Basic(login.user, login.password),
            None => RegistryAuth::Anonymous,
        };
        // The manifest says its own media type, as the OCI spec asks and
        // wasm tools (oci-wasm, wkg) expect.
        let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        manifest.media_type = Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string());
        let pushed = client.push(&reference.for_oci_client(), &[layer], config, &auth, Some(manifest)).await;
        if let Err(e) = pushed {
            use oci_client::errors::OciDistributionError::{AuthenticationFailure, ServerError, UnauthorizedError};
            let refused =
                matches!(e, ServerError { code: 401 | 403, .. } | UnauthorizedError { .. } | AuthenticationFailure(_));
            let hint = match (refused, puller.has_login()) {
                (true, false) => " (the registry wants a login: --registry-auth FILE)",
                (true, true) => " (the registry refused the login)",
                (false, _) => "",
            };
            bail!("pushing {} to {component}: {}{hint}", file.display(), cut(e.to_string().trim(), MAX_ERROR_TEXT));
        }
        let pushed = puller
            .manifest(reference.wanted())
            .await
            .with_context(|| format!("reading back the digest of {component}"))?;
        Ok(pushed.digest)
    }

    /// Whether `reference`'s registry is spoken to over plain HTTP: a
    /// loopback one, or one named by `--insecure-registry`.
    fn is_plain(&self, reference: &Reference) -> bool {
        reference.is_loopback() || self.insecure.iter().any(|registry| registry == reference.registry())
    }
}

/// The artifact's `created` time, RFC 3339 in UTC: `SOURCE_DATE_EPOCH`
/// (seconds) when it is set, as reproducible builds do, so that the same
/// bytes pushed again have the same digest; else now.
fn created_now() -> String {
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|text| text.trim().parse::<u64>().ok());
    let when = match epoch {
        Some(seconds) => std::time::UNIX_EPOCH + Duration::from_secs(seconds),
        None => std::time::SystemTime::now(),
    };
    crate::guest_output::rfc3339(when)
}

/// The digest of the manifest for the `wasm` architecture in an image
/// index; an index of one entry with no platform names that one.
fn wasm_entry(index: &[u8]) -> Result<String> {
    let index: OciImageIndex =
        serde_json::from_slice(index).map_err(|e| anyhow::anyhow!("it is not an image index: {e}"))?;
    let platform = |entry: &oci_client::manifest::ImageIndexEntry| {
        entry.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture))
    };
    let wasm: Vec<_> = index
        .manifests
        .iter()
        .filter(|entry| entry.platform.as_ref().is_some_and(|p| p.architecture.to_string() == "wasm"))
        .collect();
    // A component built for WASI 0.2 first, then any other wasm entry.
    let chosen = wasm
        .iter()
        .find(|entry| entry.platform.as_ref().is_some_and(|p| p.os.to_string() == "wasip2"))
        .or(wasm.first())
        .copied()
        .or(match index.manifests.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        });
    let Some(entry) = chosen else {
        let platforms: Vec<String> =
            index.manifests.iter().take(20).map(|e| platform(e).unwrap_or_else(|| "(none)".into())).collect();
        bail!("no entry for the wasm architecture (platforms: {})", quoted(&platforms.join(", ")));
    };
    if !reference::is_digest(&entry.digest) {
        bail!("its entry's digest `{}` is not sha256", quoted(&entry.digest));
    }
    Ok(entry.digest.clone())
}

/// `text` for a log line or an error: a registry's words are its own
/// (bodies, media types), so at most [`MAX_QUOTED`] characters, control
/// characters escaped.
fn quoted(text: &str) -> String {
    cut(text, MAX_QUOTED)
}

/// `text`'s first `max` characters, control characters escaped (a line
/// break in a registry's words cannot start a log line of its own), and so
/// are the invisible ones that reorder or break a terminal's line.
fn cut(text: &str, max: usize) -> String {
    let invisible = |c: char| matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
    let mut out = String::new();
    for c in text.chars().take(max) {
        if c.is_control() || invisible(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// `sha256:HEX` of `bytes`.
fn digest_of(bytes: &[u8]) -> String {
    sha256_digest(Sha256::new().chain_update(bytes))
}

/// `sha256:HEX` of what `hasher` was given.
fn sha256_digest(hasher: Sha256) -> String {
    format!("sha256:{}", crate::engine::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_in_a_registry_are_told_from_files() {
        assert!(is_reference(Path::new("oci://ghcr.io/a/b:1")));
        assert!(!is_reference(Path::new("b.wasm")));
        assert_eq!(quoted("a\nb's"), "a\\nb's");
        assert_eq!(quoted("x\u{202e}y\u{2028}"), "x\\u{202e}y\\u{2028}");
        assert!(quoted(&"x".repeat(10_000)).len() < 400);
        let created = created_now();
        assert!(created.starts_with("20") && created.ends_with('Z'), "{created}");
    }

    #[test]
    fn an_index_is_followed_to_its_wasm_entry() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let entry = |c: char, platform: &str| {
            let platform = match platform.split_once('/') {
                Some((os, arch)) => format!(r#","platform":{{"os":"{os}","architecture":"{arch}"}}"#),
                None => String::new(),
            };
            format!(r#"{{"mediaType":"{}","digest":"{}","size":500{platform}}}"#, pull::OCI_MANIFEST, digest(c))
        };
        let index = |entries: &[String]| {
            format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#, pull::OCI_INDEX, entries.join(","))
        };
        let two = index(&[entry('a', "linux/amd64"), entry('b', "wasip1/wasm"), entry('c', "wasip2/wasm")]);
        assert_eq!(wasm_entry(two.as_bytes()).unwrap(), digest('c'));
        let one = index(&[entry('a', "linux/amd64"), entry('b', "wasip1/wasm")]);
        assert_eq!(wasm_entry(one.as_bytes()).unwrap(), digest('b'));
        assert_eq!(wasm_entry(index(&[entry('d', "")]).as_bytes()).unwrap(), digest('d'));
        let none = index(&[entry('a', "linux/amd64"), entry('e', "linux/arm64")]);
        let error = wasm_entry(none.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("linux/amd64, linux/arm64"), "{error}");
        assert!(wasm_entry(b"[1,2]").is_err());
    }
}
