"""Benchmark one stage-one distillation step (prints figures; not a test).

    python bench/general_step.py                         # teacher 12L-384, student 4L-312, batch 8, seq 128
    python bench/general_step.py --seq 512 --batch 4     # long sequences
    python bench/general_step.py --teacher-hidden 768 --batch 64 --precision bf16   # on a GPU

Reports, per step, the median of --repeats timed steps after warm-up, the two steps interleaved
(a, b, a, b, ...) so that machine noise lands on both:
  (a) the ideal: the same work minus distillation, i.e. teacher inference, student forward and backward
      (on a plain loss), gradient clipping and the same optimiser step;
  (b) our full distillation step (teacher features, student with projections, all losses, optimiser step);
  b / a (targets <= 1.10 at seq 128 and <= 1.20 at seq 512), and the same step with TextBrewer's
  GeneralDistiller on equivalent matches (hidden MSE 0/3/6/9/12 with linear projections, attention MSE
  on 3/6/9/12), run in its own process so peak memory (max RSS on CPU, max allocated on GPU) is
  comparable; then the top operators of our step by self time (torch.profiler).

On a CPU our process keeps freed memory mapped (`--malloc retain`, what `make_accelerator` does unless
train.cpu_retain_memory is false; pipeline/training/cpu_memory.py); `--malloc default` is glibc's defaults, the
build before. TextBrewer runs both as shipped and with the same allocator settings (`--textbrewer-malloc`),
so that the speed-up is shown with and without what the allocator alone gives.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_models(args, malloc: str):
    from transformers import BertConfig, BertModel

    if malloc == "retain" and args.device == "cpu":
        from pipeline.training.cpu_memory import retain_freed_memory

        assert retain_freed_memory(), "--malloc retain needs glibc"  # as make_accelerator does on CPU
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # both sides: denormals slow CPU backward passes several-fold
    common = {"vocab_size": 21128, "max_position_embeddings": 512, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1}
    teacher = BertModel(BertConfig(hidden_size=args.teacher_hidden, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=4 * args.teacher_hidden, **common), add_pooling_layer=False)
    student = BertModel(BertConfig(hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                                   intermediate_size=1200, **common), add_pooling_layer=False)
    teacher.requires_grad_(False).eval()
    if args.precision == "bf16":
        teacher.to(torch.bfloat16)  # as train.teacher_dtype: bfloat16; the student trains under autocast
    return teacher.to(args.device), student.to(args.device)


def make_batch(args):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[: args.batch // 2, args.seq * 3 // 4:] = 0  # half the batch padded, as in real corpora
    return {"input_ids": input_ids.to(args.device), "attention_mask": mask.to(args.device),
            "token_type_ids": torch.zeros_like(input_ids).to(args.device)}


def peak_memory_mb(args) -> float:
    if args.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args) -> dict:
    from pipeline.distill.capture import capture_attention_scores
    from pipeline.distill.intermediate import (
        StudentWithProjections,
        intermediate_loss_terms,
        teacher_features,
    )
    from pipeline.distill.layer_map import build_layer_map
    from pipeline.distill.projections import Projections
    from pipeline.schema import IntermediateLossConfig

    teacher, student = build_models(args, args.malloc)
    batch = make_batch(args)
    layer_map = build_layer_map(12, 4)
    model = StudentWithProjections(student, Projections(312, args.teacher_hidden, layer_map.student_layers, True))
    model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_cfg = IntermediateLossConfig()

    def ideal_step():
        with torch.no_grad(), autocast(args):
            teacher(**batch, output_hidden_states=True)
        with autocast(args):
            outputs = student(**batch, output_hidden_states=True)
            loss = outputs.last_hidden_state.float().pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    def full_step():
        # the capture contexts are entered per step, so that the ideal step between runs the plain models
        with capture_attention_scores(teacher, layer_map.teacher_layers) as t_scores, \
                capture_attention_scores(student, layer_map.student_layers) as s_scores, autocast(args):
            teacher_hidden, teacher_captured = teacher_features(teacher, batch, t_scores)
            projected = model(**batch)
            terms = intermediate_loss_terms(projected, dict(s_scores), teacher_hidden, teacher_captured,
                                            layer_map, loss_cfg, batch["attention_mask"])
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    part_a, part_b = timed_interleaved([ideal_step, full_step], args)
    profile = top_operators(full_step, args)
    return {"a_ideal_s": part_a, "b_step_s": part_b, "peak_mb": peak_memory_mb(args), "profile": profile}


def autocast(args):
    import contextlib

    if args.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=args.device, dtype=torch.bfloat16)


def timed_interleaved(steps, args) -> list[float]:
    for _ in range(args.warmup):
        for step in steps:
            step()
    times = [[] for _ in steps]
    for _ in range(args.repeats):
        for step, record in zip(steps, times):
            record.append(timed_once(step, args))
    return [statistics.median(t) for t in times]


def timed_once(step, args) -> float:
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def top_operators(step, args, rows: int = 12) -> list[tuple[str, float, float]]:
    """(operator, self ms, share of the step) of one profiled step, most expensive first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    attribute = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attribute), reverse=True)
    total = sum(getattr(e, attribute) for e in events) or 1.0
    return [(e.key, getattr(e, attribute) / 1000, getattr(e, attribute) / total) for e in events[:rows]]


