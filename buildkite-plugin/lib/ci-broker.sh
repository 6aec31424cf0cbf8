# >>> ci-broker client: exchanges this job's OIDC token for short-lived cloud credentials
#
# The client for GitLab and any CI with a POSIX shell (docs/pipelines.md says why sh + awk):
# - the GitLab template carries this same text in before_script (kept identical by
#   gitlab-templates/embed-client.py and its test), writes it beside the project directory and
#   sources it, so the exports land in the job's own shell;
# - with CI_BROKER_REFRESH the clouds' tools run that file again as their refresh hook
#   (`sh client.sh ci-broker-session ...`, the sessions section below);
# - CI_BROKER_TARGET=github runs it in a GitHub Actions `run:` step (the Action itself is the
#   JavaScript in this directory): secrets are masked with ::add-mask:: and exported through
#   GITHUB_ENV / GITHUB_OUTPUT.
# Rules it keeps: server-provided text is never evaluated as code (a strict JSON reader in awk
# extracts values, which are then checked against a narrow character set); nothing secret is
# printed, passed on a command line (curl and python3 read it from stdin and the environment),
# or written to the workspace. Because it may run inside the job's shell, under `set -e` and
# perhaps `set -u`, every helper is named _cib_*, never lets a command fail outside a test,
# and is removed again at the end.

_cib_say() {
    printf 'ci-broker: %s\n' "$*" >&2
}

# Untrusted text (the broker's message, a tool's error) is shown on one line of printable
# ASCII, so it can neither forge a workflow command nor break the log.
_cib_clean() {
    printf '%s' "$1" | LC_ALL=C tr -d '\000-\037\177' | LC_ALL=C tr '\200-\377' '?' |
        LC_ALL=C cut -c1-400
}

_cib_die() {
    if [ "${_cib_hook:-}" = gcp ]; then
        _cib_gcp_failure "$1"
    fi
    if [ "${_cib_target:-}" = github ]; then
        printf '::error title=ci-broker::%s\n' "$(printf '%s' "$1" | sed 's/%/%25/g')"
    fi
    for _cib_line in "$@"; do
        _cib_say "$_cib_line"
    done
    exit 1
}

# A value is accepted only if every byte is in the tr(1) set given; the trailing x keeps a
# final newline from being hidden by the command substitution.
_cib_only() {
    _cib_rest=$(printf '%s' "$1" | LC_ALL=C tr -d "$2"; printf x)
    [ "$_cib_rest" = x ] && [ -n "$1" ]
}

# Strict JSON reader. Input: one document on stdin; -v want=PATH (keys joined with ".").
# Prints the string at PATH followed by "x"; exit 0 found, 2 invalid JSON, 3 absent,
# 4 not a string (with -v scalar=1, a number, true, false or null is printed as its JSON text). Duplicate keys, trailing data, raw control characters, bad escapes and
# lone surrogates are all refused, so two readers can never disagree about a document.
# shellcheck disable=SC2016 # awk's own $ fields, not the shell's
_cib_awk_json='
function fail(m) { if (!bad) { bad = 1; why = m }; return 0 }
function ws(   c) {
    while (p <= n) {
        c = substr(s, p, 1)
        if (c == " " || c == "\t" || c == "\n" || c == "\r") p++
        else break
    }
}
function hex4(h,   i, d, v) {
    v = 0
    for (i = 1; i <= 4; i++) {
        d = index("0123456789abcdef", tolower(substr(h, i, 1)))
        if (d == 0) return -1
        v = v * 16 + d - 1
    }
    return v
}
function utf8(cp) {
    if (cp < 128) return sprintf("%c", cp)
    if (cp < 2048) return sprintf("%c%c", 192 + int(cp / 64), 128 + cp % 64)
    if (cp < 65536) return sprintf("%c%c%c", 224 + int(cp / 4096), 128 + int(cp / 64) % 64, 128 + cp % 64)
    return sprintf("%c%c%c%c", 240 + int(cp / 262144), 128 + int(cp / 4096) % 64, 128 + int(cp / 64) % 64, 128 + cp % 64)
}
function str(   c, out, cp, lo, run) {
    p++
    out = ""
    while (p <= n) {
        if (match(substr(s, p, 4096), /^[^"\\]+/)) {
            run = substr(s, p, RLENGTH)
            if (index(run, "\n") || index(run, "\t") || index(run, "\r")) return fail("control character in a string")
            out = out run
            p += RLENGTH
            continue
        }
        c = substr(s, p, 1)
        if (c == "\"") { p++; sval = out; return 1 }
        c = substr(s, p + 1, 1)
        p += 2
        if (c == "\"" || c == "\\" || c == "/") out = out c
        else if (c == "b") out = out "\b"
        else if (c == "f") out = out "\f"
        else if (c == "n") out = out "\n"
        else if (c == "r") out = out "\r"
        else if (c == "t") out = out "\t"
        else if (c == "u") {
            cp = hex4(substr(s, p, 4))
            p += 4
            if (cp < 0) return fail("bad \\u escape")
            if (cp >= 55296 && cp < 56320) {
                if (substr(s, p, 2) != "\\u") return fail("lone surrogate")
                lo = hex4(substr(s, p + 2, 4))
                p += 6
                if (lo < 56320 || lo > 57343) return fail("lone surrogate")
                cp = 65536 + (cp - 55296) * 1024 + (lo - 56320)
            } else if (cp >= 56320 && cp < 57344) return fail("lone surrogate")
            if (cp == 0) return fail("NUL in a string")
            out = out utf8(cp)
        } else return fail("bad escape")
    }
    return fail("unterminated string")
}
function value(path, depth,   c) {
    ws()
    if (p > n) return fail("unexpected end")
    c = substr(s, p, 1)
    if (c == "{") return object(path, depth + 1)
    if (c == "[") return array(path, depth + 1)
    if (c == "\"") {
        if (!str()) return 0
        kind[path] = "string"
        val[path] = sval
        return 1
    }
    if (substr(s, p, 4) == "true" || substr(s, p, 4) == "null") { val[path] = substr(s, p, 4); p += 4; kind[path] = "literal"; return 1 }
    if (substr(s, p, 5) == "false") { p += 5; val[path] = "false"; kind[path] = "literal"; return 1 }
    if (match(substr(s, p, 64), /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/)) {
        val[path] = substr(s, p, RLENGTH)
        p += RLENGTH
        kind[path] = "number"
        return 1
    }
    return fail("unexpected character")
}
function object(path, depth,   c, k) {
    if (depth > 8) return fail("nested too deeply")
    kind[path] = "object"
    p++
    ws()
    if (substr(s, p, 1) == "}") { p++; return 1 }
    while (1) {
        ws()
        if (substr(s, p, 1) != "\"") return fail("expected a key")
        if (!str()) return 0
        k = (path == "") ? sval : path "." sval
        if (k in seen) return fail("duplicate key")
        seen[k] = 1
        ws()
        if (substr(s, p, 1) != ":") return fail("expected a colon")
        p++
        if (!value(k, depth)) return 0
        ws()
        c = substr(s, p, 1)
        p++
        if (c == "}") return 1
        if (c != ",") return fail("expected a comma or a closing brace")
    }
}
function array(path, depth,   c, i) {
    if (depth > 8) return fail("nested too deeply")
    kind[path] = "array"
    p++
    ws()
    if (substr(s, p, 1) == "]") { p++; return 1 }
    for (i = 0; ; i++) {
        if (!value(path "[" i "]", depth)) return 0
        ws()
        c = substr(s, p, 1)
        p++
        if (c == "]") return 1
        if (c != ",") return fail("expected a comma or a closing bracket")
    }
}
{ s = s $0 "\n" }
END {
    n = length(s)
    if (n > 1048576) exit 2
    for (i = 1; i < 32; i++) if (i != 9 && i != 10 && i != 13 && index(s, sprintf("%c", i))) exit 2
    p = 1
    ws()
    if (substr(s, p, 1) != "{") exit 2
    if (!value("", 0) || bad) exit 2
    ws()
    if (p <= n) exit 2
    if (!(want in kind)) exit 3
    if (kind[want] != "string" && !(scalar && (kind[want] == "literal" || kind[want] == "number"))) exit 4
    printf "%sx", val[want]
    exit 0
}'

# _cib_get DOC PATH [scalar]: sets _cib_v and _cib_rc (0 string, 2 invalid, 3 absent, 4 not a
# string; with "scalar", numbers and literals count as found).
_cib_get() {
    _cib_rc=0
    _cib_v=$(printf '%s' "$1" | LC_ALL=C awk -v want="$2" -v scalar="${3:+1}" "$_cib_awk_json") || _cib_rc=$?
    _cib_v=${_cib_v%x}
    if [ "$_cib_rc" != 0 ]; then
        _cib_v=
    fi
}

# The HTTP tools, best first: curl and python3 keep the bearer token off the command line and
# show the broker's error body; wget is the fallback of alpine's busybox.
_cib_pick_http() {
    _cib_http=
    for _cib_tool in ${CI_BROKER_HTTP_TOOLS:-curl python3 wget}; do
        if command -v "$_cib_tool" >/dev/null 2>&1; then
            _cib_http=$_cib_tool
            break
        fi
    done
    if [ -z "$_cib_http" ]; then
        _cib_die "no HTTP client in this job's image: it needs curl, wget or python3." \
            "Install one first, e.g. 'apk add --no-cache curl' (alpine) or" \
            "'apt-get update && apt-get install -y --no-install-recommends curl ca-certificates' (debian, ubuntu)."
    fi
    if ! command -v awk >/dev/null 2>&1; then
        _cib_die "awk is missing from this job's image; the client needs it to read the broker's answer."
    fi
    if [ "$_cib_http" = wget ] && ! wget --help 2>&1 | grep -q content-on-error; then
        _cib_http=busybox-wget
    fi
}

_cib_py_http='
import os, sys, urllib.error, urllib.request

class NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the bearer token to wherever the server points.
    def redirect_request(self, *args, **kwargs):
        return None

method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
request = urllib.request.Request(url, data=data, method=method)
request.add_header("Authorization", os.environ.pop("_CIB_AUTH"))
request.add_header("Accept", "application/json")
if data is not None:
    request.add_header("Content-Type", "application/json")
opener = urllib.request.build_opener(NoRedirect)
try:
    with opener.open(request, timeout=60) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
except Exception as error:
    sys.stderr.write("ci-broker: %s: %s\n" % (type(error).__name__, error))
    sys.exit(1)
sys.stdout.write(body.decode("utf-8", "replace") + "\n" + str(status))
'

# _cib_request METHOD URL AUTHORIZATION [JSON-BODY]: sets _cib_status and _cib_body.
# Returns 1 when no HTTP answer came back at all (refused, timed out, TLS failure).
_cib_request() {
    _cib_rc=0
    _cib_status=000
    _cib_body=
    _cib_hdr_rid=
    case $_cib_http in
    curl)
        # The header travels in curl's config on stdin; callers have checked that it holds no
        # quote, backslash or newline, so it cannot smuggle other curl options in.
        if [ $# -ge 4 ]; then
            _cib_raw=$(printf 'header = "Authorization: %s"\n' "$3" | curl -q -sS \
                --proto '=https,http' --connect-timeout 10 --max-time 60 -X "$1" \
                -H 'Accept: application/json' -H 'Content-Type: application/json' \
                --data-binary "$4" -w '\n%{http_code}' --config - "$2") || _cib_rc=$?
        else
            _cib_raw=$(printf 'header = "Authorization: %s"\n' "$3" | curl -q -sS \
                --proto '=https,http' --connect-timeout 10 --max-time 60 -X "$1" \
                -H 'Accept: application/json' -w '\n%{http_code}' --config - "$2") || _cib_rc=$?
        fi
        ;;
    python3)
        if [ $# -ge 4 ]; then
            _cib_raw=$(_CIB_AUTH=$3 python3 -c "$_cib_py_http" "$1" "$2" "$4" </dev/null) || _cib_rc=$?
        else
            _cib_raw=$(_CIB_AUTH=$3 python3 -c "$_cib_py_http" "$1" "$2" </dev/null) || _cib_rc=$?
        fi
        ;;
    wget | busybox-wget)
        _cib_request_wget "$@"
        return $?
        ;;
    esac
    if [ "$_cib_rc" != 0 ]; then
        return 1
    fi
    _cib_status=${_cib_raw##*"$_cib_nl"}
    case $_cib_raw in
    *"$_cib_nl"*) _cib_body=${_cib_raw%"$_cib_nl"*} ;;
    *) _cib_body= ;;
    esac
    case $_cib_status in
    [1-5][0-9][0-9]) return 0 ;;
    *) return 1 ;;
    esac
}

