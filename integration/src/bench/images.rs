//! Figure 7: four tasks starting together on one image the engine does not have, pulled from the local
//! registry `integration/test.sh` starts, against one `docker pull` of it.

use super::{Context, FigureResult, Outcome};

/// Where `integration/test.sh` publishes the local registry (`127.0.0.1:<port>`).
pub const REGISTRY_ENV: &str = "DOCKER_WORKER_TEST_REGISTRY";

/// Figure 7. Skipped without a registry; not measured yet with one.
pub fn sharing(_cx: &Context<'_>) -> FigureResult {
    match std::env::var(REGISTRY_ENV) {
        Ok(host) if !host.trim().is_empty() => Err(Outcome::NotMeasured(
            "not measured yet: the worker's registry pulls are not in this tree".into(),
        )),
        _ => Err(Outcome::Skipped(format!(
            "skipped: no registry ({REGISTRY_ENV} unset)"
        ))),
    }
}
