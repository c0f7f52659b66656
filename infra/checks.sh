#!/usr/bin/env bash
# Lint the image and the infrastructure. Exits non-zero when any check fails.
#   infra/checks.sh            (tools from $INFRA_TOOLS_BIN, default .venv-infra/bin, else PATH)
# Checks: hadolint (warning threshold), checkov (Dockerfiles, Terraform), trivy config
# (HIGH/CRITICAL), terraform fmt -check, check-jsonschema (Cloud Run YAML), shellcheck (scripts).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
bin=${INFRA_TOOLS_BIN:-$root/.venv-infra/bin}
failed=()

tool() {
    if [ -x "$bin/$1" ]; then
        echo "$bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        echo "missing tool: $1 (run: make infra-tools)" >&2
        echo false
    fi
}

check() {
    local name=$1; shift
    local start=$SECONDS
    if "$@" >"/tmp/infra-check-$$.log" 2>&1; then
        printf 'ok    %-28s %3ss\n' "$name" "$((SECONDS - start))"
    else
        printf 'FAIL  %-28s %3ss\n' "$name" "$((SECONDS - start))"
        sed 's/^/      /' "/tmp/infra-check-$$.log"
        failed+=("$name")
    fi
    rm -f "/tmp/infra-check-$$.log"
}

dockerfiles=(Dockerfile.tabular docker/Dockerfile.tabular-base)
scripts=(docker/entrypoint.sh docker/image-test.sh infra/checks.sh)

check "hadolint (warning)" "$(tool hadolint)" --failure-threshold warning "${dockerfiles[@]}"
check "checkov dockerfile" "$(tool checkov)" --quiet --compact --skip-download \
    --framework dockerfile -f "${dockerfiles[0]}" -f "${dockerfiles[1]}"
check "checkov terraform" "$(tool checkov)" --quiet --compact --skip-download \
    --framework terraform -d infra/terraform
check "trivy config" "$(tool trivy)" config --quiet --skip-check-update --skip-version-check \
    --severity HIGH,CRITICAL --exit-code 1 --ignorefile infra/trivyignore.yaml \
    --skip-dirs .git,.venv,.venv-infra,.mypy_cache,.ruff_cache,.pytest_cache,tests,node_modules \
    --file-patterns 'dockerfile:Dockerfile.*' .
check "terraform fmt -check" "$(tool terraform)" fmt -check -diff -recursive infra/terraform
check "check-jsonschema cloudrun" "$(tool check-jsonschema)" \
    --schemafile infra/schemas/cloudrun-worker.schema.json infra/tabular-config.yaml
check "shellcheck (warning)" "$(tool shellcheck)" -S warning -x "${scripts[@]}"
check "bash -n" bash -n "${scripts[@]}"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "infra checks failed: ${failed[*]}" >&2
    exit 1
fi
echo "infra checks passed"
