//! Credentials for private registries, read from the file `docker login`
//! and `podman login` write (Docker's `config.json`, containers'
//! `auth.json`; Kubernetes' `kubernetes.io/dockerconfigjson` Secrets hold
//! the same): `{"auths": {"ghcr.io": {"auth": "<base64 of user:password>"}}}`.
//!
//! A key may name a registry (`ghcr.io`, `https://ghcr.io/v1/`) or a part
//! of one (`ghcr.io/team`: that namespace only); the most specific key
//! that covers a repository wins. Credentials go only to the registry they
//! are keyed by, and to the token realm it names.

use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;

/// The largest credentials file read.
const MAX_FILE: u64 = 1 << 20;

/// A user name and password for one registry (or part of one).
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a password in a log line or an error.
        write!(f, "Login {{ user: {:?}, password: <hidden> }}", self.user)
    }
}

/// Every login of a credentials file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// (registry `HOST[:PORT]`, repository prefix or "", login)
    logins: Vec<(String, String, Login)>,
}

impl Credentials {
    /// Reads `path` (`--registry-auth`, or `REGISTRY_AUTH_FILE`).
    ///
    /// # Errors
    /// The file is unreadable, not a regular file, over 1 MiB, not JSON of
    /// that shape (no `auths`), names one registry twice, or an `auth` is
    /// not base64 of `user:password`. Entries a credential helper keeps
    /// (`{}`, or only an `identitytoken`) are skipped: portcullis runs no
    /// helpers.
    pub fn load(path: &Path) -> Result<Credentials> {
        // A regular file only: a FIFO would block the start, /dev/zero
        // would never end (its size says 0).
        let meta = std::fs::metadata(path).with_context(|| {
            format!("cannot read {} (registry logins: --registry-auth or REGISTRY_AUTH_FILE)", path.display())
        })?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            bail!("{}: registry logins are a regular file of at most 1 MiB", path.display());
        }
        let mut text = Vec::new();
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE + 1), &mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Credentials::parse(&text).with_context(|| format!("{} (registry logins)", path.display()))
    }

    fn parse(text: &[u8]) -> Result<Credentials> {
        #[derive(serde::Deserialize)]
        struct File {
            auths: Option<std::collections::BTreeMap<String, Entry>>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        // Where, never what: serde's messages quote the values (a password).
        let file: File = serde_json::from_slice(text).map_err(|e| {
            anyhow::anyhow!("not a logins file ({:?} error at line {}, column {})", e.classify(), e.line(), e.column())
        })?;
        let Some(auths) = file.auths else {
            bail!("no `auths` in it (a `credsStore` or `credHelpers` helper, or an old .dockercfg, is not read)");
        };
        let mut logins: Vec<(String, String, Login)> = Vec::new();
        for (key, entry) in auths {
            let login = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok());
                    let Some((user, password)) = decoded.as_deref().and_then(|text| text.split_once(':')) else {
                        bail!("the `auth` of `{key}` is not base64 of user:password");
                    };
                    Login { user: user.to_string(), password: password.to_string() }
                }
                (_, Some(user), Some(password)) => Login { user, password },
                // `{}` (a `credsStore` keeps the login) or an identity token
                // (Docker Desktop's OAuth): nothing here to send; skipped.
                _ => continue,
            };
            let lower = key.to_ascii_lowercase();
            let bare = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
            let path = bare.unwrap_or(&lower).trim_end_matches('/');
            let (registry, prefix) = path.split_once('/').unwrap_or((path, ""));
            // A URL key (`https://index.docker.io/v1/`) names the API version
            // it was written for, not a namespace; a bare key's path is one.
            let prefix = if bare.is_some() && (prefix == "v1" || prefix == "v2") { "" } else { prefix };
            if logins.iter().any(|(r, p, _)| r == registry && p == prefix) {
                bail!("two logins for `{registry}{}{prefix}`", if prefix.is_empty() { "" } else { "/" });
            }
            logins.push((registry.to_string(), prefix.to_string(), login));
        }
        Ok(Credentials { logins })
    }

    /// The login for `repository` at `registry` (`HOST[:PORT]`), if any.
    pub fn login_for(&self, registry: &str, repository: &str) -> Option<Login> {
        let covers = |prefix: &str| {
            prefix.is_empty()
                || repository == prefix
                || repository.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        };
        self.logins
            .iter()
            .filter(|(host, prefix, _)| host.eq_ignore_ascii_case(registry) && covers(prefix))
            .max_by_key(|(_, prefix, _)| prefix.len())
            .map(|(_, _, login)| login.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_read_as_docker_and_podman_write_them() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        let file = format!(
            r#"{{"auths": {{
                "ghcr.io": {{"auth": "{auth}"}},
                "ghcr.io/team": {{"username": "bot", "password": "p"}},
                "https://127.0.0.1:5000/v1/": {{"auth": "{auth}"}}
            }}, "credsStore": "desktop"}}"#
        );
        let credentials = Credentials::parse(file.as_bytes()).unwrap();
        let alice = credentials.login_for("ghcr.io", "other/echo").unwrap();
        assert_eq!((alice.user.as_str(), alice.password.as_str()), ("alice", "s3cret:with:colons"));
        assert_eq!(credentials.login_for("ghcr.io", "team/echo").unwrap().user, "bot", "the most specific key");
        assert_eq!(credentials.login_for("ghcr.io", "teamwork/echo").unwrap().user, "alice", "a whole namespace only");
        assert_eq!(credentials.login_for("127.0.0.1:5000", "echo").unwrap().user, "alice");
        assert!(credentials.login_for("evil.example", "echo").is_none());
        assert!(credentials.login_for("ghcr.io.evil.example", "echo").is_none());
        assert!(!format!("{alice:?}").contains("s3cret"), "a password never prints");

        assert!(Credentials::parse(br#"{"auths": {"a.io": {"auth": "!!"}}}"#).is_err());
        let helpers = br#"{"auths": {"a.io": {"identitytoken": "x"}, "b.io": {}, "c.io": {"auth": "YTpi"}}}"#;
        let helpers = Credentials::parse(helpers).unwrap();
        assert!(
            helpers.login_for("a.io", "x").is_none() && helpers.login_for("b.io", "x").is_none(),
            "a helper's: skipped"
        );
        assert_eq!(helpers.login_for("c.io", "x").unwrap().user, "a");
        assert!(Credentials::parse(b"[1]").is_err());
        // Not regular files: a FIFO would block, /dev/zero never end.
        assert!(Credentials::load(Path::new("/dev/zero")).is_err());
        assert!(Credentials::load(Path::new("/")).is_err());
        assert!(Credentials::parse(br#"{"credsStore": "desktop"}"#).is_err(), "no logins in it: said");
        assert!(Credentials::parse(br#"{"auths": {}}"#).unwrap().login_for("a.io", "x").is_none());
        // A value of the wrong type: where, never the value.
        for leaky in [
            &br#"{"auths": {"a.io": {"username": "u", "password": 918273645}}}"#[..],
            br#"{"auths": {"a.io": "c2VjcmV0"}}"#,
        ] {
            let error = Credentials::parse(leaky).unwrap_err().to_string();
            assert!(!error.contains("918273645") && !error.contains("c2VjcmV0"), "{error}");
        }
        // `host/v2` is a namespace; only a URL key's /v1/ is Docker's API version.
        let namespaces = br#"{"auths": {"r.io": {"username": "all", "password": "p"}, "r.io/v2": {"username": "v2", "password": "p"}}}"#;
        let namespaces = Credentials::parse(namespaces).unwrap();
        assert_eq!(namespaces.login_for("r.io", "team/echo").unwrap().user, "all");
        assert_eq!(namespaces.login_for("r.io", "v2/echo").unwrap().user, "v2");
        let twice = br#"{"auths": {"r.io": {"username": "a", "password": "p"}, "https://R.io": {"username": "b", "password": "p"}}}"#;
        assert!(Credentials::parse(twice).is_err(), "two logins for one registry");
    }
}
