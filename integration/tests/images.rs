//! Task images end to end: registry pulls with credentials and scopes against a real local registry,
//! images from task artifacts through the queue double, one fetch shared by tasks that start together,
//! and image garbage collection. These tests need Docker and the registry `integration/test.sh` starts;
//! they fail without them.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use docker_worker_integration::daemon::*;
use docker_worker_integration::queue_double::{Options, QueueDouble};
use docker_worker_integration::registry::{has_local, Registry};
use docker_worker_integration::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_docker-worker");

/// The worker configuration giving `password` for every image of the test registry.
fn registries_toml(registry: &Registry, password: &str) -> String {
    format!(
        "[registries]\n\"{}/\" = {{ username = \"{}\", password = \"{}\" }}\n",
        registry.host(),
        registry.user(),
        password
    )
}

/// A payload running `script` on `image` (a reference or an image object).
fn payload_on(image: Value, script: &str) -> Value {
    let mut payload = sh_payload(script, 60);
    payload["image"] = image;
    payload
}

/// Create a task with these scopes.
fn create_scoped(double: &QueueDouble, payload: Value, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    create_with(double, payload, |d| d["scopes"] = json!(scopes))
}

/// The task log of run 0, as uploaded.
fn task_log(double: &QueueDouble, task: &str) -> String {
    let bytes = double
        .artifact_bytes(task, 0, "public/logs/live_backing.log")
        .unwrap_or_else(|| panic!("task {task} has no live_backing.log"));
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_string(&mut out)
        .expect("a gzip stream");
    out
}

fn assert_resolved(double: &QueueDouble, task: &str, want: (&str, &str)) -> String {
    let got = run_state(&wait_resolved(double, task, 0), 0);
    let log = task_log(double, task);
    assert_eq!(
        (got.0.as_str(), got.1.as_str()),
        want,
        "task {task}; its log:\n{log}"
    );
    assert_no_containers(task);
    log
}

/// Removes the images named when dropped, whatever the test's outcome.
struct LocalImages(Vec<String>);

impl Drop for LocalImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

#[test]
fn registry_pulls_need_the_image_scope_when_the_worker_holds_credentials() {
    let registry = Registry::from_env();
    let exact = registry.push_unique_image("exact", 0);
    let star = registry.push_unique_image("star", 0);
    let unscoped = registry.push_unique_image("unscoped", 0);
    let cached = registry.push_unique_image("cached", 0);
    let _cleanup = LocalImages(vec![
        exact.clone(),
        star.clone(),
        unscoped.clone(),
        cached.clone(),
    ]);
    // Already on the host: the scope is still checked.
    registry.pull(&cached);
    let missing = format!(
        "{}/testuser/does-not-exist-{}:latest",
        registry.host(),
        test_task_id("x")
    );

    let double = QueueDouble::start(Options::default());
    let toml = registries_toml(&registry, registry.password());
    let _daemon = Daemon::start_with_config(BIN, &double, &toml, &["worker.capacity=4"]);
    let exact_task = create_scoped(
        &double,
        payload_on(json!(exact), "echo pulled-with-exact-scope"),
        &[&format!("docker-worker:image:{exact}")],
    );
    let star_task = create_scoped(
        &double,
        payload_on(
            json!({"type": "docker-image", "name": star}),
            "echo pulled-with-star-scope",
        ),
        &[&format!("docker-worker:image:{}/*", registry.host())],
    );
    let unscoped_task = create_scoped(&double, payload_on(json!(unscoped), "echo never"), &[]);
    let cached_task = create_scoped(&double, payload_on(json!(cached), "echo never"), &[]);
    let missing_task = create_scoped(
        &double,
        payload_on(json!(missing), "echo never"),
        &[&format!("docker-worker:image:{}/*", registry.host())],
    );

    let log = assert_resolved(&double, &exact_task, ("completed", "completed"));
    assert!(
        log.contains(&exact) && log.contains("pulled-with-exact-scope"),
        "{log}"
    );
    assert_eq!(registry.pulls(&exact), 1, "one pull of {exact}");
    let log = assert_resolved(&double, &star_task, ("completed", "completed"));
    assert!(log.contains("pulled-with-star-scope"), "{log}");

    for (task, image) in [(&unscoped_task, &unscoped), (&cached_task, &cached)] {
        let log = assert_resolved(&double, task, ("failed", "failed"));
        assert!(
            log.contains("Not authorized to use") && log.contains(image.as_str()),
            "{log}"
        );
        assert!(
            log.contains(&format!("docker-worker:image:{image}")),
            "the log names the scope: {log}"
        );
        assert!(!log.contains("never\r\n"), "the task did not run: {log}");
    }
    assert_eq!(
        registry.pulls(&unscoped),
        0,
        "nothing is pulled for a task without the scope"
    );
    assert!(!has_local(&unscoped));

    let log = assert_resolved(&double, &missing_task, ("failed", "failed"));
    assert!(log.contains(&missing) && log.contains("not found"), "{log}");
    assert!(!log.contains("retrying"), "a missing image is not retried: {log}");
}

