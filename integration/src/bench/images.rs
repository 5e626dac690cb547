//! Figure 7: four tasks starting together on one image the engine does not have, pulled from a local
//! registry, against one `docker pull` of a same-sized image from it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::engine::EventWatch;
use super::stats::median;
use super::worker::{wait_completed, Worker};
use super::{count, BenchError, Context, FigureResult, Measurement, Outcome};
use crate::queue_double::{Options as DoubleOptions, QueueDouble};
use crate::registry::Registry;

/// Where `integration/test.sh` (or the bench itself) publishes the local registry (`127.0.0.1:<port>`).
pub const REGISTRY_ENV: &str = "DOCKER_WORKER_TEST_REGISTRY";

const TASKS: usize = 4;

/// Removes the images named when dropped, whatever happened.
struct LocalImages(Vec<String>);

impl Drop for LocalImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Four tasks on `image` created at once; seconds from the first `createTask` until the last of their
/// containers is created (so the image is there for all four), and the pulls the registry saw.
fn worker_round(
    double: &QueueDouble,
    worker: &Worker,
    registry: &Registry,
    image: &str,
) -> Result<(f64, usize), BenchError> {
    let scopes = [format!("docker-worker:image:{}/*", registry.host())];
    let payload = json!({"image": image, "command": ["true"], "maxRunTime": 300});
    let created = SystemTime::now();
    let tasks: Vec<String> = (0..TASKS)
        .map(|_| worker.create_scoped(double, payload.clone(), &scopes))
        .collect();
    // Subscribed from a second back, so creations that happen meanwhile still count.
    let creations: Vec<EventWatch> = tasks
        .iter()
        .map(|t| {
            EventWatch::start(
                &format!("docker-worker.task-id={t}"),
                "create",
                Duration::from_secs(300),
            )
        })
        .collect();
    let mut last = created;
    for created in &creations {
        last = last.max(created.wait(Duration::from_secs(300))?);
    }
    for task in &tasks {
        wait_completed(double, task, Duration::from_secs(120))?;
    }
    let took = last.duration_since(created).unwrap_or_default();
    Ok((took.as_secs_f64(), registry.pulls(image)))
}

/// One `docker pull` of `image` with a logged-in client configuration; its seconds.
fn raw_pull(registry: &Registry, image: &str) -> Result<f64, BenchError> {
    let config = registry.login_config();
    let started = Instant::now();
    let out = Command::new("docker")
        .arg("--config")
        .arg(config.path())
        .args(["pull", "--quiet", image])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::Io("docker pull".into(), e))?;
    let took = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(BenchError::Broken(format!(
            "docker pull {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(took)
}

/// Figure 7. Skipped when there is no registry.
pub fn sharing(cx: &Context<'_>) -> FigureResult {
    match std::env::var(REGISTRY_ENV) {
        Ok(host) if !host.trim().is_empty() => {}
        _ => {
            let why = cx.options.registry_missing.as_deref().unwrap_or("no registry");
            return Err(Outcome::Skipped(format!("skipped: no registry ({why})")));
        }
    }
    let registry = Registry::from_env();
    let (rounds, size) = (cx.sizes.image_rounds, cx.sizes.image_bytes);
    let double = QueueDouble::start(DoubleOptions::default());
    let toml = format!(
        "[registries]\n\"{}/\" = {{ username = \"{}\", password = \"{}\" }}\n",
        registry.host(),
        registry.user(),
        registry.password()
    );
    let worker =
        Worker::start_with_config(&cx.options.worker, &double, &cx.log("images"), TASKS, &toml, &[])?;
    let (mut ours, mut raw, mut ratio, mut pulls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Two different images of the same size, so neither side finds the other's layers cached.
        let shared = registry.push_unique_image("bench-shared", size);
        let by_hand = registry.push_unique_image("bench-by-hand", size);
        let _cleanup = LocalImages(vec![shared.clone(), by_hand.clone()]);
        let (w, r, n) = if round % 2 == 0 {
            let (w, n) = worker_round(&double, &worker, &registry, &shared)?;
            (w, raw_pull(&registry, &by_hand)?, n)
        } else {
            let r = raw_pull(&registry, &by_hand)?;
            let (w, n) = worker_round(&double, &worker, &registry, &shared)?;
            (w, r, n)
        };
        ours.push(w);
        raw.push(r);
        ratio.push(w / r);
        pulls.push(n.to_string());
    }
    worker.stop(cx.engine)?;
    Ok(vec![Measurement {
        id: "7",
        worker: Some(median(&ours)),
        baseline: Some(median(&raw)),
        measured: median(&ratio),
        note: format!(
            "{} of {TASKS} tasks `true` created at once (capacity {TASKS}) on a fresh image of the fixture plus a \
             {} MiB random layer, timed from the first `createTask` to the last container's `create` event, \
             against one `docker pull --quiet` (CLI included) of another such image; the figure is the median \
             of the per-round ratios. Pulls of the shared image the registry saw per round: {}.",
            count(rounds, "round"),
            size >> 20,
            pulls.join(", ")
        ),
    }])
}
