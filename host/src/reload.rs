//! Reload on `SIGHUP`: the manifest (or, for `portcullis run FILE`, the
//! component and flags) is read again, and each service that changed —
//! its component's bytes, its env, grants or limits, its TLS certificate
//! (the files' bytes: a certificate renewed in place counts) — gets the new version
//! for new connections while its open ones finish on the old instance
//! (`server::serve_versions`). Listeners stay open throughout: no client
//! is refused.
//!
//! All or nothing: a manifest that does not parse, a component that does
//! not load or whose trial instance does not start, or a change a reload cannot make (a service added or removed,
//! its listen addresses or instance mode changed, a program or a
//! WASI-backend service, which own their listeners or run to an end) is
//! refused with one log line, and every service goes on as it was.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::component::{Backend, ServiceComponent};
use crate::config::{Instances, Listen, ServiceSpec};
use crate::metrics::Metrics;
use crate::net::tls::{ServerTls, TlsSettings};
use crate::oci::Registries;
use crate::server::Runtime;

/// The process's `SIGHUP`s, caught from now on: installed before anything
/// tells the world it serves (the default action of `SIGHUP` ends the
/// process).
pub fn hangups() -> Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}

/// Reads the services as the process was started with them (the manifest,
/// or the flags) again.
pub type ReadPlan = Box<dyn Fn() -> Result<Vec<ServiceSpec>> + Send + Sync>;

/// One running service, as a reload compares it.
pub struct Running {
    pub name: String,
    listen: Vec<Listen>,
    instances: Instances,
    /// What it runs: its spec and its files' bytes, hashed.
    fingerprint: Fingerprint,
    /// Whether a reload may replace it (a service over the host's listeners).
    replaceable: bool,
    /// Every worker serving it watches this for a new version.
    versions: watch::Sender<Arc<ServiceComponent>>,
}

impl Running {
    /// `loaded`, started from `spec`: its workers serve the versions of
    /// the returned sender (`subscribe` one receiver per worker).
    pub fn new(spec: &ServiceSpec, loaded: Arc<ServiceComponent>) -> Result<Running> {
        let replaceable = loaded.backend() == Backend::Portcullis && !loaded.has_main();
        Ok(Running {
            name: spec.name.clone(),
            listen: spec.listen.clone(),
            instances: spec.instances,
            fingerprint: fingerprint(spec, Some(&loaded.sha256))?,
            replaceable,
            versions: watch::Sender::new(loaded),
        })
    }

    /// The versions its workers serve (see `server::serve_versions`).
    pub fn versions(&self) -> watch::Receiver<Arc<ServiceComponent>> {
        self.versions.subscribe()
    }
}

/// What a service runs, as text: its settings and a hash of its component.
/// `spec`'s fingerprint; `component`: the SHA-256 of its component, when
/// known (read at start), else the file is read and hashed now.
fn fingerprint(spec: &ServiceSpec, component: Option<&str>) -> Result<Fingerprint> {
    let sha256 = |path: &PathBuf| -> Result<String> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(crate::engine::hex(&Sha256::digest(&bytes)))
    };
    let component = match component {
        Some(known) => known.to_string(),
        None => sha256(&spec.component)?,
    };
    // What its listeners present (certificate, key, client CAs, ALPN) apart
    // from the rest: a renewed certificate needs no new version.
    let tls = &spec.tls;
    let mut rest = spec.clone();
    // The component's bytes are what run: the same bytes under a new
    // manifest (pushed again, a new `created`) are no change.
    rest.pulled = None;
    rest.tls = TlsSettings { cert: None, key: None, client_ca: None, alpn: Vec::new(), ..tls.clone() };
    let roots = tls.ca.as_ref().map(sha256).transpose()?;
    let served: Vec<(&PathBuf, String)> = [&tls.cert, &tls.key, &tls.client_ca]
        .into_iter()
        .flatten()
        .map(|p| Ok((p, sha256(p)?)))
        .collect::<Result<_>>()?;
    Ok(Fingerprint {
        service: format!("{rest:?} component sha256:{component} roots sha256:{roots:?}"),
        certificate: format!("{served:?} {:?}", tls.alpn),
    })
}

/// What a reload compares: the service (spec, component, roots), and the
/// certificate its `tls://` listeners present, the files by their bytes (a
/// certificate renewed in place is a change).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    service: String,
    certificate: String,
}

/// What a reload does to one service.
enum Change {
    /// A new version takes new connections (and, pulled from a registry,
    /// what it was).
    Version(Arc<ServiceComponent>, Option<String>),
    /// Only its certificate changed: renewed in place.
    Certificate(ServerTls),
}

/// The process's services and how to read them again.
pub struct Reloader {
    runtime: Runtime,
    read_plan: ReadPlan,
    running: Vec<Running>,
    metrics: Arc<Metrics>,
    /// Where `oci://` components are pulled from, when a service has one.
    registries: Option<Registries>,
}

