"""What ``--only`` on a Hugging Face folder costs in memory and time, the weights it leaves out
read from the checkpoint as the model runs (``--stream``, the default) against the whole model
loaded (``--no-stream``), both in the same run.

The models: GPT-2s of 12 and 24 blocks of width 2048 (606M and 1.21B parameters; vocabulary
1000, 64 positions), saved with ``save_pretrained`` in bfloat16 (1.1 and 2.3 GiB), as most
large checkpoints are; gradscope's views run in float32 and its traced pass in bfloat16.
``--only`` selects three middle blocks: streamed, the memory should not grow with the blocks
left out. Each analysis runs as its own command (``gradscope analyze ... --format json
--no-what-if``: the fixes, measured on a copy of the whole model, would be measured by one only);
the peak of its anonymous memory (``RssAnon`` in ``/proc``, sampled every 10 ms: the memory the
weights and tensors take, not the checkpoint's pages the system may drop) and its time are
printed, and their ratios. Linux only (``/proc``); the reports' numbers are compared too.

    python benchmarks/bench_streaming.py [--width 2048] [--layers 12,24] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(folder: Path, width: int, layers: int) -> None:
    import transformers

    if (folder / "config.json").is_file():
        return
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    config = transformers.GPT2Config(
        vocab_size=1000,
        n_positions=64,
        n_embd=width,
        n_layer=layers,
        n_head=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.GPT2LMHeadModel(config).to(torch.bfloat16).save_pretrained(folder)


def anonymous_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def analyse(folder: Path, only: list[str], stream: bool) -> tuple[float, float, dict]:
    """(seconds, peak anonymous GiB, report) of one ``gradscope analyze``."""
    command = [sys.executable, "-m", "gradscope", "analyze", str(folder), "--format", "json"]
    command += [f"--only={pattern}" for pattern in only]
    command += ["--no-what-if", "--stream" if stream else "--no-stream"]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        peak = 0
        while child.poll() is None:
            peak = max(peak, anonymous_kb(child.pid))
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        out.seek(0)
        report = json.loads(out.read())
    return seconds, peak / 2**20, report


def measured(report: dict) -> list:
    """The depth view's and the sequence view's numbers."""
    layers = [(layer["name"], layer["grad_norm"], layer["chi"]) for layer in report["layers"]]
    return [layers, report["sequence"]["grad_norm_by_lag"] if report["sequence"] else None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument(
        "--layers", default="12,24", help="block counts, one model each (comma-separated)"
    )
    parser.add_argument("--folder", type=Path, default=None, help="keep the models here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.folder or Path(scratch)
        for layers in map(int, args.layers.split(",")):
            folder = root / f"gpt2-{layers}x{args.width}-bf16"
            build(folder, args.width, layers)
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**30
            middle = layers // 2
            only = [f"transformer.h.{i}" for i in (middle - 1, middle, middle + 1)]
            print(f"GPT-2, {layers} blocks of width {args.width}, bfloat16: {size:.2f} GiB")
            print(f"  --only {' '.join(only)}")
            whole = analyse(folder, only, stream=False)
            streamed = analyse(folder, only, stream=True)
            for name, (seconds, peak, _) in (("--no-stream", whole), ("--stream", streamed)):
                print(f"  {name:12} {seconds:6.1f} s   peak anonymous memory {peak:5.2f} GiB")
            print(
                f"  streamed: {whole[1] / streamed[1]:.2f}x less memory, "
                f"{whole[0] / streamed[0]:.2f}x the speed; "
                f"same numbers: {measured(whole[2]) == measured(streamed[2])}"
            )


if __name__ == "__main__":
    main()
