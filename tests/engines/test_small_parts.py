"""Pure and file-level parts: cgroup readers, image source, runner directory, vLLM, exports."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import MappingProxyType

import modelrunner.engines as engines
import pytest
from modelrunner.engines import (
    BackendNotInstalled,
    EngineImageSource,
    InvalidRuntimeFlags,
    MemoryEstimate,
    Mode,
    ModelSpec,
    RunnerConfig,
    llamacpp_image_source,
)
from modelrunner.engines.cgroup import (
    CgroupMemory,
    parse_memory_stat,
    parse_proc_status_kib,
    read_cgroup_memory,
)
from modelrunner.engines.fleet import config_digest, prepare_runner_dir
from modelrunner.engines.runner import LogFollower
from modelrunner.engines.vllm import build_vllm_argv, estimate_vllm, resolve_vllm_launch

V1_STAT = "cache 4096\nrss 8192\nmapped_file 1024\ntotal_rss 16384\ntotal_mapped_file 2048\nbogus line here\n"
STATUS = "Name:\tllama-server\nVmHWM:\t   19640 kB\nVmRSS:\t   17248 kB\nThreads:\t7\n"


def test_parse_memory_stat_and_proc_status() -> None:
    stats = parse_memory_stat(V1_STAT)
    assert stats["total_rss"] == 16384 and "bogus" not in stats
    assert parse_proc_status_kib(STATUS, "VmRSS") == 17248 * 1024
    assert parse_proc_status_kib(STATUS, "VmHWM") == 19640 * 1024
    assert parse_proc_status_kib(STATUS, "VmSwap") is None


def test_read_cgroup_memory_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "memory" / "ns" / "r1"
    v1.mkdir(parents=True)
    (v1 / "memory.usage_in_bytes").write_text("1000\n")
    (v1 / "memory.max_usage_in_bytes").write_text("3000\n")
    (v1 / "memory.stat").write_text(V1_STAT)
    got = read_cgroup_memory("/ns/r1", root=tmp_path)
    assert got == CgroupMemory(usage=1000, peak=3000, anon=16384, mapped_file=2048)
    v2 = tmp_path / "ns" / "r2"
    v2.mkdir(parents=True)
    (v2 / "memory.current").write_text("500\n")
    (v2 / "memory.stat").write_text("anon 100\nfile_mapped 50\n")
    got = read_cgroup_memory("/ns/r2", root=tmp_path)
    assert (got.usage, got.peak, got.anon, got.mapped_file) == (500, None, 100, 50)
    assert read_cgroup_memory("/ns/gone", root=tmp_path).in_use is None


def test_write_memory_limit_orders_v1_writes(tmp_path: Path) -> None:
    from modelrunner.engines.cgroup import write_memory_limit

    v1 = tmp_path / "memory" / "ns" / "r1"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("1000")
    (v1 / "memory.memsw.limit_in_bytes").write_text("1000")
    write_memory_limit("/ns/r1", 500, root=tmp_path)
    assert (v1 / "memory.limit_in_bytes").read_text() == "500"
    assert (v1 / "memory.memsw.limit_in_bytes").read_text() == "500"
    with pytest.raises(FileNotFoundError):
        write_memory_limit("/ns/gone", 500, root=tmp_path)


def test_in_use_takes_the_larger_of_cgroup_and_rss() -> None:
    assert CgroupMemory(10, 20, None, None, rss=15, rss_peak=30).in_use == 15
    assert CgroupMemory(10, 20, None, None, rss=15, rss_peak=30).in_use_peak == 30
    assert CgroupMemory(10, None, None, None).in_use == 10


def test_read_own_process_rss() -> None:
    got = read_cgroup_memory("/definitely/not/there", pid=os.getpid())
    assert got.rss is not None and got.rss > 1 << 20


def test_image_source_from_the_environment(tmp_path: Path) -> None:
    assert llamacpp_image_source({"MODELRUNNER_LLAMACPP_IMAGE": " reg.example/llama:1 "}, tmp_path) == \
        EngineImageSource(ref="reg.example/llama:1")
    tar = tmp_path / "llama.cpp-b11312-cpu.oci.tar"
    assert llamacpp_image_source({"MODELRUNNER_LLAMACPP_IMAGE_TAR": str(tar)}, tmp_path) == \
        EngineImageSource(ref="docker.io/modelrunner/llama.cpp:b11312-cpu", tarball=tar)
    assert llamacpp_image_source({}, tmp_path) is None
    cached = tmp_path / "engines" / "llama.cpp" / "b11400-cuda-abc" / "llama.cpp-b11400-cuda.oci.tar"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert llamacpp_image_source({}, tmp_path) == EngineImageSource(
        ref="docker.io/modelrunner/llama.cpp:b11400-cuda", tarball=cached
    )


def test_prepare_runner_dir_removes_a_stale_socket(tmp_path: Path) -> None:
    from modelrunner.sandbox import SandboxRequest

    runner_dir = tmp_path / "runners" / "r1"
    engine_dir = runner_dir / "engine"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    engine_dir.mkdir(parents=True)
    stale = engine_dir / "engine.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))  # what a dead llama-server leaves behind
    sock.close()
    request = SandboxRequest(args=("x",), bundle_dir=str(bundle), engine_dir=str(engine_dir),
                             memory_limit_bytes=64 << 20, cgroups_path="/test/r1")
    prepare_runner_dir(request, stale, runner_dir / "engine.log")
    assert not stale.exists()
    assert (engine_dir.stat().st_uid, engine_dir.stat().st_gid) == (65532, 65532)
    assert (runner_dir / "engine.log").is_file()


def test_log_follower_hands_lines_over_until_the_start_up_is_done(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    seen: list[str] = []
    follower = LogFollower(log, max_bytes=1 << 20, on_line=seen.append)
    follower.poll()  # no file yet
    log.write_text("load_tensors: CPU_Mapped model buffer size = 1.00 MiB\nhalf a li")
    follower.poll()
    assert seen == ["load_tensors: CPU_Mapped model buffer size = 1.00 MiB"]
    follower.end_line_handling()
    with log.open("a") as f:
        f.write("ne\nslot release: id 0\n")
    follower.poll()
    assert seen == ["load_tensors: CPU_Mapped model buffer size = 1.00 MiB"]
    assert follower.tail.lines()[-2:] == ["half a line", "slot release: id 0"]


def test_config_digest_changes_with_argv_and_image() -> None:
    base = config_digest(["a", "b"], "sha256:1")
    assert base.startswith("sha256:") and len(base) == 71
    assert base != config_digest(["a", "c"], "sha256:1") != config_digest(["a", "b"], "sha256:2")


def safetensors_model(tmp_path: Path, config: dict[str, object] | None = None) -> ModelSpec:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    return ModelSpec(id="sha256:" + "a" * 64, name="ai/qwen:st", bundle_dir=tmp_path, format="safetensors",
                     config=MappingProxyType(config or {}))


def test_vllm_argv(tmp_path: Path) -> None:
    model = safetensors_model(tmp_path, {"context_size": 8192})
    launch = resolve_vllm_launch(model, Mode.COMPLETION, RunnerConfig(runtime_flags=("--enforce-eager",)),
                                 chat_template="template.jinja")
    assert build_vllm_argv(launch) == [
        "vllm", "serve", "/models", "--uds", "/run/engine/engine.sock",
        "--chat-template", "/models/template.jinja",
        "--max-model-len", "8192",
        "--enforce-eager",
        "--gpu-memory-utilization", "0.9",
        "--served-model-name", "ai/qwen:st", "sha256:" + "a" * 64,
    ]  # fmt: skip
    embedding = resolve_vllm_launch(model, Mode.EMBEDDING, RunnerConfig(context_size=512),
                                    hf_overrides={"max_model_len": 512}, gpu_memory_utilization=0.5)
    argv = build_vllm_argv(embedding)
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert argv[argv.index("--max-model-len") + 1] == "512"
    assert argv[argv.index("--hf-overrides") + 1] == '{"max_model_len":512}'
    assert "--chat-template" not in argv


def test_vllm_refuses_bad_settings(tmp_path: Path) -> None:
    model = safetensors_model(tmp_path)
    with pytest.raises(InvalidRuntimeFlags, match="not allowed for backend 'vllm'"):
        resolve_vllm_launch(model, Mode.COMPLETION, RunnerConfig(runtime_flags=("--threads", "2")))
    with pytest.raises(InvalidRuntimeFlags, match="gpu-memory-utilization"):
        resolve_vllm_launch(model, Mode.COMPLETION, RunnerConfig(), gpu_memory_utilization=1.5)


def test_vllm_estimate_takes_its_share_of_every_gpu(tmp_path: Path) -> None:
    launch = resolve_vllm_launch(safetensors_model(tmp_path), Mode.COMPLETION, RunnerConfig(),
                                 gpu_memory_utilization=0.5)
    estimate = estimate_vllm(launch, {"cuda:0": 80 << 30, "cuda:1": 40 << 30}, weights_bytes=1 << 30)
    assert dict(estimate.vram) == {"cuda:0": 40 << 30, "cuda:1": 20 << 30}
    assert estimate.ram > 1 << 30


async def test_vllm_backend_without_a_gpu_says_so_and_refuses(tmp_path: Path) -> None:
    from modelrunner.engines import EngineEnvironment, open_vllm_backend
    from modelrunner.engines.registry import BackendRegistry

    environment = EngineEnvironment(containerd=None, state_dir=tmp_path, llamacpp_image=None,  # type: ignore[arg-type]
                                    vllm_image=EngineImageSource(ref="docker.io/vllm/vllm-openai:v0"))
    async with open_vllm_backend(environment) as vllm:
        assert vllm.status() == "Not Installed: requires an NVIDIA GPU"
        assert not vllm.host_supported
        with pytest.raises(BackendNotInstalled, match="requires an NVIDIA GPU"):
            await vllm.install()
        with pytest.raises(BackendNotInstalled, match="requires an NVIDIA GPU"):
            await vllm.start_runner(safetensors_model(tmp_path), Mode.COMPLETION, RunnerConfig(),
                                    MemoryEstimate(ram=1))
        # Format selection skips a backend that cannot run here and keeps the default.

        class Default:
            name = "llama.cpp"

        registry = BackendRegistry([Default(), vllm])  # type: ignore[list-item]
        assert registry.select_for_format("safetensors").name == "llama.cpp"


def test_exports_are_in_step() -> None:
    for name in engines.__all__:
        assert hasattr(engines, name), name
    public = {n for n in vars(engines) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(engines, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(engines.__all__)
