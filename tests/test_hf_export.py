"""`ten export` folders stand alone: they load, generate and save where this package cannot be imported, their code
is the package's own (copied at export time, imports made flat), and ten's commands read them as checkpoints."""

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.dynamic_module_utils import (  # noqa: E402
    get_class_from_dynamic_module,
    get_imports,
    get_relative_import_files,
)

from temporal_eigenstate_networks import LanguageModel, TemporalEigenstateNetwork  # noqa: E402
from temporal_eigenstate_networks.cli import main  # noqa: E402
from temporal_eigenstate_networks.hf.standalone import OMIT, flat_modules, source_path  # noqa: E402
from temporal_eigenstate_networks.ops import triton_available  # noqa: E402
from temporal_eigenstate_networks.ops.common import OP_NAMESPACE  # noqa: E402

from .test_hf import OFFLINE, checkpoint_of, tiny_config  # noqa: E402
from .test_hf_api import FOLDERS_BEFORE  # noqa: E402

# What an exported folder's code may import besides the standard library: transformers' remote-code check
# (check_imports) requires each of these of a machine that loads it.
REQUIRED_ELSEWHERE = {"torch", "transformers", "safetensors", "huggingface_hub"}

# Run first in the subprocesses: this package cannot be imported there (nor anything in it), whatever the
# environment's editable install or PYTHONPATH says.
BLOCKED = "import sys\nsys.modules['temporal_eigenstate_networks'] = None\n"


def run_without_the_package(script: str, folder: Path) -> str:
    """Run ``script`` in a fresh interpreter that cannot import this package (in ``folder``, with transformers'
    module cache there); its stdout."""
    env = {**os.environ, **OFFLINE, "HF_MODULES_CACHE": str(folder / "modules")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", BLOCKED + script], capture_output=True, text=True, timeout=300,
                          env=env, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def exported(tmp_path):
    """An HTEN + sliding-window hybrid (every kind of layer), exported; and its network."""
    folder, network = checkpoint_of("hw", tmp_path / "checkpoint")
    assert main(["export", "--checkpoint", str(folder), "--hf", str(tmp_path / "export")]) == 0
    return tmp_path / "export", network


def test_an_export_loads_generates_and_saves_without_the_package_and_a_saved_copy_loads_afresh(exported, tmp_path):
    """Loaded with trust_remote_code where the package cannot be imported: the network's logits and greedy tokens;
    its save_pretrained copy, and the copy the package's own classes save, load again in a fresh process."""
    export, network = exported
    ids = torch.randint(0, 256, (2, 9))
    torch.save({"ids": ids, "logits": network(ids).detach(), "generated": network.generate(ids, 6, temperature=0)},
               tmp_path / "expected.pt")  # fmt: skip
    with_package = AutoModelForCausalLM.from_pretrained(export)  # the package's classes: no trust_remote_code
    assert type(with_package).__module__ == "temporal_eigenstate_networks.hf.modeling"
    with_package.save_pretrained(tmp_path / "saved-by-the-package")
    load = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "expected = torch.load('expected.pt')\n"
        "def check(folder):\n"
        "    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "    torch.testing.assert_close(model(expected['ids']).logits, expected['logits'])\n"
        "    out = model.generate(expected['ids'], max_new_tokens=6, do_sample=False, eos_token_id=None)\n"
        "    assert torch.equal(out, expected['generated']), folder\n"
        "    print(folder, type(model).__name__)\n"
        "    return model\n"
    )
    first = (
        "try:\n"
        "    import temporal_eigenstate_networks\n"
        "except ImportError:\n"
        "    print('blocked')\n"
        f"check({str(export)!r}).save_pretrained('resaved')\n"
    )
    assert run_without_the_package(load + first, tmp_path).split() == ["blocked", str(export), "TenForCausalLM"]
    assert sorted(p.name for p in (tmp_path / "resaved").glob("*.py")) == sorted(p.name for p in export.glob("*.py"))
    again = "check('resaved')\ncheck('saved-by-the-package')\n"
    printed = run_without_the_package(load + again, tmp_path).split()
    assert printed == ["resaved", "TenForCausalLM", "saved-by-the-package", "TenForCausalLM"]


def test_the_export_loaded_beside_the_package_gives_its_logits_and_keeps_its_operators_apart(exported):
    """Its code loaded as transformers loads it (where the package is imported, the Auto classes take the
    package's own classes instead) in a process that holds the package: the same logits, and the scan's torch
    operators registered under a namespace of its own, the package's left as they are."""
    export, network = exported
    model = get_class_from_dynamic_module("modeling_ten.TenForCausalLM", export).from_pretrained(export).eval()
    assert type(model).__module__.startswith("transformers_modules.")  # the folder's code, not the package's
    ids = torch.randint(0, 256, (2, 11))
    torch.testing.assert_close(model(ids).logits, network(ids))
    common = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".ten_ops_common"]
    assert OP_NAMESPACE == "ten" and common.OP_NAMESPACE.startswith("ten_")  # its own, not the package's
    assert hasattr(getattr(torch.ops, common.OP_NAMESPACE), "chunked_scan") and hasattr(torch.ops.ten, "chunked_scan")
    if triton_available():  # the export's copy of the fused kernel (on the CPU under Triton's interpreter)
        fused = type(model).from_pretrained(export, scan_backend="triton").eval()
        torch.testing.assert_close(fused(ids).logits, network(ids), rtol=1e-4, atol=1e-4)
        assert hasattr(getattr(torch.ops, common.OP_NAMESPACE), "triton_scan")


