#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (Python 3.11) for StudyPublicator: system packages, the virtualenv,
# the project. Idempotent: a second run only does what is missing.
#   deployments/setup.sh          the service (Orthanc for the demo PACS, dcmtk)
#   deployments/setup.sh test     plus what the tests need (a running PostgreSQL the tests can reach)
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
# OCR of text burned into pixels (English and Russian models).
{ command -v tesseract && ls /usr/share/tesseract-ocr/*/tessdata/rus.traineddata; } >/dev/null 2>&1 \
  || need_pkgs+=(tesseract-ocr tesseract-ocr-eng tesseract-ocr-rus)
"$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# The in-browser viewers are built from the npm registry at set-up (Node and npm; nothing at run time).
command -v npm >/dev/null 2>&1 || need_pkgs+=(nodejs npm)
if [ "$mode" = test ]; then
  command -v pg_ctlcluster >/dev/null 2>&1 || need_pkgs+=(postgresql)
  # The browser tests drive Debian's Chromium through Playwright (no browser download).
  [ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
  # The reverse proxy's configuration is checked and served by the tests (Debian's nginx, own instances).
  [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
  # dciodvfy checks that anonymised output is still a valid IOD.
  command -v dciodvfy >/dev/null 2>&1 || need_pkgs+=(dicom3tools)
  # OpenJPH's encoder writes the HTJ2K test studies (OpenJPEG, in pylibjpeg, only decodes HTJ2K).
  command -v ojph_compress >/dev/null 2>&1 || need_pkgs+=(openjph-tools)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
  # Debian's packages may start a system-wide Orthanc (4242/8042) or nginx (80). They are left alone: setup
  # never stops, kills or reconfigures a process it did not start. The project runs its own instances, and
  # `studypub run` takes free ports when the defaults are taken (it prints them).
fi

if [ "$mode" = test ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "setup: starting PostgreSQL" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  # The tests connect over TCP as "postgres". These machines trust local TCP; a stock Debian asks for a
  # password, so give the role one and hand the URL to the tests.
  pg_url_file="$VENV/test-pg-url"
  mkdir -p "$VENV"
  if psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1" >/dev/null 2>&1 </dev/null; then
    echo "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres" > "$pg_url_file"
  elif [ ! -s "$pg_url_file" ]; then
    password="studypub-test-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD '$password'\"" >&2
    echo "postgresql+psycopg2://postgres:$password@127.0.0.1:5432/postgres" > "$pg_url_file"
  fi
fi

if [ ! -x "$VENV/bin/pip" ]; then  # missing, or left half-made by a failed earlier run
  rm -rf "$VENV/bin" "$VENV/lib" "$VENV/include" "$VENV/pyvenv.cfg"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$mode"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  extras=""
  [ "$mode" = test ] && extras="[test]"
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".$extras" >&2
  touch "$stamp"
  if [ "$mode" = test ]; then touch "$VENV/.installed-run"; fi  # the test install is a superset
fi

# The in-browser viewers: the touch viewer (cornerstone3D, bundled with esbuild; versions pinned by
# viewer/package-lock.json) and OHIF (the prebuilt @ohif/app, integrity-checked, moved under /ohif/).
# Without them the service still runs and its link pages offer the download only (the API says so at start).
viewer_stamp="viewer/dist/.built"
if [ ! -f "$viewer_stamp" ] || [ -n "$(find viewer/package-lock.json viewer/build.mjs viewer/src viewer/ohif-config.js \
     deployments/ohif.py -newer "$viewer_stamp" 2>/dev/null | head -n1)" ]; then
  if (cd viewer && npm ci --no-audit --no-fund --loglevel=error && node build.mjs) >&2 \
     && "$VENV/bin/python" -m deployments.ohif viewer/dist/ohif >&2; then
    rm -rf viewer/node_modules/.cache
    touch "$viewer_stamp"
  else
    echo "setup: the in-browser viewers could not be built (npm registry unreachable?): links will offer the download only" >&2
  fi
fi
