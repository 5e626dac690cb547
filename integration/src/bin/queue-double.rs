//! `queue-double`: run the Taskcluster Queue test double (with its Object service and blob bucket) by
//! itself, for trying a worker by hand.
#![forbid(unsafe_code)]

use std::time::Duration;

use docker_worker_integration::queue_double::{Options, QueueDouble};

const USAGE: &str =
    "usage: queue-double [--port 8080] [--claim-timeout-secs 1200] [--client-id ID --access-token TOKEN]";

fn main() {
    fn fail(message: &str) -> ! {
        eprintln!("queue-double: {message}\n{USAGE}");
        std::process::exit(64);
    }
    let mut options = Options {
        port: 8080,
        ..Options::default()
    };
    let (mut client_id, mut access_token) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--port" => {
                options.port = value("--port")
                    .parse()
                    .unwrap_or_else(|_| fail("--port takes a port number"))
            }
            "--claim-timeout-secs" => {
                let secs: u64 = value("--claim-timeout-secs")
                    .parse()
                    .unwrap_or_else(|_| fail("--claim-timeout-secs takes a number of seconds"));
                options.claim_timeout = Duration::from_secs(secs);
            }
            "--client-id" => client_id = Some(value("--client-id")),
            "--access-token" => access_token = Some(value("--access-token")),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    options.root_client = match (client_id, access_token) {
        (Some(id), Some(token)) => Some((id, token)),
        (None, None) => None,
        _ => fail("--client-id and --access-token go together"),
    };

    let queue = QueueDouble::try_start(options).unwrap_or_else(|e| {
        eprintln!("queue-double: {e}");
        std::process::exit(1);
    });
    let (id, token) = queue.root_credentials();
    println!("queue double listening at {}", queue.root_url());
    println!(
        "  Queue: {root}/api/queue/v1/  Object service: {root}/api/object/v1/  blobs under {root}/__queue_double/bucket/",
        root = queue.root_url()
    );
    println!("root credentials (scope *): clientId={id} accessToken={token}");
    println!("export TASKCLUSTER_ROOT_URL={}", queue.root_url());
    println!("export TASKCLUSTER_CLIENT_ID={id}");
    println!("export TASKCLUSTER_ACCESS_TOKEN={token}");

    let stopped = actix_rt::System::new().block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|_| "SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    });
    match stopped {
        Ok(signal) => eprintln!("queue-double: {signal}, stopping"),
        Err(e) => eprintln!("queue-double: cannot wait for signals ({e}), stopping"),
    }
    drop(queue);
}