def test_the_exported_modules_are_the_packages_own_but_for_their_relative_imports(exported):
    """Each exported file parses to its package module, once the relative imports (flat in the export), the
    statements marked `export: omit` and the operators' namespace are set aside; the imports name the same things."""
    export, _ = exported
    modules = flat_modules()
    assert sorted(m.file_name for m in modules) == sorted(p.name for p in export.glob("*.py"))
    for module in modules:
        package_source = source_path(module.module).read_text()
        marked = {n + 1 for n, line in enumerate(package_source.splitlines()) if OMIT.search(line)}
        package = comparable(ast.parse(package_source), marked)
        copy = comparable(ast.parse((export / module.file_name).read_text()), set())
        assert copy == package, module.module
    namespaces = {m.module: m.text for m in modules if "\nOP_NAMESPACE = " in m.text}
    assert list(namespaces) == ["ops.common"]


def comparable(tree: ast.Module, omitted_lines: set[int]) -> tuple[str, list[list[str]]]:
    """The module without its relative imports, the statements starting on ``omitted_lines`` and OP_NAMESPACE's
    value (ast.dump, no line numbers); and the names each relative import brings in."""
    imported: list[list[str]] = []

    def strip(node: ast.AST) -> None:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "OP_NAMESPACE" for t in node.targets):
            node.value = ast.Constant("")
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                kept = []
                for child in value:
                    if isinstance(child, ast.stmt) and child.lineno in omitted_lines:
                        continue
                    if isinstance(child, ast.ImportFrom) and child.level:
                        imported.append([f"{a.name} as {a.asname}" for a in child.names])
                        continue
                    kept.append(child)
                    if isinstance(child, ast.AST):
                        strip(child)
                setattr(node, name, kept)
            elif isinstance(value, ast.AST):
                strip(value)

    strip(tree)
    return ast.dump(tree), imported


def test_transformers_copies_every_exported_file_and_needs_only_torch_and_transformers(exported):
    """transformers' own loader: modeling_ten.py reaches every exported module (so every one is copied, on a load
    and on a save), and no file imports anything but the standard library and REQUIRED_ELSEWHERE (triton only in a
    try, where the check does not look: a machine without it loads the model and scans in PyTorch)."""
    export, _ = exported
    reached = {Path(f).name for f in get_relative_import_files(export / "modeling_ten.py")} | {"modeling_ten.py"}
    assert reached == {p.name for p in export.glob("*.py")}
    for path in export.glob("*.py"):
        assert set(get_imports(path)) - set(sys.stdlib_module_names) <= REQUIRED_ELSEWHERE, path.name
        assert "temporal_eigenstate_networks" not in (line for line in path.read_text().splitlines()
                                                      if "import" in line), path.name  # fmt: skip


def test_tens_commands_read_an_export_and_old_exports_as_checkpoints(exported, tmp_path, capsys):
    export, network = exported
    ids = torch.randint(0, 256, (1, 8))
    torch.testing.assert_close(LanguageModel.from_pretrained(export)(ids), network(ids))
    checkpoint = tmp_path / "checkpoint"
    argv = ["--prompt", "To be", "--max_new_tokens", "8", "--temperature", "0"]
    assert main(["generate", "--checkpoint", str(checkpoint), *argv]) == 0
    from_checkpoint = capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(export), *argv]) == 0
    assert capsys.readouterr().out == from_checkpoint
    assert main(["export", "--checkpoint", str(export), "--hf", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == json.loads(
        (export / "config.json").read_text())  # fmt: skip
    before = load_file(FOLDERS_BEFORE / "expected.safetensors")  # an export that imports the package, as read
    torch.testing.assert_close(LanguageModel.from_pretrained(FOLDERS_BEFORE / "export")(before["ids"]),
                               before["logits"])  # fmt: skip


def test_a_bare_save_pretrained_folder_exports_with_the_byte_tokenizer_and_names_what_another_lacks(tmp_path, capsys):
    folder, _ = checkpoint_of("ten", tmp_path / "bare")
    for name in ("tokenizer_meta.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    assert main(["export", "--checkpoint", str(folder), "--hf", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "tokenizer_meta.json").read_text())["kind"] == "byte"

    bigger = tmp_path / "bpe-vocabulary"  # 300 tokens: not the bytes', and no tokenizer beside it
    TemporalEigenstateNetwork(dataclasses.replace(tiny_config(False), vocab_size=300)).save_pretrained(bigger)
    code = main(["export", "--checkpoint", str(bigger), "--hf", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "no tokenizer (tokenizer_meta.json)" in err and "300" in err
    assert not (tmp_path / "other").exists()
