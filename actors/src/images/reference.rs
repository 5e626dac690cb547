//! Image references as docker-worker read them: the name a scope is checked against, and which
//! registry credentials (if any) apply.

use std::collections::BTreeMap;

/// A user name and password for one registry (or one user's part of it).
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// A parsed `[host[:port]/]path[:tag][@digest]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// The reference as the task wrote it.
    pub given: String,
    /// The repository: everything before the tag or digest.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// `sha256:…` when pinned by digest.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Split a reference. A registry port (`host:5000/x`) is not a tag.
    pub fn parse(given: &str) -> ImageReference {
        let (name, digest) = match given.split_once('@') {
            Some((name, digest)) => (name, Some(digest.to_string())),
            None => (given, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None if digest.is_none() => (name, Some("latest".to_string())),
            None => (name, None),
        };
        ImageReference {
            given: given.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        }
    }

    /// The name scopes are checked against: `repository:tag`, or `repository@digest` when pinned
    /// (docker-worker's `fullName`, e.g. `localhost:5000/testuser/busybox:latest`).
    pub fn full_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(digest)) => format!("{}@{digest}", self.repository),
            (Some(tag), None) => format!("{}:{tag}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }

    /// The repository and the tag or digest, as the pull API takes them (`fromImage`, `tag`).
    pub fn pull_parts(&self) -> (String, String) {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => (self.repository.clone(), digest.clone()),
            (None, Some(tag)) => (self.repository.clone(), tag.clone()),
            (None, None) => (self.repository.clone(), "latest".to_string()),
        }
    }

    /// The registry host named by the reference, if its first part is one (has a `.` or a `:`, or is
    /// `localhost`, as Docker decides).
    pub fn registry_host(&self) -> Option<&str> {
        let (first, _) = self.repository.split_once('/')?;
        (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
    }

    /// The credentials from `registries` that apply, chosen as docker-worker did: only references of
    /// two or more `/`-separated parts use credentials; `user/image` is looked up under
    /// `default_registry`; an exact `host/user` key wins over `host/` and `host`.
    pub fn credentials<'a>(
        &self,
        registries: &'a BTreeMap<String, RegistryCredentials>,
        default_registry: &str,
    ) -> Option<(String, &'a RegistryCredentials)> {
        let parts: Vec<&str> = self.repository.split('/').collect();
        if parts.len() < 2 {
            return None;
        }
        let (host, user) = match self.registry_host() {
            Some(host) if parts.len() >= 3 => (host, Some(parts[1])),
            Some(host) => (host, None),
            None => (default_registry, Some(parts[0])),
        };
        let mut keys = Vec::new();
        if let Some(user) = user {
            keys.push(format!("{host}/{user}"));
        }
        keys.push(format!("{host}/"));
        keys.push(host.to_string());
        keys.into_iter()
            .find_map(|k| registries.get(&k).map(|c| (host.to_string(), c)))
    }
}

/// The scope a task needs to use a registry image the worker holds credentials for.
pub fn image_scope(reference: &ImageReference) -> String {
    format!("docker-worker:image:{}", reference.full_name())
}

/// Whether an artifact name is public, so that reading it needs no scope.
pub fn is_public_artifact(path: &str) -> bool {
    path.trim_start_matches('/').starts_with("public/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str) -> RegistryCredentials {
        RegistryCredentials {
            username: user.into(),
            password: "pw".into(),
        }
    }

    #[test]
    fn references_split_into_repository_tag_and_digest() {
        let r = ImageReference::parse("busybox");
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("busybox", Some("latest"))
        );
        assert_eq!(r.full_name(), "busybox:latest");
        let r = ImageReference::parse("localhost:5000/team/img");
        assert_eq!(r.full_name(), "localhost:5000/team/img:latest");
        assert_eq!(r.registry_host(), Some("localhost:5000"));
        let r = ImageReference::parse("localhost:5000/team/img:v2");
        assert_eq!(r.pull_parts(), ("localhost:5000/team/img".into(), "v2".into()));
        let r = ImageReference::parse("img@sha256:abc");
        assert_eq!((r.tag.clone(), r.digest.as_deref()), (None, Some("sha256:abc")));
        assert_eq!(r.full_name(), "img@sha256:abc");
        assert_eq!(r.pull_parts(), ("img".into(), "sha256:abc".into()));
        assert_eq!(ImageReference::parse("team/img").registry_host(), None);
    }

    #[test]
    fn credentials_are_chosen_as_docker_worker_chose_them() {
        let registries = BTreeMap::from([
            ("localhost:5000/".to_string(), creds("any")),
            ("localhost:5000/alice".to_string(), creds("alice")),
            ("registry.hub.docker.com/bob".to_string(), creds("bob")),
            ("quay.io".to_string(), creds("quay")),
        ]);
        let pick = |image: &str| {
            ImageReference::parse(image)
                .credentials(&registries, "registry.hub.docker.com")
                .map(|(host, c)| (host, c.username.clone()))
        };
        assert_eq!(
            pick("localhost:5000/alice/img:1"),
            Some(("localhost:5000".into(), "alice".into()))
        );
        assert_eq!(
            pick("localhost:5000/carol/img"),
            Some(("localhost:5000".into(), "any".into()))
        );
        assert_eq!(
            pick("localhost:5000/img"),
            Some(("localhost:5000".into(), "any".into()))
        );
        assert_eq!(
            pick("bob/tool"),
            Some(("registry.hub.docker.com".into(), "bob".into()))
        );
        assert_eq!(pick("quay.io/org/tool"), Some(("quay.io".into(), "quay".into())));
        assert_eq!(pick("carol/tool"), None);
        // A single-part name never uses credentials, so hub credentials don't put scopes on `ubuntu`.
        assert_eq!(pick("ubuntu"), None);
        let scope = image_scope(&ImageReference::parse("localhost:5000/alice/img"));
        assert_eq!(scope, "docker-worker:image:localhost:5000/alice/img:latest");
    }

    #[test]
    fn public_artifacts_need_no_scope() {
        assert!(is_public_artifact("public/image.tar"));
        assert!(is_public_artifact("/public/image.tar"));
        assert!(!is_public_artifact("private/image.tar"));
        assert!(!is_public_artifact("publicity/image.tar"));
    }
}
