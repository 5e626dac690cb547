//! The local registry `integration/test.sh` starts for the image-pull tests, and what it saw.
//!
//! The registry is Debian's `docker-registry` on `127.0.0.1:<port>` with basic auth. Docker treats
//! 127.0.0.0/8 as an insecure registry: it speaks plain HTTP to it and still sends the credentials. Its
//! access log has one line per request in Apache's combined format, written once the reply is sent.
//!
//! What one `docker pull <host>/<repo>:<tag>` of an image Docker does not have shows there (Docker 20.10):
//!
//! ```text
//! GET  /v2/                              401   the challenge: this request never carries credentials
//! HEAD /v2/<repo>/manifests/<tag>        200   resolves the tag to a digest (with credentials)
//! GET  /v2/<repo>/manifests/sha256:<d>   200   the manifest, by digest
//! GET  /v2/<repo>/blobs/sha256:<c>       200   the image config
//! GET  /v2/<repo>/blobs/sha256:<l>       200   each layer Docker does not have yet
//! ```
//!
//! Pulling a tag whose image Docker already has (same digest) shows only the `/v2/` and the HEAD: no
//! manifest GET, no blob. A tag that does not exist shows a HEAD and a GET of `manifests/<tag>`, both
//! 404. Without credentials Docker stops after the `/v2/` 401. A pull by digest has no HEAD: it GETs
//! `manifests/sha256:<d>` straight away. So a successful manifest GET is one pull that fetched the
//! image, whether by tag or by digest: [`Registry::pulls`] counts those.
//!
//! Tests fail, never skip, when the registry is not there: [`Registry::from_env`] panics.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The registry `integration/test.sh` started: where it listens, its credentials and its access log.
#[derive(Debug, Clone)]
pub struct Registry {
    host: String,
    user: String,
    password: String,
    log: PathBuf,
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// The path, e.g. `/v2/testuser/img/manifests/latest`.
    pub path: String,
    /// The reply's status code.
    pub status: u16,
}

const ENV_HOST: &str = "DOCKER_WORKER_TEST_REGISTRY";
const ENV_USER: &str = "DOCKER_WORKER_TEST_REGISTRY_USER";
const ENV_PASSWORD: &str = "DOCKER_WORKER_TEST_REGISTRY_PASSWORD";
const ENV_LOG: &str = "DOCKER_WORKER_TEST_REGISTRY_LOG";

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => panic!(
            "{name} is not set: this test needs the local registry that integration/test.sh starts. Run \
             it with `bash integration/test.sh` (extra arguments go to cargo test); tests that need the \
             registry never skip."
        ),
    }
}

/// Run a docker command to its end; panics with its output if it fails.
fn docker(args: &[&str], what: &str) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: the docker CLI could not run ({e})"));
    assert!(
        out.status.success(),
        "{what}: docker {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Remove the local image `reference` (`docker rmi`), if Docker has it. Panics if it is there and cannot be
/// removed (a container still uses it, say).
pub fn remove_local(reference: &str) {
    let out = Command::new("docker")
        .args(["rmi", reference])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker rmi {reference}: the docker CLI could not run ({e})"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("No such image"),
        "docker rmi {reference} failed: {stderr}"
    );
}

