#!/bin/sh
# Runs the unit, integration and interop tests under each CPython version given (pyenv
# interpreters), each in its own virtual environment .venv-<version>: the fast tiers only. Tests
# marked `slow` (whole-agent scenarios, fixed observation windows) run once, in `make test`. Versions without an
# interpreter on this machine are reported and left out; the run fails if any version fails or
# none was found.
#
# Usage: tests/system/matrix.sh 3.9 3.10 ...
set -u
cd "$(dirname "$0")/../.." || exit 1

TESTS="tests/unit tests/integration tests/interop"
PYENV_ROOT=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")

# The newest pyenv CPython X.Y.Z for X.Y (not free-threaded or other variants).
find_python() {
	for candidate in "$PYENV_ROOT/versions/$1".*/bin/python; do
		patch=${candidate#"$PYENV_ROOT/versions/$1."}
		patch=${patch%/bin/python}
		case $patch in '' | *[!0-9]*) continue ;; esac
		[ -x "$candidate" ] && echo "$patch $candidate"
	done | sort -n | tail -n 1 | cut -d' ' -f2-
}

# Create .venv-X.Y and install the project with its test extras, again when pyproject changes.
prepare_venv() {
	venv=.venv-$1
	stamp=$venv/.installed
	fresh=$(find "$stamp" -newer pyproject.toml -newer tests/plugins/fsplugin/pyproject.toml 2>/dev/null)
	[ -n "$fresh" ] && return 0
	rm -rf "$venv"
	"$2" -m venv "$venv" &&
		"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
		"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,systemd]' &&
		"$venv/bin/python" -m pip install -q --disable-pip-version-check -e tests/plugins/fsplugin &&
		touch "$stamp"
}

summary=""
failed=0
found=0
for version in "$@"; do
	python=$(find_python "$version")
	if [ -z "$python" ]; then
		summary="$summary\n  $version: no interpreter under $PYENV_ROOT/versions, not run"
		continue
	fi
	found=$((found + 1))
	echo "== Python $version ($python)"
	if ! prepare_venv "$version" "$python"; then
		summary="$summary\n  $version: FAILED to install the project into .venv-$version"
		failed=$((failed + 1))
		continue
	fi
	# shellcheck disable=SC2086 # TESTS is a list of paths
	if ".venv-$version/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" $TESTS; then
		summary="$summary\n  $version: passed"
	else
		summary="$summary\n  $version: FAILED"
		failed=$((failed + 1))
	fi
done

printf "== test matrix:%b\n" "$summary"
if [ "$found" -eq 0 ]; then
	echo "no Python interpreter found for: $*" >&2
	exit 1
fi
[ "$failed" -eq 0 ]