#[test]
fn wrong_registry_credentials_fail_the_task_at_once_with_the_registrys_reason() {
    let registry = Registry::from_env();
    let image = registry.push_unique_image("wrong-creds", 0);
    let _cleanup = LocalImages(vec![image.clone()]);
    let double = QueueDouble::start(Options::default());
    let toml = registries_toml(&registry, "not-the-password");
    let _daemon = Daemon::start_with_config(BIN, &double, &toml, &["images.pull_attempts=5"]);
    let task = create_scoped(
        &double,
        payload_on(json!(image), "echo never"),
        &[&format!("docker-worker:image:{image}")],
    );
    let log = assert_resolved(&double, &task, ("failed", "failed"));
    assert!(log.contains(&image), "{log}");
    assert!(log.to_ascii_lowercase().contains("unauthorized"), "{log}");
    assert!(
        !log.contains("retrying"),
        "refused credentials are not retried: {log}"
    );
    assert!(!has_local(&image));
}

#[test]
fn an_unreachable_registry_is_resource_unavailable() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &["images.pull_attempts=2"]);
    // Port 1 on loopback: nothing listens, the connection is refused.
    let image = format!("127.0.0.1:1/testuser/nothing-{}:latest", test_task_id("x"));
    let task = create(&double, payload_on(json!(image), "echo never"));
    let log = assert_resolved(&double, &task, ("exception", "resource-unavailable"));
    assert!(
        log.contains(&image) && log.contains("after 2 attempt(s)"),
        "{log}"
    );
    assert!(
        log.contains("retrying"),
        "an unreachable registry is retried: {log}"
    );
}

#[test]
fn two_tasks_starting_together_share_one_pull() {
    let registry = Registry::from_env();
    let size = 64 << 20;
    let shared = registry.push_unique_image("shared", size);
    let by_hand = registry.push_unique_image("by-hand", size);
    let _cleanup = LocalImages(vec![shared.clone(), by_hand.clone()]);

    let double = QueueDouble::start(Options::default());
    let scope = format!("docker-worker:image:{}/*", registry.host());
    // Both tasks are pending before the worker starts, so its first claim takes both.
    let tasks: Vec<String> = (0..2)
        .map(|i| {
            create_scoped(
                &double,
                payload_on(json!(shared), &format!("echo task-{i}")),
                &[&scope],
            )
        })
        .collect();
    let started = Instant::now();
    let toml = registries_toml(&registry, registry.password());
    let daemon = Daemon::start_with_config(BIN, &double, &toml, &["worker.capacity=2"]);
    let logs: Vec<String> = tasks
        .iter()
        .map(|t| assert_resolved(&double, t, ("completed", "completed")))
        .collect();
    let both = started.elapsed();
    assert_eq!(
        registry.pulls(&shared),
        1,
        "exactly one pull of {shared} at the registry"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("Another task is already fetching image")),
        "one task waited for the other's pull: {logs:?}"
    );
    let fetches = daemon.events_of("image fetched");
    assert_eq!(fetches.len(), 1, "one fetch for both tasks: {fetches:?}");
    let t = Instant::now();
    registry.pull(&by_hand);
    let one_pull = t.elapsed();
    eprintln!(
        "two tasks sharing one uncached {} MiB image: the shared pull took {} ms and both tasks resolved \
         {:.2} s after the worker started; one docker pull of a same-sized image by hand: {:.0} ms",
        size >> 20,
        fetches[0]["ms"],
        both.as_secs_f64(),
        one_pull.as_secs_f64() * 1000.0
    );
}

