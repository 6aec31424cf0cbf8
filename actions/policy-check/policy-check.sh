# >>> ci-broker policy check: check, test and diff a policy change against its base commit
# shellcheck shell=bash
#
# For a pull request or merge request (contract section 10): `check`,
# the policy tests, and `diff` against the base commit. Shared by actions/policy-check (GitHub)
# and gitlab-templates/policy-check.gitlab-ci.yml (GitLab), which set:
#   CI_BROKER_POLICY_CONFIG          the config file, relative to the repository root
#   CI_BROKER_POLICY_TESTS           a policy test file (optional)
#   CI_BROKER_POLICY_BASE            the base commit (optional: no diff without it)
#   CI_BROKER_POLICY_FAIL_ON_GAINED  "true": fail when any role is gained
#   CI_BROKER_POLICY_COMMAND         how to run ci-broker (default: ci-broker)
#   CI_BROKER_POLICY_OUT             where reports go (default: $RUNNER_TEMP or a new directory)
#   CI_BROKER_POLICY_SUMMARY         a markdown file to append the diff to (the job summary)
# It runs every step before failing, so one run shows everything that is wrong. It reads only the
# repository's own git objects (fetching the base commit from origin if the clone lacks it).
set -uo pipefail

config="${CI_BROKER_POLICY_CONFIG:-broker.yaml}"
tests="${CI_BROKER_POLICY_TESTS:-}"
base="${CI_BROKER_POLICY_BASE:-}"
fail_on_gained="${CI_BROKER_POLICY_FAIL_ON_GAINED:-false}"
read -r -a cli <<<"${CI_BROKER_POLICY_COMMAND:-ci-broker}"
out="${CI_BROKER_POLICY_OUT:-${RUNNER_TEMP:-$(mktemp -d)}/ci-broker-policy-check}"
summary="${CI_BROKER_POLICY_SUMMARY:-${GITHUB_STEP_SUMMARY:-}}"
github="${GITHUB_ACTIONS:-}"

mkdir -p "$out"
failed=0
gained=false

note() { # level message: a GitHub annotation on GitHub, a plain line elsewhere
    if [ "$github" = true ]; then echo "::$1::$2"; else echo "$1: $2"; fi
}
group() { if [ "$github" = true ]; then echo "::group::$1"; else echo "== $1"; fi; }
endgroup() { if [ "$github" = true ]; then echo "::endgroup::"; fi; }
output() { if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "$1=$2" >>"$GITHUB_OUTPUT"; fi; }

if ! command -v "${cli[0]}" >/dev/null 2>&1; then
    note error "'${cli[0]}' is not on PATH: install ci-broker in an earlier step (pip install ci-broker==VERSION) or set the ci-broker input"
    exit 1
fi
if [ ! -f "$config" ]; then
    note error "$config: no such file (set the config input to the broker config's path)"
    exit 1
fi

group "ci-broker check $config"
"${cli[@]}" check --policy-only --config "$config"
status=$?
endgroup
if [ "$status" -ne 0 ]; then
    note error "ci-broker check found errors in $config (see its output above)"
    failed=1
fi

if [ -n "$tests" ]; then
    group "ci-broker test $tests"
    "${cli[@]}" test --config "$config" "$tests" --junit "$out/policy-tests.xml"
    status=$?
    endgroup
    output junit "$out/policy-tests.xml"
    case "$status" in
    0) ;;
    1) note error "policy tests failed (the explain trace of each is above)"; failed=1 ;;
    *) note error "ci-broker test could not run $tests (see above)"; failed=1 ;;
    esac
fi

report="$out/policy-diff.md"
if [ -z "$base" ]; then
    note warning "no base commit to diff against (not a pull request?): the access diff is skipped"
    printf '## ci-broker policy diff\n\nSkipped: no base commit to compare with.\n' >"$report"
else
    if ! git cat-file -e "$base^{commit}" 2>/dev/null; then
        git fetch --quiet --no-tags --depth=1 origin "$base" || true
    fi
    old="$out/base-$(basename "$config")"
    if ! git cat-file -e "$base^{commit}" 2>/dev/null; then
        note error "the base commit $base is not in this clone and could not be fetched (fetch-depth: 0 in actions/checkout)"
        failed=1
        old=""
    elif git cat-file -e "$base:./$config" 2>/dev/null; then
        git show "$base:./$config" >"$old"
    else
        echo "$config does not exist at the base commit: every role counts as gained"
        old=/dev/null
    fi
    if [ -n "$old" ]; then
        group "ci-broker diff (base $base)"
        "${cli[@]}" diff "$old" "$config" --format markdown --exit-code >"$report"
        status=$?
        cat "$report" # the log shows what the summary does (one diff: it is the costly step)
        endgroup
        case "$status" in
        0) ;;
        1)
            gained=true
            note notice "this change grants some identities roles they did not have: review the diff in the job summary"
            ;;
        *)
            note error "ci-broker diff could not decide the change exactly (see above)"
            failed=1
            ;;
        esac
    fi
fi

output gained "$gained"
output report "$report"
if [ -n "$summary" ] && [ -s "$report" ]; then
    cat "$report" >>"$summary"
fi
if [ "$gained" = true ] && [ "$fail_on_gained" = true ]; then
    note error "access was gained and fail-on-gained is set"
    failed=1
fi
exit "$failed"
# <<< ci-broker policy check
