"""The package layout's import rules, read from the source with `ast` (every import, function-level ones too):
mlm.core is the shared core and imports neither track; nothing under mlm/ imports finetune (the `mlm` command
finds finetune's subcommands through the `mlm.commands` entry points)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def imported_modules(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _files(folder: str) -> list[pathlib.Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, folder
    return files


@pytest.mark.parametrize("path", _files("mlm"), ids=lambda p: str(p.relative_to(ROOT)))
def test_mlm_never_imports_finetune(path):
    assert not [m for m in imported_modules(path) if _under(m, "finetune")]


@pytest.mark.parametrize("path", _files("mlm/core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_neither_track(path):
    assert not [m for m in imported_modules(path) if _under(m, "finetune") or _under(m, "mlm.pretrain")]


def test_the_scan_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from finetune.run import main\n    import mlm.pretrain.run\n")
    assert {"finetune.run", "finetune.run.main", "mlm.pretrain.run"} <= imported_modules(module)
