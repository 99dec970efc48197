"""Usage arithmetic shared by ``llmfab up`` and the operator: adding runs up, energy and cost.

Both measure differently (``llmfab up``: its child processes, ``llmfab/local/metering.py``; the
operator: the pods it sees, ``llmfab/operator/usage.py``) and then price the same totals here, so a
figure means the same wherever it was made:

- energy (kWh): the GPUs' energy NVML measured, plus ``wattsPerGpu`` x the GPU time it did not
  measure, plus ``wattsPerCpu`` x CPU time where that is configured (else the CPU's energy is not
  counted: a CPU-only run shows 0 kWh); unknown (absent) where some GPU time was neither measured
  nor has a wattage to estimate it;
- cost: ``pricePerGpuHour`` x GPU hours + ``pricePerKwh`` x kWh, only where a price is configured
  (never a price invented), in the configured currency; absent where a configured price's quantity
  is unknown (a price per kWh without energy).

The prices come from the chart's ``cost`` values on a cluster (``LLMFAB_OPERATOR_COST``) and from
``$LLMFAB_HOME/cost.yaml`` or ``LLMFAB_COST_*`` variables locally (:func:`local_prices`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from llmfab.api.common import CostInputs, Spec, Usage, UsageTotals

JOULES_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0
COST_FILE = "cost.yaml"
ENV_PREFIX = "LLMFAB_COST_"


class Prices(Spec):
    """What a GPU hour and a kWh cost, and what a GPU or CPU core draws where nothing measures it.

    The same keys as the chart's ``cost`` values and ``$LLMFAB_HOME/cost.yaml``. Every field may be
    left out; a price needs a currency."""

    currency: str | None = Field(default=None, min_length=1, max_length=8, description="e.g. EUR, USD.")
    price_per_gpu_hour: float | None = Field(default=None, ge=0, description="What one GPU hour costs.")
    price_per_kwh: float | None = Field(default=None, ge=0, description="What one kWh costs.")
    watts_per_gpu: float | None = Field(
        default=None, ge=0, description="Draw of one GPU, for GPU time NVML did not measure."
    )
    watts_per_cpu: float | None = Field(
        default=None, ge=0, description="Draw of one busy CPU core; unset: CPU energy is not estimated."
    )

    @field_validator("currency", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # the chart's default

    @model_validator(mode="after")
    def _price_needs_currency(self) -> Prices:
        if (self.price_per_gpu_hour is not None or self.price_per_kwh is not None) and not self.currency:
            raise ValueError("cost.currency: a price needs its currency (e.g. currency: EUR)")
        return self

    @property
    def priced(self) -> bool:
        return self.price_per_gpu_hour is not None or self.price_per_kwh is not None


def run_totals(wall_seconds: float, cpu_seconds: float | None, gpu_seconds: float,
               gpu_energy_joules: float | None = None, attempts: int = 1) -> UsageTotals:
    """One run's figures as totals. Energy, where given, was measured over all of its GPU time,
    which then counts in ``measuredGpuSeconds`` so that only the rest is estimated."""
    return UsageTotals(
        wall_seconds=wall_seconds, cpu_seconds=cpu_seconds, gpu_seconds=gpu_seconds,
        gpu_energy_joules=gpu_energy_joules,
        measured_gpu_seconds=gpu_seconds if gpu_energy_joules is not None else 0.0, attempts=attempts,
    )


def _add(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def add(*parts: UsageTotals) -> UsageTotals:
    """The sum of ``parts``; a figure absent from all of them stays absent."""
    out = UsageTotals()
    for p in parts:
        out = UsageTotals(
            wall_seconds=out.wall_seconds + p.wall_seconds,
            cpu_seconds=_add(out.cpu_seconds, p.cpu_seconds),
            gpu_seconds=out.gpu_seconds + p.gpu_seconds,
            gpu_energy_joules=_add(out.gpu_energy_joules, p.gpu_energy_joules),
            measured_gpu_seconds=out.measured_gpu_seconds + p.measured_gpu_seconds,
            attempts=out.attempts + p.attempts,
        )
    return out


def energy(totals: UsageTotals, prices: Prices) -> tuple[float | None, str | None]:
    """(kWh, how the GPU part was had) of ``totals``: see the module's docstring."""
    unmeasured = max(0.0, totals.gpu_seconds - totals.measured_gpu_seconds)
    measured_j = totals.gpu_energy_joules or 0.0
    if unmeasured > 1e-9 and prices.watts_per_gpu is None:
        return None, None
    gpu_j = measured_j + (prices.watts_per_gpu or 0.0) * unmeasured
    cpu_j = (prices.watts_per_cpu or 0.0) * (totals.cpu_seconds or 0.0)
    if totals.gpu_seconds <= 1e-9 and totals.gpu_energy_joules is None:
        how = None  # no GPU ran: 0 kWh of GPU energy, plus the CPU's where a wattage is configured
    elif unmeasured <= 1e-9:
        how = "measured"
    else:
        how = "estimated" if totals.gpu_energy_joules is None else "mixed"
    return (gpu_j + cpu_j) / JOULES_PER_KWH, how