#[test]
fn image_gc_removes_only_what_it_may() {
    let registry = Registry::from_env();
    let unused = registry.push_unique_image("gc-unused", 0);
    let in_use = registry.push_unique_image("gc-in-use", 0);
    let _cleanup = LocalImages(vec![unused.clone(), in_use.clone()]);
    let double = QueueDouble::start(Options::default());
    let toml = registries_toml(&registry, registry.password());
    // A free-space threshold no disk meets: every image the worker fetched is due as soon as no task
    // uses it, long before its expiry.
    let mut daemon = Daemon::start_with_config(
        BIN,
        &double,
        &toml,
        &[
            "worker.capacity=3",
            "images.gc_interval_seconds=1",
            "images.expiry_seconds=86400",
            "images.min_free_disk_mb=1000000000000",
        ],
    );
    let scope = format!("docker-worker:image:{}/*", registry.host());
    let fetched = create_scoped(&double, payload_on(json!(unused), "echo done"), &[&scope]);
    // While this task runs, a container outside the worker starts using its image.
    let sleeper = create_scoped(&double, payload_on(json!(in_use), "sleep 4"), &[&scope]);
    let not_fetched = create(&double, sh_payload("sleep 3", 60));
    let end = Instant::now() + Duration::from_secs(60);
    while !has_local(&in_use) {
        assert!(Instant::now() < end, "the worker never pulled {in_use}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let outside = Command::new("docker")
        .args(["create", "--label", "docker-worker-test.gc=1", &in_use, "true"])
        .output()
        .expect("docker create runs");
    assert!(
        outside.status.success(),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );
    let outside = String::from_utf8_lossy(&outside.stdout).trim().to_string();
    struct Container(String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let outside = Container(outside);

    for task in [&fetched, &sleeper, &not_fetched] {
        assert_resolved(&double, task, ("completed", "completed"));
    }
    let removed = daemon.wait_for_event(
        "image removed",
        |e| e["image"] == unused.as_str(),
        Duration::from_secs(30),
    );
    assert_eq!(removed["reason"], "low disk");
    assert!(!has_local(&unused), "{unused} was removed");
    daemon.wait_for_event(
        "garbage collection warning",
        |e| e["image"] == in_use.as_str(),
        Duration::from_secs(30),
    );
    assert!(has_local(&in_use), "an image a container uses is kept");
    drop(outside);
    daemon.wait_for_event(
        "image removed",
        |e| e["image"] == in_use.as_str(),
        Duration::from_secs(30),
    );
    assert!(!has_local(&in_use));
    assert!(
        has_local(fixture_image()),
        "an image the worker did not fetch is never removed"
    );
    assert!(
        daemon
            .events_of("image removed")
            .iter()
            .all(|e| e["image"] != fixture_image()),
        "no removal of {} was even tried",
        fixture_image()
    );
}

/// A fresh image (the fixture plus a file `/image-id` holding its id) saved as `image.tar`,
/// `image.tar.lz4` and `image.tar.zst` in `dir` with the reference CLIs, then removed from Docker, so only
/// the tarballs have it. Returns the image's own tag and its id file's contents.
fn saved_image(dir: &std::path::Path) -> (String, String) {
    let id = test_task_id("img").to_ascii_lowercase();
    let tag = format!("docker-worker-test/artifact-{id}:v1");
    let dockerfile = format!("FROM {}\nRUN echo {id} > /image-id\n", fixture_image());
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker build runs");
    std::io::Write::write_all(&mut build.stdin.take().unwrap(), dockerfile.as_bytes()).unwrap();
    assert!(build.wait().unwrap().success(), "docker build of {tag}");
    let tar = dir.join("image.tar");
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("docker", &["save", "-o", tar.to_str().unwrap(), &tag]);
    run("docker", &["rmi", &tag]);
    run(
        "lz4",
        &[
            "-q",
            "-f",
            tar.to_str().unwrap(),
            dir.join("image.tar.lz4").to_str().unwrap(),
        ],
    );
    run(
        "zstd",
        &[
            "-q",
            "-f",
            tar.to_str().unwrap(),
            "-o",
            dir.join("image.tar.zst").to_str().unwrap(),
        ],
    );
    (tag, id)
}

/// The name docker-worker gives the image of artifact `path` of `task_id`: md5 of both, hex.
fn local_image_name(task_id: &str, path: &str) -> String {
    let mut md5 = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum runs");
    std::io::Write::write_all(
        &mut md5.stdin.take().unwrap(),
        format!("{task_id}{path}").as_bytes(),
    )
    .unwrap();
    let out = md5.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..32].to_string()
}

#[test]
fn task_images_load_from_tar_lz4_and_zst_once_under_the_workers_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let (own_tag, id) = saved_image(dir.path());
    let double = QueueDouble::start(Options::default());
    let producer = QueueDouble::new_task_id();
    let formats = ["public/image.tar", "public/image.tar.lz4", "public/image.tar.zst"];
    for path in formats {
        let file = dir.path().join(path.trim_start_matches("public/"));
        double.seed_artifact(&producer, path, &file, "application/octet-stream");
    }
    let _cleanup = LocalImages(
        formats
            .iter()
            .map(|p| format!("{}:latest", local_image_name(&producer, p)))
            .chain([own_tag.clone()])
            .collect(),
    );
    let _daemon = Daemon::start(BIN, &double, &["worker.capacity=3"]);
    let tasks: Vec<(&str, String)> = formats
        .iter()
        .map(|path| {
            let image = json!({"type": "task-image", "taskId": producer, "path": path});
            (*path, create(&double, payload_on(image, "cat /image-id")))
        })
        .collect();
    for (path, task) in &tasks {
        let log = assert_resolved(&double, task, ("completed", "completed"));
        assert!(
            log.contains(&format!("{id}\r\n")),
            "the task ran on the artifact's image: {log}"
        );
        assert!(
            log.contains(&format!(
                "Image '{path}' from task '{producer}' loaded.  Using image ID sha256:"
            )),
            "{log}"
        );
        assert!(has_local(&format!(
            "{}:latest",
            local_image_name(&producer, path)
        )));
    }
    assert!(
        !has_local(&own_tag),
        "the tarball's own tag {own_tag} is not applied"
    );

    // The same artifact again: the loaded image is used, nothing is downloaded.
    let again = create(
        &double,
        payload_on(
            json!({"type": "task-image", "taskId": producer, "path": formats[0]}),
            "cat /image-id",
        ),
    );
    assert_resolved(&double, &again, ("completed", "completed"));
    for path in formats {
        assert_eq!(
            double.artifact_downloads(&producer, path),
            1,
            "{path} was downloaded once"
        );
    }
}

#[test]
fn indexed_images_public_and_private_with_and_without_the_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (own_tag, id) = saved_image(dir.path());
    let double = QueueDouble::start(Options::default());
    let producer = QueueDouble::new_task_id();
    let public = "public/image.tar";
    let private = "private/docker-worker-tests/image.tar";
    for path in [public, private] {
        double.seed_artifact(
            &producer,
            path,
            &dir.path().join("image.tar"),
            "application/x-tar",
        );
    }
    let namespace = format!(
        "garbage.docker-worker-tests.docker-images.{}",
        test_task_id("ns").to_ascii_lowercase()
    );
    double.index_task(&namespace, &producer);
    let _cleanup = LocalImages(vec![
        format!("{}:latest", local_image_name(&producer, public)),
        format!("{}:latest", local_image_name(&producer, private)),
        own_tag,
    ]);
    let _daemon = Daemon::start(BIN, &double, &["worker.capacity=4"]);
    let indexed = |path: &str| json!({"type": "indexed-image", "namespace": namespace, "path": path});
    let public_task = create(&double, payload_on(indexed(public), "cat /image-id"));
    let private_scope = format!("queue:get-artifact:{private}");
    let private_task = create_scoped(
        &double,
        payload_on(indexed(private), "cat /image-id"),
        &[&private_scope],
    );
    let unscoped_task = create_scoped(&double, payload_on(indexed(private), "echo never"), &[]);
    let missing =
        json!({"type": "indexed-image", "namespace": format!("{namespace}.missing"), "path": public});
    let missing_task = create(&double, payload_on(missing, "echo never"));

    for task in [&public_task, &private_task] {
        let log = assert_resolved(&double, task, ("completed", "completed"));
        assert!(log.contains(&format!("{id}\r\n")), "{log}");
    }
    let log = assert_resolved(&double, &unscoped_task, ("failed", "failed"));
    assert!(
        log.contains("Not authorized to use") && log.contains(&private_scope),
        "{log}"
    );
    let log = assert_resolved(&double, &missing_task, ("failed", "failed"));
    assert!(
        log.contains(&format!(
            "Could not find a task associated with \"{namespace}.missing\" namespace."
        )),
        "{log}"
    );
    assert_eq!(double.artifact_downloads(&producer, private), 1);
}

