"""The denoiser replayed from CUDA graphs, one per input signature (shapes, dtypes, options).

At 768² SDXL is launch-bound: the GPU waits on Python issuing ~1,500 kernels a step. A CUDA graph
records those launches once and replays them with one call. The first call with a new signature
(size, batch, guidance on or off) runs the denoiser eagerly, warms it up on a side stream (cuBLAS and
cuDNN pick their kernels), captures one run, replays it on the same inputs and compares with the
eager result. The first replay on new inputs is checked against an eager run too (that catches an
input the graph does not see). Only a graph that passes both is trusted. A signature that cannot be
captured (a host sync inside, an option the graph cannot hold) runs eagerly from then on, logged once.

Inputs are copied into the graph's own input tensors before each replay, and outputs are cloned
after it, so callers see ordinary tensors. Nothing is captured in ``setup()``.

Capture is passed in as a function: CUDA's in production, an eager stand-in in the CPU tests, which
replays by recomputing from the static inputs into the static outputs, exactly what a graph does, so
a missed input copy shows up as a wrong result there too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Optional

log = logging.getLogger(__name__)

MAX_GRAPHS = 6  # signatures kept; each holds its activations' memory
WARMUP_RUNS = 1  # on the side stream, after the eager run the capture is checked against
TOLERANCE = 2e-2  # relative to the output's scale: replay must match eager to fp16/bf16 precision

Capture = Callable[[Callable[[], Any]], tuple[Callable[[], None], Any]]


def flatten(args: tuple, kwargs: dict) -> tuple[list[Any], Any]:
    import torch.utils._pytree as pytree

    return pytree.tree_flatten((args, kwargs))


def signature(leaves: list[Any], spec: Any) -> Optional[Hashable]:
    """What a graph is specific to: tensor shapes/dtypes/devices and every non-tensor value. None
    when a leaf is neither a tensor nor a plain value (a graph could not hold it)."""
    import torch

    parts: list[Hashable] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append(("t", tuple(leaf.shape), leaf.dtype, str(leaf.device), leaf.is_contiguous()))
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            parts.append(("v", leaf))
        else:
            return None
    return tuple(parts)


def cuda_capture() -> Capture:
    """Warm up on a side stream, then record one run into a CUDA graph.

    All graphs of one denoiser share a memory pool: they never run at once, and each replay's
    outputs are cloned before another graph can run, so they may reuse each other's scratch memory.
    Capture is thread-local: another thread's CUDA work meanwhile (go_fast compiling in the
    background) is neither recorded nor, as in the default global mode, an error.
    """
    import torch

    pool = torch.cuda.graph_pool_handle()

    def capture(run: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            output = run()
        return graph.replay, output

    return capture


def eager_capture(run: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
    """The CPU stand-in: outputs live in fixed tensors that each 'replay' recomputes into."""
    import torch.utils._pytree as pytree

    output = run()

    def replay() -> None:
        for static, fresh in zip(pytree.tree_leaves(output), pytree.tree_leaves(run()), strict=True):
            static.copy_(fresh)

    return replay, output


@dataclass
class Captured:
    replay: Callable[[], None]
    inputs: list[Any]  # the graph's input tensors (non-tensor leaves are part of the signature)
    output: Any
    verified: bool = False  # replayed once on new inputs and matched the eager result


def _close(expected: Any, actual: Any) -> bool:
    import torch
    import torch.utils._pytree as pytree

    for a, b in zip(pytree.tree_leaves(expected), pytree.tree_leaves(actual), strict=True):
        if isinstance(a, torch.Tensor):
            a, b = a.float(), b.float()
            scale = a.abs().max().clamp(min=1.0)
            if not torch.isfinite(b).all() or ((a - b).abs().max() / scale) > TOLERANCE:
                return False
    return True


class GraphedDenoiser:
    """Calls ``forward`` through a per-signature graph; an uncapturable signature runs eagerly."""

    def __init__(self, forward: Callable[..., Any], name: str, capture: Optional[Capture] = None) -> None:
        self.forward = forward  # the module's forward as it was (including any hook wrapping it)
        self.name = name
        self.capture = capture or cuda_capture()
        self.graphs: OrderedDict[Hashable, Captured] = OrderedDict()
        self.eager: set[Hashable] = set()
        self.captures: Counter[int] = Counter()  # graphs captured so far, by the denoiser's batch size

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch
        import torch.utils._pytree as pytree

        leaves, spec = flatten(args, kwargs)
        key = signature(leaves, spec)
        if key is None or key in self.eager:
            return self.forward(*args, **kwargs)
        captured = self.graphs.get(key)
        if captured is None:
            captured = self._capture(key, leaves, spec)
            if captured is None:
                return self.forward(*args, **kwargs)
        else:
            self.graphs.move_to_end(key)
            for static, leaf in zip(captured.inputs, leaves, strict=True):
                if isinstance(leaf, torch.Tensor):
                    static.copy_(leaf)
            captured.replay()
            if not captured.verified:
                expected = self.forward(*args, **kwargs)
                if not _close(expected, captured.output):
                    self._give_up(key, RuntimeError("replay on new inputs differs from the eager result"))
                    del self.graphs[key]
                    return expected
                captured.verified = True
        return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, captured.output)

    def _give_up(self, key: Hashable, error: BaseException) -> None:
        self.eager.add(key)
        log.warning("%s: CUDA graph not used for this input shape (%s: %s); running eagerly",
                    self.name, type(error).__name__, str(error).splitlines()[0] if str(error) else "")

    def _capture(self, key: Hashable, leaves: list[Any], spec: Any) -> Optional[Captured]:
        import torch
        import torch.utils._pytree as pytree

        started = time.perf_counter()
        inputs = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = pytree.tree_unflatten(inputs, spec)
        try:
            expected = pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, self.forward(*args, **kwargs))
            replay, output = self.capture(lambda: self.forward(*args, **kwargs))
            replay()
            if not _close(expected, output):
                raise RuntimeError("replay differs from the eager result")
        except Exception as error:  # noqa: BLE001 - any capture failure means: run this shape eagerly
            self._give_up(key, error)
            return None
        while len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        captured = Captured(replay, inputs, output)
        self.graphs[key] = captured
        shapes = [tuple(x.shape) for x in leaves if isinstance(x, torch.Tensor)][:1]
        self.captures[shapes[0][0] if shapes and shapes[0] else 1] += 1
        log.info("%s: CUDA graph captured for input %s in %.2f s (%d kept; captured by batch size: %s)", self.name,
                 shapes[0] if shapes else "()", time.perf_counter() - started, len(self.graphs),
                 dict(sorted(self.captures.items())))
        return captured


def denoiser_name(pipe: Any) -> str:
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def graph_runner(pipe: Any, capture: Optional[Capture] = None) -> GraphedDenoiser:
    name = denoiser_name(pipe)
    return GraphedDenoiser(getattr(pipe, name).forward, name, capture)


@contextlib.contextmanager
def graphed(pipe: Any, runner: Optional[GraphedDenoiser]) -> Iterator[None]:
    """Within the block the pipeline's denoiser runs through ``runner`` (when given). Only the main
    generation uses it: the ADetailer pass and others call the same module eagerly."""
    if runner is None:
        yield
        return
    module = getattr(pipe, denoiser_name(pipe))
    previous = module.__dict__.get("forward")  # a hook's wrapper, if one is installed
    module.forward = runner  # an instance attribute shadows the class's forward; module hooks still run
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous
