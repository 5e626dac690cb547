//! A registry of the bench's own for figure 7 when none is given: Debian's `docker-registry` on
//! 127.0.0.1 with basic auth, set up the way `integration/test.sh` sets up the tests' one, and published
//! through the same variables, so [`crate::registry::Registry::from_env`] finds either.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const USER: &str = "benchuser";
const PASSWORD: &str = "benchpassword";

/// A running registry; dropped, it is stopped and its storage removed.
pub struct LocalRegistry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl LocalRegistry {
    /// Start one; an error says why there is none (e.g. `docker-registry` is not installed).
    pub fn start() -> Result<LocalRegistry, String> {
        for program in ["docker-registry", "htpasswd"] {
            if !on_path(program) {
                return Err(format!(
                    "{program} is not installed (integration/setup.sh installs it)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("docker-worker-bench-registry.")
            .tempdir()
            .map_err(|e| format!("a temporary directory: {e}"))?;
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .map_err(|e| format!("htpasswd: {e}"))?;
        if !htpasswd.status.success() {
            return Err(format!(
                "htpasswd failed: {}",
                String::from_utf8_lossy(&htpasswd.stderr)
            ));
        }
        let path = dir.path();
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(path.join(name), bytes).map_err(|e| format!("{name}: {e}"))
        };
        write("htpasswd", &htpasswd.stdout)?;
        // Port 0: the kernel picks a free port and the registry logs the one it got.
        write(
            "config.yml",
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
                 rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  \
                 htpasswd:\n    realm: docker-worker-bench\n    path: {htpasswd}\n",
                data = path.join("data").display(),
                htpasswd = path.join("htpasswd").display(),
            )
            .as_bytes(),
        )?;
        let file = |name: &str| std::fs::File::create(path.join(name)).map_err(|e| format!("{name}: {e}"));
        // The access log goes to stdout, everything else to stderr.
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(path.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(file("access.log")?)
            .stderr(file("registry.log")?)
            .spawn()
            .map_err(|e| format!("docker-registry: {e}"))?;
        let mut registry = LocalRegistry { child, dir, port: 0 };
        registry.port = registry.wait_for_port()?;
        Ok(registry)
    }

    fn wait_for_port(&mut self) -> Result<u16, String> {
        let log = self.dir.path().join("registry.log");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = text.lines().find_map(|l| {
                let rest = l.split("listening on 127.0.0.1:").nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            });
            if let Some(port) = port {
                return Ok(port);
            }
            if self.child.try_wait().ok().flatten().is_some() || Instant::now() > end {
                return Err(format!(
                    "the registry did not start: {}",
                    text.lines().last().unwrap_or("no output")
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The variables `integration/test.sh` exports for its registry, with this one's values.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DOCKER_WORKER_TEST_REGISTRY", format!("127.0.0.1:{}", self.port)),
            ("DOCKER_WORKER_TEST_REGISTRY_USER", USER.into()),
            ("DOCKER_WORKER_TEST_REGISTRY_PASSWORD", PASSWORD.into()),
            (
                "DOCKER_WORKER_TEST_REGISTRY_LOG",
                self.dir.path().join("access.log").display().to_string(),
            ),
        ]
    }

    /// Where it keeps its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
