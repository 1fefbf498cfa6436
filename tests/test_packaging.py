"""The installed package is whole: a wheel built from this checkout, installed into a fresh virtual
environment with --no-deps, runs `impbench models` and `impbench plan` from outside the checkout, and
finds its kernel sources and scenarios inside itself (not in the working directory or the checkout)."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "impbench").rglob("__init__.py")}
    assert found | {"impbench.kernels_cu", "impbench.scenarios"} == listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding only the built wheel of impbench, a folder outside the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    if build.returncode != 0 and "Could not" in build.stderr:
        pytest.skip(f"cannot build a wheel here (no package index for the build backend): {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = (work / "dist").glob("impbench-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)  # the dependencies come from this environment
    python = env_dir / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    outside = work / "elsewhere"
    outside.mkdir()
    return python, outside


def _run(installed, *args):
    python, cwd = installed
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_the_installed_wheel_lists_models_and_plans(installed):
    models = _run(installed, "-m", "impbench", "models")
    assert models.returncode == 0, models.stderr
    assert "qwen3-coder-30b-a3b" in models.stdout and "gemma-4-26b-a4b" in models.stdout
    plan = _run(installed, "-m", "impbench", "plan", "--model", "qwen3-coder", "--pp", "1024", "--format", "csv")
    assert plan.returncode == 0 and plan.stdout.startswith("section,op,"), plan.stderr


def test_the_installed_wheel_finds_its_data_inside_itself(installed):
    probe = _run(installed, "-c", (
        "import impbench, pathlib; from impbench import resources; from impbench.kernels import modules; "
        "from impbench.scenario import load_scenario; "
        "root = pathlib.Path(impbench.__file__).parent; "
        "print(root); print(resources.kernels_dir()); print(resources.model_presets_dir()); "
        "print(','.join(resources.kernel_families())); "
        "print(all(\"extern \\\"C\\\"\" in modules.module_source(f) for f in resources.kernel_families())); "
        "print(load_scenario('ci').path)"))  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    root, kernels, presets, families, sources, ci = probe.stdout.split()
    assert ROOT.as_posix() not in root and "site-packages" in root
    assert kernels.startswith(root) and presets.startswith(root) and ci.startswith(root)
    assert {"gemm_fp16", "moe_nvfp4", "attention", "ops", "routing"} <= set(families.split(","))
    assert sources == "True"
