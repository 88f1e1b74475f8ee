#!/usr/bin/env sh
# Print the absolute path of a Python interpreter that lungclam supports, for `make setup`.
#
#   tools/pick_python.sh                 python3 when in range, else the newest of
#                                        python3.13/3.12/3.11 that runs
#   tools/pick_python.sh NAME            NAME (a command or a path), which must be in range
#   tools/pick_python.sh --other-than PY the newest supported Python whose version differs
#                                        from interpreter PY's (for a second test run)
#
# The supported range is read from requires-python in pyproject.toml (">=3.A,<3.B").
# A pyenv shim is on the PATH even when pyenv's selected version lacks that command (it
# then fails with "command not found"), so a name counts only if it runs; failing that,
# the same name under pyenv's installed versions is tried. On failure, one line on stderr
# says what to install, and the exit status is 1.
set -u
cd "$(dirname "$0")/.." || exit 1

range=$(sed -n 's/^requires-python *= *">=3\.\([0-9]*\), *<3\.\([0-9]*\)".*/\1 \2/p' pyproject.toml)
[ -n "$range" ] || { echo "pick_python: cannot read requires-python (\">=3.A,<3.B\") in pyproject.toml" >&2; exit 1; }
set -- "$@" --
lowest=${range% *}
above=${range#* }
highest=$((above - 1))

# Absolute path of interpreter $1 if it runs and its minor version is in range, else nothing.
in_range() {
    "$1" -c "import sys; v = sys.version_info; sys.exit(not (v[0] == 3 and $lowest <= v[1] <= $highest)); " \
        2>/dev/null && "$1" -c "import sys; print(sys.executable)" 2>/dev/null
}

# Absolute path of command or path $1 in range: as found on the PATH, else under pyenv.
resolve() {
    found=$(in_range "$1") && { echo "$found"; return 0; }
    case "$1" in */*) return 1 ;; esac
    command -v pyenv >/dev/null 2>&1 || return 1
    for candidate in $(ls -d "$(pyenv root)"/versions/3.*/bin/"$1" 2>/dev/null | sort -V -r); do
        found=$(in_range "$candidate") && { echo "$found"; return 0; }
    done
    return 1
}

minor_of() { "$1" -c "import sys; print(sys.version_info[1])" 2>/dev/null; }

newest_names() {
    minor=$highest
    while [ "$minor" -ge "$lowest" ]; do
        echo "python3.$minor"
        minor=$((minor - 1))
    done
}

wanted="python 3.$lowest to 3.$highest"
case "$1" in
--other-than)
    skip_minor=$(minor_of "$2")
    for name in $(newest_names); do
        [ "${name#python3.}" = "$skip_minor" ] && continue
        resolve "$name" && exit 0
    done
    echo "no second Python found: install one of $(newest_names | grep -v "^python3\.$skip_minor\$" | tr '\n' ' ')(e.g. pyenv install 3.$highest)" >&2
    exit 1
    ;;
--)
    resolve python3 && exit 0
    for name in $(newest_names); do
        resolve "$name" && exit 0
    done
    echo "lungclam needs $wanted: install python3.$highest (or 3.$lowest-3.$highest), or run 'make setup PYTHON=/path/to/python3.x'" >&2
    exit 1
    ;;
*)
    resolve "$1" && exit 0
    echo "PYTHON=$1 does not run or is not $wanted: install python3.$highest, or name another with 'make setup PYTHON=python3.x'" >&2
    exit 1
    ;;
esac
