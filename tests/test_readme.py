"""README.md as a test: every shell command in its ```bash blocks and every ```python block runs.

Substitutions (documented in the README's "Tests" section):
* `pip install ...` is not run again (CI's .ci/run installs for real): its requirements are checked
  (torch pinned as in .ci/run, an editable target with a setup.py, extras that exist) and resolved
  with `pip install --dry-run --no-deps --no-index --no-build-isolation`.
* `python -m pytest -q` is run with `--collect-only` (CI's .ci/run runs the suite for real).
* `python benchmarks/...` (over a minute on 2 cores) runs as written in its own test, marked slow.
* `python -m dalle_pytorch.serve ...` (a server: it runs until stopped) is started with `--port` set to a
  free port, asked for /health, the page and one image, then stopped with Ctrl-C (SIGINT), which must
  end it cleanly.
Everything else runs as written, in order, with `bash -c` in a scratch folder that links the
repository's scripts, package, benchmarks and test fixtures (so outputs land in the scratch folder).
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEST_COMMAND = "python -m pytest -q"
SERVE_COMMAND = "python -m dalle_pytorch.serve"
LINKED = ["generate.py", "train_vae.py", "train_dalle.py", "benchmarks", "dalle_pytorch", "tests"]


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def shell_commands() -> list[str]:
    """Every command of the bash blocks, in order ('a && b' is two commands; comments dropped)."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.extend(c.strip() for c in line.split(" && "))
    return commands


def kind(command: str) -> str:
    if command.startswith("pip install "):
        return "pip"
    if command == TEST_COMMAND:
        return "pytest"
    if command.startswith("python benchmarks/"):
        return "slow"
    if command.startswith(SERVE_COMMAND):
        return "serve"
    return "run"


def test_readme_has_the_expected_commands():
    commands = shell_commands()
    assert sum(kind(c) == "pip" for c in commands) == 2
    assert TEST_COMMAND in commands
    first = code_blocks("bash")[0].strip()
    assert first.startswith("pip install torch==") and "&& python generate.py --text" in first  # install + main job
    assert "## Tests" in README.read_text(encoding="utf-8")
    for script in ("train_vae.py", "train_dalle.py", "torchrun", "dalle-convert",
                   "python benchmarks/generate.py", SERVE_COMMAND, "python benchmarks/serve.py"):
        assert any(script in c for c in commands), script
    assert code_blocks("python"), "the README has Python examples"


# -- pip install commands --------------------------------------------------------------------------


def _setup_extras() -> set:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return set(ast.literal_eval(node.value))
    return set()


def _ci_torch_pin() -> str:
    pins = re.findall(r"torch==[\w.+]+", (ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert pins, ".ci/run pins torch"
    return pins[0]


@pytest.mark.parametrize("command", [c for c in shell_commands() if kind(c) == "pip"])
def test_pip_install_commands_are_pinned_and_resolve(command):
    args = shlex.split(command)[2:]
    torch_reqs = [a for a in args if re.match(r"torch\b", a)]
    assert torch_reqs == [_ci_torch_pin()], f"torch must be pinned like .ci/run: {command}"
    assert "-e" in args, command
    target = args[args.index("-e") + 1]
    match = re.fullmatch(r"([^\[\]]+)(?:\[([\w,]+)\])?", target)
    assert match, target
    assert (ROOT / match.group(1) / "setup.py").is_file()
    extras = set(match.group(2).split(",")) if match.group(2) else set()
    assert extras <= _setup_extras(), f"unknown extras {extras - _setup_extras()}"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                           "--no-build-isolation", "--disable-pip-version-check", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Would install .*dalle[-_]torch", proc.stdout, re.I), proc.stdout


def test_test_command_is_cis_and_collects():
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\d+ tests? collected", proc.stdout), proc.stdout[-1000:]


# -- everything else runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    return work


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # python, torchrun
    env["OMP_NUM_THREADS"] = "1"  # tiny models: one thread is as fast, and immune to a busy machine
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYTHONPATH", None)
    return env


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_shell_commands_run(workdir):
    for command in (c for c in shell_commands() if kind(c) == "run"):
        _run(command, workdir)

    # what the commands should have produced
    main = workdir / "outputs" / "a-red-circle-on-a-blue-background"
    assert len(list(main.glob("*.png"))) == 5 and json.loads((main / "generation.json").read_text())["checkpoint"]["demo"]
    assert (workdir / "runs" / "vae" / "vae.safetensors").is_file()
    assert (workdir / "runs" / "dalle" / "dalle.safetensors").is_file()
    assert (workdir / "runs" / "dalle-ddp" / "dalle.safetensors").is_file()
    assert (workdir / "outputs" / "a-green-triangle-on-a-white-background" / "000_seed0.png").is_file()
    assert (workdir / "outputs" / "a-white-square-on-a-red-background" / "007_seed1.png").is_file()
    assert (workdir / "outputs" / "red-circle-yellow-background" / "grid.png").is_file()
    assert (workdir / "converted.safetensors").is_file()


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_python_blocks_run(index, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    source = code_blocks("python")[index]
    exec(compile(source, f"README.md python block {index}", "exec"), {"__name__": f"readme_block_{index}"})


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in shell_commands() if kind(c) == "slow"])
def test_slow_shell_commands_run(command, workdir):
    proc = _run(command, workdir)
    assert proc.stdout.strip(), "the benchmark prints its table"


@pytest.mark.parametrize("command", [c for c in shell_commands() if kind(c) == "serve"])
def test_server_command_serves_and_stops_on_ctrl_c(command, workdir):
    pytest.importorskip("fastapi", reason="the server needs the [serve] extra")
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(shlex.split(command) + ["--port", str(port)], cwd=workdir, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"<form" in r.read()
        body = json.dumps({"prompt": "a red circle on a blue background", "n": 1, "seed": 0}).encode()
        request = urllib.request.Request(f"{url}/v1/images", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            assert len(json.loads(r.read())["images"]) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out[-3000:]