# wget prints the status line only among the headers on stderr, so those go to a temporary
# file (headers are not secret; the body, which is, stays in memory). The token is on wget's
# command line here: busybox wget has no other way to take a header.
_cib_request_wget() {
    _cib_hdr=$(mktemp "${TMPDIR:-/tmp}/ci-broker.XXXXXX") || _cib_die "cannot create a temporary file"
    set -- "$1" "$2" "$3" "${4-}" "$#"
    _cib_rc=0
    if [ "$_cib_http" = wget ]; then
        if [ "$5" -ge 4 ]; then
            _cib_body=$(wget -q -S -O - -T 60 --max-redirect=0 --content-on-error \
                --header "Authorization: $3" --header 'Accept: application/json' \
                --header 'Content-Type: application/json' --post-data "$4" "$2" \
                2>"$_cib_hdr" </dev/null) || _cib_rc=$?
        else
            _cib_body=$(wget -q -S -O - -T 60 --max-redirect=0 --content-on-error \
                --header "Authorization: $3" --header 'Accept: application/json' "$2" \
                2>"$_cib_hdr" </dev/null) || _cib_rc=$?
        fi
    else
        # busybox's own -T crashes in some releases (1.35); its timeout applet bounds it instead.
        _cib_limit=
        if command -v timeout >/dev/null 2>&1; then
            _cib_limit="timeout 70"
        fi
        if [ "$5" -ge 4 ]; then
            _cib_body=$($_cib_limit wget -q -S -O - --header "Authorization: $3" \
                --header 'Accept: application/json' --header 'Content-Type: application/json' \
                --post-data "$4" "$2" 2>"$_cib_hdr" </dev/null) || _cib_rc=$?
        else
            _cib_body=$($_cib_limit wget -q -S -O - --header "Authorization: $3" \
                --header 'Accept: application/json' "$2" 2>"$_cib_hdr" </dev/null) || _cib_rc=$?
        fi
    fi
    _cib_status=$(awk '/^ *HTTP\/[0-9.]+ [0-9][0-9][0-9]/ { s = $2 } END { print s }' "$_cib_hdr")
    # busybox wget drops the body of an error answer; the request id also comes as a header.
    _cib_hdr_rid=$(awk 'tolower($1) == "x-request-id:" { r = $2 } END { print r }' "$_cib_hdr")
    if [ -z "$_cib_status" ]; then
        _cib_status=000
        while IFS= read -r _cib_line; do
            case $_cib_line in
            wget:*) _cib_say "$(_cib_clean "$_cib_line")" ;;
            esac
        done <"$_cib_hdr"
        rm -f "$_cib_hdr"
        return 1
    fi
    rm -f "$_cib_hdr"
    return 0
}

# busybox wget built with its own TLS code says it does not check certificates; that is
# found out with a harmless request before any token is sent.
_cib_check_busybox_tls() {
    case $_cib_url in https://*) ;; *) return 0 ;; esac
    _cib_hdr=$(mktemp "${TMPDIR:-/tmp}/ci-broker.XXXXXX") || _cib_die "cannot create a temporary file"
    wget -q -O /dev/null "$_cib_url/healthz" 2>"$_cib_hdr" </dev/null || :
    if grep -qi 'validation not implemented' "$_cib_hdr"; then
        rm -f "$_cib_hdr"
        _cib_die "this image's busybox wget does not verify TLS certificates; refusing to send the token." \
            "Install curl ('apk add --no-cache curl') or use an image that has it."
    fi
    rm -f "$_cib_hdr"
}

_cib_urlencode() {
    printf '%s' "$1" | LC_ALL=C awk '
        BEGIN { for (i = 0; i < 256; i++) ord[sprintf("%c", i)] = i }
        { if (NR > 1) printf "%%0A"
          for (i = 1; i <= length($0); i++) {
              c = substr($0, i, 1)
              if (c ~ /[A-Za-z0-9._~-]/) printf "%s", c
              else printf "%%%02X", ord[c]
          } }'
}

_cib_mask() {
    if [ "$_cib_target" = github ]; then
        printf '::add-mask::%s\n' "$(printf '%s' "$1" | sed 's/%/%25/g')"
    fi
}

# The broker's error answer, reduced to what may be shown: error code, message, request id.
_cib_explain_error() {
    _cib_err='' _cib_msg='' _cib_rid=''
    _cib_get "$_cib_body" error
    _cib_err=$(_cib_clean "$_cib_v")
    _cib_get "$_cib_body" message
    _cib_msg=$(_cib_clean "$_cib_v")
    _cib_get "$_cib_body" request_id
    _cib_rid=$(_cib_clean "${_cib_v:-${_cib_hdr_rid:-}}")
    _cib_detail="HTTP $_cib_status${_cib_err:+ $_cib_err}${_cib_msg:+: $_cib_msg}${_cib_rid:+ (request id $_cib_rid)}"
    case $_cib_http$_cib_body in
    wget | busybox-wget) _cib_detail="$_cib_detail (wget hid the broker's message; curl would show it)" ;;
    esac
}

