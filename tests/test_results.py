"""results: the one result schema and its JSON round trip (and the schema-1 files it still reads);
load_result's one-line errors; metadata."""

import gzip
import json
from types import SimpleNamespace

import pytest
from fakes import GRAPH, METADATA, make_arm, make_result, make_row

from impbench.arms import ArmSpec
from impbench.capture import CAPTURED, EAGER, FELL_BACK, ONE_CHUNK, CaptureStatus
from impbench.errors import InputError
from impbench.metadata import NA, collect_metadata, gpu_info
from impbench.results import ArmResult, Rep, Result, load_result


def test_json_round_trip_keeps_every_raw_value():
    result = make_result()
    text = result.to_json()
    back = Result.from_dict(json.loads(text))
    assert back == result
    assert back.to_json() == text


def test_json_holds_derived_numbers_for_readers():
    data = json.loads(make_result().to_json())
    row = data["rows"][0]
    assert data["format"] == "impbench.result" and data["schema_version"] == 2 and data["command"] == "ab"
    assert data["metadata"]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert row["derived"]["against_first_arm"][0]["comparison"]["verdict"] == "FASTER"
    assert row["arms"][0]["derived"]["summary"]["n"] == 10
    assert row["arms"][1]["reps"][0]["telemetry"]["readings"]["t_ms"] == []
    assert data["rows"][1]["arms"][1]["reps"][0]["telemetry"]["readings"]["sm_mhz"] == [1980, 1980]


def test_arm_derived_numbers():
    arm = make_arm("A", [100.0, 120.0, 110.0], sm_mhz=[1980, 1500, 1970])
    assert arm.summary().median_tok_s == 110.0
    assert arm.sm_mhz_min == 1500 and arm.sm_mhz_median == 1970
    assert arm.temp_c_max == 61 and arm.host_us_per_launch == 7.1
    assert arm.throttle_reasons == []
    assert arm.label == "eager/cublas"
    assert ArmResult("B", ArmSpec("graph", "small-n", 256)).label == "graph/small-n/chunk=256"
    no_telemetry = make_arm("A", [100.0, 120.0, 110.0])
    assert no_telemetry.sm_mhz_min is None and no_telemetry.throttle_reasons is None


def test_every_arm_after_the_first_is_compared_with_the_first():
    row = make_row()
    row.arms.append(make_arm("C", [10_000.0 + 10 * i for i in range(10)], spec=ArmSpec("graph", "permissive")))
    assert row.comparison(row.arms[0]) is None
    assert row.comparison(row.arms[1]).verdict == "FASTER"
    assert row.comparison(row.arms[2]).verdict == "SAME"


def test_verdict_without_flagged_reps():
    clean = make_row(sm_mhz=[1980] * 10)
    b = clean.arms[1]
    assert b.flagged_count == 0 and clean.verdict_without_flagged(b) is None
    # 14 of 20 pairs ran under throttling that slowed A and sped B; the 6 clean pairs show no difference.
    flagged = [i % 10 < 7 for i in range(20)]
    a = [(9_000.0 if f else 10_000.0) + i for i, f in enumerate(flagged)]
    b = [(11_000.0 if f else 10_000.0) + i for i, f in enumerate(flagged)]
    row = make_row(a=a, b=b)
    for arm in row.arms:
        for rep, f in zip(arm.reps, flagged, strict=True):
            rep.flag_reason = "throttled: sw_thermal" if f else None
    arm_b = row.arms[1]
    assert row.comparison(arm_b).paired and row.comparison(arm_b).verdict == "FASTER"
    assert row.verdict_without_flagged(arm_b) == "SAME"
    assert row.comparison_without_flagged(arm_b).a.n == 6
    # paired: a pair goes when either of its reps is flagged
    arm_b.reps[19].flag_reason = "throttled: hw_slowdown"
    assert row.comparison_without_flagged(arm_b).a.n == 5


def test_capture_status_has_one_wording():
    assert CaptureStatus().label() == EAGER
    assert CaptureStatus(ONE_CHUNK).label() == "one chunk: nothing to capture, ran eager"
    assert CaptureStatus(CAPTURED, kernels=714).label() == "captured (714 kernels)"
    failed = CaptureStatus(FELL_BACK, "qkv_proj", "NotImplementedError: cuBLAS")
    assert failed.label() == "fell back to eager at qkv_proj: NotImplementedError: cuBLAS"
    assert CaptureStatus.from_dict(failed.to_dict()) == failed
    with pytest.raises(ValueError):
        CaptureStatus("maybe")


