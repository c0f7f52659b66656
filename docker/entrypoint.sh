#!/usr/bin/env bash
# Startup script of the tabular image (ENTRYPOINT). Runs the given command (default CMD:
# `tabular-worker serve`); for worker commands with LLM jobs enabled it first starts
# `ollama serve` in the background. It never waits for Ollama: the worker polls Ollama's
# readiness itself and serves embedding jobs meanwhile.
#
# Signals: SIGTERM/SIGINT are forwarded to the command (which drains in-flight jobs within
# TABULAR_SHUTDOWN_GRACE_SECONDS), then to Ollama; the exit status is the command's.
#
# Environment:
#   TABULAR_LLM_ENABLED   true (default) / false: start Ollama for worker commands
#   TABULAR_START_OLLAMA  auto (default: worker commands when LLM jobs are enabled), true, false
#   OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_NOPRUNE   passed to `ollama serve`
#   MODEL_CACHE_PATH, SHARED_MODEL_VOLUME_ENABLED, TABULAR_LOCAL_MODEL_DIR   checked and logged
set -uo pipefail

log() {
    # One JSON line on stderr, like the application's own logs (Cloud Logging picks it up).
    local severity=$1; shift
    local msg=$*
    msg=${msg//\\/\\\\}
    msg=${msg//\"/\\\"}
    printf '{"severity":"%s","message":"%s","logger":"entrypoint"}\n' "$severity" "$msg" >&2
}

die() {
    log ERROR "$1"
    exit "${2:-1}"
}

is_true() {
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

if [ "$#" -eq 0 ]; then
    set -- tabular-worker serve
fi

if ! command -v "$1" >/dev/null 2>&1; then
    die "command not found: '$1' (expected tabular-worker, tabular-sync or another program in the image)" 127
fi

# --- model cache and local model directory --------------------------------------------------
cache=${MODEL_CACHE_PATH:-/models}
if is_true "${SHARED_MODEL_VOLUME_ENABLED:-true}"; then
    if [ -d "$cache" ] && [ -r "$cache" ]; then
        log INFO "model cache directory present at $cache"
    else
        # Not fatal: the worker logs the cache miss with its reason and falls back.
        log WARNING "SHARED_MODEL_VOLUME_ENABLED is true but $cache is not a readable directory"
    fi
fi
local_dir=${TABULAR_LOCAL_MODEL_DIR:-/tmp/tabular-models}
if ! mkdir -p "$local_dir" 2>/dev/null || [ ! -w "$local_dir" ]; then
    die "TABULAR_LOCAL_MODEL_DIR=$local_dir cannot be created or is not writable by uid $(id -u)"
fi

# --- Ollama ------------------------------------------------------------------------------------
want_ollama=false
case "${TABULAR_START_OLLAMA:-auto}" in
    auto)
        if [ "$(basename -- "$1")" = "tabular-worker" ] && is_true "${TABULAR_LLM_ENABLED:-true}"; then
            want_ollama=true
        fi
        ;;
    true | 1 | yes) want_ollama=true ;;
    false | 0 | no) want_ollama=false ;;
    *) die "TABULAR_START_OLLAMA must be auto, true or false (got '${TABULAR_START_OLLAMA}')" ;;
esac

ollama_pid=""
if [ "$want_ollama" = true ]; then
    if ! command -v ollama >/dev/null 2>&1; then
        if [ "${TABULAR_START_OLLAMA:-auto}" = auto ]; then
            log WARNING "LLM jobs are enabled but this image has no ollama binary (built with INSTALL_OLLAMA=false?): llm jobs will fail; set TABULAR_LLM_ENABLED=false to silence this"
        else
            die "TABULAR_START_OLLAMA=${TABULAR_START_OLLAMA} but no ollama binary is on PATH"
        fi
    else
        export OLLAMA_NOPRUNE=${OLLAMA_NOPRUNE:-1}
        ollama_host=${OLLAMA_HOST:-http://127.0.0.1:11434}
        # `ollama serve` wants host:port, not a URL.
        ollama_bind=${ollama_host#*://}
        ollama_bind=${ollama_bind%%/*}
        OLLAMA_HOST=$ollama_bind ollama serve >&2 &
        ollama_pid=$!
        log INFO "started ollama serve (pid $ollama_pid) on $ollama_bind; the worker polls its readiness"
    fi
fi

# --- the command, with signal forwarding -------------------------------------------------------
child_pid=""
forward() {
    local sig=$1
    log INFO "received SIG$sig, forwarding to pid ${child_pid:-none}"
    if [ -n "$child_pid" ]; then
        kill -s "$sig" "$child_pid" 2>/dev/null || true
    fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT

"$@" &
child_pid=$!

# `wait` returns early (status > 128) when a trapped signal arrives: wait again until the child
# is gone, then once more for its real exit status (bash keeps it for reaped children).
while kill -0 "$child_pid" 2>/dev/null; do
    wait "$child_pid"
done
wait "$child_pid"
status=$?

if [ -n "$ollama_pid" ] && kill -0 "$ollama_pid" 2>/dev/null; then
    kill -s TERM "$ollama_pid" 2>/dev/null || true
    wait "$ollama_pid" 2>/dev/null || true
fi

if [ "$status" -ne 0 ]; then
    log ERROR "$1 exited with status $status"
fi
exit "$status"