_cib_get_github_token() {
    if [ -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ] || [ -z "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]; then
        _cib_die "this job cannot request an OIDC token: it lacks the id-token permission." \
            "Fix: add 'permissions: { id-token: write, contents: read }' to the workflow or to this job." \
            "(Pull requests from forks never get one.)"
    fi
    if ! _cib_only "$ACTIONS_ID_TOKEN_REQUEST_TOKEN" 'A-Za-z0-9._~+/=-'; then
        _cib_die "ACTIONS_ID_TOKEN_REQUEST_TOKEN has an unexpected form"
    fi
    case $ACTIONS_ID_TOKEN_REQUEST_URL in
    *'?'*) _cib_oidc_url="$ACTIONS_ID_TOKEN_REQUEST_URL&audience=$(_cib_urlencode "$_cib_aud")" ;;
    *) _cib_oidc_url="$ACTIONS_ID_TOKEN_REQUEST_URL?audience=$(_cib_urlencode "$_cib_aud")" ;;
    esac
    if ! _cib_request GET "$_cib_oidc_url" "bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN"; then
        return 1
    fi
    if [ "$_cib_status" != 200 ]; then
        _cib_die "GitHub refused the OIDC token request with HTTP $_cib_status."
    fi
    _cib_get "$_cib_body" value
    if [ "$_cib_rc" != 0 ]; then
        _cib_die "GitHub's OIDC token answer has no token in it."
    fi
    _cib_token=$_cib_v
    _cib_mask "$_cib_token"
    _cib_check_token "GitHub's OIDC token"
}

_cib_check_token() {
    # Three base64url parts: also what keeps the token safe inside curl's config line.
    case $_cib_token in
    *.*.*) ;;
    *) _cib_die "$1 does not look like a JWT" ;;
    esac
    if ! _cib_only "$_cib_token" 'A-Za-z0-9._-'; then
        _cib_die "$1 does not look like a JWT"
    fi
}

# Generic mode (CI_BROKER_TARGET=generic): any CI that hands the job its OIDC token in a file or a
# variable (Buildkite, CircleCI, Bitbucket, Azure DevOps, Jenkins, Kubernetes, HCP Terraform; the
# recipes are in docs/pipelines.md). CI_BROKER_TOKEN_FILE names a file holding the token;
# otherwise CI_BROKER_TOKEN_VARIABLE names the environment variable that holds it (its name, never
# the token; awk reads it from the environment). Exports land in the calling shell, as with GitLab.
_cib_generic_token() {
    if [ -n "${CI_BROKER_TOKEN_FILE:-}" ]; then
        if [ ! -f "$CI_BROKER_TOKEN_FILE" ] || [ ! -r "$CI_BROKER_TOKEN_FILE" ]; then
            _cib_die "CI_BROKER_TOKEN_FILE ($(_cib_clean "$CI_BROKER_TOKEN_FILE")) is not a readable file"
        fi
        _cib_token=$(head -c 65536 "$CI_BROKER_TOKEN_FILE" | LC_ALL=C tr -d '\r\n')
        _cib_check_token CI_BROKER_TOKEN_FILE
        return 0
    fi
    if [ -z "${CI_BROKER_TOKEN_VARIABLE:-}" ]; then
        _cib_die "CI_BROKER_TARGET=generic needs CI_BROKER_TOKEN_FILE (a file holding this job's OIDC token)" \
            "or CI_BROKER_TOKEN_VARIABLE (the name of the variable holding it, e.g. CIRCLE_OIDC_TOKEN_V2)"
    fi
    _cib_token_from_variable "$CI_BROKER_TOKEN_VARIABLE"
    if [ -z "$_cib_token" ]; then
        _cib_die "$CI_BROKER_TOKEN_VARIABLE is empty or not exported: this job has no OIDC token in it" \
            "(docs/pipelines.md says how each CI provides one)"
    fi
    _cib_check_token "$CI_BROKER_TOKEN_VARIABLE"
}

# GitLab: the ID token is in the variable the job's id_tokens names: CI_BROKER_ID_TOKEN, or, in a
# job with several roles, the one CI_BROKER_TOKEN_VARIABLE names (each role its own token, as the
# broker accepts a token once).
_cib_gitlab_token() {
    _cib_tvar=${CI_BROKER_TOKEN_VARIABLE:-CI_BROKER_ID_TOKEN}
    _cib_token_from_variable "$_cib_tvar"
    if [ -z "$_cib_token" ]; then
        _cib_die "$_cib_tvar is empty: the job needs 'id_tokens: $_cib_tvar' with aud set to the broker's" \
            "audience, which 'extends: .ci-broker' (or the component's hidden job) provides."
    fi
    _cib_check_token "$_cib_tvar"
}

# The token from the exported variable NAME (its name, never the token; awk reads the environment).
_cib_token_from_variable() {
    case $1 in
    [!A-Za-z_]* | *[!A-Za-z0-9_]*) _cib_die "CI_BROKER_TOKEN_VARIABLE must be a variable's name, not its value" ;;
    esac
    _cib_token=$(LC_ALL=C awk -v name="$1" 'BEGIN { printf "%s", ENVIRON[name] }')
}

# -- where the token may go ----------------------------------------------------------------------
# CI_BROKER_URL can be changed by anyone allowed to set a pipeline, project or group variable,
# while the token's audience stays what the job's YAML asked for. So before the token leaves, the
# URL about to be called must be the broker the token is for: its scheme://host[:port] (lower
# case, without the scheme's default port) must equal that of one of the token's audiences. A
# token whose audiences are none of them http(s) URLs (CircleCI's organization id, Azure DevOps'
# api://AzureADTokenExchange) goes only to the URL CI_BROKER_OPAQUE_AUDIENCE_URL names; being a
# variable, that one is no harder to change than CI_BROKER_URL (docs/pipelines.md says so).

# Base64url (a JWT's part) to bytes; exit 2 on any other character or an impossible length.
# shellcheck disable=SC2016 # awk's own $0, not the shell's
_cib_awk_b64='
BEGIN {
    a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for (i = 1; i <= 64; i++) v[substr(a, i, 1)] = i - 1
    # powers of two by table: busybox awk may be built without its math (no ^)
    p2[0] = 1
    for (i = 1; i < 8; i++) p2[i] = p2[i - 1] * 2
}
{ s = s $0 }
END {
    n = length(s)
    if (n % 4 == 1) exit 2
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (!(c in v)) exit 2
        bits = bits * 64 + v[c]
        nb += 6
        if (nb >= 8) {
            nb -= 8
            b = int(bits / p2[nb])
            bits -= b * p2[nb]
            printf "%c", b
        }
    }
}'

# _cib_origin URL: sets _cib_o to URL's scheme://host[:port], lower case, without :443 (https)
# or :80 (http); fails when URL is not an http(s) URL with a host.
_cib_origin() {
    _cib_o=$(printf '%s' "$1" | LC_ALL=C tr '[:upper:]' '[:lower:]')
    case $_cib_o in
    https://* | http://*) ;;
    *) return 1 ;;
    esac
    _cib_o_scheme=${_cib_o%%://*}
    _cib_o_host=${_cib_o#*://}
    _cib_o_host=${_cib_o_host%%[/?#]*}
    _cib_o_host=${_cib_o_host%:}
    case $_cib_o_host in
    '' | :* | *@* | *[!!-~]*) return 1 ;;
    esac
    case $_cib_o_scheme:$_cib_o_host in
    https:*:443) _cib_o_host=${_cib_o_host%:443} ;;
    http:*:80) _cib_o_host=${_cib_o_host%:80} ;;
    esac
    _cib_o="$_cib_o_scheme://$_cib_o_host"
}

# The token's payload (JSON) into _cib_claims; empty when it cannot be decoded.
_cib_token_claims() {
    _cib_p=${_cib_token#*.}
    _cib_claims=$(printf '%s' "${_cib_p%%.*}" | LC_ALL=C awk "$_cib_awk_b64") || _cib_claims=
}

# The claims a broker's rules match on, so a developer sees why a rule did not match without
# asking the operator: never the token itself, never user_email. GitLab shows them in a
# collapsed section, GitHub in a group.
_cib_show_claims() {
    _cib_line="ci-broker: this job's token claims, as the broker's rules see them"
    case $_cib_target in
    gitlab) printf '\033[0Ksection_start:%s:ci_broker_claims[collapsed=true]\r\033[0K%s\n' "$(date +%s)" "$_cib_line" >&2 ;;
    github) printf '::group::%s\n' "$_cib_line" >&2 ;;
    *) printf '%s\n' "$_cib_line" >&2 ;;
    esac
    for _cib_name in iss sub aud project_path project_id namespace_path namespace_id ref ref_type \
        ref_path ref_protected environment environment_protected deployment_tier pipeline_source \
        pipeline_id job_id user_login ci_config_ref_uri ci_config_sha runner_environment repository \
        repository_id repository_owner repository_owner_id event_name workflow_ref job_workflow_ref \
        organization_slug organization_id pipeline_slug build_branch build_tag step_key; do
        _cib_get "$_cib_claims" "$_cib_name" scalar
        if [ "$_cib_rc" = 4 ]; then
            # a list (aud): its strings, comma-separated
            _cib_i=0 _cib_line=
            while [ "$_cib_i" -lt 10 ]; do
                _cib_get "$_cib_claims" "${_cib_name}[$_cib_i]" scalar
                [ "$_cib_rc" = 0 ] || break
                _cib_line="$_cib_line${_cib_line:+, }$_cib_v"
                _cib_i=$((_cib_i + 1))
            done
            _cib_v=$_cib_line _cib_rc=0
        fi
        if [ "$_cib_rc" = 0 ]; then
            printf '  %s: %s\n' "$_cib_name" "$(_cib_clean "$_cib_v")" >&2
        fi
    done
    case $_cib_target in
    gitlab) printf '\033[0Ksection_end:%s:ci_broker_claims\r\033[0K\n' "$(date +%s)" >&2 ;;
    github) printf '::endgroup::\n' >&2 ;;
    esac
}