def priced(totals: UsageTotals, prices: Prices, cpu: str | None) -> Usage:
    """The status ``usage`` of ``totals``: the totals, GPU hours, energy and, where a price is
    configured, cost, with the inputs named."""
    kwh, how = energy(totals, prices)
    gpu_hours = totals.gpu_seconds / SECONDS_PER_HOUR
    cost: float | None = None
    if prices.priced and not (prices.price_per_kwh is not None and kwh is None):
        cost = (prices.price_per_gpu_hour or 0.0) * gpu_hours + (prices.price_per_kwh or 0.0) * (kwh or 0.0)
    inputs = CostInputs(
        energy=how,
        watts_per_gpu=prices.watts_per_gpu if how in ("estimated", "mixed") else None,
        watts_per_cpu=prices.watts_per_cpu if kwh is not None else None,
        price_per_kwh=prices.price_per_kwh if cost is not None else None,
        price_per_gpu_hour=prices.price_per_gpu_hour if cost is not None else None,
    )
    named = inputs.model_dump(exclude_none=True)
    return Usage(
        **totals.model_dump(),
        cpu=cpu if totals.cpu_seconds is not None else None,
        gpu_hours=round(gpu_hours, 3),
        energy_kwh=None if kwh is None else round(kwh, 6),
        cost=None if cost is None else round(cost, 4),
        currency=prices.currency if cost is not None else None,
        cost_inputs=inputs if named else None,
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    """``usage`` as status carries it: camelCase, absent fields left out."""
    data: dict[str, Any] = usage.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not data.get("pods"):
        data.pop("pods", None)
    return data


def totals_of(usage: Mapping[str, Any] | None) -> UsageTotals:
    """The totals in a stored ``status.usage`` (``{}`` or absent: nothing yet)."""
    fields = UsageTotals.model_fields
    known = {k: v for k, v in (usage or {}).items() if k in {f.alias or n for n, f in fields.items()} | set(fields)}
    return UsageTotals.model_validate(known)


def local_prices(root: Path, environ: Mapping[str, str] | None = None) -> Prices:
    """``llmfab up``'s prices: ``<root>/cost.yaml`` (the chart's ``cost`` keys), each overridden
    by ``LLMFAB_COST_<KEY>`` (``LLMFAB_COST_PRICE_PER_GPU_HOUR=1.2``, ``LLMFAB_COST_CURRENCY=EUR``).
    A bad file or value is an error naming it."""
    env = os.environ if environ is None else environ
    path = root / COST_FILE
    values: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of cost keys (currency, pricePerGpuHour, ...)")
        values.update(loaded)
    names = {n.upper(): f.alias or n for n, f in Prices.model_fields.items()}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        field = key[len(ENV_PREFIX):]
        if field not in names:
            raise ValueError(f"{key}: unknown cost setting; known: " + ", ".join(ENV_PREFIX + n for n in names))
        values[names[field]] = value or None
    try:
        return Prices.model_validate(values)
    except ValidationError as e:
        where = f"{path} / {ENV_PREFIX}*" if path.exists() else f"{ENV_PREFIX}* variables"
        problems = "; ".join((f"{'.'.join(str(p) for p in err['loc'])}: " if err["loc"] else "")
                             + err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise ValueError(f"{where}: {problems}") from None
