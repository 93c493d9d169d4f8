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
    /// The file is unreadable, over 1 MiB, not JSON of that shape, or an
    /// `auth` is not base64 of `user:password`. An entry with only an
    /// `identitytoken` (Docker Desktop's OAuth) is an error too: portcullis
    /// does not exchange those.
    pub fn load(path: &Path) -> Result<Credentials> {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        if size > MAX_FILE {
            bail!("{} is {size} bytes: a credentials file is at most 1 MiB", path.display());
        }
        let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Credentials::parse(&text).with_context(|| format!("{} (registry credentials)", path.display()))
    }

    fn parse(text: &[u8]) -> Result<Credentials> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: std::collections::BTreeMap<String, Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
            identitytoken: Option<String>,
        }
        // serde_json's errors name a line and column, never the text.
        let file: File = serde_json::from_slice(text).map_err(|e| anyhow::anyhow!("not a credentials file: {e}"))?;
        let mut logins = Vec::new();
        for (key, entry) in file.auths {
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
                _ if entry.identitytoken.is_some() => {
                    bail!("`{key}` has only an identity token (a credential helper's); give a user and password")
                }
                _ => bail!("`{key}` has neither `auth` nor `username` and `password`"),
            };
            let key = key.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
            let (registry, prefix) = key.split_once('/').unwrap_or((key, ""));
            // Docker's old key for Docker Hub names its API version, not a namespace.
            let prefix = if prefix == "v1" || prefix == "v2" { "" } else { prefix };
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
        assert!(Credentials::parse(br#"{"auths": {"a.io": {"identitytoken": "x"}}}"#).is_err());
        assert!(Credentials::parse(b"[1]").is_err());
        assert!(Credentials::parse(b"{}").unwrap().login_for("a.io", "x").is_none());
    }
}
