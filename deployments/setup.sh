#!/usr/bin/env bash
# Set up a fresh Debian machine for StudyPublicator: system packages, the virtualenv, the project.
#   deployments/setup.sh          the service (Orthanc for the demo PACS, dcmtk)
#   deployments/setup.sh test     plus what the tests need (PostgreSQL running, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need_pkgs+=(orthanc)
command -v getscu >/dev/null 2>&1 || need_pkgs+=(dcmtk)
if [ "$mode" = test ]; then
  command -v pg_ctlcluster >/dev/null 2>&1 || need_pkgs+=(postgresql)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
  # Debian starts a system-wide Orthanc on 4242/8042; the project runs its own instances.
  as_root systemctl disable --now orthanc >/dev/null 2>&1 || as_root service orthanc stop >/dev/null 2>&1 || true
fi

if [ "$mode" = test ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "setup: starting PostgreSQL" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$mode"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  extras=""
  [ "$mode" = test ] && extras="[test]"
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".$extras" >&2
  touch "$stamp"
fi
