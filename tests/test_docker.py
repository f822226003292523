"""docker/: no Docker engine runs here, so these check what can go wrong without one: the images
install what pyproject.toml pins and every subpackage, the GPU base carries the pinned torch,
Ray versions agree across images and the RayJob, and the RayJob's command is one that the real
`optidel` CLI accepts, on paths every pod mounts, with the GPUs its actor pools ask for."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from optidel.pipeline import cli
from optidel.stages.propose import resolve_proposer

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
IMAGES = {"gpu": DOCKER / "Dockerfile.gpu", "cpu": DOCKER / "Dockerfile.cpu"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                keyword, _, rest = current.strip().partition(" ")
                lines.append((keyword.upper(), " ".join(rest.split())))
            current = ""
    return lines


def _args(path: Path) -> dict[str, str]:
    """ARG defaults, before and after FROM."""
    found = {}
    for keyword, rest in _instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            found[name] = value.strip('"')
    return found


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins() -> dict[str, Requirement]:
    return {r.name: r for r in map(Requirement, _pyproject()["project"]["dependencies"])}


def _rayjob() -> dict:
    return yaml.safe_load((DOCKER / "kuberay-rayjob.yaml").read_text())


def _groups(job: dict) -> dict[str, dict]:
    spec = job["spec"]["rayClusterSpec"]
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def _container(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container


def _entrypoint_config(job: dict):
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "optidel"
    args = cli._parser().parse_args(argv[1:])
    assert args.func is cli._run
    return args, cli._config(args)  # raises on any unknown key or bad value


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_installs_the_package_with_every_subpackage(image):
    instructions = _instructions(IMAGES[image])
    copied = {src.rstrip("/") for keyword, rest in instructions if keyword == "COPY" for src in rest.split()[:-1]}
    package_dirs = set(_pyproject()["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs | {"pyproject.toml", "README.md"} <= copied  # README: pyproject's readme
    installs = [rest for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest and " . " in f"{rest} "]
    assert len(installs) == 1, installs
    # Ray is pinned to the version the RayJob declares, inside pyproject's range.
    ray_version = _args(IMAGES[image])["RAY_VERSION"]
    assert '"ray[default,data]==${RAY_VERSION}"' in installs[0]
    assert _pins()["ray"].specifier.contains(ray_version)


def test_gpu_base_carries_the_pinned_torch():
    base = _args(IMAGES["gpu"])["BASE_IMAGE"]
    repository, _, tag = base.partition(":")
    assert repository == "pytorch/pytorch" and "cuda" in tag and tag.endswith("-runtime")
    torch_pin = str(_pins()["torch"].specifier).removeprefix("==")
    assert tag.split("-")[0] == torch_pin


def test_cpu_image_installs_cpu_builds_of_the_pinned_pair():
    run = " ".join(rest for keyword, rest in _instructions(IMAGES["cpu"]) if keyword == "RUN" and "download.pytorch.org/whl/cpu" in rest)
    pinned = dict(re.findall(r"\b(torch|torchvision)==([\w.]+)", run))
    assert pinned == {name: str(_pins()[name].specifier).removeprefix("==") for name in ("torch", "torchvision")}


def test_docs_build_the_images_the_rayjob_runs():
    docs = (REPO / "docs" / "cluster.md").read_text()
    built = dict(re.findall(r"docker build -f (docker/\S+) -t (\S+) \.", docs))
    assert {REPO / path for path in built} == set(IMAGES.values())
    tags = {path.rsplit(".", 1)[1]: tag for path, tag in built.items()}
    groups = _groups(_rayjob())
    for name, group in groups.items():
        assert _container(group)["image"] == tags["gpu" if "nvidia.com/gpu" in _container(group)["resources"]["limits"] else "cpu"], name
    assert "docs/cluster.md" in (REPO / "README.md").read_text()


def test_rayjob_runs_a_valid_optidel_command_on_mounted_paths():
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == _args(IMAGES["gpu"])["RAY_VERSION"] == _args(IMAGES["cpu"])["RAY_VERSION"]
    args, config = _entrypoint_config(job)
    groups = _groups(job)

    def mounted(group: dict, path: str) -> bool:
        return any(Path(path).is_relative_to(m["mountPath"]) for m in _container(group).get("volumeMounts", []))

    for name, group in groups.items():
        for path in [*args.inputs, args.out]:
            assert mounted(group, path), (name, path)
    gpu_groups = {n: g for n, g in groups.items() if "nvidia.com/gpu" in _container(g)["resources"]["limits"]}
    assert gpu_groups and "head" not in gpu_groups
    if resolve_proposer(config.propose).needs_weights:
        checkpoint = config.propose.sam_checkpoint
        # The path Dockerfile.gpu bakes weights to, or where the models volume provides them.
        assert "/models/sam_${SAM_MODEL}.pth" in IMAGES["gpu"].read_text()
        assert checkpoint == f"/models/sam_{config.propose.sam_model}.pth"
        for name in ["head", *gpu_groups]:
            assert mounted(groups[name], checkpoint), name


def test_rayjob_actor_pools_fit_its_gpus():
    job = _rayjob()
    _, config = _entrypoint_config(job)
    assert config.ray.gpus_per_actor > 0 and config.ray.address is None  # RAY_ADDRESS is set by the job
    pools = 1 + int(resolve_proposer(config.propose).actor)  # Score, and the proposer's own pool
    wanted = pools * config.ray.actors * config.ray.gpus_per_actor
    available = sum(
        g["replicas"] * int(_container(g)["resources"]["limits"]["nvidia.com/gpu"])
        for g in _groups(job).values()
        if "nvidia.com/gpu" in _container(g)["resources"]["limits"]
    )
    assert 0 < wanted <= available
    assert _groups(job)["head"]["rayStartParams"]["num-cpus"] == "0"  # the head only drives
