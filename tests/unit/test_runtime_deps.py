"""The Docker image installs what the README's run command installs (no Docker engine here: the files are
read). `make run` runs ``deployments/setup.sh run``, then the service; the image must not lack a Debian
package or a pip extra the service needs at run time (the demo generator once needed decoders only the test
extra had, and dcmtk only setup.sh installed). Setup itself never stops or reconfigures a process it did not
start."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
SETUP = ROOT / "deployments" / "setup.sh"
DOCKERFILE = ROOT / "Dockerfile"

# Installed by only one of the two, each for a reason:
ONLY_SETUP = {
    "orthanc": "the run command's demo PACS (the compose file runs Orthanc's own image)",
    "python3-venv": "setup.sh's virtualenv (the image installs into its own Python)",
    "nodejs": "builds the viewers (the image builds them in a stage of its own, FROM node)",
    "npm": "builds the viewers (the image builds them in a stage of its own, FROM node)",
}
ONLY_DOCKER = {
    "postgresql-client": "pg_dump/pg_restore for `studypub backup` against the compose file's PostgreSQL",
}


def setup_packages(mode: str) -> set[str]:
    """The Debian packages setup.sh may install in ``mode`` (run or test), read from its need_pkgs lines."""
    packages: set[str] = set()
    in_test_block = False
    for line in SETUP.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith('if [ "$mode" = test ]; then'):
            in_test_block = True
        elif stripped == "fi" and not line.startswith(" "):
            in_test_block = False
        match = re.search(r"need_pkgs\+=\(([^)]*)\)", line)
        if match and (mode == "test" or not in_test_block):
            packages.update(match.group(1).split())
    return packages


def docker_packages() -> set[str]:
    # The image's own stage (the last FROM): the viewers' build stage installs what only the build needs.
    text = DOCKERFILE.read_text().split("\nFROM ")[-1].replace("\\\n", " ")
    packages: set[str] = set()
    for match in re.finditer(r"apt-get install ([^&\n]*)", text):
        packages.update(word for word in match.group(1).split() if not word.startswith("-"))
    return packages


def setup_extras(mode: str) -> str:
    """The extras setup.sh installs the project with in ``mode``."""
    text = SETUP.read_text()
    default = re.search(r'^\s*extras="([^"]*)"', text, re.M)
    assert default, "setup.sh no longer sets extras"
    extras = default.group(1)
    for cond_mode, value in re.findall(r'\[ "\$mode" = (\w+) \] && extras="([^"]*)"', text):
        if cond_mode == mode:
            extras = value
    assert re.search(r'pip install -q -c constraints.txt -e "\.\$extras"', text), "setup.sh's install line changed"
    return extras


def docker_extras() -> str:
    match = re.search(r"pip install -c constraints.txt \.(\[[^\]]*\])?\s*$", DOCKERFILE.read_text(), re.M)
    assert match, "the Dockerfile's pip install line changed"
    return match.group(1) or ""


def test_the_parsers_read_what_the_files_say() -> None:
    # A parser that reads nothing would make the comparisons below pass for any file.
    assert {"orthanc", "dcmtk", "tesseract-ocr", "tesseract-ocr-rus"} <= setup_packages("run")
    assert {"postgresql", "chromium", "nginx-light"} <= setup_packages("test") - setup_packages("run")
    assert {"tesseract-ocr", "postgresql-client"} <= docker_packages()
    assert setup_extras("test") == "[test]"


def test_the_image_has_the_run_commands_debian_packages() -> None:
    run, image = setup_packages("run"), docker_packages()
    assert run - set(ONLY_SETUP) <= image, f"the Dockerfile lacks {sorted(run - set(ONLY_SETUP) - image)}"
    assert image - set(ONLY_DOCKER) <= run, f"setup.sh (run) lacks {sorted(image - set(ONLY_DOCKER) - run)}"
    assert set(ONLY_SETUP) <= run and set(ONLY_DOCKER) <= image, "an exception above no longer applies: drop it"
    viewer_stage = re.search(r"^FROM node:\S+ AS viewer$", DOCKERFILE.read_text(), re.M)
    assert viewer_stage, "the image no longer builds the viewers in a node stage"


def test_the_image_has_the_run_commands_pip_extras() -> None:
    assert docker_extras() == setup_extras("run") == ""


def test_setup_never_stops_or_reconfigures_a_process_it_did_not_start() -> None:
    code = "\n".join(line for line in SETUP.read_text().splitlines() if not line.lstrip().startswith("#"))
    forbidden = (r"systemctl\s+(stop|disable|mask|restart|kill)", r"service\s+\S+\s+(stop|restart)", r"\bp?kill")
    for pattern in forbidden:
        assert not re.search(pattern, code), f"setup.sh runs {pattern!r}"
