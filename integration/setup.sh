#!/usr/bin/env bash
# Prepare this machine to run docker-worker's end-to-end tests.
#
#   bash integration/setup.sh            # from any directory, as root
#
# Target: Debian 12 (bookworm), run as root, on a fresh machine or in CI
# (CI=true, no stdin). Idempotent: every step checks before it acts, so a
# second run only confirms that everything is in place.
#
# What it does:
#   1. installs the Debian packages listed in REQUIRED_PACKAGES that are
#      missing (apt-get update runs only when something must be installed);
#   2. makes sure a Docker engine answers on /var/run/docker.sock, starting
#      dockerd in the background (log: $DOCKERD_LOG) after clearing what a
#      dockerd/containerd killed uncleanly earlier leaves behind;
#   3. builds the fixture image docker-worker-test/busybox:latest FROM scratch
#      out of Debian's static busybox (no registry is reachable here), unless
#      an up-to-date one exists, and checks that it runs.
#
# Output contract: progress lines ("setup: ...") go to stderr; stdout carries
# exactly one line, DOCKER_WORKER_TEST_IMAGE=<image>, so a caller may do
#     export "$(bash integration/setup.sh)"
# The image name also lives in integration/fixtures/test-image (one line),
# which Rust tests can include_str!(). It is docker-worker-test/busybox:latest.
#
# Environment knobs (all optional):
#   DOCKERD_LOG             dockerd's log file        (/var/log/dockerd.log)
#   DOCKERD_START_TIMEOUT   seconds to wait for dockerd to answer      (60)
#   DOCKERD_EXTRA_ARGS      extra words passed to dockerd           (empty)
#   SETUP_FORCE_REBUILD=1   rebuild the fixture image even if up to date
set -Eeuo pipefail
set +m # no job control: a background job must not lead its own process group

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
FIXTURES_DIR="$SCRIPT_DIR/fixtures"
ROOTFS_OVERLAY="$FIXTURES_DIR/busybox-rootfs"

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
export DEBIAN_FRONTEND=noninteractive
export NEEDRESTART_SUSPEND=1 # needrestart's apt hook: nothing to restart here

# ---------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------
REQUIRED_PACKAGES=(
    docker.io       # dockerd (+ containerd, runc) and /usr/bin/docker
    busybox-static  # the static /bin/busybox that the fixture image is made of
    docker-registry # the local registry test.sh starts for the image-pull tests
    apache2-utils   # htpasswd -B: the registry's bcrypt password file
    zstd            # zstd-compressed image and artifact fixtures
    lz4             # lz4-compressed image and artifact fixtures
)

# ---------------------------------------------------------------------------
# Docker engine
# ---------------------------------------------------------------------------
DOCKER_SOCK=/var/run/docker.sock
DOCKER_PIDFILE=/var/run/docker.pid
# docker.io's dockerd, started without --containerd, supervises a containerd of
# its own with this state dir (pid file, socket, generated config).
CONTAINERD_STATE_DIR=/var/run/docker/containerd
CONTAINERD_PIDFILE="$CONTAINERD_STATE_DIR/containerd.pid"
CONTAINERD_SOCK="$CONTAINERD_STATE_DIR/containerd.sock"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKERD_START_TIMEOUT="${DOCKERD_START_TIMEOUT:-60}"
DOCKERD_EXTRA_ARGS="${DOCKERD_EXTRA_ARGS:-}"
LOCK_FILE=/run/lock/docker-worker-integration-setup.lock
APT_LOG=/var/log/docker-worker-integration-apt.log

# ---------------------------------------------------------------------------
# Fixture image
# ---------------------------------------------------------------------------
TEST_IMAGE="$(tr -d '[:space:]' <"$FIXTURES_DIR/test-image")"
FIXTURE_LABEL=org.docker-worker.test-fixture
# Bump when the way the rootfs is put together below changes; changes to the
# files under fixtures/busybox-rootfs and to busybox are noticed by themselves.
FIXTURE_RECIPE=1
REQUIRED_APPLETS=(sh sleep printenv seq mkdir dd ln mkfifo env cat echo ls wc)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
START_SECONDS=$SECONDS
TMP_DIR=""

