"""Every launch file is checked here, as far as a machine without Docker engine, cluster or GPU can check it.

Shell scripts (launch/**: *.sh, *.sbatch) pass shellcheck and `bash -n`; the Dockerfile passes hadolint; both
Kubeflow manifests parse, use only the fields their operators take (kubeflow/training-operator's TFJob v1,
kubeflow/mpi-operator's MPIJob v2beta1), and their pod templates validate as core Kubernetes Pods
(kubernetes-validate, strict); horovodrun_hosts.sh and the Slurm scripts are run against stand-in launchers that
record what they were asked to run; every `dist-ae train` command line in these files parses with dist-ae's own
argument parser. The linters are required test dependencies (`pip install -e '.[test]'`): missing, they fail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, cli_env

LAUNCH = ROOT / "launch"
HOSTS_SCRIPT = LAUNCH / "horovodrun_hosts.sh"
SLURM = LAUNCH / "slurm"
KUBERNETES = LAUNCH / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
K8S_VERSION = "1.30"  # the core API version the pod templates are validated against

EXPECTED_SCRIPTS = {"install_horovod.sh", "horovodrun_hosts.sh", "slurm/horovod.sbatch", "slurm/multiworker.sbatch"}


def tool(name: str) -> str:
    """A linter installed by the test extras: next to this interpreter, else on PATH. Missing is a failure."""
    here = Path(sysconfig.get_path("scripts")) / name
    found = str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]' (it is a test dependency)"
    return found


def run(*command, env=None, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def shell_scripts() -> list[Path]:
    """Every shell script under launch/: *.sh, *.sbatch, or any file whose first line names a shell."""
    found = []
    for path in sorted(LAUNCH.rglob("*")):
        if not path.is_file():
            continue
        first = path.read_text(errors="replace").split("\n", 1)[0]
        if path.suffix in {".sh", ".sbatch"} or re.match(r"#!.*\b(ba|da|k)?sh\b", first):
            found.append(path)
    return found


def parse_train_args(argv: list[str]):
    """dist-ae's own parser and checks: every flag these files pass must exist and hold a valid value."""
    from dist_ae.cli import build_parser, train_config

    assert argv[:2] == ["dist-ae", "train"] or Path(argv[0]).name == "dist-ae" and argv[1] == "train", argv
    args = build_parser().parse_args(["train", *argv[2:]])
    return train_config(args).validate()


def train_command(words: list[str]) -> list[str]:
    """The `dist-ae train ...` tail of a launcher's command line."""
    for i, word in enumerate(words[:-1]):
        if Path(word).name == "dist-ae" and words[i + 1] == "train":
            return words[i:]
    raise AssertionError(f"no `dist-ae train` in {words}")


# ------------------------------------------------------------------------------------------------ shellcheck ---

def test_every_launch_script_is_found():
    names = {str(path.relative_to(LAUNCH)) for path in shell_scripts()}
    assert EXPECTED_SCRIPTS <= names, names