# _cib_aud_is_url AUD: true when AUD is an http(s) URL; _cib_aud_ok=1 when it names _cib_url.
_cib_aud_is_url() {
    _cib_auds="$_cib_auds${_cib_auds:+, }'$(_cib_clean "$1")'"
    case $1 in '$'*) _cib_aud_literal=1 ;; esac
    _cib_origin "$1" || return 1
    if [ "$_cib_o" = "$_cib_url_origin" ]; then
        _cib_aud_ok=1
    fi
}

_cib_check_audience() {
    _cib_token_claims
    if [ "$_cib_try" = 1 ]; then
        _cib_show_claims
    fi
    _cib_origin "$_cib_url" || _cib_die "$_cib_n_url is not an http(s) URL"
    _cib_url_origin=$_cib_o
    _cib_auds='' _cib_aud_ok='' _cib_aud_url='' _cib_aud_literal=''
    _cib_get "$_cib_claims" aud
    case $_cib_rc in
    0) _cib_aud_is_url "$_cib_v" && _cib_aud_url=1 ;;
    4)
        _cib_i=0
        while [ "$_cib_i" -lt 10 ]; do
            _cib_get "$_cib_claims" "aud[$_cib_i]"
            [ "$_cib_rc" = 0 ] || break
            _cib_aud_is_url "$_cib_v" && _cib_aud_url=1
            _cib_i=$((_cib_i + 1))
        done
        ;;
    3) _cib_die "this job's token names no audience (aud); refusing to send it anywhere." ;;
    *) _cib_die "this job's token cannot be read (its payload is not base64url JSON); refusing to send it." ;;
    esac
    if [ -n "$_cib_aud_ok" ]; then
        return 0
    fi
    if [ -z "$_cib_aud_url" ] && [ -n "${CI_BROKER_OPAQUE_AUDIENCE_URL:-}" ] &&
        _cib_origin "$CI_BROKER_OPAQUE_AUDIENCE_URL" && [ "$_cib_o" = "$_cib_url_origin" ]; then
        _cib_say "the token's audience ${_cib_auds:-(none)} is not a URL; sending it to $_cib_url as CI_BROKER_OPAQUE_AUDIENCE_URL allows"
        return 0
    fi
    if [ -n "$_cib_aud_literal" ]; then
        _cib_die "this job's token has the audience ${_cib_auds}: the variable was not expanded, so no broker would accept it." \
            "GitLab 15.7 to 16.0 does not expand variables in id_tokens:aud: upgrade to 16.1 or newer," \
            "or write the broker's audience literally in the job's id_tokens. Nothing was sent."
    fi
    if [ -z "$_cib_aud_url" ]; then
        _cib_die "this job's token is for ${_cib_auds:-no audience}, which is not a URL, so the client cannot tell" \
            "whether $_cib_url is the broker it is for; refusing to send it. If it is, set" \
            "CI_BROKER_OPAQUE_AUDIENCE_URL to $_cib_url (docs/pipelines.md, where the token may go)."
    fi
    _cib_die "this job's token is for ${_cib_auds}, not for $_cib_url: refusing to send it there." \
        "$_cib_n_url must name the broker the token's audience names ($_cib_n_aud); a pipeline, project" \
        "or group variable may have changed it. Nothing was sent."
}

_cib_inputs() {
    if [ "$_cib_target" = github ]; then
        _cib_n_url=broker-url _cib_n_role=role _cib_n_dur=duration _cib_n_aud=audience
    else
        _cib_n_url=CI_BROKER_URL _cib_n_role=CI_BROKER_ROLE _cib_n_dur=CI_BROKER_DURATION
        _cib_n_aud=CI_BROKER_AUDIENCE
    fi
    _cib_url=${CI_BROKER_URL:-}
    _cib_role=${CI_BROKER_ROLE:-}
    _cib_dur=${CI_BROKER_DURATION:-}
    _cib_aud=${CI_BROKER_AUDIENCE:-$_cib_url}
    if [ -z "$_cib_url" ]; then
        _cib_die "$_cib_n_url is not set: give the broker's base URL, e.g. https://broker.example.com"
    fi
    if ! _cib_only "$_cib_url" '!-~' || ! _cib_only "$_cib_aud" '!-~'; then
        _cib_die "$_cib_n_url and $_cib_n_aud must be single words of printable ASCII"
    fi
    case $_cib_url in *'"'* | *\\*) _cib_die "$_cib_n_url must not contain a quote or a backslash" ;; esac
    _cib_url=${_cib_url%/}
    _cib_hostport=${_cib_url#*://}
    _cib_hostport=${_cib_hostport%%[/?#]*}
    case $_cib_hostport in
    # Whatever precedes an @ is user information: the real host is what follows it.
    *@*) _cib_die "$_cib_n_url must not contain user information (an @ before the host)" ;;
    esac
    case $_cib_url in
    https://*) ;;
    http://*)
        # Plain http only to this machine, exactly as the broker's own config rule.
        _cib_port=
        case $_cib_hostport in
        localhost | '[::1]') ;;
        localhost:*) _cib_port=${_cib_hostport#localhost:} ;;
        '[::1]:'*) _cib_port=${_cib_hostport#'[::1]:'} ;;
        127.*)
            _cib_host=${_cib_hostport%%:*}
            case $_cib_hostport in *:*) _cib_port=${_cib_hostport#*:} ;; esac
            _cib_dots=$(printf '%s' "$_cib_host" | tr -cd .)
            if ! _cib_only "$_cib_host" '0-9.' || [ "$_cib_dots" != ... ]; then
                _cib_die "$_cib_n_url must use https:// (http:// is only for loopback addresses)"
            fi
            ;;
        *) _cib_die "$_cib_n_url must use https:// (http:// is only for loopback addresses)" ;;
        esac
        if [ -n "$_cib_port" ] && ! _cib_only "$_cib_port" '0-9'; then
            _cib_die "$_cib_n_url must use https:// (http:// is only for loopback addresses)"
        fi
        ;;
    *) _cib_die "$_cib_n_url must start with https://" ;;
    esac
    case $_cib_role in
    '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._-]*)
        _cib_die "$_cib_n_role must be a role name: 1-64 letters, digits, '.', '_' or '-'" ;;
    esac
    if [ "${#_cib_role}" -gt 64 ]; then
        _cib_die "$_cib_n_role must be a role name: 1-64 letters, digits, '.', '_' or '-'"
    fi
    _cib_req="{\"role\":\"$_cib_role\"}"
    if [ -n "$_cib_dur" ]; then
        case $_cib_dur in
        *[!0-9]* | 0*) _cib_die "$_cib_n_dur must be a whole number of seconds" ;;
        esac
        if [ "${#_cib_dur}" -gt 6 ]; then
            _cib_die "$_cib_n_dur must be a whole number of seconds"
        fi
        _cib_req="{\"role\":\"$_cib_role\",\"duration\":$_cib_dur}"
    fi
    _cib_export=$(printf '%s' "${CI_BROKER_EXPORT_ENV:-true}" | LC_ALL=C tr '[:upper:]' '[:lower:]')
    _cib_outcreds=$(printf '%s' "${CI_BROKER_OUTPUT_CREDENTIALS:-false}" | LC_ALL=C tr '[:upper:]' '[:lower:]')
    case $_cib_export$_cib_outcreds in
    truetrue | truefalse | falsetrue | falsefalse) ;;
    *) _cib_die "export-env and output-credentials take true or false" ;;
    esac
    _cib_profile=${CI_BROKER_AWS_PROFILE:-}
    case $_cib_profile in
    *[!A-Za-z0-9._-]*) _cib_die "CI_BROKER_AWS_PROFILE must be a profile name: letters, digits, '.', '_' or '-'" ;;
    esac
    _cib_attempts=${CI_BROKER_MAX_ATTEMPTS:-5}
    case $_cib_attempts in
    [1-9] | 1[0-9]) ;;
    *) _cib_die "CI_BROKER_MAX_ATTEMPTS must be 1 to 19" ;;
    esac
}

