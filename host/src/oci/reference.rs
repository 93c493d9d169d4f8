//! `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`: which registry, which
//! repository, which tag or digest.
//!
//! Parsed here rather than by `oci-spec`'s `Reference`, which takes a
//! first part without a dot for a Docker Hub namespace (anyone may own
//! one) and does not read a bracketed IPv6 registry (`[::1]:5000`).
//! The grammar is the distribution spec's: repository parts are lowercase
//! letters and digits joined by `.`, `_`, `__` or dashes; a tag is at most
//! 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.

use std::fmt;

use anyhow::{Result, bail};

/// The scheme of a component in a registry.
pub const SCHEME: &str = "oci://";

/// The longest repository name a registry takes (the distribution spec's).
const MAX_REPOSITORY: usize = 255;
/// The longest reference read: a host name, a port, a repository, a tag
/// and a digest fit in well under it.
const MAX_REFERENCE: usize = 1024;

/// A component in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Reads `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`.
    ///
    /// ```text
    /// oci://ghcr.io/team/echo:v1      registry ghcr.io, tag v1
    /// oci://[::1]:5000/echo@sha256:…  a loopback registry, pinned
    /// ```
    ///
    /// # Errors
    /// No `oci://`; a first part that names no registry (it needs a dot,
    /// a port, `localhost` or brackets); a repository, tag or digest
    /// outside the grammar above (digests are `sha256:` and 64 lowercase
    /// hex digits).
    pub fn parse(text: &str) -> Result<Reference> {
        if text.len() > MAX_REFERENCE {
            let start: String = text.chars().take(80).flat_map(char::escape_debug).collect();
            bail!("`{start}...` is longer than a reference may be ({MAX_REFERENCE} bytes)");
        }
        let Some(rest) = text.strip_prefix(SCHEME) else {
            bail!("`{text}` is not an oci:// reference");
        };
        let Some((registry, path)) = rest.split_once('/') else { bail!(needs_registry(text)) };
        if !names_registry(registry) {
            bail!(needs_registry(text));
        }
        let (name, digest) = match path.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (path, None),
        };
        // A tag follows the last `:` after the last `/`.
        let last = name.rfind('/').map_or(0, |at| at + 1);
        let (repository, tag) = match name[last..].rfind(':') {
            Some(at) => (&name[..last + at], Some(&name[last + at + 1..])),
            None => (name, None),
        };
        if repository.len() > MAX_REPOSITORY || !repository.split('/').all(is_path_component) {
            bail!(
                "`{text}`: `{repository}` is not a repository name (lowercase letters and digits, joined by `.`, `_`, \
                 `-` or `/`)"
            );
        }
        if let Some(tag) = tag.filter(|tag| !is_tag(tag)) {
            bail!("`{text}`: `{tag}` is not a tag (at most 128 of A-Z a-z 0-9 _ . -, not starting with . or -)");
        }
        if let Some(digest) = digest.filter(|digest| !is_digest(digest)) {
            bail!("`{text}`: `{digest}` is not a digest (sha256: and 64 lowercase hex digits)");
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// `HOST[:PORT]`, as written (`[::1]:5000` keeps its brackets).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository, e.g. `team/echo`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if one was written.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:...`), if the reference is pinned.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What a registry is asked for: the digest if pinned, else the tag,
    /// else `latest`.
    pub fn wanted(&self) -> &str {
        self.digest().or(self.tag()).unwrap_or("latest")
    }

    /// Whether the registry runs on this machine (`127.0.0.0/8`, `[::1]`,
    /// `localhost`), so plain HTTP to it stays on the machine.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => &self.registry,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The same component for `oci-client`, which `push` uses.
    pub fn for_oci_client(&self) -> oci_client::Reference {
        let tag = self.tag().unwrap_or("latest").to_string();
        oci_client::Reference::with_tag(self.registry.clone(), self.repository.clone(), tag)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn needs_registry(text: &str) -> String {
    format!(
        "`{text}`: give the registry and the repository (oci://HOST[:PORT]/REPO:TAG; the host with a dot or a port, \
         localhost, or [IPv6])"
    )
}

/// A registry's `HOST[:PORT]` that cannot be a Docker Hub namespace.
fn names_registry(registry: &str) -> bool {
    let (host, port) = match registry.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            // After the brackets: nothing, or `:PORT` (not `@host`, `?`, ...).
            Some((ip, "")) if ip.parse::<std::net::Ipv6Addr>().is_ok() => (registry, None),
            Some((ip, after)) if ip.parse::<std::net::Ipv6Addr>().is_ok() && after.starts_with(':') => {
                (registry, Some(&after[1..]))
            }
            _ => return false,
        },
        None => match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        },
    };
    if port.is_some_and(|port| {
        port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    }) {
        return false;
    }
    if registry.starts_with('[') {
        return true;
    }
    let labels_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    labels_ok && (host.contains('.') || port.is_some() || host == "localhost")
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &part[start..i];
        if !(separator == "." || separator == "_" || separator == "__" || separator.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= 128 && tag.bytes().next().is_some_and(word) && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag_or_a_digest() {
        let tagged = Reference::parse("oci://127.0.0.1:5000/team/echo:v1").unwrap();
        assert_eq!(
            (tagged.registry(), tagged.repository(), tagged.tag(), tagged.wanted()),
            ("127.0.0.1:5000", "team/echo", Some("v1"), "v1")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = Reference::parse(&format!("oci://[::1]:5000/echo@{digest}")).unwrap();
        assert_eq!((pinned.registry(), pinned.digest(), pinned.wanted()), ("[::1]:5000", Some(&*digest), &*digest));
        assert_eq!(pinned.to_string(), format!("oci://[::1]:5000/echo@{digest}"));
        let both = Reference::parse(&format!("oci://ghcr.io/a/b:v2@{digest}")).unwrap();
        assert_eq!((both.tag(), both.wanted()), (Some("v2"), &*digest));
        assert_eq!(Reference::parse("oci://localhost/echo").unwrap().wanted(), "latest");
        assert_eq!(Reference::parse("oci://ghcr.io/a.b/c__d/e--f").unwrap().repository(), "a.b/c__d/e--f");

        for refused in [
            "echo.wasm",
            "oci://echo",
            "oci://registry/echo:v1", // a Docker Hub namespace, not a registry
            "oci://ghcr.io/Echo:v1",
            "oci://ghcr.io/echo:.v1",
            "oci://ghcr.io/echo@sha256:abc",
            "oci://ghcr.io/echo@md5:0123",
            "oci://ghcr.io//echo",
            "oci://ghcr.io/echo-",
            "oci://ghcr.io/a...b",
            "oci://host:99999/echo",
            "oci://[::1/echo",
            "oci://[nope]:5000/echo",
            "oci://-bad.io/echo",
            "oci://[::1]@127.0.0.2:5000/echo", // looks local, is not
            "oci://[::1]?x/echo",
            "oci://[::1]:/echo",
            "oci://[::1]:+80/echo",
            "oci://host:+80/echo",
        ] {
            assert!(Reference::parse(refused).is_err(), "{refused}");
        }
        let long_tag = format!("oci://ghcr.io/echo:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        let long = format!("oci://ghcr.io/{}", "a/".repeat(50_000));
        assert!(Reference::parse(&long).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn loopback_registries_are_told_apart() {
        for (registry, loopback) in [
            ("127.0.0.1:5000", true),
            ("127.9.9.9", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
            ("[::2]:5000", false),
        ] {
            let reference = Reference::parse(&format!("oci://{registry}/echo")).unwrap();
            assert_eq!(reference.is_loopback(), loopback, "{registry}");
        }
    }
}
