"""Training-speed benchmark: one spiking ResNet-18 trained by spikeforge, SpikingJelly and snnTorch (CPU or CUDA).

Every framework runs in its own child process; the parent steps them in lockstep (one training step of each in
turn), so all see the same machine load, and reports median step times, images/s and peak memory. The peer models
are bench/models.py's, layer for layer the network of sw/resnet.py (same convs, BN, LIF with tau = 2 /
leak_shift = 1, soft reset, arctan surrogate of width 0.5 = alpha 2, T steps, readout = mean over T of fc(global
average)).
Not part of the installed package: run it from the repository root (the peers: ``pip install`` the ``bench`` extra
of pyproject.toml).

    python -m bench.bench_train --width-div 4          # quick mode
    python -m bench.bench_train --device cuda --warmup 3 --steps 20   # on a GPU (peak = GPU memory)

On CUDA every child turns on cuDNN autotuning (``torch.backends.cudnn.benchmark``) and keeps torch's defaults
otherwise (TF32 convolutions); the peak memory is the GPU's (``torch.cuda.max_memory_allocated`` in the timed steps)
and the warm-up steps run in all children at once (compiling is CPU work; nothing is timed then).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.models import (SPIKEFORGE, conv_stack, snntorch_model, spikeforge_model, spikingjelly_model,
                          widths)

PEERS = ("spikingjelly", "spikingjelly-compile", "snntorch")
# not one of the peers: SpikingJelly + torch.compile under the same bf16 autocast as spikeforge-bf16, to show
# how much of a bf16 gain is the CPU's bf16 convs alone
PEER_VARIANTS = ("spikingjelly-compile-bf16", "spikingjelly-graphs", "spikingjelly-graphs-bf16")
CONV_STACK = "conv-stack"
CONV_STACK_BF16 = "conv-stack-bf16"  # the same convs under bf16 autocast: the ceiling of the bf16 configurations
DEFAULT = ("spikeforge", "spikingjelly", "spikingjelly-compile", "snntorch")
_HUGEPAGES_LINE = {"shipped": "spikeforge's children only (as shipped)", "all": "every child", "none": "no child"}
_ROOT = Path(__file__).resolve().parent.parent  # the repository root, where the children find this module
# --malloc-cache: glibc serves tensors above 32 MiB (a full-width layer's [T*B, C, H, W]) with a fresh mmap, so every
# such tensor page-faults on first touch (~25% of a full-width spikeforge step on the 2026-12-02 AVX2 machine);
# these settings keep freed memory in the heap for reuse instead (same for every framework: a process setting)
MALLOC_CACHE = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 34), "MALLOC_TRIM_THRESHOLD_": str(2 ** 34),
                "MALLOC_TOP_PAD_": str(2 ** 28)}


# ------------------------------------------------------------------------------------------------ one child

class _PeakSampler:
    """Samples this process's resident set every 2 ms (from /proc/self/statm) while a step runs; idle otherwise,
    so that the children waiting for their turn take no CPU from the one being timed."""

    def __init__(self):
        self.peak, self._armed, self._stop = 0, threading.Event(), False
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def arm(self, on: bool) -> None:
        if on:
            self._armed.set()
        else:
            self._armed.clear()
            self.peak = max(self.peak, self.rss())

    def _run(self):
        while not self._stop:
            self._armed.wait()
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)


def _trim_heap() -> None:
    """Give freed heap pages back to the OS between steps (glibc keeps them otherwise), so the children that wait
    for their turn do not hold their peak memory. Off by default: in this VM re-faulting those pages slowed the
    allocation-heavy eager peers several-fold, which would bias the race."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _child(args) -> None:
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = args.child
    if name in SPIKEFORGE:
        model, run, reset = spikeforge_model(SPIKEFORGE[name], args)
    elif name in PEERS + PEER_VARIANTS and name.startswith("spikingjelly"):
        compiled = "reduce-overhead" if "graphs" in name else "compile" in name
        model, run, reset = spikingjelly_model(args, compiled=compiled, bf16=name.endswith("bf16"))
    elif name == "snntorch":
        model, run, reset = snntorch_model(args)
    elif name in (CONV_STACK, CONV_STACK_BF16):
        model, run, reset = conv_stack(args, bf16=name == CONV_STACK_BF16)
    else:
        raise SystemExit(f"unknown framework {name!r}; choose from {', '.join(all_frameworks())}")
    model.to(device)  # in place: the models' closures keep working on the moved modules
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(args.batch, 3, 32, 32).to(device)
    labels = torch.randint(0, 10, (args.batch,)).to(device)
    sampler = _PeakSampler()
    baseline = sampler.rss()

    def step():
        if reset is not None:
            reset()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(run(images), labels)
        loss.backward()
        optimizer.step()

    print(json.dumps({"ready": name, "baseline_rss": baseline, "hugepages": os.environ.get("THP_MEM_ALLOC_ENABLE")}),
          flush=True)
    for line in sys.stdin:  # the parent sends "warm" or "time" once per step, "stop" at the end
        command = line.strip()
        if command == "stop":
            break
        sampler.peak = 0  # the peak of this step alone (compiling in a warm-up step is not training memory)
        sampler.arm(True)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)  # the step's kernels have run, not only been queued
        elapsed = time.perf_counter() - start
        sampler.arm(False)
        if args.trim_heap:
            _trim_heap()
        answer = {"command": command, "seconds": elapsed, "step_peak_rss": sampler.peak}
        if cuda:
            answer["step_peak_gpu"] = torch.cuda.max_memory_allocated(device)
            # what the process holds: a CUDA-graph replay allocates nothing (its memory is a pool reserved when the
            # graph was recorded, in a warm-up step), so only this counts the graph variants' memory
            answer["step_peak_gpu_reserved"] = torch.cuda.max_memory_reserved(device)
        print(json.dumps(answer), flush=True)
    sampler._stop = True
    from torch._dynamo.utils import counters  # Inductor's CUDA-graph counters (recorded, skipped), for the log

    graphs = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    print(json.dumps({"done": name, "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "step_peak_rss": sampler.peak, "baseline_rss": baseline, "cudagraph_counters": graphs}),
          flush=True)


# ------------------------------------------------------------------------------------------------ the parent

def all_frameworks() -> list[str]:
    return [*SPIKEFORGE, *PEERS, *PEER_VARIANTS, CONV_STACK, CONV_STACK_BF16]


def _hugepages(name: str, policy: str) -> str:
    """THP_MEM_ALLOC_ENABLE for a child: PyTorch's CPU allocator puts tensors of 2 MiB and more on transparent huge
    pages when it is 1 (it reads the variable once, at its first such allocation, so it is set in the child's
    environment before the child starts). ``policy``: "shipped" (spikeforge's children on, as spikeforge trains; the
    peers and the bare conv stacks at PyTorch's default, off), "all", "none"."""
    on = policy == "all" or (policy == "shipped" and name in SPIKEFORGE)
    return "1" if on else "0"


def _child_env(name: str, args, environ: dict | None = None) -> dict:
    """The environment of child ``name``: the parent's (``environ``, default ``os.environ``) with the thread count,
    ``--malloc-cache``'s settings and the child's huge-page setting (whatever the parent's own value), and the
    repository root on PYTHONPATH so that ``-m bench.bench_train`` imports from any working directory (bench/ is not
    installed)."""
    environ = os.environ if environ is None else environ
    path = os.pathsep.join(p for p in (str(_ROOT), environ.get("PYTHONPATH", "")) if p)
    return dict(environ, OMP_NUM_THREADS=str(args.threads), **(MALLOC_CACHE if args.malloc_cache else {}),
                THP_MEM_ALLOC_ENABLE=_hugepages(name, args.hugepages), PYTHONPATH=path)


def _is_bf16(name: str) -> bool:
    return name.endswith("-bf16") and not name.endswith("-bf16mem")


class _Child:
    def __init__(self, name: str, args):
        cmd = [sys.executable, "-m", "bench.bench_train", "--child", name, "--width-div", str(args.width_div),
               "--batch", str(args.batch), "--time-steps", str(args.time_steps), "--device", args.device]
        cmd += ["--trim-heap"] if args.trim_heap else []
        self.name, self.times, self.peaks, self.gpu_peaks, self.gpu_reserved, self.error = name, [], [], [], [], None
        self._start(cmd, _child_env(name, args))
        self.hello = self._read()

    def _start(self, cmd: list[str], env: dict | None = None) -> None:
        # stderr to a file, not a pipe: nobody reads a pipe until the child dies, so a child that warns more than
        # the pipe holds (64 KiB: compile warnings, per-step warnings) would block forever in its next write
        self._stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=env)

    def _read(self, timeout: float | None = None) -> dict:
        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            try:
                self.proc.wait(10)  # its last words are all in the file once it has exited
            except subprocess.TimeoutExpired:
                pass
            self._stderr.seek(0)
            self.error = self._stderr.read().strip().splitlines()[-5:]
            raise RuntimeError(f"{self.name} died: {' | '.join(self.error)}")
        return json.loads(line)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self, command: str) -> dict:
        answer = self._read()
        if command == "time":
            self.times.append(answer["seconds"])
            self.peaks.append(answer["step_peak_rss"])
            if "step_peak_gpu" in answer:
                self.gpu_peaks.append(answer["step_peak_gpu"])
            if "step_peak_gpu_reserved" in answer:
                self.gpu_reserved.append(answer["step_peak_gpu_reserved"])
        return answer

    def step(self, command: str) -> dict:
        self.send(command)
        return self.answer(command)

    def finish(self, timeout: float = 60.0) -> dict:
        """The child's last report ({} if it does not come within ``timeout``); the child is killed if it has not
        exited by then (on CUDA a run once hung after its last timed step, while the children were finishing)."""
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            result = self._read(timeout)
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError) as exc:
            print(f"{self.name}: no final report ({exc})", file=sys.stderr)
            result = {}
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.name}: did not exit; killed", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()
        return result


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def _device_line() -> str:
    """The GPU and the torch build, for the report's header."""
    import torch

    return (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark on, cudnn.allow_tf32 "
            f"{torch.backends.cudnn.allow_tf32} (torch's default)")


