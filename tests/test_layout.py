"""The house layout, checked the way a reader would check it: by reading the source (issue 13's acceptance).

- the method never imports the embedded toy world (`qsd.embedded`); only the model registry and the stages do;
- no module outside `qsd.packed` reaches into the packed format: they use the package's public verbs only;
- qsd raises its own error hierarchy (`qsd.errors`), never a bare builtin error.
"""

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "qsd"
SOURCES = sorted(SRC.rglob("*.py"))
TOY_WORLD_IMPORTERS = ("models/registry.py", "stages/", "embedded/")
PACKED_PUBLIC = {"export", "load_quantized", "memory_report", "read_export", "cpu", "QLinear", "QConv"}


def relative(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def test_sources_are_found():
    assert len(SOURCES) > 40 and any(relative(p) == "multiquant.py" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_the_method_does_not_import_the_toy_world(path):
    if relative(path).startswith(TOY_WORLD_IMPORTERS):
        return
    text = path.read_text()
    assert not re.search(r"qsd\.embedded|from qsd import .*\bembedded\b", text), (
        f"{relative(path)} imports the embedded toy world; only {TOY_WORLD_IMPORTERS} may"
    )


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_only_qsd_packed_knows_the_packed_format(path):
    if relative(path).startswith("packed/"):
        return
    text = path.read_text()
    assert not re.search(r"qsd\.packed\.\w+", text), f"{relative(path)} imports a qsd.packed submodule"
    for names in re.findall(r"from qsd\.packed import ([^\n]+)", text):
        imported = {n.strip().split(" as ")[0] for n in names.strip("()").split(",") if n.strip()}
        assert imported <= PACKED_PUBLIC, f"{relative(path)} uses {imported - PACKED_PUBLIC} of qsd.packed"


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_errors_come_from_the_hierarchy(path):
    bare = re.findall(r"raise (ValueError|KeyError|FileNotFoundError|TypeError|RuntimeError|IndexError)\(",
                      path.read_text())
    assert not bare, f"{relative(path)} raises bare {bare}; use a qsd.errors class"


def test_error_hierarchy_keeps_the_builtin_bases():
    from qsd import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, errors.QsdError) for c in classes)
    assert issubclass(errors.UnsupportedSpecError, ValueError) and issubclass(errors.UnknownLayerError, KeyError)
    assert issubclass(errors.ModelNotAvailableError, FileNotFoundError)


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_error_classes_live_in_qsd_errors(path):
    if relative(path) == "errors.py":
        return
    defined = re.findall(r"^class (\w+Error)\(", path.read_text(), flags=re.MULTILINE)
    assert not defined, f"{relative(path)} defines {defined}; the hierarchy is in qsd/errors.py"


FIRST_IMPORTS = """
import importlib, json, os, sys
modules = sys.argv[1:]
read, write = os.pipe()
if os.fork() == 0:  # a child imports everything once and reports the third-party modules that pulled in
    for name in modules:
        importlib.import_module(name)
    os.write(write, json.dumps([n for n in sys.modules if n.split(".")[0] not in ("qsd", "__main__")]).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    third_party = json.loads(pipe.read() or "[]")
os.wait()
for name in third_party:
    try:
        importlib.import_module(name)
    except Exception:  # generated or private modules that are not importable by name
        pass
failed = {}
for name in modules:  # a fresh copy of this interpreter per module: qsd is imported from nothing, torch is loaded
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            print(f"{name}: {exc!r}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed[name] = True
print(json.dumps(sorted(failed)))
"""


def test_every_package_module_can_be_imported_first():
    """No import cycle: each module of the packages that import one another (the registry meets the toy world)
    imports cleanly when it is the first qsd module imported (one forked interpreter per module, with the third-party
    packages already loaded, so torch loads once)."""
    import json
    import subprocess
    import sys

    modules = [f"qsd.{relative(p)[:-3].replace('/', '.')}".removesuffix(".__init__") for p in SOURCES
               if relative(p).startswith(("models/", "embedded/", "stages/"))]
    run = subprocess.run([sys.executable, "-c", FIRST_IMPORTS, *modules], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [], run.stderr[-2000:]
