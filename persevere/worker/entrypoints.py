"""Finding a flow from ``path/to/file.py:func`` or ``module.path:func``, and back."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from ..exceptions import EntrypointError

#: Names of the modules loaded here from a file path: a worker process or a
#: Dask worker cannot import them by name, so task runners ship them by value.
loaded_from_files: set[str] = set()


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise EntrypointError(f"no such file: {path}")
    name = path.stem if path.stem.isidentifier() else "persevere_entrypoint"
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "") or "").resolve() == path:
        return module
    if name in sys.modules:
        name = f"persevere_entrypoint_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntrypointError(f"{path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise EntrypointError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    loaded_from_files.add(name)
    return module


def load(entrypoint: str) -> Any:
    """The ``@flow`` object an entrypoint names."""
    target, sep, attr = entrypoint.rpartition(":")
    if not sep or not target or not attr:
        raise EntrypointError(
            f"entrypoint {entrypoint!r} must look like path/to/file.py:flow_function "
            "or package.module:flow_function"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target).expanduser().resolve())
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise EntrypointError(f"cannot import module {target!r}: {exc}") from exc
        except Exception as exc:
            raise EntrypointError(
                f"importing module {target!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise EntrypointError(f"{target} has no {attr!r}")
    if not getattr(obj, "__persevere_flow__", False):
        raise EntrypointError(f"{entrypoint} is not a flow: decorate it with @flow")
    return obj


def entrypoint_of(fn: Any) -> str | None:
    """The entrypoint that finds ``fn`` again: its file's absolute path and qualname."""
    try:
        source = inspect.getsourcefile(fn)
    except TypeError:
        return None
    if source is None or "<" in fn.__qualname__:
        return None  # defined interactively or inside a function: not reloadable
    return f"{Path(source).resolve()}:{fn.__qualname__}"
