"""The doctor inside the lab: which failures refuse which deploys, the refusal confirmed on the
machine as it is now, the testing hooks, and the metric of the latest report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from labctl.config import DeploymentSpec, LabConfig
from labctl.daemon.doctor import LabDoctor, blocking, host_view, refusal
from labctl.daemon.metrics import DaemonMetrics
from labctl.doctor.finding import REGISTRY, Check, Context, Finding, Report, run_checks
from labctl.errors import ConfigError

VLLM = DeploymentSpec(name="chat", engine="vllm", model="Qwen/Qwen3-8B", gpus=(0,))
ON_GPU1 = DeploymentSpec(name="other", engine="vllm", model="Qwen/Qwen3-8B", gpus=(1,))
TWIN = DeploymentSpec(name="twin", engine="sim", model="Qwen/Qwen3-0.6B")
CPP = DeploymentSpec(name="small", engine="llamacpp", model="/m/small.gguf")


NVML, AUTO, SIM = LabConfig(gpu_backend="nvml"), LabConfig(), LabConfig(gpu_backend="sim")


def fail(code: str, place: str) -> Finding:
    return Finding(code, "fail", place, f"{code} went wrong", "evidence", f"fix {code}")


def codes(found: list[Finding]) -> list[str]:
    return [f.code for f in found]


def test_a_failure_naming_a_deployment_blocks_that_deployment_only() -> None:
    found = [
        fail("engine-missing", "lab: deployment chat"),
        fail("engine-missing", "lab: deployment twin"),
    ]
    assert blocking(found, VLLM, NVML) == [found[0]]
    assert blocking(found, TWIN, SIM) == [found[1]]  # whatever its engine and GPUs
    assert blocking(found, CPP, NVML) == []


def test_gpu_and_driver_failures_block_engines_that_need_a_real_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(REGISTRY, "driver-missing", Check("driver-missing", "gpu", "t", "e", list))
    driver = fail("driver-missing", "host")  # a check whose place is gpu, its finding the host's
    gpu1 = fail("pending-retirement", "gpu 1")
    container = fail("container-no-gpus", "container")
    found = [driver, gpu1, container]
    assert codes(blocking(found, VLLM, NVML)) == ["driver-missing", "container-no-gpus"]
    assert codes(blocking(found, ON_GPU1, NVML)) == codes(found)
    assert codes(blocking(found, VLLM, AUTO)) == ["driver-missing", "container-no-gpus"]
    assert blocking(found, CPP, NVML) != [] and blocking(found, CPP, AUTO) == []
    assert blocking(found, TWIN, NVML) == [] and blocking(found, VLLM, SIM) == []


def test_warnings_and_failures_of_the_lab_as_a_whole_block_nothing() -> None:
    found = [
        Finding("container-no-gpus", "warn", "container", "m", "e", "r"),
        fail("listen-exposed", "lab"),
        fail("memlock-limit", "host"),
    ]
    assert blocking(found, VLLM, NVML) == []


def test_the_refusal_says_each_failure_and_its_remedy() -> None:
    text = refusal([fail("container-no-gpus", "container"), fail("engine-missing", "lab")])
    assert text == (
        "container-no-gpus went wrong [container-no-gpus]; fix: fix container-no-gpus; "
        "engine-missing went wrong [engine-missing]; fix: fix engine-missing; if the doctor is "
        "wrong about this machine, lab.doctor_ignore = ['container-no-gpus'] in lab.toml lets "
        "deploys go ahead"
    )
    assert "doctor_ignore" not in refusal([fail("engine-missing", "lab: deployment chat")])
    assert refusal([]) == ""


def test_failures_lab_toml_ignores_block_nothing_and_the_refusal_names_the_setting() -> None:
    """A doctor wrong about a machine must not make the lab useless on it: lab.doctor_ignore
    lets deploys go ahead past the codes it names (they are still reported)."""
    found = [fail("container-no-gpus", "container"), fail("engine-missing", "lab: deployment chat")]
    ignoring = LabConfig(gpu_backend="nvml", doctor_ignore=("container-no-gpus",))
    assert codes(blocking(found, VLLM, ignoring)) == ["engine-missing"]
    assert refusal(found[:1]).endswith(
        "; if the doctor is wrong about this machine, lab.doctor_ignore = ['container-no-gpus'] "
        "in lab.toml lets deploys go ahead"
    )


def test_lab_doctor_ignore_takes_known_check_codes_only() -> None:
    with pytest.raises(ConfigError, match=r"^lab.doctor_ignore\[0\] = 'no-such-check': not a "
                                          r"check of the doctor; use one of .*container-no-gpus"):  # fmt: skip
        LabDoctor(LabConfig(doctor_ignore=("no-such-check",)))


def test_the_testing_hooks_point_the_doctor_at_a_fixture_host(tmp_path: Path) -> None:
    view = host_view({"LABCTL_DOCTOR_ROOT": str(tmp_path), "LABCTL_DOCTOR_PATH": "/nowhere"})
    assert (view.root, view.path, view.nvml) == (tmp_path, "/nowhere", None)
    assert host_view({}).root == Path("/")


def _fixture(tmp_path: Path) -> Path:
    """A container without GPU device nodes."""
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / ".dockerenv").touch()
    return root


def test_a_refusal_is_confirmed_on_the_machine_as_it_is_now(tmp_path: Path) -> None:
    root = _fixture(tmp_path)
    (tmp_path / "model").mkdir()  # a local model and an engine that answers: only the GPU lacks
    chat = DeploymentSpec(name="chat", engine="vllm", model=str(tmp_path / "model"),
                          binary="/bin/true")  # fmt: skip
    lab = LabConfig(gpu_backend="auto", deployments=(chat, TWIN))
    seen: list[Report] = []
    doctor = LabDoctor(lab, [seen.append],
                       host=lambda: host_view({"LABCTL_DOCTOR_ROOT": str(root),
                                               "LABCTL_DOCTOR_PATH": str(tmp_path)}))  # fmt: skip

    async def main() -> tuple[str, str, str, str]:
        first = await doctor.refusal(chat)  # waits for the first run
        twin = await doctor.refusal(TWIN)
        (root / "dev/nvidia0").touch()  # the container got its GPU: the report is stale now
        fixed = await doctor.refusal(chat)
        await doctor.run()
        return first, twin, fixed, await doctor.refusal(chat)

    first, twin, fixed, after = asyncio.run(main())
    assert "this container was started without GPUs: chat cannot start" in first
    assert "[container-no-gpus]; fix: start the container with `--gpus all`" in first
    assert twin == ""  # a twin needs no GPU
    # the GPU is there now: no longer refused for it (the driver checks judge the rest)
    assert "[container-no-gpus]" not in fixed and "[container-no-gpus]" not in after
    assert len(seen) == 2  # the confirmation runs do not replace the report
    assert [f.severity for f in seen[0].findings if f.code == "container-no-gpus"] == ["fail"]
    assert [f.severity for f in seen[1].findings if f.code == "container-no-gpus"] == ["ok"]


def test_an_ignored_checks_failure_is_a_warning_that_says_so_and_refuses_nothing(
    tmp_path: Path,
) -> None:
    """lab.doctor_ignore turns a check's failures into warnings in the report itself, so the
    deploy goes ahead, LabDoctorFail stays quiet and `labctl doctor` exits 0."""
    root = _fixture(tmp_path)
    (tmp_path / "model").mkdir()
    chat = DeploymentSpec(name="chat", engine="vllm", model=str(tmp_path / "model"),
                          binary="/bin/true")  # fmt: skip
    lab = LabConfig(gpu_backend="auto", deployments=(chat,), doctor_ignore=("container-no-gpus",))
    view = lambda: host_view({"LABCTL_DOCTOR_ROOT": str(root), "LABCTL_DOCTOR_PATH": str(tmp_path)})  # noqa: E731
    doctor = LabDoctor(lab, host=view)

    async def main() -> tuple[Report, str]:
        return await doctor.run(), await doctor.refusal(chat)

    report, refused = asyncio.run(main())
    (f,) = [f for f in report.findings if f.code == "container-no-gpus"]
    assert f.severity == "warn"
    assert f.message.startswith("ignored by lab.doctor_ignore: this container was started without")
    assert "[container-no-gpus]" not in refused
    with pytest.raises(ConfigError, match=r"^lab.doctor_ignore\[0\] = 'nope': not a check"):
        run_checks(Context(view(), LabConfig(doctor_ignore=("nope",))))


def test_runs_at_once_are_one_run(tmp_path: Path) -> None:
    root = _fixture(tmp_path)
    views: list[int] = []

    def host() -> object:
        views.append(1)
        return host_view({"LABCTL_DOCTOR_ROOT": str(root), "LABCTL_DOCTOR_PATH": str(tmp_path)})

    doctor = LabDoctor(LabConfig(), host=host)  # type: ignore[arg-type]

    async def main() -> list[Report]:
        return list(await asyncio.gather(doctor.run(), doctor.run(), doctor.latest()))

    a, b, c = asyncio.run(main())
    assert a is b is c is doctor.report and views == [1]
    page = doctor.page()
    assert page is not None and page["counts"]["ok"] == sum(
        1 for f in a.findings if f.severity == "ok"
    )
    assert all(f["severity"] != "ok" for f in page["findings"])


def test_the_metric_counts_each_checks_findings_by_severity() -> None:
    m = DaemonMetrics()
    f = Finding("image-cuda-too-new", "warn", "container", "m", "e", "r")
    m.on_doctor(Report((f, f, fail("container-no-gpus", "container")), (), 0.1))

    def value(code: str, severity: str) -> float | None:
        return m.registry.get_sample_value(
            "labctl_doctor_findings", {"code": code, "severity": severity}
        )

    assert value("image-cuda-too-new", "warn") == 2 and value("image-cuda-too-new", "fail") == 0
    assert value("container-no-gpus", "fail") == 1 and value("container-no-gpus", "ok") == 0
    m.on_doctor(Report((Finding("container-no-gpus", "ok", "container", "m", "e"),), (), 0.1))
    assert value("container-no-gpus", "fail") == 0 and value("container-no-gpus", "ok") == 1
    assert value("image-cuda-too-new", "warn") is None  # skipped now: its series are gone