@pytest.mark.parametrize("script", [str(p.relative_to(LAUNCH)) for p in shell_scripts()] or ["<none found>"])
def test_shellcheck_clean(script):
    path = LAUNCH / script
    assert path.is_file(), script
    result = run(tool("shellcheck"), "--shell=bash", "--severity=style", "--external-sources", path, cwd=ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("script", [str(p.relative_to(LAUNCH)) for p in shell_scripts()] or ["<none found>"])
def test_bash_parses(script):
    path = LAUNCH / script
    assert path.read_text().startswith("#!"), f"{script} has no #! line"
    result = run("bash", "-n", path)
    assert result.returncode == 0, result.stderr


def test_shellcheck_reports_what_it_should(tmp_path):
    """The linter really lints: a script with an unquoted expansion is rejected (SC2086)."""
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/bash\nrm -rf $1/build\n')
    result = run(tool("shellcheck"), bad)
    assert result.returncode != 0 and "SC2086" in result.stdout, result.stdout


def test_directly_run_scripts_are_executable():
    for path in (HOSTS_SCRIPT, LAUNCH / "install_horovod.sh"):
        assert path.stat().st_mode & stat.S_IXUSR, f"{path.relative_to(ROOT)} is not executable (chmod +x)"


# -------------------------------------------------------------------------------------------------- hadolint ---

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def test_hadolint_clean():
    result = run(tool("hadolint"), "--no-color", DOCKERFILE, cwd=ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_reports_what_it_should(tmp_path):
    """The linter really lints: unpinned base image and apt packages are rejected."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    result = run(tool("hadolint"), "--no-color", bad)
    assert result.returncode != 0 and "DL3008" in result.stdout and "DL3006" in result.stdout, result.stdout


def test_dockerfile_builds_the_gpu_image_the_launchers_expect():
    instructions = dockerfile_instructions()
    text = "\n".join(f"{name} {args}" for name, args in instructions)
    froms = [args for name, args in instructions if name == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-devel-ubuntu\d\d\.\d\d", froms[0]), froms
    args = dict(re.match(r"(\w+)=(\S*)", a).groups() for n, a in instructions if n == "ARG" and "=" in a)

    # The versions it pins are the ones dist-ae and install_horovod.sh are tested with.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.match(r"2\.21\.\d+$", args["TENSORFLOW_VERSION"]) and '"tensorflow>=2.21,<2.22"' in pyproject
    assert '"tensorflow[and-cuda]==${TENSORFLOW_VERSION}"' in text
    assert re.match(r"3\.(1[5-9]|[2-9]\d)\.\d+$", args["KERAS_VERSION"]), args["KERAS_VERSION"]
    default_hvd = re.search(r'DIST_AE_HOROVOD_VERSION:-([\d.]+)\}', (LAUNCH / "install_horovod.sh").read_text())
    assert default_hvd and args["HOROVOD_VERSION"] == default_hvd.group(1)

    # Horovod with NCCL and MPI, by the project's own script.
    horovod_run = next(a for n, a in instructions if n == "RUN" and "install_horovod.sh" in a)
    for knob in ("DIST_AE_HOROVOD_WITH_NCCL=1", "DIST_AE_HOROVOD_WITH_MPI=1"):
        assert knob in horovod_run, knob
    assert any(n == "COPY" and a.split()[0] == "launch/install_horovod.sh" for n, a in instructions)
    assert re.search(r"libopenmpi-dev=\S+", text) and re.search(r"openmpi-bin=\S+", text)
    assert "/usr/include/nccl.h" in text  # the base image's libnccl-dev is there

    # dist-ae installed from the source, started as the entry point, not as root.
    assert any(n == "RUN" and re.search(r"pip install --no-cache-dir \.( |$)", a) for n, a in instructions)
    assert ("ENTRYPOINT", '["dist-ae"]') in instructions
    assert any(n == "CMD" and a.startswith('["train"') for n, a in instructions)
    user = [a for n, a in instructions if n == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), f"last USER {user!r}: numeric and not root (runAsNonRoot)"
    assert f"--uid {user.split(':')[0]}" in text


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent folders decides."""
    def matches(pattern: str, candidate: str) -> bool:
        regex = ""
        for token in re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern.strip("/")):
            if token.startswith("**"):
                regex += ".*"
            elif token == "*":
                regex += "[^/]*"
            elif token == "?":
                regex += "[^/]"
            elif token.startswith("[") and token.endswith("]"):
                regex += token
            else:
                regex += re.escape(token)
        return re.fullmatch(regex, candidate) is not None

    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        if any(matches(pattern, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_lets_through_what_the_dockerfile_copies_and_nothing_else():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = [args.split()[:-1] for name, args in dockerfile_instructions() if name == "COPY"]
    sources = [source for group in copied for source in group if not source.startswith("--")]
    assert sources, "no COPY in the Dockerfile"
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, f"COPY {source}: nothing there"
        for file in files:
            assert not dockerignore_excludes(file, patterns), f"COPY {source}: .dockerignore leaves out {file}"
    for outside in (".git/HEAD", "tests/conftest.py", "runs/x/metrics.jsonl", "dist_ae/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(outside, patterns), f".dockerignore lets {outside} into the build context"


# ------------------------------------------------------------------------------------------------ Kubernetes ---

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
RUN_POLICY_KEYS = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit",
                   "schedulingPolicy", "suspend", "managedBy"}
REPLICA_SPEC_KEYS = {"replicas", "restartPolicy", "template"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}


def manifests(name: str) -> dict[str, dict]:
    docs = [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc is not None]
    kinds = [doc.get("kind") for doc in docs]
    assert len(set(kinds)) == len(kinds), kinds
    return {doc["kind"]: doc for doc in docs}


def command_of(container: dict) -> list[str]:
    words = [*container.get("command", []), *container.get("args", [])]
    assert all(isinstance(word, str) for word in words), f"{container['name']}: quote numbers in command/args"
    return words


def check_replica_spec(kind: str, role: str, spec: dict):
    assert set(spec) <= REPLICA_SPEC_KEYS, f"{kind} {role}: unknown keys {set(spec) - REPLICA_SPEC_KEYS}"
    assert isinstance(spec.get("replicas"), int) and spec["replicas"] >= 1, (role, spec.get("replicas"))
    assert spec.get("restartPolicy", "Never") in RESTART_POLICIES, spec.get("restartPolicy")
    template = spec["template"]
    assert set(template) <= {"metadata", "spec"}, set(template)
    # The operators set the pod's restartPolicy from the replica spec (and warn when a template sets its own).
    assert "restartPolicy" not in template["spec"], f"{kind} {role}: set restartPolicy on the replica spec"
    containers = template["spec"]["containers"]
    assert containers and all(c.get("image") for c in containers), f"{kind} {role}: every container needs an image"


def check_run_policy(kind: str, policy: dict):
    assert set(policy) <= RUN_POLICY_KEYS, f"{kind} runPolicy: unknown keys {set(policy) - RUN_POLICY_KEYS}"
    assert policy.get("cleanPodPolicy", "None") in {"All", "Running", "None"}, policy


def check_logdir_on_claim(kind: str, role: str, template: dict, container: dict, claim: dict):
    logdir = container_logdir(command_of(container))
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    on_claim = [name for name, path in mounts.items() if (logdir + "/").startswith(path.rstrip("/") + "/")
                and volumes.get(name, {}).get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
    assert on_claim, f"{kind} {role}: --logdir {logdir} is not on the claim {claim['metadata']['name']}"


def container_logdir(words: list[str]) -> str:
    tail = train_command(words)
    assert "--logdir" in tail, f"no --logdir in {tail}: it must be on the shared claim"
    return tail[tail.index("--logdir") + 1]


def check_claim(claim: dict):
    assert claim["apiVersion"] == "v1" and claim["kind"] == "PersistentVolumeClaim"
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "pods on several nodes mount it: ReadWriteMany"


def validate_pod_template(kind: str, role: str, template: dict):
    """The operators create Pods from these templates: each must be a valid core/v1 Pod (strict: no unknown field)."""
    import kubernetes_validate

    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{kind.lower()}-{role.lower()}-0", **template.get("metadata", {})},
           "spec": template["spec"]}
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        pytest.fail(f"{kind} {role} pod template: {path}: {error.message}")


def test_kubernetes_validate_rejects_what_it_should():
    import kubernetes_validate

    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "c", "image": "i", "volumeMount": []}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_tfjob_is_what_the_training_operator_takes():
    docs = manifests("multiworker-tfjob.yaml")
    assert set(docs) == {"PersistentVolumeClaim", "TFJob"}, set(docs)
    job, claim = docs["TFJob"], docs["PersistentVolumeClaim"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert DNS_1035.fullmatch(job["metadata"]["name"]), "the operator wants a DNS-1035 job name"
    spec = job["spec"]
    assert set(spec) <= {"runPolicy", "successPolicy", "tfReplicaSpecs", "enableDynamicWorker"}, set(spec)
    check_run_policy("TFJob", spec.get("runPolicy", {}))
    replicas = spec["tfReplicaSpecs"]
    assert set(replicas) <= {"Chief", "Master", "PS", "Worker", "Evaluator"}, set(replicas)
    assert set(replicas) == {"Worker"}, "MultiWorkerMirroredStrategy: workers only, worker 0 is the chief"
    worker = replicas["Worker"]
    check_replica_spec("TFJob", "Worker", worker)
    assert worker["replicas"] >= 2, "one worker is not a multi-worker job"
    containers = worker["template"]["spec"]["containers"]
    tensorflow = [c for c in containers if c["name"] == "tensorflow"]
    assert len(tensorflow) == 1, "the operator injects TF_CONFIG only into the container named `tensorflow`"
    container = tensorflow[0]
    config = parse_train_args(train_command(command_of(container)))
    assert config.strategy == "multiworker"
    for port in container.get("ports", []):
        if port.get("name") == "tfjob-port":
            assert port["containerPort"] == 2222
    assert container["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1
    check_claim(claim)
    check_logdir_on_claim("TFJob", "Worker", worker["template"], container, claim)


def test_mpijob_is_what_the_mpi_operator_takes():
    docs = manifests("horovod-mpijob.yaml")
    assert set(docs) == {"PersistentVolumeClaim", "MPIJob"}, set(docs)
    job, claim = docs["MPIJob"], docs["PersistentVolumeClaim"]
    assert job["apiVersion"] == "kubeflow.org/v2beta1" and job["kind"] == "MPIJob"
    assert DNS_1035.fullmatch(job["metadata"]["name"])
    spec = job["spec"]
    allowed = {"slotsPerWorker", "runPolicy", "mpiReplicaSpecs", "sshAuthMountPath", "mpiImplementation",
               "launcherCreationPolicy", "runLauncherAsWorker"}
    assert set(spec) <= allowed, f"unknown MPIJob spec keys {set(spec) - allowed}"
    assert spec.get("mpiImplementation", "OpenMPI") == "OpenMPI", "the image ships Open MPI"
    check_run_policy("MPIJob", spec.get("runPolicy", {}))
    slots = spec.get("slotsPerWorker", 1)
    assert isinstance(slots, int) and slots >= 1
    replicas = spec["mpiReplicaSpecs"]
    assert set(replicas) == {"Launcher", "Worker"}, set(replicas)
    for role, replica in replicas.items():
        check_replica_spec("MPIJob", role, replica)
    launcher, worker = replicas["Launcher"], replicas["Worker"]
    assert launcher["replicas"] == 1

    # The launcher: mpirun -np (workers x slots) <the Open MPI options> dist-ae train --strategy horovod ...
    # The operator adds its hostfile and ssh keys to the first container.
    words = command_of(launcher["template"]["spec"]["containers"][0])
    assert words[0] == "mpirun", words
    tail = train_command(words)
    options = words[1:len(words) - len(tail)]
    assert options[options.index("-np") + 1] == str(worker["replicas"] * slots), "-np must be workers x slotsPerWorker"
    joined = " ".join(options)
    for option in ("-bind-to none", "-map-by slot", "-x NCCL_DEBUG=INFO", "-x LD_LIBRARY_PATH", "-x PATH",
                   "-mca pml ob1", "-mca btl ^openib"):
        assert option in joined, option
    assert parse_train_args(tail).strategy == "horovod"
    assert "nvidia.com/gpu" not in launcher["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})

    # The workers: sshd, one GPU per slot, the claim for rank 0's --logdir (any worker may hold rank 0).
    worker_container = worker["template"]["spec"]["containers"][0]
    worker_words = command_of(worker_container)
    assert Path(worker_words[0]).name == "sshd" and "-D" in worker_words[1], worker_words
    assert worker_container["resources"]["limits"]["nvidia.com/gpu"] == slots
    check_claim(claim)
    check_logdir_on_claim("MPIJob", "Worker", worker["template"], {**worker_container, "command": tail}, claim)

    # It fits the image: the sshd config the workers start is written by the Dockerfile, the keys are mounted in
    # the home of the image's user, and the pods run as that user.
    dockerfile = DOCKERFILE.read_text()
    config = worker_words[worker_words.index("-f") + 1]
    assert f"> {config}" in dockerfile, f"the Dockerfile does not write {config}"
    user = re.search(r"useradd .*--uid (\d+) .*?(\w+)\s*\\?\n", dockerfile)
    assert user, "no useradd --uid in the Dockerfile"
    assert spec["sshAuthMountPath"] == f"/home/{user.group(2)}/.ssh"
    assert f"HostKey {spec['sshAuthMountPath']}/id_rsa" in dockerfile
    for replica in replicas.values():
        assert replica["template"]["spec"]["securityContext"]["runAsUser"] == int(user.group(1))
    port = re.search(r"'Port (\d+)'", dockerfile).group(1)
    assert [p["containerPort"] for p in worker_container.get("ports", [])] in ([], [int(port)])


@pytest.mark.parametrize("name", ["multiworker-tfjob.yaml", "horovod-mpijob.yaml"])
def test_pod_templates_and_claims_are_valid_kubernetes(name):
    import kubernetes_validate

    for kind, doc in manifests(name).items():
        if kind == "PersistentVolumeClaim":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            continue
        replica_specs = doc["spec"].get("tfReplicaSpecs") or doc["spec"]["mpiReplicaSpecs"]
        for role, replica in replica_specs.items():
            validate_pod_template(kind, role, replica["template"])


@pytest.mark.parametrize("name", ["multiworker-tfjob.yaml", "horovod-mpijob.yaml"])
def test_manifests_use_the_image_the_readme_builds(name):
    images = {c["image"] for doc in manifests(name).values() if doc["kind"] != "PersistentVolumeClaim"
              for replica in (doc["spec"].get("tfReplicaSpecs") or doc["spec"]["mpiReplicaSpecs"]).values()
              for c in replica["template"]["spec"]["containers"]}
    assert images == {"dist-ae:latest"}, images
    assert "docker build -t dist-ae" in (LAUNCH / "README.md").read_text()


# ------------------------------------------------------------------------------------- horovodrun_hosts.sh ---

def hosts_script(*args: str, env_extra: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for name in ("DRY_RUN", "HOSTFILE", "NP", "HOROVODRUN", "MPIRUN", "DIST_AE", "NCCL_DEBUG"):
        env.pop(name, None)  # the caller's settings of the script's knobs must not leak into these tests
    env.update(env_extra or {})
    return run(HOSTS_SCRIPT, *args, env=env, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("horovodrun_hosts.sh: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == "", result.stdout
    return lines[0]


MPIRUN_OPTIONS = ("-bind-to none -map-by slot -x NCCL_DEBUG=INFO -x LD_LIBRARY_PATH -x PATH "
                  "-mca pml ob1 -mca btl ^openib")


def test_dry_run_prints_horovodrun_with_np_the_sum_of_slots(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("gpu-node-1 slots=4\ngpu-node-2 slots=2\n10.0.0.7 slots=2\n")
    result = hosts_script("--hostfile", str(hostfile), "--dry-run", "--epochs", "3", "--logdir", "/shared/run 1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"horovodrun -np 8 -hostfile {hostfile} dist-ae train --strategy horovod "
                        "--epochs 3 --logdir '/shared/run 1'")
    assert lines[1] == (f"# the same run with Open MPI: mpirun -np 8 -hostfile {hostfile} {MPIRUN_OPTIONS} "
                        "dist-ae train --strategy horovod --epochs 3 --logdir '/shared/run 1'")
    assert len(lines) == 2 and result.stderr == ""
    config = parse_train_args(train_command(shlex.split(lines[0])))
    assert (config.strategy, config.epochs, config.logdir) == ("horovod", 3, "/shared/run 1")


def test_dry_run_from_the_environment_and_with_mpirun(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=3\nb slots=3\n")
    result = hosts_script("--mpirun", "--", "--batch-size", "60", env_extra={"DRY_RUN": "1", "HOSTFILE": str(hostfile)})
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"mpirun -np 6 -hostfile {hostfile} {MPIRUN_OPTIONS} dist-ae train --strategy horovod --batch-size 60"
    assert second == f"# the same run with horovodrun: horovodrun -np 6 -hostfile {hostfile} dist-ae train --strategy horovod --batch-size 60"


def test_np_can_be_lowered_but_not_raised_past_the_slots(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\nb slots=2\n")
    lowered = hosts_script("-f", str(hostfile), "-np", "3", "--dry-run")
    assert lowered.returncode == 0 and lowered.stdout.startswith(f"horovodrun -np 3 -hostfile {hostfile} "), lowered
    one_line_error(hosts_script("-f", str(hostfile), "-np", "5", "--dry-run"), "-np 5", "4 slots")
    one_line_error(hosts_script("-f", str(hostfile), "--np", "zero", "--dry-run"), "-np must be a positive integer")


def test_other_host_file_forms_are_normalized(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1:2\n\nnode2 slots=3   # the big one\nnode3\n")
    result = hosts_script("-f", str(hostfile), "--dry-run")
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout.splitlines()[0])
    assert words[:3] == ["horovodrun", "-np", "6"] and words[3] == "-hostfile"
    normalized = Path(words[4])
    try:
        assert normalized != hostfile and f"normalized to {normalized} (kept)" in result.stderr
        # The form horovodrun's own parser and Open MPI's both read.
        assert normalized.read_text() == "node1 slots=2\nnode2 slots=3\nnode3 slots=1\n"
    finally:
        normalized.unlink(missing_ok=True)


def test_missing_host_file_is_one_line_and_status_2(tmp_path):
    missing = tmp_path / "no-such-hostfile"
    one_line_error(hosts_script("--hostfile", str(missing), "--dry-run"), str(missing), "not found")
    # Without --hostfile, ./hostfile is the default.
    one_line_error(hosts_script("--dry-run", cwd=tmp_path), "'hostfile' not found")


@pytest.mark.parametrize(("content", "fragment"), [
    ("node1 slots=0\n", "line 1: slots must be a positive integer, got '0'"),
    ("node1 slots=2\nnode2 slots=two\n", "line 2: slots must be a positive integer, got 'two'"),
    ("node1 slots=2 extra\n", "line 1: 'node1 slots=2 extra' is not"),
    ("bad/host slots=1\n", "'bad/host' is not a host name"),
    ("# nothing\n\n", "lists no hosts"),
])
def test_malformed_host_file_is_one_line_and_status_2(tmp_path, content, fragment):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(content)
    one_line_error(hosts_script("-f", str(hostfile), "--dry-run"), fragment)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--strategy", "mirrored"], "do not pass --strategy"),
    (["--mpirun", "--gloo"], "--gloo is a horovodrun option"),
    (["--hostfile"], "--hostfile needs a value"),
])
def test_usage_errors_are_one_line_and_status_2(tmp_path, args, fragment):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=1\n")
    first = [] if args == ["--hostfile"] else ["-f", str(hostfile)]
    one_line_error(hosts_script(*first, "--dry-run", *args), fragment)


def recording_launcher(folder: Path, name: str, status: int = 0) -> Path:
    """A stand-in launcher: writes its arguments (one a line) and the host file it was given, exits `status`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f"""#!/bin/bash
printf '%s\\n' "$@" > "{folder}/{name}.args"
while (($#)); do
    if [[ "$1" == -hostfile ]]; then cat "$2" > "{folder}/{name}.hostfile"; fi
    shift
done
exit {status}
""")
    script.chmod(0o755)
    return script


def test_real_run_starts_the_launcher_with_the_normalized_file_and_returns_its_status(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1:2\nnode2:2\n")
    stub = recording_launcher(tmp_path / "bin", "horovodrun", status=7)
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = hosts_script("-f", str(hostfile), "--gloo", "--", "--epochs", "2",
                          env_extra={"HOROVODRUN": str(stub), "TMPDIR": str(temp)})
    assert result.returncode == 7, (result.returncode, result.stderr)
    args = (stub.parent / "horovodrun.args").read_text().splitlines()
    assert args[:2] == ["-np", "4"] and args[2] == "-hostfile" and args[4] == "--gloo", args
    assert args[5:] == ["dist-ae", "train", "--strategy", "horovod", "--epochs", "2"], args
    assert (stub.parent / "horovodrun.hostfile").read_text() == "node1 slots=2\nnode2 slots=2\n"
    assert list(temp.iterdir()) == [], "the normalized host file outlived the run"
    assert "4 ranks on 2 host(s)" in result.stderr


def test_real_run_with_mpirun_passes_the_open_mpi_options(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=1\nnode2 slots=1\n")
    stub = recording_launcher(tmp_path / "bin", "mpirun")
    result = hosts_script("-f", str(hostfile), "--mpirun", "--launcher-arg", "--oversubscribe",
                          env_extra={"MPIRUN": str(stub), "NCCL_DEBUG": "WARN"})
    assert result.returncode == 0, result.stderr
    args = (stub.parent / "mpirun.args").read_text().splitlines()
    assert args == ["-np", "2", "-hostfile", str(hostfile), "-bind-to", "none", "-map-by", "slot",
                    "-x", "NCCL_DEBUG=WARN", "-x", "LD_LIBRARY_PATH", "-x", "PATH", "-mca", "pml", "ob1",
                    "-mca", "btl", "^openib", "--oversubscribe", "dist-ae", "train", "--strategy", "horovod"]


def test_missing_launcher_is_named(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=1\n")
    result = hosts_script("-f", str(hostfile), env_extra={"HOROVODRUN": str(tmp_path / "no-horovodrun")})
    assert result.returncode == 127 and "no-horovodrun' not found" in result.stderr, result


@pytest.mark.skipif(shutil.which("horovodrun") is None and not os.environ.get("CI"),
                    reason="Horovod is not installed (bash launch/install_horovod.sh)")
def test_real_horovodrun_trains_from_a_host_file(tmp_path):
    """The whole way: a `localhost:2` host file, normalized, read by horovodrun itself, two Gloo ranks training."""
    assert shutil.which("horovodrun"), "horovodrun is not on PATH: launch/install_horovod.sh did not install Horovod"
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost:2\n")
    logdir = tmp_path / "run"
    env = cli_env(tmp_path)
    env.pop("DRY_RUN", None)
    if not shutil.which("dist-ae"):
        env["DIST_AE"] = f"{Path(sys.executable).parent / 'dist-ae'}"
    result = run(HOSTS_SCRIPT, "-f", hostfile, "--gloo", "--", "--data", "sample", "--batch-size", "20",
                 "--epochs", "1", "--image-every", "0", "--logdir", logdir, env=env, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "2 ranks on 1 host(s)" in result.stderr
    metrics = (logdir / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and '"num_replicas": 2' in metrics[0], metrics


# ---------------------------------------------------------------------------------------------------- Slurm ---

def sbatch_directives(path: Path) -> list[str]:
    """The #SBATCH options Slurm reads: those before the first command line (later ones it ignores)."""
    options, ended = [], False
    for line in path.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            assert not ended, f"{path.name}: '{line}' comes after the first command, Slurm ignores it"
            options.append(line.split(None, 1)[1].strip())
        elif line.strip() and not line.startswith("#"):
            ended = True
    return options


def test_horovod_sbatch_asks_for_one_task_per_gpu():
    options = sbatch_directives(SLURM / "horovod.sbatch")
    assert "--output=logs/%x-%j.out" in options
    assert any(o.startswith("--ntasks-per-node=") for o in options)
    assert "--gpus-per-task=1" in options or any(o.startswith("--gres=gpu:") for o in options)
    for prefix in ("--cpus-per-task=", "--time=", "--job-name=", "--nodes="):
        assert any(o.startswith(prefix) for o in options), prefix


def test_multiworker_sbatch_asks_for_one_task_per_node():
    options = sbatch_directives(SLURM / "multiworker.sbatch")
    assert "--output=logs/%x-%j.out" in options and "--ntasks-per-node=1" in options
    assert any(o.startswith(("--gpus-per-node=", "--gres=gpu:")) for o in options)
    for prefix in ("--cpus-per-task=", "--time=", "--job-name=", "--nodes="):
        assert any(o.startswith(prefix) for o in options), prefix


def run_sbatch_script(tmp_path: Path, name: str, *args: str, with_dist_ae: bool = True):
    """Runs a .sbatch script as Slurm would start it, with a stand-in srun (and dist-ae in a stand-in venv)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "srun").write_text(f"""#!/bin/bash
printf '%s\\n' "$@" > "{tmp_path}/srun.args"
env > "{tmp_path}/srun.env"
""")
    (stubs / "srun").chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    if with_dist_ae:
        (venv / "bin" / "dist-ae").write_text("#!/bin/bash\nexit 0\n")
        (venv / "bin" / "dist-ae").chmod(0o755)
    submit = tmp_path / "submit"
    submit.mkdir()
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path), "DIST_AE_VENV": str(venv),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": name.split(".")[0], "SLURM_SUBMIT_DIR": str(submit),
           "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]",
           "SLURM_CPUS_PER_TASK": "8"}
    result = run("bash", SLURM / name, *args, env=env, cwd=submit)
    srun_args = tmp_path / "srun.args"
    srun_env = tmp_path / "srun.env"
    return (result, srun_args.read_text().splitlines() if srun_args.exists() else None,
            dict(line.split("=", 1) for line in srun_env.read_text().splitlines() if "=" in line)
            if srun_env.exists() else None, submit)


def test_horovod_sbatch_runs_srun_pmix_dist_ae_horovod(tmp_path):
    result, srun_args, srun_env, submit = run_sbatch_script(tmp_path, "horovod.sbatch", "--epochs", "7")
    assert result.returncode == 0, result.stderr
    assert srun_args[0] == "--mpi=pmix" and "--kill-on-bad-exit=1" in srun_args, srun_args
    tail = train_command(srun_args)
    assert tail == ["dist-ae", "train", "--strategy", "horovod", "--logdir", f"{submit}/runs/horovod-4242",
                    "--epochs", "7"], tail
    assert parse_train_args(tail).strategy == "horovod"
    assert srun_env["SRUN_CPUS_PER_TASK"] == "8"


def test_multiworker_sbatch_runs_one_srun_task_per_node_with_nccl(tmp_path):
    result, srun_args, srun_env, submit = run_sbatch_script(tmp_path, "multiworker.sbatch", "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    assert "--ntasks-per-node=1" in srun_args and "--kill-on-bad-exit=1" in srun_args, srun_args
    tail = train_command(srun_args)
    config = parse_train_args(tail)
    assert (config.strategy, config.collective, config.batch_size) == ("multiworker", "nccl", 64)
    assert config.logdir == f"{submit}/runs/multiworker-4242"
    # No TF_CONFIG: dist-ae takes the cluster from Slurm (SlurmClusterResolver) on DIST_AE_PORT_BASE.
    assert "TF_CONFIG" not in srun_env and srun_env["DIST_AE_PORT_BASE"] == "8888"
    assert srun_env["SRUN_CPUS_PER_TASK"] == "8"


@pytest.mark.parametrize("name", ["horovod.sbatch", "multiworker.sbatch"])
def test_sbatch_without_dist_ae_says_so(tmp_path, name):
    result, srun_args, _, _ = run_sbatch_script(tmp_path, name, with_dist_ae=False)
    assert result.returncode == 2 and "dist-ae is not on PATH" in result.stderr, result
    assert srun_args is None, "srun ran without dist-ae"
