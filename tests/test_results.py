"""results: the A/B data model and its JSON round trip; load_result's one-line errors; metadata."""

import json
from types import SimpleNamespace

import pytest

from impbench.errors import InputError
from impbench.metadata import NA, collect_metadata, gpu_info
from impbench.results import (
    CAPTURED,
    EAGER,
    FELL_BACK,
    ONE_CHUNK,
    ABResult,
    ABRow,
    ArmResult,
    CaptureInfo,
    Rep,
    load_result,
)
from impbench.telemetry import Reading, RepTelemetry, flag_reps

METADATA = {"impbench_version": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False,
            "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_driver": "580.65", "cuda_driver_version": "13.0",
            "cupy_version": "14.2.0", "cpu_model": "Intel Xeon", "cpu_count_usable": 16,
            "time_utc": "2026-11-24T22:00:00+00:00"}  # fmt: skip


def make_arm(name, tok_s, spec=None, sm_mhz=None, capture=None, pp=1024):
    """An arm with one rep per tok/s value; sm_mhz (one per rep) adds telemetry readings."""
    spec = spec or {"mode": "eager", "guard": "cublas", "chunk": None}
    reps = []
    for i, value in enumerate(tok_s):
        readings = []
        if sm_mhz is not None:
            readings = [Reading(0.0, sm_mhz[i], 2619, 60, 400.0, 0), Reading(20.0, sm_mhz[i], 2619, 61, 410.0, 0)]
        telemetry = RepTelemetry(readings, None if sm_mhz else "no NVML telemetry: test")
        reps.append(Rep(value, 1000.0 * pp / value, 1400, 0, 7.1, telemetry))
    return ArmResult(
        name=name,
        spec=spec,
        reps=reps,
        cold=Rep(tok_s[0] / 3, 3000.0 * pp / tok_s[0]),
        chunk_size=512,
        capture=capture or CaptureInfo(EAGER),
        gemm_paths={"cublas": 144} if spec["mode"] == "eager" else {"mma": 96, "mma_small_n": 48},
    )


GRAPH = {"mode": "graph", "guard": "tight", "chunk": None}


def make_row(model="qwen3-coder", pp=1024, a=None, b=None, sm_mhz=None):
    a = a or [10_000.0 + 10 * i for i in range(10)]
    b = b or [11_000.0 + 10 * i for i in range(10)]
    row = ABRow(
        model,
        pp,
        make_arm("A", a, sm_mhz=sm_mhz, pp=pp),
        make_arm("B", b, spec=GRAPH, sm_mhz=sm_mhz, capture=CaptureInfo(CAPTURED, kernels=700), pp=pp),
    )
    flags = flag_reps([rep.telemetry for rep in row.a.reps + row.b.reps])
    for rep, flag in zip(row.a.reps + row.b.reps, flags, strict=True):
        rep.flag_reason = flag
    return row


def make_result(rows=None, metadata=None):
    rows = rows if rows is not None else [make_row(pp=512), make_row(pp=1024, sm_mhz=[1980] * 10)]
    return ABResult(rows, dict(metadata or METADATA), {"reps": 10, "warmup": 2, "tolerance_pct": 5.0})


def test_json_round_trip_keeps_every_raw_value():
    result = make_result()
    text = result.to_json()
    back = ABResult.from_dict(json.loads(text))
    assert back == result
    assert back.to_json() == text


def test_json_holds_derived_numbers_for_readers():
    data = json.loads(make_result().to_json())
    row = data["rows"][0]
    assert data["format"] == "impbench.ab" and data["metadata"]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert row["derived"]["comparison"]["verdict"] == "FASTER"
    assert row["a"]["derived"]["summary"]["n"] == 10
    assert row["b"]["reps"][0]["telemetry"]["readings"]["t_ms"] == []
    assert data["rows"][1]["b"]["reps"][0]["telemetry"]["readings"]["sm_mhz"] == [1980, 1980]


def test_arm_derived_numbers():
    arm = make_arm("A", [100.0, 120.0, 110.0], sm_mhz=[1980, 1500, 1970])
    assert arm.summary().median_tok_s == 110.0
    assert arm.sm_mhz_min == 1500 and arm.sm_mhz_median == 1970
    assert arm.temp_c_max == 61 and arm.host_us_per_launch == 7.1
    assert arm.throttle_reasons == []
    assert arm.label == "eager/cublas"
    assert ArmResult("B", {"mode": "graph", "guard": "small-n", "chunk": 256}).label == "graph/small-n/chunk=256"
    no_telemetry = make_arm("A", [100.0, 120.0, 110.0])
    assert no_telemetry.sm_mhz_min is None and no_telemetry.throttle_reasons is None


