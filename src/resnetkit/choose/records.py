"""What a bench run is asked (:class:`BenchConfig`, :class:`Variant`) and what it returns (:class:`BenchRecord`),
with the one function that names a measured variant for people (:attr:`BenchRecord.label`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..core.measure import LoadSpan

REFERENCE = ("eager", "fp32")  # the reference column: plain PyTorch in fp32


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. ``quick`` trades stability for a fast rough pass."""

    batch_size: int = 16  # throughput batch
    threads: int | None = None  # intra-op threads of every runner (None: each backend's default, auto's choice)
    device: str = "auto"  # auto (the first CUDA GPU torch sees, else the CPU), cpu, cuda or cuda:N; resolved per process
    channels_last: bool = False
    end_to_end: bool = False
    warmup: int = 3  # untimed calls after building, per variant
    min_runs: int = 10  # latency runs before a variant may stop
    min_rounds: int = 3  # ... spread over at least this many rounds
    tolerance: float = 0.03  # stop when the 95 % CI of the median is within +-3 % of it
    max_runs: int = 200  # cap per variant
    max_seconds: float = 8.0  # cap per variant: timed batch-1 seconds (after at least min_rounds rounds)
    # ... and for the eager fp32 reference, 3-7x slower than the deployed variants: it only has to
    # settle a ratio of that size, and at 8 s it was most of the main job's timed calls. Beside a runtime in
    # the same process its median's 95 % CI was still +-7-15 % after 12 rounds (resnet50, resnet152,
    # shufflenet_v2 on a 2-core Zen 4), so it always ran to its cap: at 3 s, half the main job's timed calls
    reference_max_seconds: float = 1.5
    burst_seconds: float = 0.1  # timed calls per variant and round (at least one)
    # timed seconds of the whole run (batch-1 and throughput calls of every variant): where the caps would take
    # longer, each cap is cut by the same share (choose.adaptive.share_budget); None: no budget. It binds on slow
    # CPUs only: the eight default models took 14 s of timed calls on a Zen 5, 89 s uncut on a Zen 3 (2 cores)
    budget_seconds: float | None = 40.0
    throughput_runs: int = 3
    eval_dir: str | None = None
    eval_limit: int | None = None
    reference: bool = True  # also time eager fp32, interleaved, for the "vs eager" column
    isolate: bool = True  # a fresh process per model; False measures in this process (tests)

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        base = cls(batch_size=8, warmup=2, min_runs=5, tolerance=0.1, max_seconds=2.0, throughput_runs=1)
        return replace(base, **overrides)


@dataclass(frozen=True)
class Variant:
    """What to measure; ``None`` leaves the choice to the model (its default backend and precision)."""

    model: str
    backend: str | None = None
    precision: str | None = None

    def describe(self) -> str:
        return f"{self.model} [{self.backend or 'default backend'}/{self.precision or 'default precision'}]"


