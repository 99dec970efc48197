"""Usage arithmetic (llmfab/usage.py), the NVML energy path (llmfab/gpu_energy.py) and the local
prices: energy and cost from given prices, no cost without a price, counter deltas -> joules -> kWh.

Not tested here, for want of a GPU: NVML's own calls (``read_counters``, ``devices_of``) returning
real numbers, and the workload's report from a GPU pod. What runs here is the path without one:
every reader answers "nothing", and no energy is invented.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmfab import gpu_energy
from llmfab.api.common import UsageTotals
from llmfab.usage import JOULES_PER_KWH, Prices, add, local_prices, priced, run_totals, totals_of, usage_json

HOUR = 3600.0


def test_counter_deltas_become_joules_and_kwh() -> None:
    start, end = {0: 1_000_000, 1: 5_000_000}, {0: 1_000_000 + 1_800_000_000, 1: 5_000_000 + 1_800_000_000}
    joules = gpu_energy.energy_joules(start, end)
    assert joules == 3_600_000.0  # 2 x 1.8 MJ (the counters are millijoules)
    assert joules / JOULES_PER_KWH == 1.0
    assert gpu_energy.energy_joules(start, end, {1}) == 1_800_000.0  # only the devices the run held


@pytest.mark.parametrize("start,end,devices", [
    (None, {0: 5}, None),  # no NVML at the start
    ({0: 5}, None, None),  # ... or at the end
    ({0: 10}, {0: 5}, None),  # the counter went back: the driver reloaded
    ({0: 10}, {1: 20}, None),  # no device in both readings
    ({0: 10}, {0: 20}, {1}),  # a device held but not read
])
def test_an_unknown_energy_is_none_never_zero_or_negative(start: Any, end: Any, devices: Any) -> None:
    assert gpu_energy.energy_joules(start, end, devices) is None


def test_without_a_gpu_nvml_readers_answer_nothing() -> None:
    probe = "import pynvml, sys; pynvml.nvmlInit(); sys.exit(0 if pynvml.nvmlDeviceGetCount() else 1)"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU: the device check covers it")
    assert gpu_energy.read_counters() is None
    assert gpu_energy.devices_of(1) == set()


def test_a_pod_reports_no_energy_where_none_was_read() -> None:
    sent: list[dict[str, Any]] = []
    with gpu_energy.report_pod_energy(sent.append, {"POD_NAME": "p-0", "LLMFAB_STATUS": "kubernetes"}):
        pass
    assert sent == []  # no GPU here: nothing, not 0 J


def test_descends_from_follows_parents_through_proc() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert gpu_energy.descends_from(child.pid, os.getpid())
        assert gpu_energy.descends_from(child.pid, child.pid)
        assert not gpu_energy.descends_from(os.getpid(), child.pid)
    finally:
        child.kill()
        child.wait()


def test_energy_and_cost_from_given_prices() -> None:
    # 2 GPU hours, one of them measured at 0.5 kWh; the other estimated at 300 W; 10 CPU hours at 5 W.
    totals = add(run_totals(HOUR, 5 * HOUR, HOUR, 0.5 * JOULES_PER_KWH), run_totals(HOUR, 5 * HOUR, HOUR))
    prices = Prices(currency="EUR", price_per_gpu_hour=1.5, price_per_kwh=0.3, watts_per_gpu=300, watts_per_cpu=5)
    u = priced(totals, prices, "used")
    assert u.gpu_hours == 2.0 and u.attempts == 2 and u.measured_gpu_seconds == HOUR
    assert u.energy_kwh == pytest.approx(0.5 + 0.3 + 0.05)
    assert u.cost == pytest.approx(round(2 * 1.5 + 0.85 * 0.3, 4)) and u.currency == "EUR"
    assert u.cost_inputs is not None and u.cost_inputs.energy == "mixed" and u.cost_inputs.watts_per_gpu == 300


def test_measured_energy_needs_no_wattage_and_cpu_energy_counts_only_with_a_cpu_wattage() -> None:
    measured = priced(run_totals(60, 30, 120, 36_000.0), Prices(), "used")
    assert measured.energy_kwh == 0.01 and measured.cost is None and measured.cost_inputs is not None
    assert measured.cost_inputs.energy == "measured" and measured.cost_inputs.watts_per_gpu is None
    cpu_only = run_totals(60, 3600, 0.0)
    assert priced(cpu_only, Prices(), "used").energy_kwh == 0.0  # no GPU energy; the CPU's is not counted
    assert priced(cpu_only, Prices(watts_per_cpu=10), "used").energy_kwh == 0.01


def test_no_cost_without_a_price() -> None:
    totals = run_totals(HOUR, HOUR, 4 * HOUR)
    u = priced(totals, Prices(watts_per_gpu=250), "used")
    assert u.cost is None and u.currency is None and u.energy_kwh == 1.0
    assert "cost" not in usage_json(u) and "currency" not in usage_json(u)
    # A price per kWh with energy nobody measured or estimated: unknown, not the GPU part alone.
    assert priced(totals, Prices(currency="EUR", price_per_kwh=0.3, price_per_gpu_hour=1.0), "used").cost is None
    # Only a GPU-hour price: a CPU-only run costs 0 at that price.
    assert priced(run_totals(60, 60, 0.0), Prices(currency="EUR", price_per_gpu_hour=1.0), "used").cost == 0.0


def test_a_price_needs_its_currency() -> None:
    with pytest.raises(ValueError, match=r"cost.currency: a price needs its currency"):
        Prices(price_per_gpu_hour=1.0)


def test_stored_usage_reads_back_into_the_totals_it_was_written_from() -> None:
    totals = add(run_totals(10, 2, 0), run_totals(5, None, 0))
    assert totals.cpu_seconds == 2 and totals.attempts == 2
    stored = usage_json(priced(totals, Prices(), "used"))
    assert totals_of(stored) == totals and totals_of(None) == UsageTotals()


def test_local_prices_come_from_the_cost_file_and_the_environment(tmp_path: Path) -> None:
    assert local_prices(tmp_path, {}) == Prices()
    (tmp_path / "cost.yaml").write_text("currency: EUR\npricePerKwh: 0.3\nwattsPerGpu: 250\n")
    prices = local_prices(tmp_path, {"LLMFAB_COST_PRICE_PER_KWH": "0.25"})
    assert (prices.currency, prices.price_per_kwh, prices.watts_per_gpu) == ("EUR", 0.25, 250)
    with pytest.raises(ValueError, match="LLMFAB_COST_PRICE: unknown cost setting"):
        local_prices(tmp_path, {"LLMFAB_COST_PRICE": "1"})
    (tmp_path / "cost.yaml").write_text("pricePerGpuHour: 2\n")
    with pytest.raises(ValueError, match=r"cost.yaml.*currency"):
        local_prices(tmp_path, {})
    (tmp_path / "cost.yaml").write_text("currency: EUR\npricePerGpuHour: lots\n")
    with pytest.raises(ValueError, match=r"pricePerGpuHour"):
        local_prices(tmp_path, {})
