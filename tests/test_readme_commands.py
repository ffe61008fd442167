"""CI runs what the README tells a new user to run: the two commands in .ci/run are the README's, verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = []
    for block in blocks[:2]:
        commands += [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def test_readme_opens_with_an_install_and_a_test_command():
    install, test = readme_commands()
    assert "pip install" in install and "torch" not in install.split("pip install", 1)[1].split("&&")[0]
    assert "python train.py task=uuid adapter=mora r=256" in install
    assert "pytest" in test


def test_ci_runs_the_readme_commands_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in readme_commands():
        assert command in ci, command


def test_the_install_command_uses_the_constraints_and_every_extra():
    install = readme_commands()[0]
    pip = install.split("pip install", 1)[1].split("&&")[0]
    assert "-c constraints.txt" in pip                     # the torch pin lives there (pyproject's torch is loose)
    assert '".[experiments,dev,deepspeed,quant]"' in pip
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()
