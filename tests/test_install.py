"""msam as users install it: a wheel built from the sdist, installed into a fresh virtual
environment, used from a folder outside the repository.

No network: the wheel is built with this environment's setuptools (no build isolation) and
installed without its dependencies, which the fresh environment reads from this one's
site-packages through a .pth file (a .pth file in that folder is not processed from there, so this
environment's editable msam stays invisible: the tests check that the wheel's msam is the one
imported)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "example_project"


def run(command, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def repository_files() -> list[str]:
    """The files a clone has: tracked ones, and new ones git does not ignore."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout.splitlines()
    return [name for name in listed if (REPO / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's bin folder, the environment for subprocesses, the sdist, the wheel)"""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    for name in repository_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    build = "from setuptools import build_meta as b; import sys; print(b.build_{}(sys.argv[1]))"
    sdist = dist / run([sys.executable, "-c", build.format("sdist"), dist], cwd=source).stdout.split()[-1]
    with tarfile.open(sdist) as archive:
        archive.extractall(root / "unpacked", filter="data")
    unpacked = next((root / "unpacked").iterdir())
    wheel = dist / run([sys.executable, "-c", build.format("wheel"), dist], cwd=unpacked).stdout.split()[-1]
    env_dir = root / "env"
    run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=root)
    site = Path(run([env_dir / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=root).stdout.strip())
    (site / "msam_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install", "--no-deps", "--no-index",
         "--quiet", wheel], cwd=root)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MSAM_RUNS", "MSAM_DATA")}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}", OMP_NUM_THREADS="1")
    return env_dir / "bin", env, sdist, wheel


@pytest.fixture
def outside(tmp_path):
    """A working folder outside the repository."""
    folder = tmp_path / "user"
    folder.mkdir()
    assert not folder.resolve().is_relative_to(REPO)
    return folder


def test_the_wheel_and_the_sdist_carry_the_config_tree_and_the_papers_numbers(installed):
    _, _, sdist, wheel = installed
    conf = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    paper = sorted(p.name for p in (REPO / "results" / "paper").iterdir())
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert sorted(n[len("msam/conf/"):] for n in names if n.startswith("msam/conf/")) == conf
    assert sorted(n[len("msam/paper/"):] for n in names if n.startswith("msam/paper/")) == paper
    with tarfile.open(sdist) as archive:
        members = [m.split("/", 1)[1] for m in archive.getnames() if "/" in m]
    assert {f"conf/{name}" for name in conf} <= set(members)
    assert {f"results/paper/{name}" for name in paper} <= set(members)


def test_pyproject_lists_every_package():
    from setuptools import find_packages

    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(p for p in listed if p not in ("msam.conf", "msam.paper")) == sorted(find_packages(REPO / "src"))


def import_graph() -> dict[str, set[str]]:
    """msam's modules and the msam modules each imports, at any depth of the file (function-level
    imports included)."""
    source = REPO / "src"
    files = {".".join(p.relative_to(source).with_suffix("").parts).removesuffix(".__init__"): p
             for p in source.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    imported.add(full if full in files else base)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert "msam.paths" in graph["msam.methods.reweight"]  # the graph sees function-level imports
    assert circles(graph) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_four_tools_and_the_library_run_from_an_installed_wheel(installed, outside):
    bin_dir, env, _, _ = installed
    located = run([bin_dir / "python", "-c", "import msam, msam.paths as p; print(msam.__file__); print(p.CONF_DIR); "
                   "print(p.PAPER_DIR); print(p.FROM_CHECKOUT)"], cwd=outside, env=env).stdout.split()
    environment = bin_dir.parent.resolve()
    assert all(Path(path).resolve().is_relative_to(environment) for path in located[:3]), located
    assert located[3] == "False"

    run([bin_dir / "msam-train", "dataset=digits", "model=small_cnn", "method=sam", "epochs=1", "paths.runs=runs",
         "log_every_steps=0"], cwd=outside, env=env)
    run_dir = next((outside / "runs").glob("digits_small_cnn_sam_*"))
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["git_commit"] is None and provenance["versions"]["msam"] == "0.1.0"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"

    run([bin_dir / "msam-sharpness", "runs=runs", "max_iter=10", "tol=1e-2", "trace_probes=2", "max_samples=256",
         "keep_unconverged=true"], cwd=outside, env=env)
    assert json.loads((run_dir / "sharpness.json").read_text())["lambda_max"] > 0
    report = run([bin_dir / "msam-report", "tables=[tab2,tab4]", "runs=runs", "out=report"], cwd=outside, env=env)
    assert "digits" in report.stdout and (outside / "report" / "tab4.md").is_file()
    run([bin_dir / "msam-bench", "models=[small_cnn]", "image_size=8", "channels=1", "batch_sizes=[16]", "ms=[2]",
         "impls=[loop]", "baselines=[vanilla,sam]", "repeats=1", "warmup=0", "out=bench", "name=quick"],
        cwd=outside, env=env)
    assert {r["impl"] for r in json.loads((outside / "bench" / "quick.json").read_text())["rows"]} == {
        "vanilla", "sam", "loop"}
    library = run([bin_dir / "python", "-c", "import msam; r = msam.GibbsReweighting.defaults(lam=1.0); "
                   "print(r.lam, r.probes)"], cwd=outside, env=env)
    assert library.stdout.split()[0] == "1.0"

    # a local sweep, and a SLURM template run as its batch script (no cluster: the array task is seed 0)
    run([bin_dir / "msam-train", "-m", "method=vanilla", "seed=1,2", "epochs=1", "paths.runs=sweep",
         "log_every_steps=0"], cwd=outside, env=env)
    assert len(list((outside / "sweep").glob("digits_small_cnn_vanilla_*/summary.json"))) == 2
    slurm_env = {**env, "MSAM_PYTHON": str(bin_dir / "python"), "SLURM_SUBMIT_DIR": str(outside)}
    run(["bash", REPO / "slurm" / "seeds_array.sbatch", "method=vanilla", "epochs=1", "paths.runs=slurm",
         "log_every_steps=0"], cwd=outside, env=slurm_env)
    assert len(list((outside / "slurm").glob("digits_small_cnn_vanilla_*_s0_*/summary.json"))) == 1


def test_the_example_project_runs_from_an_installed_wheel(installed, tmp_path):
    bin_dir, env, _, _ = installed
    project = tmp_path / "example"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    result = run(["bash", project / "run.sh"], cwd=tmp_path, env={**env, "SEEDS": "0"})
    summaries = [json.loads(p.read_text()) for p in (project / "runs").glob("*/summary.json")]
    assert sorted((s["dataset"], s["model"], s["method"], s["status"]) for s in summaries) == [
        ("shapes", "tiny_convnet", m, "finished") for m in ("msam", "sam", "vanilla")]
    assert len(list((project / "runs").glob("*/sharpness.json"))) == 3
    for table in ("tab2", "tab4", "tab5"):
        assert "tiny_convnet" in (project / "runs" / "report" / f"{table}.md").read_text()
    rows = json.loads((project / "runs" / "bench" / "tiny_convnet.json").read_text())["rows"]
    assert {r["impl"] for r in rows} == {"vanilla", "sam", "loop", "vmap"}
    assert "Table 4" in result.stdout
