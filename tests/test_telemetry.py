"""telemetry: reason decoding, the sampler (against a fake NVML), rep flags, and no-NVML safety."""

import itertools
import time

import pytest

from impbench.telemetry import (
    THROTTLE_REASONS,
    Reading,
    RepTelemetry,
    Telemetry,
    decode_reasons,
    flag_reps,
)


class NotSupported(Exception):
    pass


class FakeNVML:
    """The pynvml calls telemetry uses, answering from fixed series (cycled)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, sm=(1980,), mem=(2619,), temp=(55,), power_mw=(350_000,), reasons=(0,), event_name=True):
        self.series = {k: itertools.cycle(v) for k, v in
                       {"sm": sm, "mem": mem, "temp": temp, "power": power_mw, "reasons": reasons}.items()}  # fmt: skip
        self.inits = self.shutdowns = 0
        self.bus_ids = []
        if event_name:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._reasons
        else:  # a driver/binding with only the older name
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._reasons

    def _next(self, key):
        value = next(self.series[key])
        if value is None:
            raise NotSupported("not supported")
        return value

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("index", index)

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        self.bus_ids.append(bus_id)
        return ("bus", bus_id)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return self._next("sm" if clock == self.NVML_CLOCK_SM else "mem")

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return self._next("temp")

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._next("power")

    def _reasons(self, handle):
        return self._next("reasons")


class BrokenNVML:
    def nvmlInit(self):
        raise RuntimeError("NVML Shared Library Not Found")


def test_decode_reasons():
    assert decode_reasons(None) == [] and decode_reasons(0) == []
    assert decode_reasons(0x1) == ["gpu_idle"]
    assert decode_reasons(0x4 | 0x20 | 0x40) == ["sw_power_cap", "sw_thermal", "hw_thermal"]
    assert decode_reasons(0x8 | 0x800) == ["hw_slowdown", "bit_0x800"]
    assert "gpu_idle" not in THROTTLE_REASONS


def test_no_nvml_on_this_machine_means_n_a_and_no_crash():
    # pynvml is installed here but finds no driver; a broken module must behave the same.
    for nvml in (None, BrokenNVML()):
        with Telemetry(nvml=nvml) as telemetry:
            if nvml is None and telemetry.available:
                pytest.skip("this machine has a working NVML")
            assert not telemetry.available and telemetry.error.startswith("no NVML telemetry")
            assert telemetry.read() == Reading(0.0, None, None, None, None, None)
            with telemetry.sample() as sampler:
                pass
        rep = sampler.result
        assert rep.readings == [] and rep.error == telemetry.error
        assert all(value is None for value in rep.summary().values())
        assert flag_reps([rep, rep]) == [None, None]
        assert RepTelemetry.from_dict(rep.to_dict()) == rep


def test_sampler_reads_in_background_and_summarises():
    fake = FakeNVML(sm=(1980, 1965, 1500), mem=(2619,), temp=(60, 62), power_mw=(300_000, 500_000), reasons=(0x1, 0x4))
    with Telemetry(pci_bus_id="00000000:1A:00.0", interval_ms=2, nvml=fake) as telemetry:
        assert telemetry.available and fake.bus_ids == ["00000000:1A:00.0"]
        with telemetry.sample() as sampler:
            time.sleep(0.05)
    rep = sampler.result
    assert len(rep.readings) >= 5  # one at start, several by the thread, one at stop
    assert [r.t_ms for r in rep.readings] == sorted(r.t_ms for r in rep.readings)
    assert rep.sm_mhz_min == 1500 and rep.sm_mhz_median in (1965, 1980)
    assert rep.mem_mhz_min == 2619 and rep.mem_mhz_median == 2619
    assert rep.temp_c_max == 62
    assert rep.power_w_max == 500.0
    assert rep.reasons == ["gpu_idle", "sw_power_cap"] and rep.throttle_reasons == ["sw_power_cap"]
    assert fake.inits == fake.shutdowns == 1
    assert RepTelemetry.from_dict(rep.to_dict()) == rep


def test_unsupported_fields_are_none_and_old_reason_name_is_used():
    fake = FakeNVML(power_mw=(None,), reasons=(0x40,), event_name=False)
    telemetry = Telemetry(nvml=fake)
    reading = telemetry.read(3.0)
    assert reading == Reading(3.0, 1980, 2619, 55, None, 0x40)
    telemetry.close()
    telemetry.close()  # twice is harmless
    assert fake.shutdowns == 1


def _rep(sm_mhz, reasons=0):
    return RepTelemetry([Reading(float(i), mhz, 2619, 60, 400.0, reasons) for i, mhz in enumerate(sm_mhz)])


def test_flag_reps_by_clock_and_by_throttle():
    reps = [_rep([1980, 1980])] * 8 + [_rep([1500, 1500]), _rep([1980, 1980], reasons=0x20), _rep([1980], reasons=0x1)]
    flags = flag_reps(reps)
    assert flags[:8] == [None] * 8
    assert "SM clock median 1500 MHz" in flags[8] and "-24.2%" in flags[8]
    assert flags[9] == "throttled: sw_thermal"
    assert flags[10] is None  # gpu_idle is not throttling


def test_a_throttle_reason_most_reps_saw_is_the_steady_state_and_only_the_clock_flags():
    capped = 0x4  # sw_power_cap
    reps = [_rep([1935], reasons=capped)] * 6 + [_rep([1710], reasons=capped), _rep([1935]), _rep([1935], reasons=0x20)]
    flags = flag_reps(reps)
    assert flags[:6] == [None] * 6 and flags[7] is None
    assert flags[6].startswith("SM clock median 1710 MHz") and "throttled" not in flags[6]
    assert flags[8] == "throttled: sw_thermal"  # one rep's reason is still a disturbance
    # at exactly half it is not the steady state
    assert all(flag == "throttled: sw_power_cap" for flag in flag_reps([_rep([1980], reasons=capped), _rep([1980])])[:1])


def test_flag_tolerance_is_an_option():
    reps = [_rep([2000])] * 4 + [_rep([1920])]  # 4% below the run median
    assert flag_reps(reps)[-1] is None
    assert flag_reps(reps, tolerance_pct=3.0)[-1] is not None
    with pytest.raises(ValueError):
        flag_reps(reps, tolerance_pct=-1)


def test_flag_reps_ignores_reps_without_readings():
    assert flag_reps([RepTelemetry(), _rep([1980]), _rep([1980])]) == [None, None, None]
    assert flag_reps([]) == []


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        Telemetry(interval_ms=0, nvml=FakeNVML())