# One exchange with bounded retries (1, 2, 4, 8 s ...) while the broker is unreachable or says
# it is unavailable or rate-limited. On GitHub each attempt gets a fresh OIDC token, because a
# request that timed out may still have spent the previous one (the broker refuses reuse).
_cib_exchange() {
    _cib_try=1
    _cib_wait=1
    while :; do
        _cib_why=
        if [ "$_cib_target" = github ]; then
            if ! _cib_get_github_token; then
                _cib_why="GitHub's OIDC token endpoint did not answer"
            fi
        fi
        if [ -z "$_cib_why" ]; then
            if [ "$_cib_target" = github ]; then
                _cib_check_audience
            fi
            if _cib_request POST "$_cib_url/v1/exchange" "Bearer $_cib_token" "$_cib_req"; then
                case $_cib_status in
                200) return 0 ;;
                429 | 503)
                    _cib_explain_error
                    _cib_why="the broker answered $_cib_detail"
                    ;;
                *) _cib_refused ;;
                esac
            else
                _cib_why="the broker at $_cib_url did not answer"
            fi
        fi
        if [ "$_cib_try" -ge "$_cib_attempts" ]; then
            _cib_die "$_cib_why; gave up after $_cib_try attempts."
        fi
        _cib_say "$_cib_why; trying again in ${_cib_wait}s (attempt $_cib_try of $_cib_attempts)"
        sleep "$_cib_wait"
        _cib_try=$((_cib_try + 1))
        _cib_wait=$((_cib_wait * 2))
    done
}

_cib_refused() {
    _cib_explain_error
    case $_cib_status in
    401)
        _cib_die "the broker refused this job's token: $_cib_detail" \
            "Check that $_cib_n_aud matches the broker's server.audience and that the broker trusts this CI's issuer."
        ;;
    403)
        _cib_die "the broker denied role '$_cib_role': $_cib_detail" \
            "No rule of the role grants this job (or the role does not exist). To see which condition failed," \
            "the broker's operator can run: ci-broker explain --config CONFIG --role $_cib_role --claims CLAIMS.json" \
            "with this job's claims, which the broker's audit log holds under the request id above."
        ;;
    502) _cib_die "the cloud refused or failed the exchange: $_cib_detail" ;;
    4[0-9][0-9]) _cib_die "the broker rejected the request: $_cib_detail" ;;
    *) _cib_die "unexpected answer from $_cib_url/v1/exchange: $_cib_detail" \
        "Is $_cib_n_url the broker's base URL?" ;;
    esac
}

# No cloud issues a credential value near this size (AWS session tokens and Azure access tokens
# run to a few KB). A larger one, exported, would make the job's next command fail with
# "Argument list too long", far from its cause; so it is refused here, by its size only.
_cib_value_limit=16384

# _cib_cred KEY required|optional secret|plain: reads credentials.KEY into _cib_v.
_cib_cred() {
    _cib_get "$_cib_body" "credentials.$1"
    if [ "$_cib_rc" = 3 ] && [ "$2" = optional ]; then
        return 0
    fi
    if [ "$_cib_rc" = 0 ] && [ "${#_cib_v}" -gt "$_cib_value_limit" ]; then
        _cib_die "the broker's answer has a credentials.$1 of ${#_cib_v} bytes, over this client's" \
            "limit of $_cib_value_limit bytes per value; refusing it (nothing was exported)."
    fi
    if [ "$_cib_rc" != 0 ] || ! _cib_only "$_cib_v" '!-~'; then
        _cib_die "the broker's answer has no usable credentials.$1"
    fi
    if [ "$3" = secret ]; then
        _cib_mask "$_cib_v"
    fi
}

_cib_read_answer() {
    _cib_c_access_key_id='' _cib_c_secret_access_key='' _cib_c_session_token='' _cib_c_region=''
    _cib_c_access_token='' _cib_c_token_type='' _cib_c_service_account='' _cib_c_tenant_id=''
    _cib_c_client_id='' _cib_c_subscription_id='' _cib_c_assertion='' _cib_c_authority_host=''
    _cib_get "$_cib_body" cloud
    if [ "$_cib_rc" = 2 ]; then
        _cib_die "the broker's answer is not valid JSON"
    fi
    _cib_cloud=$_cib_v
    case $_cib_cloud in
    aws)
        _cib_cred access_key_id required secret
        _cib_c_access_key_id=$_cib_v
        _cib_cred secret_access_key required secret
        _cib_c_secret_access_key=$_cib_v
        _cib_cred session_token required secret
        _cib_c_session_token=$_cib_v
        _cib_cred region optional plain
        _cib_c_region=$_cib_v
        ;;
    gcp)
        _cib_cred access_token required secret
        _cib_c_access_token=$_cib_v
        _cib_cred token_type required plain
        _cib_c_token_type=$_cib_v
        _cib_cred service_account optional plain
        _cib_c_service_account=$_cib_v
        ;;
    azure)
        _cib_cred access_token required secret
        _cib_c_access_token=$_cib_v
        _cib_cred token_type required plain
        _cib_c_token_type=$_cib_v
        _cib_cred tenant_id required plain
        _cib_c_tenant_id=$_cib_v
        _cib_cred client_id required plain
        _cib_c_client_id=$_cib_v
        _cib_cred subscription_id optional plain
        _cib_c_subscription_id=$_cib_v
        _cib_cred federated_token optional secret
        _cib_c_assertion=$_cib_v
        _cib_cred authority_host optional plain
        _cib_c_authority_host=$_cib_v
        ;;
    *) _cib_die "the broker's answer names no known cloud" ;;
    esac
    _cib_v=
    _cib_get "$_cib_body" expires_at
    if [ "$_cib_rc" != 0 ] || ! _cib_only "$_cib_v" '0-9TZ:.+-'; then
        _cib_die "the broker's answer has no usable expires_at"
    fi
    _cib_expires=$_cib_v
}

_cib_gh_put() {
    case $3 in
    *"$_cib_delim"*) _cib_die "a value collides with the GITHUB_ENV delimiter; refusing to write it" ;;
    esac
    printf '%s<<%s\n%s\n%s\n' "$2" "$_cib_delim" "$3" "$_cib_delim" >>"$1" ||
        _cib_die "cannot write to $1"
}

_cib_set() {
    if [ -z "$2" ]; then
        return 0
    fi
    _cib_names="$_cib_names $1"
    if [ "$_cib_target" = github ]; then
        _cib_gh_put "$GITHUB_ENV" "$1" "$2"
    else
        export "$1=$2"
    fi
}

# The azure federated assertion is read from a file by azure-identity and azurerm. On GitHub it
# lives under RUNNER_TEMP and the action's post step deletes it; on GitLab it lives beside the
# job's other temporary files, outside the project directory (never in artifacts or caches),
# and the template's after_script deletes it.
_cib_tmp_dir() {
    if [ "$_cib_target" = github ]; then
        _cib_tf_dir=${RUNNER_TEMP:-}
        [ -n "$_cib_tf_dir" ] || _cib_die "RUNNER_TEMP is not set"
    else
        _cib_tf_dir=${CI_PROJECT_DIR:+$CI_PROJECT_DIR.tmp}
        _cib_tf_dir=${_cib_tf_dir:-${TMPDIR:-/tmp}}
    fi
}

_cib_token_file() {
    _cib_tmp_dir
    _cib_tf="$_cib_tf_dir/ci-broker-azure-federated-token"
    (umask 077 && mkdir -p "$_cib_tf_dir" && rm -f "$_cib_tf" && printf '%s' "$_cib_c_assertion" >"$_cib_tf") ||
        _cib_die "cannot write the federated token file under $_cib_tf_dir"
    if [ "$_cib_target" = github ]; then
        _cib_gh_put "$GITHUB_STATE" federated_token_file "$_cib_tf"
    fi
}

_cib_export_all() {
    _cib_names=
    if [ "$_cib_export" != true ]; then
        return 0
    fi
    case $_cib_cloud$_cib_profile in
    aws)
        _cib_set AWS_ACCESS_KEY_ID "$_cib_c_access_key_id"
        _cib_set AWS_SECRET_ACCESS_KEY "$_cib_c_secret_access_key"
        _cib_set AWS_SESSION_TOKEN "$_cib_c_session_token"
        _cib_set AWS_REGION "$_cib_c_region"
        _cib_set AWS_DEFAULT_REGION "$_cib_c_region"
        ;;
    aws*) _cib_aws_profile ;;
    gcp)
        _cib_set CLOUDSDK_AUTH_ACCESS_TOKEN "$_cib_c_access_token"
        _cib_set GOOGLE_OAUTH_ACCESS_TOKEN "$_cib_c_access_token"
        ;;
    azure)
        for _cib_p in ARM AZURE; do
            _cib_set "${_cib_p}_TENANT_ID" "$_cib_c_tenant_id"
            _cib_set "${_cib_p}_CLIENT_ID" "$_cib_c_client_id"
            _cib_set "${_cib_p}_SUBSCRIPTION_ID" "$_cib_c_subscription_id"
        done
        _cib_set AZURE_ACCESS_TOKEN "$_cib_c_access_token"
        _cib_set AZURE_AUTHORITY_HOST "$_cib_c_authority_host"
        if [ -n "$_cib_c_assertion" ]; then
            _cib_token_file
            _cib_set AZURE_FEDERATED_TOKEN_FILE "$_cib_tf"
            _cib_set ARM_OIDC_TOKEN_FILE_PATH "$_cib_tf"
            _cib_set ARM_USE_OIDC true
        fi
        ;;
    esac
    _cib_set CI_BROKER_CLOUD "$_cib_cloud"
    _cib_set CI_BROKER_EXPIRES_AT "$_cib_expires"
}

