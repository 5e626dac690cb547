//! Registry pulls: one `POST /images/create` per attempt, with docker-worker's compact progress lines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use super::reference::{ImageReference, RegistryCredentials};
use super::{ImageError, ImageProgress, PullPolicy, Watchers};

/// Pull `reference`, retrying what may pass (an unreachable registry, a stalled pull) as `policy`
/// says. A missing image or refused credentials fail at once: retrying can't fix them.
pub(crate) async fn pull(
    docker: &Docker,
    reference: &ImageReference,
    credentials: Option<(String, RegistryCredentials)>,
    policy: &PullPolicy,
    watchers: &Watchers,
) -> Result<(), ImageError> {
    let image = reference.given.clone();
    let attempts = policy.attempts.max(1);
    let mut delay = policy.initial_delay;
    let auth = credentials.map(|(host, c)| DockerCredentials {
        username: Some(c.username),
        password: Some(c.password),
        serveraddress: Some(host),
        ..Default::default()
    });
    for attempt in 1..=attempts {
        let message = match pull_once(docker, reference, auth.clone(), policy.stall_timeout, watchers).await {
            Ok(()) => return Ok(()),
            Err(message) => message,
        };
        let classified = classify_pull_error(&image, attempt, &message);
        if !matches!(classified, ImageError::Unreachable { .. }) || attempt == attempts {
            return Err(classified);
        }
        watchers
            .line(format!(
                "Pulling {image} failed (attempt {attempt} of {attempts}): {message}; retrying in {:.1} s\r\n",
                delay.as_secs_f64()
            ))
            .await;
        actix_rt::time::sleep(delay).await;
        delay = (delay * 2).min(policy.max_delay);
    }
    unreachable!("the last attempt returns")
}

/// One pull. Progress: `<layer> - Started downloading`, `<layer> - Downloaded in <s> seconds` and
/// Docker's id-less status lines, as docker-worker wrote them.
async fn pull_once(
    docker: &Docker,
    reference: &ImageReference,
    auth: Option<DockerCredentials>,
    stall_timeout: Duration,
    watchers: &Watchers,
) -> Result<(), String> {
    let (from_image, tag) = reference.pull_parts();
    let options = CreateImageOptionsBuilder::default()
        .from_image(&from_image)
        .tag(&tag)
        .build();
    let mut stream = docker.create_image(Some(options), None, auth);
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut layers = LayerProgress::default();
    let mut last_display = Instant::now() - Duration::from_secs(1);
    loop {
        let item = match tokio::time::timeout(stall_timeout, stream.next()).await {
            Err(_) => {
                return Err(format!(
                    "the pull made no progress for {} s",
                    stall_timeout.as_secs()
                ))
            }
            Ok(None) => break,
            Ok(Some(item)) => item,
        };
        let info = item.map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError { status_code, message } => {
                format!("{message} (HTTP {status_code})")
            }
            bollard::errors::Error::DockerStreamError { error } => error,
            other => other.to_string(),
        })?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(detail);
        }
        let status = info.status.unwrap_or_default();
        let line = match info.id {
            Some(id) => {
                if let Some(detail) = &info.progress_detail {
                    layers.update(&id, &status, detail.current, detail.total);
                }
                match status.as_str() {
                    "Downloading" if !started.contains_key(&id) => {
                        started.insert(id.clone(), Instant::now());
                        Some(format!("{id} - Started downloading\r\n"))
                    }
                    "Download complete" => {
                        layers.complete(&id);
                        let secs = started.get(&id).map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                        Some(format!("{id} - Downloaded in {secs:.3} seconds\r\n"))
                    }
                    _ => None,
                }
            }
            None if !status.is_empty() => Some(format!("{status}\r\n")),
            None => None,
        };
        if let Some(line) = line {
            watchers.line(line).await;
        }
        if last_display.elapsed() >= Duration::from_millis(200) {
            last_display = Instant::now();
            watchers.display(layers.snapshot(&reference.given));
        }
    }
    watchers.display(ImageProgress {
        done: true,
        ..layers.snapshot(&reference.given)
    });
    Ok(())
}

/// Byte counts per layer, summed for a progress display.
#[derive(Debug, Default)]
pub(crate) struct LayerProgress {
    layers: HashMap<String, (u64, u64)>,
    complete: std::collections::HashSet<String>,
}

impl LayerProgress {
    /// A `Downloading` message with byte counts for one layer.
    pub(crate) fn update(&mut self, id: &str, status: &str, current: Option<i64>, total: Option<i64>) {
        if status != "Downloading" {
            return;
        }
        let (Some(current), Some(total)) = (current, total) else {
            return;
        };
        let entry = self.layers.entry(id.to_string()).or_default();
        *entry = (current.max(0) as u64, total.max(0) as u64);
    }

    /// A layer finished downloading: count all its bytes.
    pub(crate) fn complete(&mut self, id: &str) {
        if let Some(entry) = self.layers.get_mut(id) {
            entry.0 = entry.1;
        }
        self.complete.insert(id.to_string());
    }

    /// What a display shows now.
    pub(crate) fn snapshot(&self, image: &str) -> ImageProgress {
        ImageProgress {
            image: image.to_string(),
            done_bytes: self.layers.values().map(|l| l.0).sum(),
            total_bytes: Some(self.layers.values().map(|l| l.1).sum()),
            parts_done: self.complete.len(),
            parts: self.layers.len().max(self.complete.len()),
            done: false,
        }
    }
}

/// Whose fault a failed pull is, from Docker's message.
pub(crate) fn classify_pull_error(image: &str, attempt: u32, message: &str) -> ImageError {
    let m = message.to_ascii_lowercase();
    let image = image.to_string();
    let message = message.to_string();
    if m.contains("invalid reference format") || m.contains("invalid tag format") {
        ImageError::Invalid { image, message }
    } else if m.contains("unauthorized")
        || m.contains("authentication required")
        || m.contains("no basic auth credentials")
        || m.contains("incorrect username or password")
    {
        ImageError::Unauthorized { image, message }
    } else if m.contains("not found")
        || m.contains("manifest unknown")
        || m.contains("repository does not exist")
        || m.contains("(http 404)")
    {
        ImageError::NotFound { image, message }
    } else {
        ImageError::Unreachable {
            image,
            attempts: attempt,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_errors_say_whose_fault() {
        let e = classify_pull_error(
            "x",
            1,
            "pull access denied for x, repository does not exist or may require 'docker login'",
        );
        assert!(matches!(e, ImageError::NotFound { .. }) && e.is_task_fault());
        let e = classify_pull_error("x", 1, "unauthorized: authentication required");
        assert!(matches!(e, ImageError::Unauthorized { .. }) && e.is_task_fault());
        let e = classify_pull_error(
            "x",
            2,
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host",
        );
        assert!(matches!(e, ImageError::Unreachable { attempts: 2, .. }) && !e.is_task_fault());
        let e = classify_pull_error("X Y", 1, "invalid reference format (HTTP 400)");
        assert!(matches!(e, ImageError::Invalid { .. }));
    }

    #[test]
    fn layer_progress_sums_layers() {
        let mut p = LayerProgress::default();
        p.update("a", "Downloading", Some(10), Some(100));
        p.update("b", "Downloading", Some(5), Some(50));
        p.update("b", "Extracting", Some(1), Some(50));
        let s = p.snapshot("img");
        assert_eq!(
            (s.done_bytes, s.total_bytes, s.parts_done, s.parts),
            (15, Some(150), 0, 2)
        );
        p.complete("a");
        let s = p.snapshot("img");
        assert_eq!((s.done_bytes, s.parts_done), (105, 1));
    }
}