/// Whether Docker has the image `reference` locally.
pub fn has_local(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `len` bytes no compressor can shrink (xorshift64*, seeded from a fresh UUID), so each layer is unique and
/// as big as asked, written without holding them in memory.
fn write_random(path: &Path, len: usize) {
    let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut state = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
    let mut left = len;
    while left > 0 {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = left.min(word.len());
        out.write_all(&word[..n])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        left -= n;
    }
    out.flush().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Parse one access-log line: `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 401 87 "" "agent"`.
fn parse_line(line: &str) -> Option<Request> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut words = request.split(' ');
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(Request { method, path, status })
}

impl Registry {
    /// The registry from the environment `integration/test.sh` exports (`DOCKER_WORKER_TEST_REGISTRY`,
    /// `…_USER`, `…_PASSWORD`, `…_LOG`). Panics with what to do when any is missing.
    pub fn from_env() -> Registry {
        let registry = Registry {
            host: env(ENV_HOST),
            user: env(ENV_USER),
            password: env(ENV_PASSWORD),
            log: PathBuf::from(env(ENV_LOG)),
        };
        assert!(
            registry.log.is_file(),
            "{ENV_LOG} names {}, which does not exist: is the registry integration/test.sh started still \
             running?",
            registry.log.display()
        );
        registry
    }

    /// `127.0.0.1:<port>`: the first component of every image name in the registry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The user the registry accepts.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The access log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A fresh Docker client configuration directory logged in to the registry, for `docker --config`
    /// (so nothing is written to `~/.docker/config.json`). Removed when dropped.
    pub fn login_config(&self) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("docker-worker-test-docker-config-")
            .tempdir()
            .expect("a temporary directory");
        let config = dir.path().to_str().expect("a UTF-8 temporary path");
        let mut child = Command::new("docker")
            .args([
                "--config",
                config,
                "login",
                "--username",
                &self.user,
                "--password-stdin",
                &self.host,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the docker CLI runs");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(self.password.as_bytes())
            .expect("write the password to docker login");
        let out = child.wait_with_output().expect("docker login finishes");
        assert!(
            out.status.success(),
            "docker login {} failed: {}",
            self.host,
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    /// Build a new image (the fixture image plus one layer holding a unique id and `extra_bytes` random
    /// bytes), push it as `<host>/testuser/<repo>-<random>:latest` and remove the local copy, so the image
    /// is only in the registry. Returns its full reference. Every call makes a new repository, so tests
    /// running in parallel never share one.
    pub fn push_unique_image(&self, repo: &str, extra_bytes: usize) -> String {
        crate::require_docker();
        assert!(
            !repo.is_empty()
                && repo
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
            "repository name {repo:?}: use lower-case letters, digits and '-'"
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        let reference = format!("{}/{}/{repo}-{}:latest", self.host, self.user, &id[..12]);

        let context = tempfile::Builder::new()
            .prefix("docker-worker-test-image-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::write(
            context.path().join("Dockerfile"),
            format!(
                "FROM {}\nCOPY id extra /docker-worker-test/\n",
                crate::fixture_image()
            ),
        )
        .expect("write the Dockerfile");
        std::fs::write(context.path().join("id"), format!("{reference}\n")).expect("write the id file");
        write_random(&context.path().join("extra"), extra_bytes);
        let dir = context.path().to_str().expect("a UTF-8 temporary path");
        let out = Command::new("docker")
            .args(["build", "--quiet", "--tag", &reference, dir])
            // The classic builder: buildx need not be installed.
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .expect("the docker CLI runs");
        assert!(
            out.status.success(),
            "docker build of {reference} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let config = self.login_config();
        let config_dir = config.path().to_str().expect("a UTF-8 temporary path");
        let push = Command::new("docker")
            .args(["--config", config_dir, "push", &reference])
            .stdin(Stdio::null())
            .output()
            .expect("the docker CLI runs");
        // Whatever the push did, the local copy goes.
        remove_local(&reference);
        assert!(
            push.status.success(),
            "docker push {reference} failed: {}{}",
            String::from_utf8_lossy(&push.stdout),
            String::from_utf8_lossy(&push.stderr)
        );
        assert!(
            !has_local(&reference),
            "{reference} is still present locally after docker rmi"
        );
        reference
    }

    /// `docker pull` of `reference` with a temporary logged-in configuration; panics if it fails.
    pub fn pull(&self, reference: &str) {
        let config = self.login_config();
        let config_dir = config.path().to_str().expect("a UTF-8 temporary path");
        docker(&["--config", config_dir, "pull", "--quiet", reference], "pull");
    }

    /// The repository of `reference` (`<host>/testuser/x-1234:latest` → `testuser/x-1234`). Panics for a
    /// reference outside this registry.
    pub fn repository(&self, reference: &str) -> String {
        let rest = reference
            .strip_prefix(&self.host)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{reference} is not an image of the registry at {}", self.host));
        let rest = rest.split_once('@').map_or(rest, |(name, _)| name);
        match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name.to_string(),
            _ => rest.to_string(),
        }
    }

    /// Every request the registry has logged so far, in the order it sent the replies.
    pub fn requests(&self) -> Vec<Request> {
        let bytes = std::fs::read(&self.log)
            .unwrap_or_else(|e| panic!("the registry's access log {}: {e}", self.log.display()));
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(parse_line)
            .collect()
    }

    /// The logged requests for the repository of `reference` (any tag or digest), in order.
    pub fn requests_for(&self, reference: &str) -> Vec<Request> {
        let prefix = format!("/v2/{}/", self.repository(reference));
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(&prefix))
            .collect()
    }

    fn count(&self, reference: &str, method: &str, kind: &str, ok_only: bool) -> usize {
        let infix = format!("/{kind}/");
        self.requests_for(reference)
            .iter()
            .filter(|r| r.method == method && r.path.contains(&infix) && (!ok_only || r.status == 200))
            .count()
    }

    /// Manifest GETs for the repository of `reference`, by tag or digest, whatever their status.
    pub fn manifest_gets(&self, reference: &str) -> usize {
        self.count(reference, "GET", "manifests", false)
    }

    /// Manifest HEADs for the repository of `reference` (Docker resolves a tag with one per pull, even
    /// when it has the image already).
    pub fn manifest_heads(&self, reference: &str) -> usize {
        self.count(reference, "HEAD", "manifests", false)
    }

    /// Blob GETs for the repository of `reference`: the config and the layers Docker downloaded.
    pub fn blob_gets(&self, reference: &str) -> usize {
        self.count(reference, "GET", "blobs", false)
    }

    /// Pulls of the repository of `reference` that fetched the image: successful manifest GETs (see the
    /// module documentation). A pull of an image Docker already had does not count; a pull that touched
    /// the registry at all shows in [`Registry::manifest_heads`] or [`Registry::requests_for`].
    pub fn pulls(&self, reference: &str) -> usize {
        self.count(reference, "GET", "manifests", true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry {
            host: "127.0.0.1:5000".into(),
            user: "testuser".into(),
            password: "testpassword".into(),
            log: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn access_log_lines_parse() {
        let line = concat!(
            r#"127.0.0.1 - - [01/Dec/2026:15:59:12 +0000] "HEAD /v2/testuser/x/manifests/latest HTTP/1.1" "#,
            r#"200 736 "" "docker/20.10.24 \"quoted\"""#
        );
        assert_eq!(
            parse_line(line),
            Some(Request {
                method: "HEAD".into(),
                path: "/v2/testuser/x/manifests/latest".into(),
                status: 200,
            })
        );
        assert_eq!(parse_line("time=\"…\" level=info"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn references_name_their_repository() {
        let r = registry();
        assert_eq!(r.repository("127.0.0.1:5000/testuser/a-1:latest"), "testuser/a-1");
        assert_eq!(r.repository("127.0.0.1:5000/testuser/a-1"), "testuser/a-1");
        assert_eq!(
            r.repository("127.0.0.1:5000/testuser/a-1@sha256:abcd"),
            "testuser/a-1"
        );
    }

    #[test]
    #[should_panic(expected = "is not an image of the registry")]
    fn references_elsewhere_are_refused() {
        registry().repository("127.0.0.1:5001/testuser/a:latest");
    }

    #[test]
    fn random_files_have_the_asked_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        write_random(&path, 1001);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1001);
        write_random(&path, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