#[test]
fn different_images_are_fetched_at_most_max_parallel_fetches_at_a_time() {
    let registry = Registry::from_env();
    let first = registry.push_unique_image("limit-a", 8 << 20);
    let second = registry.push_unique_image("limit-b", 8 << 20);
    let _cleanup = LocalImages(vec![first.clone(), second.clone()]);
    let double = QueueDouble::start(Options::default());
    let scope = format!("docker-worker:image:{}/*", registry.host());
    let tasks: Vec<String> = [&first, &second]
        .iter()
        .map(|image| create_scoped(&double, payload_on(json!(image), "true"), &[&scope]))
        .collect();
    let toml = registries_toml(&registry, registry.password());
    let pushed = registry.requests().len();
    let _daemon = Daemon::start_with_config(
        BIN,
        &double,
        &toml,
        &["worker.capacity=2", "images.max_parallel_fetches=1"],
    );
    for task in &tasks {
        assert_resolved(&double, task, ("completed", "completed"));
    }
    // With one fetch at a time, every request of one pull is answered before the other pull's first.
    let order: Vec<usize> = registry
        .requests()
        .iter()
        .skip(pushed)
        .filter_map(|r| {
            let of = |image: &str| {
                r.path
                    .starts_with(&format!("/v2/{}/", registry.repository(image)))
            };
            if of(&first) {
                Some(0)
            } else if of(&second) {
                Some(1)
            } else {
                None
            }
        })
        .collect();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 1, "the pulls did not overlap: {order:?}");
}