# Several AWS roles in one job: with CI_BROKER_AWS_PROFILE each role writes a profile of that name
# (shared credentials and config files beside the Azure token file, mode 0600) instead of the
# AWS_* keys, which the next role would overwrite; `aws --profile NAME` or AWS_PROFILE picks one.
_cib_aws_profile() {
    (umask 077 && printf '[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\naws_session_token = %s\n' \
        "$_cib_profile" "$_cib_c_access_key_id" "$_cib_c_secret_access_key" "$_cib_c_session_token" \
        >>"$_cib_tf_dir/ci-broker-aws-credentials") || _cib_die "cannot write the AWS credentials file under $_cib_tf_dir"
    _cib_aws_profile_config ''
    _cib_set AWS_SHARED_CREDENTIALS_FILE "$_cib_tf_dir/ci-broker-aws-credentials"
}

# Before the exchange (a refusal then spends no token): the directory, and the name still free.
_cib_aws_files() {
    _cib_tmp_dir
    (umask 077 && mkdir -p "$_cib_tf_dir") || _cib_die "cannot create $_cib_tf_dir"
    if grep -qxF "[profile $_cib_profile]" "$_cib_tf_dir/ci-broker-aws-config" 2>/dev/null; then
        _cib_die "AWS profile '$_cib_profile' is already written by another role of this job: give each role its own"
    fi
}

# _cib_aws_profile_config LINE: the profile's section in the shared config file (region, LINE).
_cib_aws_profile_config() {
    (umask 077 && {
        printf '[profile %s]\n' "$_cib_profile"
        if [ -n "$1" ]; then
            printf '%s\n' "$1"
        fi
        if _cib_only "$_cib_c_region" 'a-z0-9-'; then
            printf 'region = %s\n' "$_cib_c_region"
        fi
    } >>"$_cib_tf_dir/ci-broker-aws-config") || _cib_die "cannot write the AWS config file under $_cib_tf_dir"
    _cib_set AWS_CONFIG_FILE "$_cib_tf_dir/ci-broker-aws-config"
}

_cib_out() {
    if [ -n "$2" ]; then
        _cib_gh_put "$GITHUB_OUTPUT" "$1" "$2"
    fi
}

_cib_outputs() {
    if [ "$_cib_target" != github ]; then
        return 0
    fi
    [ -n "${GITHUB_OUTPUT:-}" ] || _cib_die "GITHUB_OUTPUT is not set"
    _cib_out cloud "$_cib_cloud"
    _cib_out expires-at "$_cib_expires"
    if [ "$_cib_outcreds" != true ]; then
        return 0
    fi
    _cib_out access-key-id "$_cib_c_access_key_id"
    _cib_out secret-access-key "$_cib_c_secret_access_key"
    _cib_out session-token "$_cib_c_session_token"
    _cib_out region "$_cib_c_region"
    _cib_out access-token "$_cib_c_access_token"
    _cib_out token-type "$_cib_c_token_type"
    _cib_out service-account "$_cib_c_service_account"
    _cib_out tenant-id "$_cib_c_tenant_id"
    _cib_out client-id "$_cib_c_client_id"
    _cib_out subscription-id "$_cib_c_subscription_id"
    _cib_out federated-token "$_cib_c_assertion"
    _cib_out authority-host "$_cib_c_authority_host"
}

# -- sessions: refresh where the clouds' tools ask (contract section 8) ---------------------------
# With CI_BROKER_REFRESH=true the job gets, instead of static secrets, hooks its tools call when
# they need fresh credentials: an AWS credential_process profile, a GCP external_account file
# with an executable source, or an Azure federated token file that a background refresher
# rewrites before the assertion in it expires. Each hook is this client again, run as
#   sh DIR/client.sh ci-broker-session aws|gcp|azure|end DIR
# where DIR (mode 0700, beside the project directory, never in it) holds the broker's last
# answer (mode 0600: the refresh token is in it). One lock serialises refreshes: the broker ends
# a session whose refresh token is presented twice. The template's after_script runs `end`,
# which stops the refresher, revokes the session and removes DIR.

_cib_session_inputs() {
    _cib_refresh=$(printf '%s' "${CI_BROKER_REFRESH:-false}" | LC_ALL=C tr '[:upper:]' '[:lower:]')
    case $_cib_refresh in
    true | false) ;;
    *) _cib_die "CI_BROKER_REFRESH takes true or false" ;;
    esac
    if [ "$_cib_refresh" = true ] && [ "$_cib_export" != true ]; then
        _cib_die "CI_BROKER_REFRESH works through the exported environment: keep CI_BROKER_EXPORT_ENV true"
    fi
}

# After the exchange: set the hooks up, or end a session nobody will refresh.
_cib_session_start() {
    _cib_get "$_cib_body" session.refresh_token
    _cib_s_token=$_cib_v
    if [ -n "$_cib_s_token" ] && ! _cib_only "$_cib_s_token" 'A-Za-z0-9._~+/=-'; then
        _cib_die "the broker's answer has no usable session"
    fi
    _cib_mask "$_cib_s_token"
    if [ "$_cib_refresh" != true ]; then
        if [ -n "$_cib_s_token" ]; then
            _cib_request POST "$_cib_url/v1/revoke" "Bearer $_cib_s_token" '{}' || :
        fi
        _cib_export_all
        return 0
    fi
    if [ -z "$_cib_s_token" ]; then
        _cib_die "role '$_cib_role' gives no session, so its credentials cannot be refreshed." \
            "Ask the broker's operator to set session_lifetime on the role, or unset CI_BROKER_REFRESH."
    fi
    _cib_get "$_cib_body" session.expires_at
    _cib_s_expires=$_cib_v
    _cib_session_dir
    (umask 077 && printf '%s' "$_cib_body" >"$_cib_s_dir/answer" && printf '%s' "$_cib_url" >"$_cib_s_dir/url" &&
        printf '%s' "$_cib_dur" >"$_cib_s_dir/duration") ||
        _cib_die "cannot write the session's files under $_cib_s_dir"
    _cib_names=
    case $_cib_cloud in
    aws) _cib_session_aws ;;
    gcp) _cib_session_gcp ;;
    azure) _cib_session_azure ;;
    esac
    _cib_set CI_BROKER_CLOUD "$_cib_cloud"
    _cib_set CI_BROKER_EXPIRES_AT "$_cib_expires"
    _cib_set CI_BROKER_SESSION_EXPIRES_AT "$_cib_s_expires"
    _cib_set CI_BROKER_SESSION_DIR "$_cib_s_dir"
}

