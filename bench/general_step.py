"""Benchmark one stage-one distillation step (prints figures; not a test).

    python bench/general_step.py                 # stand-in teacher 12L-384, student 4L-312, batch 8, seq 128
    python bench/general_step.py --teacher-hidden 768 --batch 32   # the real BERT-base shape (slow on CPU)

Reports, per step, the median of --repeats timed steps after warm-up:
  (a) teacher forward alone + student forward and backward alone (the unavoidable work),
  (b) our full distillation step (teacher features, student with projections, all losses, optimiser step),
  b / a (target <= 1.10), and the same step with TextBrewer's GeneralDistiller on equivalent matches
  (hidden MSE 0/3/6/9/12 with linear projections, attention MSE on 3/6/9/12), run in its own process
  so peak memory (max RSS on CPU, max allocated on GPU) is comparable. Target: ours >= 1.5x faster.
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


def build_models(args):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # both sides: denormals slow CPU backward passes several-fold
    common = {"vocab_size": 21128, "max_position_embeddings": 512, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1}
    teacher = BertModel(BertConfig(hidden_size=args.teacher_hidden, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=4 * args.teacher_hidden, **common), add_pooling_layer=False)
    student = BertModel(BertConfig(hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                                   intermediate_size=1200, **common), add_pooling_layer=False)
    teacher.requires_grad_(False).eval()
    return teacher.to(args.device), student.to(args.device)


def make_batch(args):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[: args.batch // 2, args.seq * 3 // 4:] = 0  # half the batch padded, as in real corpora
    return {"input_ids": input_ids.to(args.device), "attention_mask": mask.to(args.device),
            "token_type_ids": torch.zeros_like(input_ids).to(args.device)}


def timed(step, args) -> float:
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(args) -> float:
    if args.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args) -> dict:
    from pipeline.capture import capture_attention_scores
    from pipeline.intermediate import StudentWithProjections, intermediate_loss_terms, teacher_features
    from pipeline.layer_map import build_layer_map
    from pipeline.projections import Projections
    from pipeline.schema import IntermediateLossConfig

    teacher, student = build_models(args)
    batch = make_batch(args)
    layer_map = build_layer_map(12, 4)
    model = StudentWithProjections(student, Projections(312, args.teacher_hidden, layer_map.student_layers, True))
    model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_cfg = IntermediateLossConfig()

    def teacher_only():
        with torch.no_grad():
            teacher(**batch, output_hidden_states=True)

    def student_only():
        outputs = student(**batch, output_hidden_states=True)
        outputs.last_hidden_state.float().pow(2).mean().backward()
        optimizer.zero_grad()

    part_a = timed(teacher_only, args) + timed(student_only, args)
    with capture_attention_scores(teacher, layer_map.teacher_layers) as t_scores, \
            capture_attention_scores(student, layer_map.student_layers) as s_scores:
        def full_step():
            teacher_hidden, teacher_captured = teacher_features(teacher, batch, t_scores)
            projected = model(**batch)
            terms = intermediate_loss_terms(projected, dict(s_scores), teacher_hidden, teacher_captured,
                                            layer_map, loss_cfg, batch["attention_mask"])
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()

        part_b = timed(full_step, args)
    return {"a_parts_s": part_a, "b_step_s": part_b, "peak_mb": peak_memory_mb(args)}


def run_textbrewer(args) -> dict:
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    teacher, student = build_models(args)
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
        total, _ = distiller.train_on_batch(batch, call_args)
        total.backward()
        torch.nn.utils.clip_grad_norm_(distiller.model_S.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    with distiller:
        step_s = timed(full_step, args)
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
    args = parser.parse_args()
    if args.mode != "all":
        print(json.dumps(run_ours(args) if args.mode == "ours" else run_textbrewer(args)))
        return
    results = {}
    for mode in ("ours", "textbrewer"):
        command = [sys.executable, __file__, "--mode", mode] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "mode"]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    ours, brewer = results["ours"], results["textbrewer"]
    print(f"setup: teacher 12L-{args.teacher_hidden} (12 heads), student 4L-312 (12 heads), batch {args.batch}, "
          f"seq {args.seq}, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"(a) teacher forward + student forward/backward alone: {ours['a_parts_s'] * 1000:8.1f} ms")
    print(f"(b) tinydistill full distillation step:                {ours['b_step_s'] * 1000:8.1f} ms")
    print(f"    b / a = {ours['b_step_s'] / ours['a_parts_s']:.3f}   (target <= 1.10)")
    print(f"TextBrewer GeneralDistiller step (eager attention):     {brewer['b_step_s'] * 1000:8.1f} ms")
    print(f"    speed-up vs TextBrewer = {brewer['b_step_s'] / ours['b_step_s']:.2f}x   (target >= 1.5x)")
    print(f"peak memory: tinydistill {ours['peak_mb']:.0f} MB, TextBrewer {brewer['peak_mb']:.0f} MB "
          f"(ratio {brewer['peak_mb'] / ours['peak_mb']:.2f}x)")


if __name__ == "__main__":
    main()
