#!/usr/bin/env bash
# The whole test suite: prepare Docker and the fixture image, start a local registry, then run every test, the
# end-to-end ones on the real engine included. Tests that need Docker or the registry fail without them; none skip.
#
#   bash integration/test.sh                                   # cargo test --workspace --all-targets
#   bash integration/test.sh -p docker-worker-integration --test queue_double
#   bash integration/test.sh -- --nocapture                    # extra arguments go to cargo test
#
# Arguments that choose packages or targets (-p, --test, --lib, ...) replace the default --workspace
# --all-targets; any other argument is added to it.
#
# The registry: Debian's docker-registry on 127.0.0.1 (a port the kernel picks), basic auth from a bcrypt
# htpasswd file, storage and logs in a temporary directory. Docker treats 127.0.0.0/8 as an insecure registry,
# so it talks plain HTTP and still sends the credentials. The tests find it through
#   DOCKER_WORKER_TEST_REGISTRY           127.0.0.1:<port>
#   DOCKER_WORKER_TEST_REGISTRY_USER      testuser
#   DOCKER_WORKER_TEST_REGISTRY_PASSWORD  testpassword
#   DOCKER_WORKER_TEST_REGISTRY_LOG       its access log (one line per request, Apache combined format)
# (see integration/src/registry.rs). When the run ends, however it ends, the registry is stopped, the images
# under 127.0.0.1:<port>/ are removed and its directory goes. A registry left by a killed earlier run is cleared
# at the start; one that belongs to a run still going is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash integration/setup.sh >/dev/null

REGISTRY_USER=testuser
REGISTRY_PASSWORD=testpassword
# One directory per run: owner (this script's pid), registry.pid, port, config.yml, htpasswd, data/, logs.
REGISTRY_DIR_PREFIX="${TMPDIR:-/tmp}/docker-worker-test-registry."
REGISTRY_START_TIMEOUT=30
REGISTRY_DIR=""

log() { printf 'test.sh: %s\n' "$*" >&2; }