# The session's directory, and this client as a file in it for the hooks to run.
_cib_session_dir() {
    if [ -n "${_cib_self:-}" ]; then
        _cib_s_dir=${_cib_self%/*}
        _cib_s_client=$_cib_self
    else
        if [ -z "${CI_BROKER_CLIENT:-}" ] || [ ! -f "$CI_BROKER_CLIENT" ]; then
            _cib_die "CI_BROKER_REFRESH needs this client as a file: set CI_BROKER_CLIENT to the path of ci-broker.sh"
        fi
        _cib_s_dir=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/ci-broker-session.XXXXXX") ||
            _cib_die "cannot create the session directory"
        _cib_s_client="$_cib_s_dir/client.sh"
        cp "$CI_BROKER_CLIENT" "$_cib_s_client" || _cib_die "cannot copy the client into $_cib_s_dir"
    fi
    chmod 700 "$_cib_s_dir" || _cib_die "cannot protect $_cib_s_dir"
    _cib_s_sh=$(command -v sh) || _cib_s_sh='sh'
    # The hook's command line is read by sh, cmd.exe, botocore and shlex alike: no quoting at all.
    for _cib_p in "$_cib_s_sh" "$_cib_s_client" "$_cib_s_dir"; do
        _cib_only "$_cib_p" 'A-Za-z0-9_.:/@+-' ||
            _cib_die "refresh needs paths without spaces or quotes; this one has some: $(_cib_clean "$_cib_p")"
    done
}

_cib_hook_command() {
    printf '%s %s ci-broker-session %s %s' "$_cib_s_sh" "$_cib_s_client" "$1" "$_cib_s_dir"
}

# A value for a JSON string: its quotes and backslashes escaped (values are printable ASCII).
_cib_json_str() {
    printf '%s' "$1" | sed 's/[\\"]/\\&/g'
}

_cib_session_aws() {
    if [ -n "$_cib_profile" ]; then
        _cib_aws_profile_config "credential_process = $(_cib_hook_command aws)"
        return 0
    fi
    (umask 077 && {
        printf '[profile ci-broker]\ncredential_process = %s\n' "$(_cib_hook_command aws)"
        if _cib_only "$_cib_c_region" 'a-z0-9-'; then
            printf 'region = %s\n' "$_cib_c_region"
        fi
    } >"$_cib_s_dir/aws-config") || _cib_die "cannot write the AWS config file under $_cib_s_dir"
    _cib_set AWS_CONFIG_FILE "$_cib_s_dir/aws-config"
    _cib_set AWS_PROFILE ci-broker
    _cib_set AWS_REGION "$_cib_c_region"
    _cib_set AWS_DEFAULT_REGION "$_cib_c_region"
}

_cib_session_gcp() {
    _cib_cred federated_token optional secret
    _cib_s_assertion=$_cib_v
    _cib_cred audience optional plain
    _cib_s_audience=$_cib_v
    _cib_cred token_url optional plain
    _cib_s_token_url=$_cib_v
    _cib_cred service_account_impersonation_url optional plain
    _cib_s_impersonation=$_cib_v
    if [ -z "$_cib_s_assertion" ] || [ -z "$_cib_s_audience" ] || [ -z "$_cib_s_token_url" ]; then
        _cib_die "refresh on GCP needs the role to set 'federated_token: true' in the broker's config"
    fi
    (umask 077 && {
        printf '{\n  "type": "external_account",\n  "audience": "%s",\n' "$(_cib_json_str "$_cib_s_audience")"
        printf '  "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",\n'
        printf '  "token_url": "%s",\n' "$(_cib_json_str "$_cib_s_token_url")"
        if [ -n "$_cib_s_impersonation" ]; then
            printf '  "service_account_impersonation_url": "%s",\n' "$(_cib_json_str "$_cib_s_impersonation")"
        fi
        printf '  "credential_source": {"executable": {"command": "%s", "timeout_millis": 60000}}\n}\n' \
            "$(_cib_hook_command gcp)"
    } >"$_cib_s_dir/gcp-credentials.json") || _cib_die "cannot write the GCP credential file under $_cib_s_dir"
    _cib_set GOOGLE_APPLICATION_CREDENTIALS "$_cib_s_dir/gcp-credentials.json"
    _cib_set CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE "$_cib_s_dir/gcp-credentials.json"
    _cib_set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES 1
}

_cib_session_azure() {
    if [ -z "$_cib_c_assertion" ]; then
        _cib_die "refresh on Azure needs the role to set 'federated_token: true' in the broker's config"
    fi
    _cib_s_file="$_cib_s_dir/azure-federated-token"
    (umask 077 && printf '%s' "$_cib_c_assertion" >"$_cib_s_file") ||
        _cib_die "cannot write the federated token file under $_cib_s_dir"
    # The refresher outlives this shell's step; its output goes nowhere (a job log waits for it).
    "$_cib_s_sh" "$_cib_s_client" ci-broker-session azure "$_cib_s_dir" </dev/null >/dev/null 2>&1 &
    (umask 077 && printf '%s' "$!" >"$_cib_s_dir/azure-refresher.pid") || :
    for _cib_p in ARM AZURE; do
        _cib_set "${_cib_p}_TENANT_ID" "$_cib_c_tenant_id"
        _cib_set "${_cib_p}_CLIENT_ID" "$_cib_c_client_id"
        _cib_set "${_cib_p}_SUBSCRIPTION_ID" "$_cib_c_subscription_id"
    done
    _cib_set AZURE_AUTHORITY_HOST "$_cib_c_authority_host"
    _cib_set AZURE_FEDERATED_TOKEN_FILE "$_cib_s_file"
    _cib_set ARM_OIDC_TOKEN_FILE_PATH "$_cib_s_file"
    _cib_set ARM_USE_OIDC true
}

# -- the hooks, as the tools run them (a process of their own) ------------------------------------

_cib_hook_main() {
    _cib_nl='
'
    _cib_target=gitlab
    _cib_hook=$1
    _cib_s_dir=$2
    if [ -z "$_cib_s_dir" ] || [ ! -f "$_cib_s_dir/url" ]; then
        _cib_die "no ci-broker session at '$(_cib_clean "$_cib_s_dir")'"
    fi
    _cib_url=$(cat "$_cib_s_dir/url")
    _cib_dur=$(cat "$_cib_s_dir/duration")
    _cib_pick_http
    trap '_cib_unlock' EXIT
    case $_cib_hook in
    aws)
        _cib_session_current
        printf '{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","SessionToken":"%s","Expiration":"%s"}\n' \
            "$(_cib_json_str "$_cib_c_access_key_id")" "$(_cib_json_str "$_cib_c_secret_access_key")" \
            "$(_cib_json_str "$_cib_c_session_token")" "$_cib_expires"
        ;;
    gcp)
        _cib_session_current
        _cib_cred federated_token required secret
        printf '{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:jwt","id_token":"%s"}\n' \
            "$(_cib_json_str "$_cib_v")"
        ;;
    azure) _cib_azure_refresher ;;
    azure-once) _cib_azure_once ;;
    end) _cib_session_end ;;
    *) _cib_die "unknown hook '$(_cib_clean "$_cib_hook")'" ;;
    esac
}

# Google's libraries show `message` when `success` is false: the broker's refusal, not a trace.
_cib_gcp_failure() {
    printf '{"version":1,"success":false,"code":"ci_broker_refresh_failed","message":"ci-broker: %s"}\n' \
        "$(_cib_json_str "$(_cib_clean "$1")")"
    exit 0
}

_cib_lock() {
    _cib_s_wait=0
    while ! mkdir "$_cib_s_dir/lock" 2>/dev/null; do
        _cib_s_holder=$(cat "$_cib_s_dir/lock/pid" 2>/dev/null) || _cib_s_holder=
        if [ -n "$_cib_s_holder" ] && ! kill -0 "$_cib_s_holder" 2>/dev/null; then
            rm -rf "$_cib_s_dir/lock" # its holder died
            continue
        fi
        _cib_s_wait=$((_cib_s_wait + 1))
        [ "$_cib_s_wait" -le 90 ] || _cib_die "another refresh of this session did not finish"
        sleep 1
    done
    _cib_locked=1
    printf '%s' "$$" >"$_cib_s_dir/lock/pid"
}

_cib_unlock() {
    if [ "${_cib_locked:-}" = 1 ]; then
        rm -rf "$_cib_s_dir/lock"
        _cib_locked=
    fi
}

# RFC 3339 UTC time (the broker's) to Unix seconds, in awk: `date` parses dates differently
# on every system.
_cib_epoch() {
    printf '%s' "$1" | LC_ALL=C awk '{
        if ($0 !~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]/) { print 0; exit }
        y = substr($0, 1, 4) + 0; m = substr($0, 6, 2) + 0; d = substr($0, 9, 2) + 0
        if (m <= 2) { y -= 1; m += 12 }
        days = 365 * y + int(y / 4) - int(y / 100) + int(y / 400) + int((153 * (m - 3) + 2) / 5) + d - 719469
        printf "%d", days * 86400 + substr($0, 12, 2) * 3600 + substr($0, 15, 2) * 60 + substr($0, 18, 2)
    }'
}

# The `exp` of the broker's assertion (only to schedule the next refresh); 0 when unreadable.
_cib_jwt_exp() {
    _cib_p=${1#*.}
    _cib_p=$(printf '%s' "${_cib_p%%.*}" | tr '_-' '/+' |
        awk '{ n = length($0) % 4; printf "%s%s", $0, (n == 2 ? "==" : n == 3 ? "=" : "") }' |
        base64 -d 2>/dev/null | sed -n 's/.*"exp":\([0-9][0-9]*\).*/\1/p')
    printf '%s' "${_cib_p:-0}"
}

# The session's current answer into _cib_body and _cib_c_*: refreshed at the broker first when it
# is no longer fresh (AWS: 15 minutes left, botocore's refresh window; an assertion: 90 seconds).
_cib_session_current() {
    _cib_lock
    if [ -f "$_cib_s_dir/error" ]; then
        _cib_die "$(cat "$_cib_s_dir/error")"
    fi
    _cib_body=$(cat "$_cib_s_dir/answer")
    _cib_read_answer
    _cib_s_now=$(date +%s)
    case $_cib_cloud in
    aws) _cib_s_left=$(($(_cib_epoch "$_cib_expires") - _cib_s_now - 900)) ;;
    gcp)
        _cib_cred federated_token required secret
        _cib_s_left=$(($(_cib_jwt_exp "$_cib_v") - _cib_s_now - 90))
        ;;
    *) _cib_s_left=$(($(_cib_jwt_exp "$_cib_c_assertion") - _cib_s_now - 90)) ;;
    esac
    if [ "$_cib_s_left" -le 0 ]; then
        _cib_session_refresh
    fi
    _cib_unlock
}

