#!/usr/bin/env bash
# Run `ansible-test sanity` for this collection, offline except for the package
# index, from a throw-away copy of the tree.
#
#   tests/sanity/run.sh [VENV] [ansible-test sanity options...]
#   e.g. tests/sanity/run.sh                       # all default tests, .venv
#        tests/sanity/run.sh .venv --test pylint   # one test
#
# VENV: $1 (if it does not start with '-'), else $VENV, else <repo>/.venv.
# It must hold ansible-core (ansible-test) on Python 3.11.
#
# Environment:
#   SANITY_HOME   scratch HOME for ansible-test (default <repo>/.cache/ansible-test-home);
#                 the per-test sanity virtualenvs are cached there, so only the
#                 first run downloads the pinned sanity requirements from PyPI.
#   SANITY_MODE   local (default) or venv; see tests/sanity/README.md.
#   SANITY_NO_APT set to 1 to never apt-get install shellcheck.
#   SANITY_OUTPUT directory to copy ansible-test's tests/output to (default: dropped).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"

if [[ $# -gt 0 && $1 != -* ]]; then
    VENV="$1"
    shift
fi
VENV="${VENV:-$REPO_ROOT/.venv}"
[[ $VENV = /* ]] || VENV="$PWD/$VENV"
if [[ -n ${SANITY_OUTPUT:-} && $SANITY_OUTPUT != /* ]]; then SANITY_OUTPUT="$PWD/$SANITY_OUTPUT"; fi
PY="$VENV/bin/python"
ANSIBLE_TEST="$VENV/bin/ansible-test"
TARGET_PY=3.11
MODE="${SANITY_MODE:-local}"

die() { echo "sanity: $*" >&2; exit 2; }

[[ -x $ANSIBLE_TEST ]] || die "$ANSIBLE_TEST not found; create the venv first (pip install -r requirements-dev.txt)"
venv_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ $venv_py == "$TARGET_PY" ]] || die "$VENV is Python $venv_py; Python $TARGET_PY is needed"

# --- shellcheck: ansible-test silently skips the shellcheck test (one warning)
# when the binary is missing, so install it (Debian package) when we can.
if ! command -v shellcheck >/dev/null 2>&1 && [[ ${SANITY_NO_APT:-0} != 1 && $(id -u) == 0 ]] \
        && command -v apt-get >/dev/null 2>&1; then
    echo "sanity: installing shellcheck (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q shellcheck >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q shellcheck >/dev/null 2>&1; } \
        || echo "sanity: WARNING: could not install shellcheck" >&2
fi
command -v shellcheck >/dev/null 2>&1 \
    || echo "sanity: WARNING: shellcheck is missing: the shellcheck sanity test will be SKIPPED" >&2

# --- scratch HOME: ansible-test keeps its sanity venvs and caches under ~/.ansible/test.
SANITY_HOME="${SANITY_HOME:-$REPO_ROOT/.cache/ansible-test-home}"
mkdir -p "$SANITY_HOME/.ansible/test/cache"
SANITY_HOME="$(cd "$SANITY_HOME" && pwd -P)"

# ansible-test passes only HOME and PATH (not PIP_*, proxies) to pip, so pip
# reads its config from files: carry the caller's user pip config over.
REAL_HOME="${HOME:-/root}"
for f in .config/pip/pip.conf .pip/pip.conf; do
    if [[ -f $REAL_HOME/$f ]]; then
        mkdir -p "$(dirname "$SANITY_HOME/$f")"
        cp -f "$REAL_HOME/$f" "$SANITY_HOME/$f"
    fi
done

# Offline stand-in for get-pip.py (ansible-test would download it from
# ci-files.testing.ansible.com to bootstrap pip in each new sanity venv).
pip_ver="$("$PY" - <<'EOF'
import os, re, ansible_test
p = os.path.join(os.path.dirname(ansible_test.__file__), '_internal', 'python_requirements.py')
m = re.search(r"pip='([0-9.]+)'", open(p).read())
print(m.group(1) if m else '24.2')
EOF
)"
cat > "$SANITY_HOME/.ansible/test/cache/get_pip_${pip_ver//./_}.py" <<'EOF'
"""Stand-in for get-pip.py, written by tests/sanity/run.sh.

ansible-test runs it as `get-pip.py [pip install args]` inside a new virtualenv
that has no pip. Bootstrap pip from the wheel bundled with CPython (ensurepip),
then install what was asked (pip==X) from the package index; if that fails,
keep the bundled pip, which is good enough for the sanity requirements.
"""
import ensurepip
import os
import subprocess
import sys

env = dict(os.environ)  # ensurepip strips PIP_* from os.environ and disables pip config
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
ensurepip.bootstrap(upgrade=True)
if any(not a.startswith('-') for a in args):
    rc = subprocess.call([sys.executable, '-m', 'pip', 'install'] + args, env=env)
    if rc:
        sys.stderr.write('get-pip stand-in: "pip install %s" failed (rc=%d); using the pip from ensurepip\n'
                         % (' '.join(args), rc))
EOF

# --- copy the collection to .../ansible_collections/NS/NAME (a real directory).
read -r NS NAME < <("$PY" - "$REPO_ROOT/galaxy.yml" <<'EOF'
import sys, yaml
g = yaml.safe_load(open(sys.argv[1]))
print(g['namespace'], g['name'])
EOF
) || true
[[ -n ${NS:-} && -n ${NAME:-} ]] || die "cannot read namespace/name from $REPO_ROOT/galaxy.yml"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pggit-sanity.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
DEST="$WORK/ansible_collections/$NS/$NAME"
mkdir -p "$DEST"

# Never copied, even when git does not ignore them (ansible-lint's .ansible/
# holds a symlink back to the collection).
EXCLUDE_RE='^(\.git|\.venv|\.cache|\.ansible|\.tox|\.pytest_cache|reports|tests/output|bench/results)(/|$)'
cd "$REPO_ROOT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked-but-not-ignored files that exist (as git would see them).
    git ls-files -z --cached --others --exclude-standard \
        | { grep -zEv "$EXCLUDE_RE" || true; } \
        | while IFS= read -r -d '' f; do
              if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi
          done \
        | tar --null --no-recursion -T - -cf - | tar -xf - -C "$DEST"
else
    tar -cf - --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./.ansible \
        --exclude=./.tox --exclude=./reports --exclude=./tests/output --exclude=./bench/results \
        --exclude=__pycache__ --exclude='*.pyc' --exclude=.pytest_cache --exclude='*.tar.gz' . \
        | tar -xf - -C "$DEST"
fi

# --- run. --local: the tests that need packages still run in their own cached
# venvs under $SANITY_HOME (nothing is installed into $VENV); the rest run with
# $VENV's python. --venv also works but re-bootstraps a delegation venv (pip
# from PyPI) on every run.
case "$MODE" in
    local) mode_args=(--local) ;;
    venv) mode_args=(--venv) ;;
    *) die "SANITY_MODE must be local or venv" ;;
esac

cd "$DEST"
echo "sanity: ansible-test $("$ANSIBLE_TEST" --version | awk '{print $NF}') sanity ${mode_args[*]} --python $TARGET_PY $* (copy in $DEST)" >&2
# Every default sanity test runs (all of them work offline): no --skip-test.
# Per-file exceptions belong in tests/sanity/ignore-2.19.txt.
# A lock, because concurrent runs would race on the shared venv cache.
lock=()
if command -v flock >/dev/null 2>&1; then lock=(flock "$SANITY_HOME/.lock"); fi
rc=0
HOME="$SANITY_HOME" PATH="$VENV/bin:$PATH" "${lock[@]}" \
    "$ANSIBLE_TEST" sanity "${mode_args[@]}" --python "$TARGET_PY" "$@" || rc=$?

# Keep ansible-test's results (tests/output of the copy) if asked, e.g. with --junit.
if [[ -n ${SANITY_OUTPUT:-} && -d tests/output ]]; then
    mkdir -p "$SANITY_OUTPUT"
    cp -a tests/output/. "$SANITY_OUTPUT/"
fi

if [[ $rc -eq 0 ]]; then
    echo "sanity: PASSED" >&2
else
    echo "sanity: FAILED (ansible-test exit $rc)" >&2
fi
exit "$rc"
