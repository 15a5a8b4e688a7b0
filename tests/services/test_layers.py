"""The services' subpackages are layers: inputs, store, scoring, training, evaluation, each
importing only from the ones before it (scoring never imports a training module); the models
import no service and no file machinery (b1's weights reach them through asdcli.weights)."""

import ast
from pathlib import Path

import asdcli

PACKAGE = Path(asdcli.__file__).parent
LAYERS = ["inputs", "store", "scoring", "training", "evaluation"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_each_services_layer_imports_only_the_layers_before_it():
    assert sorted(p.name for p in (PACKAGE / "services").iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(LAYERS)
    assert [p.name for p in (PACKAGE / "services").glob("*.py")] == ["__init__.py"]  # every module has its layer
    wrong = []
    for rank, layer in enumerate(LAYERS):
        for path in (PACKAGE / "services" / layer).glob("*.py"):
            for module in _imports(path):
                parts = module.split(".")
                if parts[:2] == ["asdcli", "services"] and len(parts) > 2 and LAYERS.index(parts[2]) > rank:
                    wrong.append(f"{layer}/{path.name} imports {module}")
    assert wrong == []


def test_models_import_no_service_and_no_file_machinery():
    wrong = [f"{path.name}: {module}" for path in (PACKAGE / "models").glob("*.py") for module in _imports(path)
             if module.startswith(("asdcli.services", "asdcli.checkpoints", "asdcli.files", "urllib", "shutil",
                                   "tempfile"))]
    assert wrong == []