def run_textbrewer(args) -> dict:
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    teacher, student = build_models(args, args.textbrewer_malloc)
    # TextBrewer reads attention maps from output_attentions, which needs eager attention in transformers 5.
    teacher.set_attn_implementation("eager")
    student.set_attn_implementation("eager")
    batch = make_batch(args)
    matches = [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                "proj": ["linear", 312, args.teacher_hidden]} for s, t in enumerate([0, 3, 6, 9, 12])]
    matches += [{"layer_T": t, "layer_S": s, "feature": "attention", "loss": "attention_mse", "weight": 1}
                for s, t in enumerate([2, 5, 8, 11])]

    def adaptor(batch_, outputs):
        return {"hidden": outputs.hidden_states, "attention": outputs.attentions,
                "inputs_mask": batch_["attention_mask"]}

    out_dir = Path("/tmp/tinydistill_bench_textbrewer")
    distiller = GeneralDistiller(
        TrainingConfig(device=args.device, output_dir=str(out_dir), log_dir=None),
        DistillationConfig(intermediate_matches=matches, kd_loss_weight=0.0),
        teacher, student, adaptor, adaptor,
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    optimizer, _, _ = distiller.initialize_training(optimizer, None, None, None)
    call_args = {"output_hidden_states": True, "output_attentions": True}
    del textbrewer

    def full_step():
        with autocast(args):
            total, _ = distiller.train_on_batch(batch, call_args)
        total.backward()
        torch.nn.utils.clip_grad_norm_(distiller.model_S.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    with distiller:
        step_s = timed_interleaved([full_step], args)[0]
    return {"b_step_s": step_s, "peak_mb": peak_memory_mb(args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-hidden", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=["all", "ours", "textbrewer"], default="all")
    parser.add_argument("--malloc", choices=["retain", "default"], default="retain",
                        help="our process: retain (what training on a CPU does, train.cpu_retain_memory) or glibc's "
                             "defaults")
    parser.add_argument("--textbrewer-malloc", choices=["both", "default", "retain"], default="both",
                        help="TextBrewer as shipped (glibc's defaults), with our allocator settings, or both runs")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: teacher in bf16, student steps under autocast (both systems)")
    args = parser.parse_args()
    if args.mode != "all":
        print(json.dumps(run_ours(args) if args.mode == "ours" else run_textbrewer(args)))
        return
    brewer_mallocs = ["default", "retain"] if args.textbrewer_malloc == "both" else [args.textbrewer_malloc]
    if args.device != "cpu":
        brewer_mallocs = ["default"]  # GPU memory is not malloc's: one TextBrewer run
    runs = [("ours", args.malloc)] + [("textbrewer", malloc) for malloc in brewer_mallocs]
    results = {}
    for mode, malloc in runs:
        options = {**vars(args), "textbrewer_malloc": malloc}
        command = [sys.executable, __file__, "--mode", mode] + [
            f"--{k.replace('_', '-')}={v}" for k, v in options.items() if k != "mode"]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[mode, malloc] = json.loads(output.strip().splitlines()[-1])
    ours = results["ours", args.malloc]
    print(f"setup: teacher 12L-{args.teacher_hidden} (12 heads), student 4L-312 (12 heads), batch {args.batch}, "
          f"seq {args.seq}, {args.precision}, device {args.device}, torch threads {torch.get_num_threads()}")
    target = 1.10 if args.seq <= 128 else 1.20
    print(f"(a) ideal (teacher inference + student fwd/bwd + clip + AdamW): {ours['a_ideal_s'] * 1000:8.1f} ms")
    print(f"(b) tinydistill full distillation step:                        {ours['b_step_s'] * 1000:8.1f} ms")
    print(f"    b / a = {ours['b_step_s'] / ours['a_ideal_s']:.3f}   (target <= {target:.2f})")
    print(f"    our malloc: {args.malloc}")
    for malloc in brewer_mallocs:
        brewer = results["textbrewer", malloc]
        label = "with our allocator settings" if malloc == "retain" else (
            "as shipped, glibc's malloc defaults" if args.device == "cpu" else "as shipped")
        print(f"TextBrewer GeneralDistiller step (eager attention), {label}: {brewer['b_step_s'] * 1000:8.1f} ms")
        print(f"    speed-up vs TextBrewer = {brewer['b_step_s'] / ours['b_step_s']:.2f}x; peak memory: tinydistill "
              f"{ours['peak_mb']:.0f} MB, TextBrewer {brewer['peak_mb']:.0f} MB")
    tokens = args.batch * args.seq
    print(f"tokens/s consumed by our step: {tokens / ours['b_step_s']:,.0f}")
    print("\ntop operators of our step (self time):\n| operator | ms | share |\n|---|---|---|")
    for name, ms, share in ours["profile"]:
        print(f"| {name} | {ms:.1f} | {share:.1%} |")


if __name__ == "__main__":
    main()
