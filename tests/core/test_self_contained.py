"""The test suite needs nothing beside the repository: a fresh clone holds every fixture its tests read.

Any test source that climbs out of the repository to a `shared` folder, or names a location outside the repository
that exists on this machine (other than system tools and the temporary folder), fails here with the offending line.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS = REPO_ROOT / "tests"
# System locations a test may name: interpreters, browsers, the temporary folder, device files.
SYSTEM_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/tmp", "/dev", "/proc", "/etc", "/var/tmp")
CLIMBS_TO_SHARED = re.compile(r"""\.\.[\\/]+shared|["']\.\.["']\s*/\s*["']shared["']""")


def _test_sources() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if path.resolve() != Path(__file__).resolve())


def _outside_repository(literal: str, repo_root: Path, exists: Callable[[Path], bool]) -> bool:
    """An absolute path, not a system location, not inside the repository, whose top folder exists here."""
    if not literal.startswith("/") or "\n" in literal or len(literal) > 300:
        return False
    if any(literal == root or literal.startswith(root + "/") for root in SYSTEM_ROOTS):
        return False
    path = Path(literal)
    if path == repo_root or repo_root in path.parents or len(path.parts) < 2:
        return False
    return exists(Path("/", path.parts[1]))


def offending_lines(source: Path, repo_root: Path = REPO_ROOT,
                    exists: Callable[[Path], bool] = Path.exists) -> list[str]:
    """`file:line: text` for each reference to `../shared` or to an existing absolute path outside the repo."""
    text = source.read_text(encoding="utf-8")
    name = source.relative_to(repo_root)
    found = [f"{name}:{number}: {line.strip()}"
             for number, line in enumerate(text.splitlines(), 1) if CLIMBS_TO_SHARED.search(line)]
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and _outside_repository(node.value, repo_root, exists)):
            found.append(f"{name}:{node.lineno}: {node.value!r}")
    return sorted(set(found), key=lambda line: int(line.split(":")[1]))


def test_no_test_reads_outside_the_repository():
    offending = [line for source in _test_sources() for line in offending_lines(source)]
    assert offending == [], "tests must read only files inside the repository:\n" + "\n".join(offending)


def test_the_guard_catches_a_shared_folder_and_an_absolute_path(tmp_path):
    repo = tmp_path / "clone"
    sample = repo / "tests" / "test_sample.py"
    sample.parent.mkdir(parents=True)
    sample.write_text('from pathlib import Path\nA = Path(__file__).parents[2] / ".." / "shared"\n'
                      'B = "../shared/fixtures/musubi"\nC = Path("/home/someone/fixtures/dit.safetensors")\n'
                      f'D = "/m/not-here.safetensors"\nE = "/usr/bin/chromium"\nF = {str(repo / "tests" / "x")!r}\n')
    lines = offending_lines(sample, repo, exists=lambda top: top.name != "m")
    assert [line.split(":")[1] for line in lines] == ["2", "3", "4"]


def test_the_musubi_fixtures_live_in_the_repository():
    folder = TESTS / "fixtures" / "musubi"
    for name in ("README.md", "fixture.json", "dit.safetensors", "golden.safetensors", "lora_full.safetensors",
                 "lora_blocks_0_1.safetensors"):
        assert (folder / name).is_file(), f"{name} is missing from tests/fixtures/musubi"