#[test]
fn images_no_task_used_for_the_expiry_time_are_removed() {
    let registry = Registry::from_env();
    let image = registry.push_unique_image("gc-expired", 0);
    let _cleanup = LocalImages(vec![image.clone()]);
    let double = QueueDouble::start(Options::default());
    let toml = registries_toml(&registry, registry.password());
    let mut daemon = Daemon::start_with_config(
        BIN,
        &double,
        &toml,
        &["images.gc_interval_seconds=1", "images.expiry_seconds=2"],
    );
    let scope = format!("docker-worker:image:{}/*", registry.host());
    let task = create_scoped(&double, payload_on(json!(image), "true"), &[&scope]);
    assert_resolved(&double, &task, ("completed", "completed"));
    let removed = daemon.wait_for_event(
        "image removed",
        |e| e["image"] == image.as_str(),
        Duration::from_secs(30),
    );
    assert_eq!(removed["reason"], "expired");
    assert!(!has_local(&image));
}

#[test]
fn docker_worker_run_pulls_with_credentials_and_loads_task_images() {
    let registry = Registry::from_env();
    let pulled = registry.push_unique_image("run", 0);
    let dir = tempfile::tempdir().unwrap();
    let (own_tag, id) = saved_image(dir.path());
    let double = QueueDouble::start(Options::default());
    let producer = QueueDouble::new_task_id();
    double.seed_artifact(
        &producer,
        "public/image.tar.zst",
        &dir.path().join("image.tar.zst"),
        "application/zstd",
    );
    let _cleanup = LocalImages(vec![
        pulled.clone(),
        own_tag,
        format!("{}:latest", local_image_name(&producer, "public/image.tar.zst")),
    ]);
    let config = dir.path().join("worker.toml");
    std::fs::write(&config, registries_toml(&registry, registry.password())).unwrap();

    let run = |task: Value| {
        let runner = Runner::new(BIN, "run-image");
        let mut cmd = runner.command(&task);
        cmd.arg("--config")
            .arg(&config)
            .args(["--set", &format!("worker.root_url={}", double.root_url())]);
        let out = cmd.output().expect("docker-worker run runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = run(json!({
        "scopes": [format!("docker-worker:image:{pulled}")],
        "payload": payload_on(json!(pulled), "echo ran-on-pulled-image"),
    }));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(" - Downloaded in ") && stdout.contains("ran-on-pulled-image"),
        "{stdout}"
    );
    let (code, stdout) = run(json!({
        "scopes": [],
        "payload": payload_on(json!(pulled), "echo never"),
    }));
    assert_eq!(code, Some(1), "a missing scope fails the task: {stdout}");
    assert!(stdout.contains("Not authorized to use"), "{stdout}");
    let image = json!({"type": "task-image", "taskId": producer, "path": "public/image.tar.zst"});
    let (code, stdout) = run(json!(payload_on(image, "cat /image-id")));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains(&format!("{id}\r\n")), "{stdout}");
}