@dataclass
class BenchRecord:
    """One measured variant. Sizes in MB (10^6 bytes), times in ms, memory in MB.

    ``backend``, ``precision``, ``chosen_by_auto``, ``device``, ``device_name`` and ``threads`` are what its
    runner reported (``RunInfo``), ``ran`` that runner's label. ``peak_mem_mb`` is the peak RSS of the measuring
    process from just before the model is built to the end of its warm-up (Python, torch and the model
    together); ``baseline_mem_mb`` is what the process held before the model was built, so the model's own
    share is the difference. On a GPU, ``gpu_peak_mb`` is the most GPU memory torch allocated while the built
    variant ran its warm-up and a throughput batch. ``status``: ``stable`` (the median's 95 % CI is within
    the tolerance), ``capped`` (the per-variant cap came first) or ``partial`` (interrupted).
    """

    model: str
    backend: str
    precision: str
    params_m: float | None
    gmacs: float | None
    size_mb_fp32: float | None
    size_mb_fp16: float | None
    latency_ms_p50: float
    latency_ms_p90: float
    latency_runs: int
    throughput_ips: float | None
    batch_size: int
    throughput_runs: int
    peak_mem_mb: float
    top1: float | None
    top5: float | None
    accuracy_source: str
    accuracy_dataset: str
    published_gmacs: float | None
    input_size: int
    threads: int | None  # None on a GPU
    device: str  # "cpu", "cuda:0"
    memory_format: str
    torch_version: str
    cpu: str
    device_name: str = "CPU"  # "CPU" or the GPU's name
    chosen_by_auto: bool = False
    ran: str = ""  # the runner's RunInfo.label(): "openvino/bf16 on CPU (auto)"
    file_mb: float | None = None  # a model file's size on disk, the files beside it included (None: a zoo model)
    batch_ms_p50: float | None = None  # median time of one throughput batch
    gpu_peak_mb: float | None = None  # on a GPU: torch's peak allocated memory while running (None on the CPU)
    best_batch_size: int | None = None  # on a GPU: the batch with the most images per second (see choose.gpu)
    best_throughput_ips: float | None = None  # ... and its images per second
    e2e_latency_ms_p50: float | None = None
    preprocess_ms_p50: float | None = None
    eval_images: int | None = None
    baseline_mem_mb: float | None = None
    status: str = "stable"
    latency_ms_p50_ci: list[float] = field(default_factory=list)  # 95 % confidence interval of the median
    latency_ms_p25: float | None = None
    latency_ms_p75: float | None = None
    latency_rounds: int = 0
    load_avg_before: float | None = None  # 1-minute load average when the variant's first round began
    load_avg_after: float | None = None  # ... and when it stopped
    cores: int | None = None
    other_cpu_share: float | None = None  # share of all cores used by other processes while measuring (Linux)
    reference_latency_ms_p50: float | None = None  # eager fp32, measured interleaved with this variant
    speedup_vs_reference: float | None = None  # None when not comparable
    vs_reference: str = ""  # "2.10x faster", "within noise (...)", "not comparable: machine busy (...)",
    # "reference out of line: ...; not compared", "is the reference"
    build_seconds: float | None = None  # wall time to load the variant and warm it up, in its process
    latency_cap_seconds: float | None = None  # its cap in timed batch-1 seconds (cut where the run's budget bound)
    timed_seconds: float | None = None  # wall time of its timed calls (latency and throughput)
    reference_timed_seconds: float | None = None  # ... and of its reference's (shared by a model's variants)
    notes: list[str] = field(default_factory=list)

    @property
    def load_span(self) -> LoadSpan:
        """The machine's load while this variant was measured; ``.busy`` says whether others took CPU."""
        return LoadSpan(self.load_avg_before, self.load_avg_after, self.cores or 1, self.other_cpu_share)

    @property
    def label(self) -> str:
        """The variant for people, in every table and message: ``resnet50 [openvino/bf16 on CPU (auto)]``, or the
        model alone for plain eager fp32 chosen by hand (the reference; the table's title says where it ran)."""
        return self.model if self.is_reference else f"{self.model} [{self.ran or f'{self.backend}/{self.precision}'}]"

    @property
    def is_reference(self) -> bool:
        """Plain eager fp32, chosen by hand: what the "vs eager" column compares with."""
        return (self.backend, self.precision) == REFERENCE and not self.chosen_by_auto

    @property
    def on_gpu(self) -> bool:
        return self.gpu_peak_mb is not None

    @property
    def where(self) -> str:
        """The processor that ran it: the GPU's name and index, or the CPU's name."""
        return f"{self.device_name} ({self.device})" if self.on_gpu else self.cpu

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchRecord":
        """A record from :meth:`to_dict` output; keys of other resnetkit versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class BenchProgress:
    """Where a bench run is: starting processes, or measuring in rounds."""

    phase: str  # "starting" | "measuring"
    round: int
    done: int  # models built (starting) or variants finished (measuring)
    total: int
    eta_seconds: float | None = None  # re-estimated from the builds so far (starting) or the timings so far
    last: str | None = None  # starting: the model built last
    building: tuple[str, ...] = ()  # starting: the models building now or starting next, largest first


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a bench run; ``records`` holds what was measured (status ``partial``)."""

    def __init__(self, records: list[BenchRecord]) -> None:
        super().__init__(f"interrupted after measuring {len(records)} variants")
        self.records = records