# Is PID a live (not zombie) process whose command name is NAME?
alive_as() {
    local pid=$1 name=$2 state
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/stat" ]] || return 1
    state="$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# Local images named under the registry at 127.0.0.1:PORT, as references docker rmi takes: repo:tag, or
# repo@digest for an image pulled by digest (it has no tag).
registry_images() {
    local prefix="127.0.0.1:$1/" repo tag digest
    docker images --digests --format '{{.Repository}} {{.Tag}} {{.Digest}}' |
        while read -r repo tag digest; do
            [[ "$repo" == "$prefix"* ]] || continue
            if [[ "$tag" != "<none>" ]]; then
                printf '%s:%s\n' "$repo" "$tag"
            elif [[ "$digest" != "<none>" ]]; then
                printf '%s@%s\n' "$repo" "$digest"
            fi
        done | sort -u
}

# By reference, not by id: an id may also carry a name outside the registry (the fixture image, say).
remove_registry_images() {
    local port=$1 refs
    [[ "$port" =~ ^[0-9]+$ ]] || return 0
    refs="$(registry_images "$port")"
    [[ -n "$refs" ]] || return 0
    log "removing images under 127.0.0.1:$port: ${refs//$'\n'/ }"
    # shellcheck disable=SC2086 # one reference per word
    docker rmi $refs >/dev/null || log "some images under 127.0.0.1:$port could not be removed"
}

# Stop the registry of DIR (TERM, then KILL), remove its images and the directory.
stop_registry() {
    local dir=$1 pid port i
    pid="$(cat "$dir/registry.pid" 2>/dev/null || true)"
    port="$(cat "$dir/port" 2>/dev/null || true)"
    if alive_as "$pid" docker-registry; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive_as "$pid" docker-registry || break
            sleep 0.1
        done
        if alive_as "$pid" docker-registry; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true # ours: reap it quietly
    remove_registry_images "$port"
    rm -rf -- "$dir"
}

# Registries whose run is over (its test.sh was killed): stop them and clear what they left.
clear_stale_registries() {
    local dir owner
    for dir in "$REGISTRY_DIR_PREFIX"*; do
        [[ -d "$dir" ]] || continue
        owner="$(cat "$dir/owner" 2>/dev/null || true)"
        if alive_as "$owner" bash && tr '\0' ' ' <"/proc/$owner/cmdline" | grep -q 'test\.sh'; then
            continue # another run, still going
        fi
        log "clearing the registry a killed earlier run left in $dir"
        stop_registry "$dir"
    done
}

start_registry() {
    local dir pid port="" deadline
    dir="$(mktemp -d "${REGISTRY_DIR_PREFIX}XXXXXX")"
    REGISTRY_DIR="$dir"
    echo $$ >"$dir/owner"
    htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" >"$dir/htpasswd" 2>/dev/null
    mkdir "$dir/data"
    # Port 0: the kernel picks a free port and the registry logs the one it got, so two runs never race for one.
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
auth:
  htpasswd:
    realm: docker-worker-test
    path: $dir/htpasswd
EOF
    # The access log goes to stdout, everything else to stderr.
    docker-registry serve "$dir/config.yml" </dev/null >"$dir/access.log" 2>"$dir/registry.log" &
    pid=$!
    echo "$pid" >"$dir/registry.pid"
    deadline=$((SECONDS + REGISTRY_START_TIMEOUT))
    while [[ -z "$port" ]]; do
        port="$(sed -nE 's/.*msg="listening on 127\.0\.0\.1:([0-9]+)".*/\1/p' "$dir/registry.log" | head -n 1)"
        [[ -n "$port" ]] && break
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            tail -n 20 "$dir/registry.log" | sed 's/^/  | /' >&2
            log "the registry did not start (log above)"
            return 1
        fi
        sleep 0.1
    done
    echo "$port" >"$dir/port"
    # A login proves that it answers and takes the credentials; its config stays in the run's directory.
    if ! printf '%s' "$REGISTRY_PASSWORD" | docker --config "$dir/docker-config" login \
        --username "$REGISTRY_USER" --password-stdin "127.0.0.1:$port" >/dev/null 2>&1; then
        tail -n 20 "$dir/registry.log" | sed 's/^/  | /' >&2
        log "docker login to the registry at 127.0.0.1:$port failed (log above)"
        return 1
    fi
    export DOCKER_WORKER_TEST_REGISTRY="127.0.0.1:$port"
    export DOCKER_WORKER_TEST_REGISTRY_USER="$REGISTRY_USER"
    export DOCKER_WORKER_TEST_REGISTRY_PASSWORD="$REGISTRY_PASSWORD"
    export DOCKER_WORKER_TEST_REGISTRY_LOG="$dir/access.log"
    log "registry at $DOCKER_WORKER_TEST_REGISTRY (access log $DOCKER_WORKER_TEST_REGISTRY_LOG)"
}

on_exit() {
    local rc=$?
    if [[ -n "$REGISTRY_DIR" ]]; then
        stop_registry "$REGISTRY_DIR"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Containers a killed earlier run left behind would be counted as this run's leaks; clear them first.
stale=$(docker ps -aq --filter label=docker-worker.managed)
if [ -n "$stale" ]; then
    echo "test.sh: removing containers an interrupted earlier run left: $stale" >&2
    # shellcheck disable=SC2086 # one id per word
    docker rm -f $stale >/dev/null
fi
clear_stale_registries
start_registry

selection=(--workspace --all-targets)
for arg in "$@"; do
    [[ "$arg" == -- ]] && break
    case "$arg" in
    -p | --package | --package=* | -p?* | --workspace | --all | --exclude | --exclude=* | --lib | --bin | --bin=* | \
        --bins | --test | --test=* | --tests | --example | --example=* | --examples | --bench | --bench=* | --benches | \
        --all-targets | --doc)
        selection=()
        break
        ;;
    esac
done
cargo test ${selection[@]+"${selection[@]}"} "$@"
leftover=$(docker ps -aq --filter label=docker-worker.managed)
if [ -n "$leftover" ]; then
    echo "test.sh: the tests left containers behind:" >&2
    docker ps -a --filter label=docker-worker.managed >&2
    exit 1
fi