def test_verdict_without_flagged_reps():
    clean = make_row(sm_mhz=[1980] * 10)
    assert clean.flagged_count == 0 and clean.verdict_without_flagged() is None
    # 14 of 20 pairs ran under throttling that slowed A and sped B; the 6 clean pairs show no difference.
    flagged = [i % 10 < 7 for i in range(20)]
    a = [(9_000.0 if f else 10_000.0) + i for i, f in enumerate(flagged)]
    b = [(11_000.0 if f else 10_000.0) + i for i, f in enumerate(flagged)]
    row = make_row(a=a, b=b)
    for arm in (row.a, row.b):
        for rep, f in zip(arm.reps, flagged, strict=True):
            rep.flag_reason = "throttled: sw_thermal" if f else None
    assert row.flagged_count == 28 and row.comparison().paired
    assert row.comparison().verdict == "FASTER"
    assert row.verdict_without_flagged() == "SAME"
    assert row.comparison_without_flagged().a.n == 6
    # paired: a pair goes when either of its reps is flagged
    row.b.reps[19].flag_reason = "throttled: hw_slowdown"
    assert row.comparison_without_flagged().a.n == 5


def test_capture_info_from_engine_status():
    captured = SimpleNamespace(captured=True, failed_op=None, error=None, kernels=714)
    failed = SimpleNamespace(captured=False, failed_op="qkv_proj", error="NotImplementedError: cuBLAS", kernels=0)
    assert CaptureInfo.from_engine("eager", captured) == CaptureInfo(EAGER)
    assert CaptureInfo.from_engine("graph", None).status == ONE_CHUNK
    assert CaptureInfo.from_engine("graph", captured).label() == "captured (714 kernels)"
    info = CaptureInfo.from_engine("graph", failed)
    assert info.status == FELL_BACK and info.label() == "fell back at qkv_proj: NotImplementedError: cuBLAS"
    assert CaptureInfo.from_dict(info.to_dict()) == info


def test_rep_from_sample():
    sample = SimpleNamespace(to_dict=lambda: {"tok_s": 20_000.0, "wall_ms": 51.2, "python_launches": 1400,
                                              "graph_replays": 1, "host_us_per_launch": 6.9})  # fmt: skip
    rep = Rep.from_sample(sample)
    assert rep.tok_s == 20_000.0 and rep.telemetry == RepTelemetry() and not rep.flagged


def _write(tmp_path, text, name="r.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such result file"),
        ("{not json", "not JSON"),
        ('{"format": "other"}', "not a valid impbench A/B result"),
        ('{"format": "impbench.ab", "schema_version": 99}', "schema_version 99"),
        ('{"format": "impbench.ab", "schema_version": 1, "rows": [{"model": "m"}]}', "missing key 'pp'"),
        ('[1, 2]', "not a valid impbench A/B result"),
    ],
)
def test_load_result_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "missing.json" if text is None else _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_result(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_collect_metadata_on_this_machine():
    metadata = collect_metadata(["impbench", "ab", "--model", "qwen3-coder"])
    assert metadata["command_line"] == "impbench ab --model qwen3-coder"
    assert metadata["impbench_version"] and metadata["time_utc"].endswith("+00:00")
    assert metadata["cpu_count"] >= 1 and metadata["python_version"].count(".") == 2
    assert all(value is not None for value in metadata.values())
    json.dumps(metadata, allow_nan=False)  # every value serialises


def test_gpu_info_without_nvml_is_n_a_and_with_nvml_reads_the_card():
    class Broken:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert set(gpu_info(nvml=Broken()).values()) == {NA}

    class Card:
        NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
        shutdowns = 0

        def nvmlInit(self):
            pass

        def nvmlShutdown(self):
            self.shutdowns += 1

        def nvmlDeviceGetHandleByIndex(self, index):
            return index

        nvmlDeviceGetName = staticmethod(lambda h: b"NVIDIA H100 80GB HBM3")
        nvmlDeviceGetPciInfo = staticmethod(lambda h: SimpleNamespace(busId="00000000:1A:00.0"))
        nvmlSystemGetDriverVersion = staticmethod(lambda: "580.65.06")
        nvmlSystemGetCudaDriverVersion = staticmethod(lambda: 13000)
        nvmlDeviceGetMemoryInfo = staticmethod(lambda h: SimpleNamespace(total=80 * 2**30))
        nvmlDeviceGetMaxClockInfo = staticmethod(lambda h, clock: 1980 if clock == 1 else 2619)

        def nvmlDeviceGetEnforcedPowerLimit(self, handle):
            raise RuntimeError("NotSupported")

    card = Card()
    info = gpu_info(nvml=card)
    assert info["gpu_name"] == "NVIDIA H100 80GB HBM3" and info["cuda_driver_version"] == "13.0"
    assert info["gpu_memory_mib"] == 80 * 1024 and info["gpu_max_sm_mhz"] == 1980
    assert info["gpu_power_limit_w"] == NA and card.shutdowns == 1