@pytest.mark.parametrize("tok_s", [0.0, -5.0, float("nan"), float("inf")])
def test_a_rep_must_have_a_finite_positive_rate(tok_s):
    with pytest.raises(ValueError):
        Rep(tok_s, 10.0)


def _v1_ab():
    """A schema-1 `impbench ab` file as the committed results of earlier commits hold them."""
    result = make_result()
    rows = []
    for row in result.rows:
        a, b = (arm.to_dict() for arm in row.arms)
        rows.append({"model": row.model, "pp": row.pp, "paired": True, "a": a, "b": b})
    settings = {"reps": 10, "warmup": 2, "a": result.rows[0].arms[0].spec.to_dict(), "b": GRAPH.to_dict()}
    return {"format": "impbench.ab", "schema_version": 1, "metadata": METADATA, "settings": settings, "rows": rows}


def test_schema_1_files_are_read(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(_v1_ab()))
    result = load_result(path)
    assert result.command == "ab" and [row.pp for row in result.rows] == [512, 1024]
    assert [arm.label for arm in result.rows[0].arms] == ["eager/cublas", "graph/tight"]
    assert result.arm_specs == [ArmSpec("eager"), GRAPH]
    first = _v1_ab()["rows"][0]
    sweep = {"format": "impbench.sweep", "schema_version": 1, "metadata": METADATA, "settings": {},
             "rows": [{"model": "m", "pp": 64, "arms": [first["a"], first["b"]]}]}
    path.write_text(json.dumps(sweep))
    assert load_result(path).command == "sweep"


def test_a_gzip_compressed_result_is_read(tmp_path):
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress(make_result().to_json().encode()))
    assert load_result(path) == make_result()


def _write(tmp_path, text, name="r.json"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such result file"),
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a valid impbench result"),
        ('{"format": "impbench.result", "schema_version": 99}', "schema_version 99"),
        ('{"format": "impbench.ab", "schema_version": 1, "rows": [{"model": "m"}]}', "missing key 'a'"),
        ('[1, 2]', "not a valid impbench result"),
        (b"\x8b\xff\x00\x10garbage", "not a UTF-8 text"),
        (b"\x1f\x8b\x08\x00broken gzip", "not a UTF-8 text"),
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
    assert len(metadata["kernels_digest"]) == 16


def test_metadata_names_the_kernel_sources_and_the_settings_that_ran(tmp_path, monkeypatch):
    from impbench import resources
    from impbench.metadata import kernel_info

    for name in ("IMPBENCH_KERNELS_DIR", "IMPBENCH_PDL", "IMPBENCH_GEMM_VARIANTS", "IMPBENCH_GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    installed = kernel_info()
    assert installed["kernels_dir"] == "installed" and installed["impbench_env"] == "none"
    for source in resources.kernels_dir().glob("*.cu*"):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    monkeypatch.setenv("IMPBENCH_KERNELS_DIR", str(tmp_path))
    monkeypatch.setenv("IMPBENCH_PDL", "off")
    monkeypatch.setenv("IMPBENCH_GEMM_VARIANTS", " ")  # set but empty: not a setting
    copied = kernel_info()
    assert copied["kernels_digest"] == installed["kernels_digest"]  # the same sources, the same digest
    assert copied["kernels_dir"] == str(tmp_path)
    assert copied["impbench_env"] == f"IMPBENCH_KERNELS_DIR={tmp_path}; IMPBENCH_PDL=off"
    with (tmp_path / "gated_delta.cu").open("a") as f:
        f.write("// edited\n")
    assert kernel_info()["kernels_digest"] != installed["kernels_digest"]


def test_report_headers_say_when_the_run_was_not_the_commits_plain_code():
    from impbench.bench.report import BenchReport
    from impbench.metadata import source_note
    from impbench.report import metadata_line

    plain = {"git_commit": "a29829b", "kernels_digest": "0123abcd0123abcd", "kernels_dir": "installed",
             "impbench_env": "IMPBENCH_GIT_COMMIT=a29829b"}  # fmt: skip
    assert source_note(plain) == "" and "@ a29829b ·" in metadata_line(plain)
    other = {**plain, "kernels_dir": "/tmp/a b", "impbench_env": "IMPBENCH_KERNELS_DIR=/tmp/a b; IMPBENCH_PDL=off"}
    note = " (kernels 0123abcd0123abcd from /tmp/a b) (IMPBENCH_PDL=off)"
    assert source_note(other) == note and f"@ a29829b{note} ·" in metadata_line(other)
    report = BenchReport("gdn", [], [], [], other, {}, title="t.")
    assert report.format("md").splitlines()[0] == f"t. GPU: n/a; commit a29829b{note}"


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
