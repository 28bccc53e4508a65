"""Static checks of images/Dockerfile (no container engine here to build it).

hadolint lints it; BuildKit's own parser (the `dockerfile` package) reads
it, and the tests check what the chart and the injection rely on: stage
names, users, entrypoints, the binaries on PATH, iptables in the init
image, and that `make images` tags what the chart's values pull.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import yaml

TESTS = Path(__file__).resolve().parent
CHART = TESTS.parent
REPO = CHART.parent.parent
DOCKERFILE = REPO / "images" / "Dockerfile"


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint") or "hadolint"


def test_hadolint_finds_nothing():
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def parse():
    """ARG defaults before the first FROM, and each stage's commands."""
    args, stages, current = {}, {}, None
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            base, _as, name = cmd.value
            assert _as.upper() == "AS"
            current = stages.setdefault(name, {"from": base, "commands": []})
        elif current is None and cmd.cmd == "ARG":
            key, _, default = cmd.value[0].partition("=")
            args[key] = default
        else:
            current["commands"].append(cmd)
    return args, stages


def only(stage, instruction):
    found = [c for c in stage["commands"] if c.cmd == instruction]
    assert len(found) == 1, f"{instruction}: {found}"
    return found[0]


def base_image(args, stage):
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage["from"])


def test_stages_and_bases():
    args, stages = parse()
    assert list(stages) == ["build", "operator", "proxy", "init"]
    rust_version = re.search(r'(?m)^rust-version = "([^"]+)"', (REPO / "Cargo.toml").read_text())[1]
    assert base_image(args, stages["build"]) == f"rust:{rust_version}-bookworm"
    # Same Debian release as the builder: the binaries link its glibc.
    assert base_image(args, stages["operator"]) == "gcr.io/distroless/cc-debian12:nonroot"
    assert base_image(args, stages["proxy"]) == "gcr.io/distroless/cc-debian12:nonroot"
    assert base_image(args, stages["init"]) == "debian:bookworm-slim"


def test_release_build_of_both_binaries_the_proxy_on_its_own():
    _, stages = parse()
    (run,) = [c for c in stages["build"]["commands"] if c.cmd == "RUN"]
    # Separate cargo runs: the operator's dependency features stay out of
    # the sidecar.
    proxy = "cargo build --release --locked -p weft-proxy &&"
    operator = "cargo build --release --locked -p weft-operator &&"
    command = " ".join(run.value[0].split())
    assert proxy in command and operator in command
    assert command.index(proxy) < command.index(operator)
    assert any("type=cache" in f for f in run.flags)


def test_runtime_stages():
    _, stages = parse()
    proxy_uid = re.search(r"PROXY_UID: u32 = (\d+);", (REPO / "api/src/names.rs").read_text())[1]
    expect = {
        "operator": ("65532:65532", "weft-operator", "run"),
        "proxy": (f"{proxy_uid}:{proxy_uid}", "weft-proxy", "run"),
        "init": ("0:0", "weft-proxy", "init"),
    }
    for name, (user, binary, cmd) in expect.items():
        stage = stages[name]
        assert only(stage, "USER").value == (user,), name
        entry = only(stage, "ENTRYPOINT")
        assert entry.json and entry.value == (f"/usr/local/bin/{binary}",), name
        assert only(stage, "CMD").value == (cmd,), name
        (copy,) = [c for c in stage["commands"] if c.cmd == "COPY"]
        assert copy.flags == ("--from=build",)
        assert copy.value == (f"/out/{binary}", f"/usr/local/bin/{binary}")
    # Distroless: no shell, so no RUN in the runtime stages.
    for name in ("operator", "proxy"):
        assert not [c for c in stages[name]["commands"] if c.cmd == "RUN"], name
    # The injected postStart hook execs `weft-proxy wait-ready` by name.
    (env,) = [c for c in stages["proxy"]["commands"] if c.cmd == "ENV"]
    assert env.value[0] == "PATH" and "/usr/local/bin" in env.value[1].split(":")


def test_init_image_has_iptables():
    _, stages = parse()
    (run,) = [c for c in stages["init"]["commands"] if c.cmd == "RUN"]
    assert re.search(r"apt-get install -y --no-install-recommends iptables\b", run.value[0])
    assert "rm -rf /var/lib/apt/lists/*" in run.value[0]


def test_build_context_excludes_target():
    ignored = (REPO / "images" / "Dockerfile.dockerignore").read_text().split()
    assert {"target", ".git", ".venv"} <= set(ignored)


def make_dry_run(target: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in {"VERSION", "REGISTRY", "DOCKER", "KIND", "KIND_CLUSTER", "MAKEFLAGS"}}
    return subprocess.run(["make", "-s", "-n", "-C", str(REPO), target], env=env,
                          check=True, capture_output=True, text=True).stdout


def test_make_images_tags_what_the_chart_pulls():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())["images"]
    built = dict(re.findall(r"--target (\w+) -t (\S+) \.", make_dry_run("images")))
    assert built == {name: f"{values[name]['repository']}:{chart['appVersion']}"
                     for name in ("operator", "proxy", "init")}
    loaded = make_dry_run("kind-load").split()
    assert set(built.values()) <= set(loaded)