def run_benchmark(args) -> list[dict]:
    children, results = {}, []
    for name in args.frameworks:
        try:
            children[name] = _Child(name, args)
        except (RuntimeError, json.JSONDecodeError) as exc:
            print(f"{name}: could not start ({exc})", file=sys.stderr)
            results.append({"name": name, "error": str(exc)})
    load_before = _load()
    for phase, count in (("warm", args.warmup), ("time", args.steps)):
        for i in range(count):
            together = phase == "warm" and args.device != "cpu"  # GPU: all children warm (compile) at once
            if together:
                for name, child in list(children.items()):
                    try:
                        child.send(phase)
                    except BrokenPipeError as exc:
                        print(f"{name}: failed ({exc})", file=sys.stderr)
                        results.append({"name": name, "error": str(exc)})
                        del children[name]
            for name, child in list(children.items()):
                try:
                    answer = child.answer(phase) if together else child.step(phase)
                    print(f"  {phase} {i + 1}/{count} {name}: {answer['seconds']:.4f} s (load {_load()})",
                          file=sys.stderr, flush=True)
                except (RuntimeError, BrokenPipeError) as exc:
                    print(f"{name}: failed ({exc})", file=sys.stderr)
                    results.append({"name": name, "error": str(exc)})
                    del children[name]
    load_after = _load()
    for name, child in children.items():  # the medians first: they survive a hang while the children exit
        if child.times:
            print(f"  median {name}: {statistics.median(child.times):.4f} s", file=sys.stderr, flush=True)
    for name, child in children.items():
        done = child.finish(timeout=20.0)
        if done.get("cudagraph_counters"):
            print(f"  {name}: inductor cudagraph counters {done['cudagraph_counters']}", file=sys.stderr)
        seconds = statistics.median(child.times)
        results.append(dict(name=name, seconds=seconds, times=child.times, images_per_s=args.batch / seconds,
                            ru_maxrss=done.get("ru_maxrss", max(child.peaks)), step_peak_rss=max(child.peaks),
                            baseline_rss=done.get("baseline_rss", child.hello.get("baseline_rss", 0)),
                            hugepages=child.hello.get("hugepages"),
                            **({"step_peak_gpu": max(child.gpu_peaks)} if child.gpu_peaks else {}),
                            **({"step_peak_gpu_reserved": max(child.gpu_reserved)} if child.gpu_reserved else {})))
    order = {n: i for i, n in enumerate(args.frameworks)}
    results.sort(key=lambda r: order[r["name"]])
    for r in results:
        r["load"] = f"{load_before} -> {load_after}"
    return results


