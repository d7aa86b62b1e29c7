"""GPU clocks, power and energy over a measured region, through nvidia-ml-py; degrades to "no NVML".

``with NvmlMonitor() as mon: run_steps()`` then ``mon.summary(steps=n)`` gives energy per step (from the board's
energy counter when it has one, else the integral of sampled power), mean/max power, SM and memory clocks and the
maximum temperature. Without a GPU, a driver or the package, ``summary`` is ``{"nvml": "no NVML: <why>"}`` and
nothing raises.
"""

from __future__ import annotations

import statistics
import threading
import time

from inpo._optional import optional


def _open_handle(device_index: int | None):
    """(pynvml, handle) for the CUDA device torch uses, or raise with the reason NVML is unusable."""
    pynvml = optional("pynvml", warn=False)
    if pynvml is None:
        raise RuntimeError("nvidia-ml-py is not installed")
    pynvml.nvmlInit()  # raises NVMLError_LibraryNotFound / _DriverNotLoaded on machines without a GPU driver
    import torch

    if device_index is None:
        device_index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    handle = None
    if torch.cuda.is_available():
        # CUDA_VISIBLE_DEVICES renumbers devices for CUDA but not for NVML: match by PCI bus id when torch knows it.
        props = torch.cuda.get_device_properties(device_index)
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            busid = f"{getattr(props, 'pci_domain_id', 0):08x}:{bus:02x}:{getattr(props, 'pci_device_id', 0):02x}.0"
            try:
                handle = pynvml.nvmlDeviceGetHandleByPciBusId(busid.encode())
            except Exception:
                handle = None
    if handle is None:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
    return pynvml, handle


class NvmlMonitor:
    """Samples power and clocks in a background thread while the ``with`` block runs."""

    def __init__(self, device_index: int | None = None, interval_s: float = 0.05):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
        self.interval_s = interval_s
        self.device_index = device_index
        self.error: str | None = None
        self._pynvml = self._handle = None
        self._samples: list[tuple[float, float | None, int | None, int | None, int | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy0_mj = self._energy1_mj = None
        self._t0 = self._t1 = 0.0

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _energy_mj(self):
        try:
            return int(self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))  # mJ, Volta and newer
        except Exception:
            return None

    def _sample(self):
        p = self._pynvml
        vals = []
        for getter in (lambda: p.nvmlDeviceGetPowerUsage(self._handle) / 1000.0,  # mW -> W
                       lambda: p.nvmlDeviceGetClockInfo(self._handle, p.NVML_CLOCK_SM),
                       lambda: p.nvmlDeviceGetClockInfo(self._handle, p.NVML_CLOCK_MEM),
                       lambda: p.nvmlDeviceGetTemperature(self._handle, p.NVML_TEMPERATURE_GPU)):
            try:
                vals.append(getter())
            except Exception:
                vals.append(None)
        self._samples.append((time.perf_counter(), *vals))

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> NvmlMonitor:
        try:
            self._pynvml, self._handle = _open_handle(self.device_index)
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError, no CUDA device...
            self.error = f"{type(exc).__name__}: {exc}".strip(": ")
            self._handle = None
            return self
        self._samples.clear()
        self._energy0_mj = self._energy_mj()
        self._t0 = time.perf_counter()
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        self._t1 = time.perf_counter()
        self._energy1_mj = self._energy_mj()

    def summary(self, steps: int | None = None) -> dict:
        """Energy (J, total and per step), power (W), clocks (MHz) and temperature (°C) over the block."""
        if self._handle is None:
            return {"nvml": f"no NVML: {self.error or 'monitor not entered'}"}
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        out: dict = {"nvml": "ok", "nvml_samples": len(self._samples), "wall_s": self._t1 - self._t0}
        power = [s[1] for s in self._samples if s[1] is not None]
        sm = [s[2] for s in self._samples if s[2] is not None]
        mem = [s[3] for s in self._samples if s[3] is not None]
        temp = [s[4] for s in self._samples if s[4] is not None]
        if self._energy0_mj is not None and self._energy1_mj is not None:
            energy, source = (self._energy1_mj - self._energy0_mj) / 1000.0, "counter"
        elif len(power) >= 2:  # trapezoid integral of sampled power over time
            pts = [(s[0], s[1]) for s in self._samples if s[1] is not None]
            energy = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))
            source = "sampled-power"
        else:
            energy, source = None, None
        out.update(energy_j=energy, energy_source=source,
                   energy_per_step_j=(energy / steps if energy is not None and steps else None),
                   power_w_mean=statistics.fmean(power) if power else None, power_w_max=max(power) if power else None,
                   sm_clock_mhz_median=statistics.median(sm) if sm else None, sm_clock_mhz_min=min(sm) if sm else None,
                   mem_clock_mhz_median=statistics.median(mem) if mem else None,
                   temp_c_max=max(temp) if temp else None)
        try:
            p = self._pynvml
            out["sm_clock_mhz_max_supported"] = p.nvmlDeviceGetMaxClockInfo(self._handle, p.NVML_CLOCK_SM)
            out["power_limit_w"] = p.nvmlDeviceGetEnforcedPowerLimit(self._handle) / 1000.0
        except Exception:
            pass
        return out