impl Reloader {
    pub fn new(
        runtime: Runtime,
        read_plan: ReadPlan,
        running: Vec<Running>,
        registries: Option<Registries>,
    ) -> Reloader {
        let metrics = runtime.metrics().clone();
        Reloader { runtime, read_plan, running, metrics, registries }
    }

    /// Reloads on every `SIGHUP` of `hangups` (see [`hangups`]), until the
    /// process ends, one at a time.
    pub fn on(mut self, mut hangups: tokio::signal::unix::Signal) {
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                self.reload().await;
            }
        });
    }

    /// One reload: all of it, or none of it (then why, in the log).
    pub async fn reload(&mut self) {
        tracing::info!("reloading (SIGHUP)");
        match self.prepare().await {
            Ok(changes) if changes.is_empty() => tracing::info!(
                "reload: no service changed (process-wide settings, such as workers and [admin], are read at \
                 start only)"
            ),
            Ok(changes) => {
                for (index, change, fingerprint) in changes {
                    let running = &mut self.running[index];
                    running.fingerprint = fingerprint;
                    let current = running.versions.borrow().clone();
                    match change {
                        Change::Version(loaded, pulled) => {
                            if let Some(pulled) = pulled {
                                tracing::info!(service = %running.name, "runs {pulled}");
                            }
                            running.versions.send_replace(loaded.clone());
                            tracing::info!(
                                service = %running.name,
                                "reloaded: new connections go to the new version; open ones finish on the old \
                                 (closed after the stop's grace if still open)"
                            );
                        }
                        Change::Certificate(renewed) => {
                            if let Some(tls) = current.server_tls() {
                                tls.renew(renewed);
                            }
                            tracing::info!(
                                service = %running.name,
                                "reloaded: new TLS handshakes present the renewed certificate; the instances and \
                                 open connections go on"
                            );
                        }
                    }
                    current.metrics().reloads.inc();
                }
            }
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!("reload refused, every service goes on as it was: {e:#}");
            }
        }
    }

    /// The new versions of the services that changed, loaded, or why the
    /// reload cannot be made.
    async fn prepare(&self) -> Result<Vec<(usize, Change, Fingerprint)>> {
        let mut specs = (self.read_plan)()?;
        if specs.iter().any(|spec| crate::oci::is_reference(&spec.component)) {
            let registries = self.registries.as_ref().context("no cache folder for pulled components")?;
            registries.resolve_at_reload(&mut specs).await?;
        }
        let names = |names: Vec<&str>| names.join(", ");
        let (now, then): (Vec<&str>, Vec<&str>) =
            (specs.iter().map(|s| s.name.as_str()).collect(), self.running.iter().map(|r| r.name.as_str()).collect());
        if now.len() != then.len() || now.iter().any(|name| !then.contains(name)) {
            bail!("the services are now {}, were {}: adding or removing one needs a restart", names(now), names(then));
        }
        let mut changes = Vec::new();
        for spec in specs {
            let index = self.running.iter().position(|r| r.name == spec.name).expect("the same names");
            let running = &self.running[index];
            let fingerprint = fingerprint(&spec, None).with_context(|| format!("service `{}`", spec.name))?;
            if fingerprint == running.fingerprint {
                continue;
            }
            if fingerprint.service == running.fingerprint.service && running.replaceable {
                let renewed = ServerTls::new(&spec.tls).with_context(|| format!("service `{}`", spec.name))?;
                changes.push((index, Change::Certificate(renewed), fingerprint));
                continue;
            }
            if !running.replaceable {
                bail!(
                    "service `{}` changed, but a program or a WASI-backend service (it binds its own \
                     listeners) cannot be reloaded: restart it",
                    spec.name
                );
            }
            if spec.listen != running.listen || spec.instances != running.instances {
                bail!("service `{}`: a change of its listen addresses or instance mode needs a restart", spec.name);
            }
            spec.grants.policy().with_context(|| format!("service `{}`", spec.name))?;
            // Compiling may take a while: off the runtime's thread.
            let runtime = self.runtime.clone();
            let loading = spec.clone();
            let loaded = tokio::task::spawn_blocking(move || runtime.load(&loading))
                .await
                .context("loading the new version")?
                .with_context(|| format!("service `{}`", spec.name))?;
            if loaded.backend() != Backend::Portcullis || loaded.has_main() {
                bail!("service `{}` is now a program or a WASI-backend component: restart it", spec.name);
            }
            loaded.require_callbacks().with_context(|| format!("service `{}`", spec.name))?;
            // It must start, not only load: an instance made and dropped
            // (a start that traps, memory it cannot have, fails here).
            crate::dispatch::instantiate_once(&loaded)
                .await
                .with_context(|| format!("service `{}`: the new version does not start", spec.name))?;
            changes.push((index, Change::Version(loaded, spec.pulled.clone()), fingerprint));
        }
        Ok(changes)
    }
}