def _table(results: list[dict], args) -> str:
    """The report's markdown table. Memory columns: on the CPU the process's peak RSS (whole run and timed steps),
    each with its ratio to the leanest peer; on CUDA the GPU memory the process holds at its peak in the timed steps
    (``max_memory_reserved``, with that ratio: it includes the pools of CUDA graphs, which a replay does not
    allocate from), the peak of the tensors allocated in those steps and, for reference, the host's peak RSS
    (results without the reserved figure, from before 2026-12-04's third H200 run: the allocated peak with the
    ratio)."""
    ok = [r for r in results if "error" not in r]
    peers = [r for r in ok if r["name"] in PEERS]
    fastest = max(peers, key=lambda r: r["images_per_s"], default=None)
    conv = {n: next((r for r in ok if r["name"] == n), None) for n in (CONV_STACK, CONV_STACK_BF16)}
    gpu = bool(ok) and all("step_peak_gpu" in r for r in ok)
    # (header, result key, with a ratio to the leanest peer)
    if gpu and all("step_peak_gpu_reserved" in r for r in ok):
        memory = [("GPU memory held (timed steps)", "step_peak_gpu_reserved", True),
                  ("tensors allocated (timed steps)", "step_peak_gpu", False), ("host peak RSS", "ru_maxrss", False)]
    elif gpu:
        memory = [("peak GPU memory (timed steps)", "step_peak_gpu", True), ("host peak RSS", "ru_maxrss", False)]
    else:
        memory = [("peak RSS (ru_maxrss)", "ru_maxrss", True), ("RSS peak in timed steps", "step_peak_rss", True)]
    leanest = {key: min(peers, key=lambda r: r[key], default=None) for _, key, _ in memory}
    headers = ["framework", "step (s, median)", "images/s", "vs fastest peer"]
    for title, _, ratio in memory:
        headers += [title, "vs leanest peer"] if ratio else [title]
    headers.append("conv share")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:120]} |" + " |" * (len(headers) - 2))
            continue
        cells = [r["name"], f"{r['seconds']:.{4 if gpu else 3}f}", f"{r['images_per_s']:.1f}",
                 f"{r['images_per_s'] / fastest['images_per_s']:.2f}x" if fastest else "-"]
        for _, key, ratio in memory:
            cells.append(f"{r[key] / 2**30:.2f} GiB")
            if ratio:
                cells.append(f"{r[key] / leanest[key][key]:.2f}x" if leanest[key] else "-")
        stack = conv[CONV_STACK_BF16 if _is_bf16(r["name"]) else CONV_STACK]  # the ceiling at r's precision
        cells.append(f"{stack['seconds'] / r['seconds']:.0%}" if stack and r is not stack else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bench.bench_train``."""
    p = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.splitlines()[0])
    p.add_argument("--width-div", type=int, default=1, help="divide every width (64-128-256-512) by this (4: quick)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per framework")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--frameworks", default=",".join(DEFAULT),
                   help=f"comma-separated, in stepping order; known: {', '.join(all_frameworks())}")
    p.add_argument("--sltt", action="store_true", help="also run spikeforge with SLTT (no temporal gradient path)")
    p.add_argument("--conv-stack", action="store_true", help="also time the bare conv stack (the conv share column)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where every child trains (cuda: cuDNN autotuning on, peak = GPU memory)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--time-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS of every child")
    p.add_argument("--malloc-cache", action="store_true",
                   help="run EVERY child with glibc malloc keeping freed memory for reuse (MALLOC_CACHE): no page "
                        "faults on the large per-layer tensors, more resident memory")
    p.add_argument("--hugepages", default="shipped", choices=("shipped", "all", "none"),
                   help="which children get PyTorch's huge-page CPU allocation (THP_MEM_ALLOC_ENABLE=1 in the "
                        "child's environment; 0 in the others): shipped = the spikeforge ones (the peers and the conv "
                        "stacks run PyTorch's default, off), all, none")
    p.add_argument("--trim-heap", action="store_true",
                   help="malloc_trim after every step (less idle memory in the waiting children; slows them)")
    p.add_argument("--out", default=None, help="append the command, header and table to this markdown file")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        _child(args)
        return 0
    args.frameworks = [f for f in args.frameworks.split(",") if f]
    if args.sltt and "spikeforge-sltt" not in args.frameworks:
        args.frameworks.append("spikeforge-sltt")
    if args.conv_stack and CONV_STACK not in args.frameworks:
        args.frameworks.append(CONV_STACK)
    if args.conv_stack and any(_is_bf16(f) for f in args.frameworks) and CONV_STACK_BF16 not in args.frameworks:
        args.frameworks.append(CONV_STACK_BF16)
    unknown = [f for f in args.frameworks if f not in all_frameworks()]
    if unknown:
        print(f"unknown framework(s) {unknown}; choose from {', '.join(all_frameworks())}", file=sys.stderr)
        return 2
    results = run_benchmark(args)
    command = "python -m bench.bench_train " + " ".join(argv if argv is not None else sys.argv[1:])
    table = _table(results, args)
    header = (f"ResNet-18 (CIFAR stem, widths {'-'.join(map(str, widths(args.width_div)))}), T={args.time_steps}, "
              f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps each, lockstep; "
              f"{'malloc cache (MALLOC_CACHE) in every child; ' if args.malloc_cache else ''}"
              f"huge-page allocation (THP_MEM_ALLOC_ENABLE=1): {_HUGEPAGES_LINE[args.hugepages]}; "
              f"{_device_line() + '; ' if args.device != 'cpu' else ''}load average (1/5/15 min) {results[0]['load'] if results else '?'}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(header)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(header=header, command=command, results=results), indent=1))
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n`{command}`\n\n{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
