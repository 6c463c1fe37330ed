"""CUDA-graph replay of the eager model, one graph per batch size: the latency path on a GPU.

At batch 1 a ResNet's time on a GPU is mostly kernel launches from Python (resnet50 fp16 on an H200: 3.45 ms eager,
0.90 ms replaying a graph, ../shared/device/README.md). A graph records the launches once per batch size (on
its first call: a few warm-up passes, then the capture, well under a second) and replays them from static input
and output buffers; each call copies the batch into the input buffer (non-blocking from pinned memory) and the
logits out of the output buffer. Written here because torch.cuda.graphs gives the capture, not a runner that
keeps one graph per shape.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from ..core.device import Device
from ..core.spec import ModelMeta
from .base import Backend, FLOAT_DTYPES, RunnerOptions, register
from .common import TorchRunner
from .eager import default_precision

WARMUP_PASSES = 3  # on a side stream before capturing, as torch.cuda.graphs documents (cuDNN picks its kernels)


class CudaGraphRunner(TorchRunner):
    backend = "cuda-graph"

    def __init__(self, module: nn.Module, precision: str, *, device: Device, input_shape: tuple[int, ...]) -> None:
        super().__init__(module, precision, device=device)
        self.input_shape = input_shape
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._capturing = threading.Lock()

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch  # copied into the graph's input buffer by forward

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        graph, static_input, static_output = self._graph(len(batch))
        static_input.copy_(batch, non_blocking=True)
        graph.replay()
        return static_output.float() if self.dtype != torch.float32 else static_output.clone()  # out of the buffer

    def _graph(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        with self._capturing:
            if size not in self._graphs:
                self._graphs[size] = self._capture(size)
            return self._graphs[size]

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_input = torch.zeros(size, *self.input_shape, device=self.device.torch, dtype=self.dtype)
        static_input = static_input.contiguous(memory_format=self.memory_format)
        side = torch.cuda.Stream(self.device.torch)
        side.wait_stream(torch.cuda.current_stream(self.device.torch))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self.module(static_input)
        torch.cuda.current_stream(self.device.torch).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (another served model) may keep launching work while this one captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_output = self.module(static_input)
        return graph, static_input, static_output


def _factory(module: nn.Module, meta: ModelMeta, options: RunnerOptions) -> CudaGraphRunner:
    return CudaGraphRunner(module, options.precision or default_precision(options.device), device=options.device,
                           input_shape=meta.preprocessing.input_shape)


register(Backend("cuda-graph", "CUDA-graph replay of the eager model, one graph per batch size (GPU latency path)",
                 tuple(FLOAT_DTYPES), _factory, default_precision=default_precision, devices=("cuda",),
                 package="torch", memory_per_batch_size=True))
