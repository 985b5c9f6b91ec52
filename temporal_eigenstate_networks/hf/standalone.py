"""The code of an exported folder: this package's own modules, copied flat when the folder is written.

transformers loads a folder's code (trust_remote_code) from the file its auto_map names plus every file that file
reaches through relative imports of the form `from .name import x`, all in the folder itself, side by side
(dynamic_module_utils: get_relative_import_files; `save_pretrained` copies the same set). So an export holds
configuration_ten.py (hf/configuration.py), modeling_ten.py (hf/modeling.py) and every module of the package they
import, directly or not, as ten_<path>.py (ops/chunked.py: ten_ops_chunked.py), read from the installed package
with each relative import rewritten to the flat name. Nothing else changes, but for two things named in the
package's source: a statement marked with the comment `export: omit` is left out (the package's registration with
the Auto classes, which transformers does itself from auto_map), and OP_NAMESPACE (ops/common.py) becomes one of
the copy's own, from a digest of the sources, so that an export loaded beside the package never replaces the
package's torch operators.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import tokenize
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..atomic import atomic_write
from ..distribution import DISTRIBUTION

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PACKAGE = PACKAGE_DIR.name  # the import name, temporal_eigenstate_networks
ROOTS = {"hf.configuration": "configuration_ten", "hf.modeling": "modeling_ten"}  # auto_map's modules
OMIT = re.compile(r"#\s*export: omit\b")
NAMESPACE_CONSTANT = "OP_NAMESPACE"


@dataclass
class FlatModule:
    """One module of the package as an export writes it."""

    module: str  # the package-relative dotted name: "ops.chunked"
    file_name: str  # in the export: "ten_ops_chunked.py"
    text: str
    imports: set[str]  # the package-relative modules it imports
    sets_namespace: bool  # it assigns OP_NAMESPACE


def flat_name(module: str) -> str:
    return ROOTS.get(module) or "ten_" + module.replace(".", "_")


def source_path(module: str) -> Path:
    path = PACKAGE_DIR.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The package-relative module that the relative import ``node`` in ``module`` names."""
    parts = module.split(".")
    package = parts if source_path(module).name == "__init__.py" else parts[:-1]
    if node.level - 1 > len(package) or node.module is None:  # `from . import x`: not a form the export writes
        raise ValueError(f"{source_path(module)}, line {node.lineno}: the export cannot make this import flat")
    return ".".join([*package[: len(package) - (node.level - 1)], node.module])


def flat_module(module: str, namespace: str) -> FlatModule:
    """``module``'s source with its relative imports made flat, the statements marked `export: omit` left out and
    OP_NAMESPACE set to ``namespace``."""
    path = source_path(module)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    marked = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(text).readline)
              if token.type == tokenize.COMMENT and OMIT.search(token.string)}  # fmt: skip
    edits: dict[int, tuple[int, str]] = {}  # first line (1-based) -> (last line, what replaces them)
    imports: set[str] = set()

    def replace(node: ast.stmt, new: str) -> None:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        before, after = lines[first - 1][: node.col_offset], lines[node.end_lineno - 1][node.end_col_offset :]
        if before.strip() or after.strip()[:1] not in ("", "#"):
            raise ValueError(f"{path}, line {node.lineno}: the export rewrites whole lines; this one holds more")
        edits[first] = (node.end_lineno, new)

    def visit(parent: ast.AST) -> None:
        for node in ast.iter_child_nodes(parent):
            indent = " " * getattr(node, "col_offset", 0)
            if isinstance(node, ast.stmt) and node.lineno in marked:
                replace(node, "")
            elif isinstance(node, ast.ImportFrom) and node.level:
                target = resolve(module, node)
                imports.add(target)
                names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
                replace(node, f"{indent}from .{flat_name(target)} import {names}\n")
            elif isinstance(node, ast.Assign) and parent is tree and _assigns(node, NAMESPACE_CONSTANT):
                replace(node, f"{NAMESPACE_CONSTANT} = {namespace!r}\n")
            else:
                visit(node)

    tree = ast.parse(text, filename=str(path))
    visit(tree)
    out, line = [_header(module)], 1
    for first in sorted(edits):
        last, new = edits[first]
        out += [*lines[line - 1 : first - 1], new]
        line = last + 1
    out += lines[line - 1 :]
    flat = "".join(out)
    ast.parse(flat, filename=flat_name(module))  # a leftover block with nothing in it would fail here, not later
    sets_namespace = any(new.startswith(f"{NAMESPACE_CONSTANT} =") for _, new in edits.values())
    return FlatModule(module, f"{flat_name(module)}.py", flat, imports, sets_namespace)


def _assigns(node: ast.Assign, name: str) -> bool:
    return any(isinstance(target, ast.Name) and target.id == name for target in node.targets)


def _header(module: str) -> str:
    try:
        version = f" {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        version = ""
    source = f"{PACKAGE}/{source_path(module).relative_to(PACKAGE_DIR).as_posix()}"
    return (f"# Written by `ten export` from {source} ({DISTRIBUTION}{version}):\n# the package's code, its "
            "relative imports made flat for transformers' trust_remote_code. Change the package, not this "
            "copy.\n")  # fmt: skip


def flat_modules() -> list[FlatModule]:
    """Every module an export holds: the roots and what they import, each once, in a fixed order."""
    found: dict[str, FlatModule] = {}
    pending = list(ROOTS)
    while pending:
        module = pending.pop()
        if module not in found:
            found[module] = flat_module(module, "ten")
            pending += found[module].imports
    digest = hashlib.sha256()
    for module in sorted(found):  # the package's own sources: the same code, the same namespace
        digest.update(module.encode() + b"\0" + source_path(module).read_bytes() + b"\0")
    namespace = f"ten_{digest.hexdigest()[:12]}"
    if not any(m.sets_namespace for m in found.values()):  # the copy would register its operators over the package's
        raise ValueError(f"no exported module sets {NAMESPACE_CONSTANT}")
    return [flat_module(name, namespace) if found[name].sets_namespace else found[name] for name in sorted(found)]


def write_code(folder: Path) -> list[str]:
    """Write the exported modules into ``folder`` (each file atomically); their file names."""
    names = []
    for module in flat_modules():
        atomic_write(Path(folder) / module.file_name, lambda p, text=module.text: p.write_text(text, encoding="utf-8"))
        names.append(module.file_name)
    return names
