//! `bench`: docker-worker measured side by side with the Docker engine doing the same work directly.
//! Writes `results.md`, `results.json` and `chart.png` to the results folder and prints the table.
//!
//! Needs Docker and the fixture image (`integration/setup.sh`) and a built worker (by default the
//! `docker-worker` next to this binary). Exits 1 when a figure could not be measured at all; timings are
//! never judged here.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use docker_worker_integration::bench::engine::Engine;
use docker_worker_integration::bench::images;
use docker_worker_integration::bench::local_registry::LocalRegistry;
use docker_worker_integration::bench::report::{self, Machine};
use docker_worker_integration::bench::{chart, run, Options};
use docker_worker_integration::require_docker;

const USAGE: &str = "usage: bench [--quick] [--only N[,N…]] [--worker PATH] [--out DIR]

  --quick        few rounds and small sizes (what CI runs); the numbers are not for comparison
  --only 1,4     run only these figures (1–7)
  --worker PATH  the docker-worker binary (default: the one next to this binary)
  --out DIR      the results folder (default: bench-results/full, or bench-results/quick)";

fn fail(message: &str) -> ! {
    eprintln!("bench: {message}\n{USAGE}");
    std::process::exit(2);
}

fn parse_args() -> Options {
    let here = std::env::current_exe().unwrap_or_default();
    let mut worker = here.with_file_name("docker-worker");
    let (mut quick, mut only, mut out) = (false, Vec::new(), None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--quick" => quick = true,
            "--worker" => worker = PathBuf::from(value("--worker")),
            "--out" => out = Some(PathBuf::from(value("--out"))),
            "--only" => {
                for n in value("--only").split(',') {
                    match n.trim().parse::<u8>() {
                        Ok(n @ 1..=7) => only.push(n),
                        _ => fail(&format!("--only takes figure numbers 1 to 7, not {n:?}")),
                    }
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    if !worker.exists() {
        fail(&format!(
            "no worker binary at {}; build it (cargo build --release -p docker-worker) or pass --worker",
            worker.display()
        ));
    }
    let out = out.unwrap_or_else(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        manifest
            .parent()
            .unwrap_or(&manifest)
            .join("bench-results")
            .join(if quick { "quick" } else { "full" })
    });
    Options {
        worker,
        quick,
        only,
        out,
        registry_missing: None,
    }
}

fn main() {
    let mut options = parse_args();
    // Figure 7 needs a registry: the one integration/test.sh publishes, or one of our own. Its variables are
    // set here, before any other thread exists.
    let given = std::env::var_os(images::REGISTRY_ENV).is_some();
    let wanted = options.only.is_empty() || options.only.contains(&7);
    let _registry = if given || !wanted {
        None
    } else {
        match LocalRegistry::start() {
            Ok(registry) => {
                for (key, value) in registry.env() {
                    std::env::set_var(key, value);
                }
                eprintln!("bench: a registry of its own in {}", registry.dir().display());
                Some(registry)
            }
            Err(why) => {
                options.registry_missing = Some(why);
                None
            }
        }
    };
    if std::panic::catch_unwind(require_docker).is_err() {
        eprintln!("bench: Docker or the fixture image is missing (see above); run integration/setup.sh");
        std::process::exit(3);
    }
    if let Err(e) = std::fs::create_dir_all(options.out.join("logs")) {
        eprintln!("bench: {}: {e}", options.out.display());
        std::process::exit(2);
    }
    let engine = Engine::connect().unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(3);
    });
    let machine = Machine::probe(&engine);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let worker = options.worker.display().to_string();
    eprintln!("bench: {}", machine.describe());
    eprintln!("bench: worker {worker}; results in {}", options.out.display());

    let results = run(&options, &engine);
    if let Ok(n @ 1..) = engine.remove_raw_leftovers() {
        eprintln!("bench: removed {n} raw containers a failed figure left");
    }

    let markdown = report::markdown(&results, &machine, &command, &worker, options.quick);
    let json = report::json(&results, &machine, &command, options.quick);
    let title = format!(
        "docker-worker benchmark{} — {} cores, Docker {}",
        if options.quick { " (--quick)" } else { "" },
        machine.cores,
        machine.docker
    );
    let mut wrote = Vec::new();
    for (name, result) in [
        (
            "results.md",
            std::fs::write(options.out.join("results.md"), &markdown).map_err(|e| e.to_string()),
        ),
        (
            "results.json",
            serde_json::to_vec_pretty(&json)
                .map_err(|e| e.to_string())
                .and_then(|b| std::fs::write(options.out.join("results.json"), b).map_err(|e| e.to_string())),
        ),
        (
            "chart.png",
            chart::draw(&results, &title, &options.out.join("chart.png")),
        ),
    ] {
        match result {
            Ok(()) => wrote.push(name),
            Err(e) => {
                eprintln!("bench: writing {name}: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("{markdown}");
    eprintln!(
        "bench: wrote {} to {} in {:.0} s",
        wrote.join(", "),
        options.out.display(),
        results.seconds
    );
    if results.broken() {
        eprintln!("bench: some figures could not be measured (FAILED above)");
        std::process::exit(1);
    }
}