log() { printf 'setup: %s\n' "$*" >&2; }
die() {
    printf 'setup: ERROR: %s\n' "$*" >&2
    exit 1
}
on_err() {
    local rc=$? line=$1 cmd=$2
    printf 'setup: ERROR: command failed (status %s) at %s line %s: %s\n' \
        "$rc" "${BASH_SOURCE[0]}" "$line" "$cmd" >&2
    exit "$rc"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR
cleanup() { if [[ -n "$TMP_DIR" ]]; then rm -rf -- "$TMP_DIR"; fi; }
trap cleanup EXIT

need_root() {
    [[ $EUID -eq 0 ]] || die "$1 needs root; run this script as root"
}

# Does the Docker engine answer? (bounded: never hangs on a wedged daemon)
docker_answers() {
    timeout "${1:-10}" docker info >/dev/null 2>&1
}

# Is the process alive? A zombie counts as gone: it holds no files or locks.
proc_alive() {
    local pid=$1 state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/stat" ]] || return 1
    state="$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

proc_comm() { cat "/proc/$1/comm" 2>/dev/null || true; }

# wait_gone PID SECONDS: wait (bounded) until PID has exited.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while proc_alive "$pid"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# stop_process PID NAME GRACE: give PID GRACE seconds to exit by itself, then
# SIGTERM, then SIGKILL. Fails only if it survives all of that.
stop_process() {
    local pid=$1 name=$2 grace=$3
    wait_gone "$pid" "$grace" && return 0
    log "sending SIGTERM to $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # a stopped process cannot act on TERM
    wait_gone "$pid" 15 && return 0
    log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 15
}

# ---------------------------------------------------------------------------
# 1. packages
# ---------------------------------------------------------------------------
pkg_installed() {
    dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'
}

ensure_packages() {
    local pkg missing=()
    for pkg in "${REQUIRED_PACKAGES[@]}"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "packages present: ${REQUIRED_PACKAGES[*]}"
        return 0
    fi
    need_root "installing ${missing[*]}"
    log "installing missing packages: ${missing[*]}"
    # apt's chatter goes to $APT_LOG (shown on failure); fd 9 (our lock) is
    # closed so that nothing apt starts can hold it.
    {
        printf '\n===== %s: apt-get install %s =====\n' \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${missing[*]}"
    } >>"$APT_LOG"
    local attempt
    for attempt in 1 2 3; do
        apt-get -q update </dev/null >>"$APT_LOG" 2>&1 9>&- && break
        if ((attempt == 3)); then
            tail -n 20 "$APT_LOG" | sed 's/^/  | /' >&2
            die "apt-get update failed 3 times (log: $APT_LOG)"
        fi
        log "apt-get update failed; retrying in 5s"
        sleep 5
    done
    if ! apt-get -q -y --no-install-recommends \
        -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install "${missing[@]}" </dev/null >>"$APT_LOG" 2>&1 9>&-; then
        tail -n 20 "$APT_LOG" | sed 's/^/  | /' >&2
        die "apt-get install ${missing[*]} failed (log: $APT_LOG)"
    fi
    for pkg in "${missing[@]}"; do
        pkg_installed "$pkg" || die "package $pkg is still not installed after apt-get install"
    done
    log "installed: ${missing[*]}"
}

# ---------------------------------------------------------------------------
# 2. docker engine
# ---------------------------------------------------------------------------

# dockerd refuses to start while /var/run/docker.pid names a live process, and a
# dockerd killed uncleanly leaves that file behind (sometimes
# while the process is still exiting). Returns 0 if the old dockerd turned out
# to answer after all, 1 if the way is clear for a new one.
clear_stale_dockerd() {
    local pid comm deadline
    [[ -e "$DOCKER_PIDFILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$DOCKER_PIDFILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && proc_alive "$pid"; then
        comm="$(proc_comm "$pid")"
        if [[ "$comm" == dockerd ]]; then
            log "dockerd from an earlier run (pid $pid) is alive but not answering; waiting for it"
            # It may still be starting up, or still exiting: give it a moment.
            deadline=$((SECONDS + 20))
            while proc_alive "$pid" && ((SECONDS < deadline)); do
                docker_answers 5 && return 0
                sleep 0.5
            done
            stop_process "$pid" dockerd 0 ||
                die "old dockerd (pid $pid) will not exit (state: $(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null)); cannot start a new one"
            log "old dockerd (pid $pid) is gone"
        else
            log "stale $DOCKER_PIDFILE: pid $pid is now '$comm', not dockerd"
        fi
    fi
    log "removing stale $DOCKER_PIDFILE"
    rm -f -- "$DOCKER_PIDFILE"
    return 1
}

# The containerd that dockerd supervises: with dockerd gone, a survivor of it
# would be taken over by the new dockerd if its pid file still names a live
# process (even a dying one, or an unrelated process that reused the pid), and
# a second containerd on the same state would block on its database lock. So
# stop any survivor and clear its pid file and socket. Running containers'
# shims are left alone; a fresh containerd picks them up.
clear_stale_containerd() {
    local pid exe pids=() p
    if [[ -e "$CONTAINERD_PIDFILE" ]]; then
        pid="$(tr -dc '0-9' <"$CONTAINERD_PIDFILE" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && proc_alive "$pid" && [[ "$(proc_comm "$pid")" == containerd ]]; then
            pids+=("$pid")
        fi
    fi
    # Also any containerd running on dockerd's config whose pid file is lost.
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        [[ "$(proc_comm "$pid")" == containerd ]] || continue
        exe="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)"
        [[ "$exe" == *"$CONTAINERD_STATE_DIR/containerd.toml"* ]] || continue
        [[ " ${pids[*]-} " == *" $pid "* ]] || pids+=("$pid")
    done
    for pid in "${pids[@]}"; do
        log "containerd left by an earlier dockerd (pid $pid) is still running; stopping it"
        stop_process "$pid" containerd 2 ||
            die "old containerd (pid $pid) will not exit; cannot start dockerd"
    done
    if [[ -e "$CONTAINERD_PIDFILE" || -S "$CONTAINERD_SOCK" ]]; then
        log "removing stale containerd pid file / socket under $CONTAINERD_STATE_DIR"
        rm -f -- "$CONTAINERD_PIDFILE" "$CONTAINERD_SOCK"
    fi
}

show_log_tail() { # show_log_tail OFFSET: dockerd's output since OFFSET
    printf 'setup: ---- last lines of %s ----\n' "$DOCKERD_LOG" >&2
    tail -c "+$(($1 + 1))" "$DOCKERD_LOG" 2>/dev/null | tail -n 40 | sed 's/^/  | /' >&2 || true
    printf 'setup: ---- end of %s ----\n' "$DOCKERD_LOG" >&2
}

start_dockerd() {
    local dockerd pid offset rc started deadline extra=()
    need_root "starting dockerd"
    dockerd="$(command -v dockerd || true)"
    [[ -n "$dockerd" ]] || die "dockerd not found (is the docker.io package installed?)"
    if [[ -n "$DOCKERD_EXTRA_ARGS" ]]; then
        read -r -a extra <<<"$DOCKERD_EXTRA_ARGS"
    fi

    mkdir -p -- "$(dirname -- "$DOCKERD_LOG")"
    # keep the log from growing without bound across many restarts
    if [[ -f "$DOCKERD_LOG" ]] && (($(stat -c %s "$DOCKERD_LOG") > 16 * 1024 * 1024)); then
        mv -f -- "$DOCKERD_LOG" "$DOCKERD_LOG.1"
    fi
    printf '\n===== %s: dockerd started by %s =====\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${BASH_SOURCE[0]}" >>"$DOCKERD_LOG"
    offset="$(stat -c %s "$DOCKERD_LOG")"

    log "starting dockerd (log: $DOCKERD_LOG)"
    # Detached: own session (setsid), SIGHUP ignored (nohup), no stdin, output
    # to the log, and our lock's fd 9 closed, so it outlives this script and
    # holds nothing of ours. Without job control (set +m) the background job is
    # not a process-group leader, so setsid does not fork: $! is dockerd's pid.
    (
        ulimit -n 1048576 2>/dev/null || true
        exec setsid nohup "$dockerd" --pidfile "$DOCKER_PIDFILE" \
            --host "unix://$DOCKER_SOCK" ${extra[@]+"${extra[@]}"}
    ) </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
    pid=$!

    started=$SECONDS
    deadline=$((started + DOCKERD_START_TIMEOUT))
    until docker_answers 5; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" || rc=$?
            show_log_tail "$offset"
            die "dockerd exited (status $rc) before it answered; see $DOCKERD_LOG"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$offset"
            log "stopping the dockerd that did not answer (pid $pid)"
            stop_process "$pid" dockerd 0 || true
            wait "$pid" 2>/dev/null || true # reap it quietly
            die "dockerd did not answer on $DOCKER_SOCK within ${DOCKERD_START_TIMEOUT}s; see $DOCKERD_LOG"
        fi
        sleep 0.5
    done
    log "dockerd started (pid $pid) after $((SECONDS - started))s"
}

ensure_dockerd() {
    command -v docker >/dev/null || die "docker client not found (is the docker.io package installed?)"
    if ! docker_answers; then
        if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != "unix://$DOCKER_SOCK" ]]; then
            die "DOCKER_HOST=$DOCKER_HOST does not answer; this script only starts a local dockerd on $DOCKER_SOCK"
        fi
        if clear_stale_dockerd; then
            log "the earlier dockerd answers after all"
        else
            clear_stale_containerd
            start_dockerd
        fi
    fi
    local version
    version="$(timeout 10 docker version --format '{{.Server.Version}}' 2>/dev/null)" ||
        die "docker answers 'info' but not 'version'"
    log "dockerd is running (version $version)"
}

# ---------------------------------------------------------------------------
# 3. fixture image
# ---------------------------------------------------------------------------

# Identifies what the image is built from: recipe version, busybox binary,
# and the overlay files (content, mode, names; not git checkout times).
fixture_fingerprint() {
    {
        echo "recipe=$FIXTURE_RECIPE"
        sha256sum </bin/busybox
        tar -C "$ROOTFS_OVERLAY" --sort=name --owner=0 --group=0 --numeric-owner \
            --mtime=@0 -cf - . | sha256sum
    } | sha256sum | cut -c1-16
}

image_fingerprint() {
    docker image inspect --format "{{ index .Config.Labels \"$FIXTURE_LABEL\" }}" \
        "$TEST_IMAGE" 2>/dev/null || true
}

build_image() {
    local fingerprint=$1 rootfs applet count=0 old_id new_id
    [[ -x /bin/busybox ]] || die "/bin/busybox missing (package busybox-static)"
    /bin/busybox --list >/dev/null || die "/bin/busybox does not run"
    [[ -d "$ROOTFS_OVERLAY" ]] || die "fixture files missing: $ROOTFS_OVERLAY"

    TMP_DIR="$(mktemp -d /tmp/docker-worker-fixture.XXXXXX)"
    rootfs="$TMP_DIR/rootfs"
    mkdir -p "$rootfs"/{bin,etc,root,tmp,proc,sys,dev,usr}
    cp /bin/busybox "$rootfs/bin/busybox"
    while read -r applet; do
        [[ -n "$applet" && "$applet" != busybox && "$applet" != */* ]] || continue
        ln -s busybox "$rootfs/bin/$applet"
        count=$((count + 1))
    done < <(/bin/busybox --list)
    [[ -e "$rootfs/bin/sh" ]] || ln -s busybox "$rootfs/bin/sh"
    # everything lives in /bin; the usual other dirs point there
    ln -s bin "$rootfs/sbin"
    ln -s ../bin "$rootfs/usr/bin"
    ln -s ../bin "$rootfs/usr/sbin"
    # fixture files (passwd, group, a printenv stand-in...) replace, never write
    # through, any applet symlink of the same name
    cp -a --remove-destination "$ROOTFS_OVERLAY/." "$rootfs/"
    chmod 755 "$rootfs" "$rootfs"/{bin,etc,proc,sys,dev,usr}
    chmod 700 "$rootfs/root"
    chmod 1777 "$rootfs/tmp"

    old_id="$(docker image inspect --format '{{.Id}}' "$TEST_IMAGE" 2>/dev/null || true)"
    tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -cf - . |
        timeout 120 docker import \
            --change 'ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin' \
            --change 'CMD ["/bin/sh"]' \
            --change "LABEL $FIXTURE_LABEL=$fingerprint" \
            --message "docker-worker integration fixture (busybox-static, $count applets)" \
            - "$TEST_IMAGE" >/dev/null ||
        die "docker import of $TEST_IMAGE failed"
    new_id="$(docker image inspect --format '{{.Id}}' "$TEST_IMAGE")"
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true # may still be in use
    fi
    rm -rf -- "$TMP_DIR"
    TMP_DIR=""
    log "built $TEST_IMAGE from busybox-static ($count applets, fingerprint $fingerprint)"
}

# Runs a container from the image: proves the engine can run containers and
# the image has what the tests use. Prints the container's output on failure.
verify_image() {
    local out rc=0
    # shellcheck disable=SC2016 # the script is expanded by the container's sh
    out="$(timeout 120 docker run --rm -e "APPLETS=${REQUIRED_APPLETS[*]}" "$TEST_IMAGE" sh -c '
        set -e
        echo hi
        for a in $APPLETS; do
            command -v "$a" >/dev/null || { echo "missing applet: $a"; exit 3; }
        done
        [ "$(FIXTURE_CHECK=ok printenv FIXTURE_CHECK)" = ok ] || { echo "printenv broken"; exit 3; }
        [ -d /tmp ] && [ -k /tmp ] && [ -w /tmp ] || { echo "/tmp is not a sticky writable dir"; exit 3; }
        [ "$(id -un)" = root ] || { echo "no root in /etc/passwd"; exit 3; }
        echo "applets=$(ls /bin | wc -l)"
    ' 2>&1)" || rc=$?
    if ((rc != 0)) || [[ "$out" != hi$'\n'applets=* ]]; then
        printf '%s\n' "$out" | sed 's/^/  | /' >&2
        return 1
    fi
    VERIFIED_APPLETS="${out##*applets=}"
}

ensure_image() {
    local want have
    want="$(fixture_fingerprint)"
    have="$(image_fingerprint)"
    if [[ "${SETUP_FORCE_REBUILD:-0}" == 1 ]]; then
        log "SETUP_FORCE_REBUILD=1: rebuilding $TEST_IMAGE"
        build_image "$want"
    elif [[ -z "$have" ]] && ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
        log "building $TEST_IMAGE"
        build_image "$want"
    elif [[ "$have" != "$want" ]]; then
        log "$TEST_IMAGE is out of date (fixture ${have:-unlabelled}, want $want); rebuilding"
        build_image "$want"
    else
        log "$TEST_IMAGE is up to date (fixture $want)"
    fi
    if ! verify_image; then
        log "$TEST_IMAGE failed its check; rebuilding it once"
        build_image "$want"
        verify_image || die "$TEST_IMAGE does not work even after a rebuild (output above)"
    fi
    log "fixture image ready: $TEST_IMAGE (${VERIFIED_APPLETS} entries in /bin)"
}

# ---------------------------------------------------------------------------
# 4. Python client for the queue double's test (integration/tests/queue_double.rs)
#    >>> queue-double step: installs the official Taskcluster Python client
# ---------------------------------------------------------------------------
TASKCLUSTER_PY_VERSION=113.2.0

# The python3 the tests will run is the first on the caller's PATH, which this
# script has prefixed with the system directories; look past that prefix.
caller_python3() {
    local prefix="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    local caller_path="${PATH#"$prefix"}"
    caller_path="${caller_path#:}"
    PATH="${caller_path:-$PATH}" command -v python3 || command -v python3 || true
}

ensure_python_taskcluster() {
    local py
    py="$(caller_python3)"
    [[ -n "$py" ]] || die "python3 not found; the queue double's Python client test needs python3 with pip"
    if "$py" -c 'import taskcluster' >/dev/null 2>&1; then
        log "python package taskcluster present ($py)"
        return 0
    fi
    log "installing python package taskcluster==$TASKCLUSTER_PY_VERSION for $py"
    # pip's chatter goes to stderr: stdout carries only the image line.
    "$py" -m pip install --quiet --disable-pip-version-check \
        "taskcluster==$TASKCLUSTER_PY_VERSION" </dev/null 1>&2 9>&- ||
        die "pip install taskcluster==$TASKCLUSTER_PY_VERSION failed for $py"
    "$py" -c 'import taskcluster' >/dev/null 2>&1 ||
        die "python package taskcluster still cannot be imported by $py after pip install"
    log "installed python package taskcluster==$TASKCLUSTER_PY_VERSION"
}
#    <<< queue-double step
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
main() {
    [[ -n "$TEST_IMAGE" ]] || die "$FIXTURES_DIR/test-image is empty"
    # One setup at a time (e.g. two test jobs starting together).
    mkdir -p -- "$(dirname -- "$LOCK_FILE")"
    exec 9>>"$LOCK_FILE"
    flock -w 600 9 || die "another setup.sh still holds $LOCK_FILE after 600s"

    ensure_packages
    ensure_dockerd
    ensure_image
    ensure_python_taskcluster # queue-double step

    log "done in $((SECONDS - START_SECONDS))s"
    printf 'DOCKER_WORKER_TEST_IMAGE=%s\n' "$TEST_IMAGE"
}

main "$@"
