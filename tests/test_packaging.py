"""What `pip install .` installs: the library alone (moRA, no generic top-level package), a loose torch requirement,
the experiment stack only as extras that declare every third-party module the experiment code imports."""
import ast
import email
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LIBRARY_REQUIREMENTS = {"torch", "transformers", "peft", "safetensors"}
EXPERIMENT_CODE = ["tasks", "runner", "results_lib", "scripts", "train.py", "notebooks"]
# import name → distribution name, where they differ
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "yaml": "pyyaml", "hydra": "hydra-core", "lm_eval": "lm-eval",
                   "submitit": "hydra-submitit-launcher", "IPython": "ipykernel"}
FIRST_PARTY = {"moRA", "tasks", "runner", "results_lib", "scripts", "tests"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel `pip wheel .` builds, from a copy of the files the build reads (the checkout stays untouched)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "moRA", src / "moRA", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("tasks", "runner", "results_lib"):   # present as in a checkout, so a too-wide package find shows
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(out)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_wheel_installs_only_the_library(wheel):
    tops = {name.split("/", 1)[0] for name in wheel.namelist() if ".dist-info/" not in name}
    assert tops == {"moRA"}
    assert "moRA/py.typed" in wheel.namelist()
    assert "moRA/__init__.py" in wheel.namelist()


def test_wheel_requirements_are_the_library_s_with_a_loose_torch(wheel):
    requires = _metadata(wheel).get_all("Requires-Dist")
    plain = [r for r in requires if "extra ==" not in r]
    assert {_name(r) for r in plain} == LIBRARY_REQUIREMENTS
    (torch,) = [r for r in plain if _name(r) == "torch"]
    assert "==" not in torch and ">=" in torch
    extras = _metadata(wheel).get_all("Provides-Extra")
    assert set(extras) >= {"experiments", "dev", "deepspeed", "quant"}
    for package in ("hydra-core", "lm-eval", "wandb", "datasets", "deepspeed", "bitsandbytes", "matplotlib"):
        assert package not in {_name(r) for r in plain}, package


def test_wheel_has_the_lm_eval_console_script(wheel):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert re.search(r"^mora-lm-eval\s*=\s*moRA\.lm_eval_cli:main$", wheel.read(name).decode(), flags=re.M)


def _third_party_imports(paths) -> set[str]:
    found = set()
    for path in paths:
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def test_every_import_of_the_library_is_a_library_requirement():
    imported = {DISTRIBUTION_OF.get(n, n).lower().replace("_", "-") for n in _third_party_imports([ROOT / "moRA"])}
    # imported lazily, only on the code paths that use them (mora-lm-eval says in one line that it needs lm-eval)
    optional = {"deepspeed", "bitsandbytes", "lm-eval"}
    assert imported - optional <= LIBRARY_REQUIREMENTS, imported - optional - LIBRARY_REQUIREMENTS


def test_every_import_of_the_experiment_code_is_declared():
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    imported = _third_party_imports([ROOT / p for p in EXPERIMENT_CODE])
    missing = {n for n in imported if DISTRIBUTION_OF.get(n, n).lower().replace("_", "-") not in declared}
    assert not missing, f"imported by the experiment code but in no extra of pyproject.toml: {sorted(missing)}"


def test_constraints_pin_the_tested_torch_build():
    lines = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "torch==2.13.0" in lines


def test_download_advice_names_the_installed_hub_cli():
    """Every "download it with ..." message names `hf` (huggingface_hub's CLI), not the removed `huggingface-cli`."""
    from importlib.metadata import entry_points

    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("huggingface_hub")}
    assert "hf" in scripts
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.yaml", "*.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    stale = [name for name in tracked if name != "CHANGELOG.md" and Path(name) != Path(__file__).relative_to(ROOT)
             and "huggingface-cli" in (ROOT / name).read_text(errors="replace")]
    assert not stale, f"advice names huggingface-cli (not installed by huggingface_hub >= 1.0): {stale}"


def test_licence_citation_and_changelog_match_the_declared_project(wheel):
    import yaml

    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "Apache-2.0"
    assert citation["version"] == PYPROJECT["project"]["version"]
    assert "2405.12130" in citation["preferred-citation"]["url"]
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