_cib_session_refresh() {
    _cib_get "$_cib_body" session.refresh_token
    _cib_s_token=$_cib_v
    _cib_only "$_cib_s_token" 'A-Za-z0-9._~+/=-' || _cib_die "the session's answer has no usable refresh token"
    _cib_s_req='{}'
    if [ -n "$_cib_dur" ]; then
        _cib_s_req="{\"duration\":$_cib_dur}"
    fi
    _cib_try=1
    while :; do
        if _cib_request POST "$_cib_url/v1/refresh" "Bearer $_cib_s_token" "$_cib_s_req"; then
            case $_cib_status in
            200)
                _cib_read_answer
                _cib_get "$_cib_body" session.refresh_token
                [ "$_cib_rc" = 0 ] || _cib_die "the broker's answer to a refresh has no session"
                (umask 077 && printf '%s' "$_cib_body" >"$_cib_s_dir/answer.new" &&
                    mv -f "$_cib_s_dir/answer.new" "$_cib_s_dir/answer") ||
                    _cib_die "cannot save the refreshed session under $_cib_s_dir"
                return 0
                ;;
            401 | 403)
                # Refused for good (ended, expired, policy changed): later hooks fail fast with it.
                _cib_explain_error
                _cib_why="the broker refused to refresh this job's session: $_cib_detail"
                (umask 077 && printf '%s' "$_cib_why" >"$_cib_s_dir/error") || :
                _cib_die "$_cib_why"
                ;;
            429 | 502 | 503)
                _cib_explain_error
                _cib_why="the broker answered $_cib_detail"
                ;;
            *)
                _cib_explain_error
                _cib_die "unexpected answer from $_cib_url/v1/refresh: $_cib_detail"
                ;;
            esac
        elif [ "$_cib_http" = curl ] && [ "$_cib_rc" = 7 ]; then
            # curl could not connect: the token never left, so trying it again is safe. After any
            # other failure the broker may have spent it; a retry would end the session.
            _cib_why="the broker at $_cib_url did not answer"
        else
            _cib_die "the broker at $_cib_url did not answer the refresh"
        fi
        if [ "$_cib_try" -ge 4 ]; then
            _cib_die "$_cib_why; gave up after $_cib_try attempts"
        fi
        sleep "$_cib_try"
        _cib_try=$((_cib_try + 1))
    done
}

# Keeps the Azure federated token file fresh until the session ends or is refused for good. Each
# round is a process of its own (`azure-once`), so a refusal ends the round, not the refresher.
_cib_azure_refresher() {
    _cib_s_sh=$(command -v sh) || _cib_s_sh='sh'
    while [ -f "$_cib_s_dir/answer" ] && [ ! -f "$_cib_s_dir/error" ]; do
        _cib_s_left=$("$_cib_s_sh" "$0" ci-broker-session azure-once "$_cib_s_dir" 2>/dev/null) || _cib_s_left=10
        if [ "$_cib_s_left" -lt 5 ]; then
            _cib_s_left=5
        fi
        sleep "$_cib_s_left"
    done
}

# One round: the current assertion into the file (written aside, then renamed into place, so
# a reader never sees half of it); prints the seconds until the next round.
_cib_azure_once() {
    _cib_session_current
    (umask 077 && printf '%s' "$_cib_c_assertion" >"$_cib_s_dir/azure-federated-token.new" &&
        mv -f "$_cib_s_dir/azure-federated-token.new" "$_cib_s_dir/azure-federated-token") ||
        _cib_die "cannot write the federated token file"
    _cib_s_exp=$(_cib_jwt_exp "$_cib_c_assertion")
    if [ "$_cib_s_exp" -gt 0 ]; then
        printf '%s' $((_cib_s_exp - $(date +%s) - 89))
    else
        printf 60
    fi
}

# The job's end: stop the refresher, revoke the session, remove every file.
_cib_session_end() {
    _cib_s_pid=$(cat "$_cib_s_dir/azure-refresher.pid" 2>/dev/null) || _cib_s_pid=
    if [ -n "$_cib_s_pid" ]; then
        kill "$_cib_s_pid" 2>/dev/null || :
    fi
    if [ -f "$_cib_s_dir/answer" ]; then
        _cib_lock
        if [ -f "$_cib_s_dir/error" ]; then
            _cib_say "the session had ended before the job did: $(cat "$_cib_s_dir/error")"
        fi
        _cib_get "$(cat "$_cib_s_dir/answer")" session.refresh_token
        if _cib_only "$_cib_v" 'A-Za-z0-9._~+/=-' &&
            _cib_request POST "$_cib_url/v1/revoke" "Bearer $_cib_v" '{}' && [ "$_cib_status" = 200 ]; then
            _cib_say "session revoked"
        else
            _cib_say "could not revoke the session (HTTP $_cib_status); it ends at its expiry"
        fi
        _cib_unlock
    fi
    rm -rf "$_cib_s_dir"
    _cib_say "removed the session files"
}

_cib_main() {
    _cib_nl='
'
    _cib_target=${CI_BROKER_TARGET:-gitlab}
    case $_cib_target in
    github)
        if [ -z "${GITHUB_ENV:-}" ] || [ -z "${GITHUB_STATE:-}" ]; then
            _cib_die "CI_BROKER_TARGET=github needs GITHUB_ENV and GITHUB_STATE (run it as the action)"
        fi
        _cib_delim="ghadelimiter_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
        if [ "${#_cib_delim}" -ne 45 ]; then
            _cib_die "cannot read random bytes for the GITHUB_ENV delimiter"
        fi
        ;;
    gitlab | generic) ;;
    *) _cib_die "CI_BROKER_TARGET must be github, gitlab or generic" ;;
    esac
    _cib_inputs
    _cib_session_inputs
    _cib_pick_http
    # The token's audience is checked before any request, the TLS probe included; on GitHub each
    # attempt's fresh token is checked in _cib_exchange.
    _cib_try=1
    if [ "$_cib_target" = gitlab ]; then
        _cib_gitlab_token
        _cib_check_audience
    fi
    if [ "$_cib_target" = generic ]; then
        _cib_generic_token
        _cib_check_audience
    fi
    if [ "$_cib_http" = busybox-wget ]; then
        _cib_check_busybox_tls
    fi
    if [ -n "$_cib_profile" ]; then
        _cib_aws_files
    fi
    _cib_say "exchanging this job's OIDC token at $_cib_url for role '$_cib_role' (HTTP via $_cib_http)"
    _cib_exchange
    _cib_read_answer
    _cib_session_start
    _cib_outputs
    _cib_say "credentials for role '$_cib_role' ($_cib_cloud) expire at $_cib_expires${_cib_names:+; exported:$_cib_names}"
}

# GitLab's debug trace (set -x) would print every value; it is paused while secrets are handled.
case $- in
*x*) _cib_xtrace=1 && set +x ;;
*) _cib_xtrace= ;;
esac
if [ "${1:-}" = ci-broker-session ]; then
    _cib_hook_main "${2:-}" "${3:-}"
    exit
fi
_cib_main
unset _cib_c_access_key_id _cib_c_secret_access_key _cib_c_session_token _cib_c_region \
    _cib_c_access_token _cib_c_token_type _cib_c_service_account _cib_c_tenant_id \
    _cib_c_client_id _cib_c_subscription_id _cib_c_assertion _cib_c_authority_host
unset _cib_attempts _cib_aud _cib_awk_json _cib_body _cib_cloud _cib_delim _cib_detail _cib_dots \
    _cib_dur _cib_err _cib_expires _cib_export _cib_hdr _cib_hdr_rid _cib_host _cib_hostport _cib_http \
    _cib_limit _cib_line _cib_msg _cib_n_aud _cib_n_dur _cib_n_role _cib_n_url _cib_names _cib_nl \
    _cib_oidc_url _cib_raw _cib_outcreds _cib_p _cib_port _cib_py_http _cib_rc _cib_req _cib_rest _cib_rid \
    _cib_role _cib_status _cib_target _cib_tf _cib_tf_dir _cib_token _cib_tool _cib_try _cib_url \
    _cib_v _cib_value_limit _cib_wait _cib_why _cib_refresh _cib_self _cib_s_token _cib_s_expires _cib_s_dir _cib_s_client \
    _cib_s_sh _cib_s_assertion _cib_s_audience _cib_s_token_url _cib_s_impersonation _cib_s_file _cib_hook \
    _cib_s_wait _cib_s_holder _cib_locked _cib_s_now _cib_s_left _cib_s_req _cib_s_exp _cib_s_pid \
    _cib_tvar _cib_awk_b64 _cib_o _cib_o_scheme _cib_o_host _cib_claims _cib_name _cib_i _cib_auds \
    _cib_aud_ok _cib_aud_url _cib_aud_literal _cib_url_origin _cib_profile
unset -f _cib_say _cib_clean _cib_die _cib_only _cib_get _cib_pick_http _cib_request \
    _cib_request_wget _cib_check_busybox_tls _cib_urlencode _cib_mask _cib_explain_error \
    _cib_get_github_token _cib_check_token _cib_inputs _cib_exchange _cib_refused _cib_cred \
    _cib_read_answer _cib_gh_put _cib_set _cib_token_file _cib_export_all _cib_out _cib_outputs \
    _cib_session_inputs _cib_session_start _cib_session_dir _cib_hook_command _cib_json_str \
    _cib_session_aws _cib_session_gcp _cib_session_azure _cib_hook_main _cib_gcp_failure _cib_lock \
    _cib_unlock _cib_epoch _cib_jwt_exp _cib_session_current _cib_session_refresh _cib_azure_refresher \
    _cib_azure_once _cib_session_end _cib_main _cib_generic_token _cib_gitlab_token \
    _cib_token_from_variable _cib_origin _cib_token_claims _cib_show_claims _cib_aud_is_url \
    _cib_check_audience _cib_tmp_dir _cib_aws_profile _cib_aws_files _cib_aws_profile_config
if [ -n "$_cib_xtrace" ]; then
    unset _cib_xtrace
    set -x
else
    unset _cib_xtrace
fi
# <<< ci-broker client
