"""Days-long runs lose nothing: a diverging run stops with its last good checkpoint, one bad batch is skipped,
a stop signal saves a checkpoint that resumes exactly (one process and two), a damaged checkpoint is passed
over, and a resume under other settings is refused. Each through the CLI, as a subprocess (tests/cli_hooks.py
adds the test hooks: a NaN at chosen steps, slow steps)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CHINESE_SENTENCES
from safetensors.torch import load_file
from test_general import general_config

from pipeline.training.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parent.parent
HOOKS = REPO / "tests" / "cli_hooks.py"


def environment(**hooks) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            **{f"TD_TEST_{k.upper()}": str(v) for k, v in hooks.items()}}


def tinydistill(*args: str, cwd: Path, **hooks) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HOOKS), *args], capture_output=True, text=True, cwd=cwd,
                          env=environment(**hooks), timeout=600, check=False)


def write_config(tmp_path: Path, teacher_dir: Path, name: str, **train) -> Path:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(CHINESE_SENTENCES * 8) + "\n", encoding="utf-8")
    config = general_config(teacher_dir, corpus, tmp_path / name,
                            train={"log_every": 1, "save_every": 4, "max_steps": 12, **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def events(output_dir: Path, name: str) -> list[dict]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("event") == name]


def assert_same_weights(expected_dir: Path, actual_dir: Path) -> None:
    expected, actual = load_file(expected_dir / "model.safetensors"), load_file(actual_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name  # max |difference| 0


def assert_all_finite(directory: Path) -> None:
    for path in directory.rglob("*.safetensors"):
        for name, tensor in load_file(path).items():
            assert torch.isfinite(tensor).all(), f"{path}: {name}"
    for path in directory.rglob("*.bin"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        tensors = [v for v in _walk(state) if isinstance(v, torch.Tensor) and v.is_floating_point()]
        assert all(torch.isfinite(t).all() for t in tensors), path


def _walk(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)
    else:
        yield value


@pytest.fixture(scope="module")
def uninterrupted(teacher_dir, tmp_path_factory) -> dict:
    """The reference: the same stage one, never stopped, 12 steps."""
    root = tmp_path_factory.mktemp("uninterrupted")
    result = tinydistill("general", str(write_config(root, teacher_dir, "straight")), cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return {"root": root, "out": root / "straight"}


def test_a_diverging_run_stops_with_its_last_good_checkpoint_and_writes_nothing_non_finite(teacher_dir, tmp_path):
    # From step 6 every step is NaN (as lr=1e6 did to a real run): steps 6-8 are skipped, the third in a row stops.
    config = write_config(tmp_path, teacher_dir, "diverged", max_steps=40, save_every=2, keep_checkpoints=2,
                          max_nonfinite_steps=3)
    result = tinydistill("general", str(config), cwd=tmp_path, nan_at=",".join(map(str, range(6, 41))))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "tinydistill general: error: step 8: 3 steps in a row with non-finite values (hidden, loss, grad_norm), "
        "train.max_nonfinite_steps is 3; stopped. The last good checkpoint is "
        f"{tmp_path / 'diverged' / 'checkpoints' / 'step_000006'}; lower train.lr or look at the data near this step")
    out = tmp_path / "diverged"
    # Step 6 was skipped, so its checkpoint holds the weights of step 5: good ones. Rotation kept the newest two.
    assert [c.name for c in list_checkpoints(out)] == ["step_000004", "step_000006"]
    assert not (out / "tinydistill_run.json").exists() and not (out / "model.safetensors").exists()
    assert [e["step"] for e in events(out, "nonfinite")] == [6, 7, 8]
    assert events(out, "nonfinite")[0]["terms"] == ["hidden", "loss", "grad_norm"]
    assert_all_finite(out)


def test_lr_1e6_diverges_and_stops_with_its_last_good_checkpoint(teacher_dir, tmp_path):
    # The run, as a user meets it: the loss is finite at step 1 and NaN from step 2 on. Before, it
    # trained 38 NaN steps, rotated the good checkpoints out, wrote a NaN model and exited 0.
    config = write_config(tmp_path, teacher_dir, "lr1e6", lr=1e6, max_steps=40, save_every=10)
    result = tinydistill("general", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    checkpoints = list_checkpoints(tmp_path / "lr1e6")
    assert checkpoints and line.startswith("tinydistill general: error: step ")
    assert "10 steps in a row with non-finite values (" in line and "train.max_nonfinite_steps is 10" in line
    assert f"The last good checkpoint is {checkpoints[-1]};" in line
    assert not (tmp_path / "lr1e6" / "tinydistill_run.json").exists()
    assert not (tmp_path / "lr1e6" / "model.safetensors").exists()
    assert_all_finite(tmp_path / "lr1e6")


def test_one_nan_batch_is_skipped_counted_and_the_run_finishes(teacher_dir, tmp_path):
    config = write_config(tmp_path, teacher_dir, "one_nan")
    result = tinydistill("general", str(config), cwd=tmp_path, nan_at="5")
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "one_nan"
    assert events(out, "nonfinite") == [{"event": "nonfinite", "step": 5, "terms": ["hidden", "loss", "grad_norm"],
                                         "in_a_row": 1, "total": 1}]
    assert (out / "tinydistill_run.json").is_file()
    assert_all_finite(out)
    state = json.loads((list_checkpoints(out)[-1] / "train_state.json").read_text())
    assert state["nonfinite_steps"] == 1 and state["nonfinite_in_a_row"] == 0


def _logged_step(line: str) -> int:
    """The step of a step record of train_log.jsonl (0 for other records and a line still being written)."""
    try:
        record = json.loads(line)
    except ValueError:
        return 0
    return record.get("step", 0) if "loss" in record else 0


def stop_with(process, log: Path, signals: list[signal.Signals], after_step: int = 2) -> None:
    """Send `signals` to `process` (a Popen or a psutil.Process) once the log shows step `after_step`, 0.3 s
    apart (two signals of one kind sent at once may arrive as one)."""
    import psutil

    watched = psutil.Process(process.pid)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.is_file() and any(_logged_step(line) >= after_step for line in log.read_text().splitlines()):
            break
        assert watched.is_running() and watched.status() != psutil.STATUS_ZOMBIE, "the run ended before the signal"
        time.sleep(0.05)
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.3)
        process.send_signal(sig)


def test_sigterm_saves_a_checkpoint_and_resume_continues_bit_exactly(teacher_dir, uninterrupted, tmp_path):
    config = write_config(tmp_path, teacher_dir, "stopped", save_every=100)
    process = subprocess.Popen([sys.executable, str(HOOKS), "general", str(config)], cwd=tmp_path, text=True,
                               env=environment(step_sleep=0.3), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop_with(process, tmp_path / "stopped" / "train_log.jsonl", [signal.SIGTERM])
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("tinydistill general: stopped: SIGTERM at step ") and line.endswith(
        "saved; continue with --resume (exit code 75)")
    (checkpoint,) = list_checkpoints(tmp_path / "stopped")  # save_every 100: only the one the signal wrote
    assert 0 < int(checkpoint.name[5:]) < 12
    assert not (tmp_path / "stopped" / "tinydistill_run.json").exists()
    result = tinydistill("general", str(config), "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_weights(uninterrupted["out"], tmp_path / "stopped")


def test_a_second_sigint_aborts_at_once(teacher_dir, tmp_path):
    config = write_config(tmp_path, teacher_dir, "aborted", save_every=100)
    process = subprocess.Popen([sys.executable, str(HOOKS), "general", str(config)], cwd=tmp_path, text=True,
                               env=environment(step_sleep=1.0), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop_with(process, tmp_path / "aborted" / "train_log.jsonl", [signal.SIGINT, signal.SIGINT])
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "tinydistill general: interrupted (nothing saved since the last checkpoint)"
    assert list_checkpoints(tmp_path / "aborted") == []


def test_two_gloo_processes_stop_together_on_one_ranks_signal_and_resume_exactly(teacher_dir, tmp_path):
    import psutil

    def torchrun(config: Path, port: int, **hooks) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", str(port), str(HOOKS), "general", str(config)],
                                cwd=tmp_path, text=True, env=environment(**hooks), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    straight = write_config(tmp_path, teacher_dir, "two_straight", save_every=100, max_steps=8)
    process = torchrun(straight, 29571)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]

    stopped = write_config(tmp_path, teacher_dir, "two_stopped", save_every=100, max_steps=8)
    process = torchrun(stopped, 29572, step_sleep=0.5)

    def local_rank(worker: psutil.Process) -> str | None:
        # A worker just forked still shows torchrun's environment (no LOCAL_RANK) until it execs: poll again.
        try:
            return worker.environ().get("LOCAL_RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    deadline = time.monotonic() + 120
    rank_one = None
    while rank_one is None and time.monotonic() < deadline:
        rank_one = next((w for w in psutil.Process(process.pid).children() if local_rank(w) == "1"), None)
        time.sleep(0.05)
    assert rank_one is not None, "torchrun started no worker with LOCAL_RANK 1 within 120 s"
    stop_with(rank_one, tmp_path / "two_stopped" / "train_log.jsonl", [signal.SIGTERM])
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "tinydistill general: stopped: SIGTERM at step" in stderr  # rank 1's line
    # Both ranks stopped at the same step boundary: the one checkpoint needs both to write it.
    (checkpoint,) = list_checkpoints(tmp_path / "two_stopped")
    assert {p.name for p in checkpoint.glob("train_state_rank*.json")} == {"train_state_rank0.json",
                                                                         "train_state_rank1.json"}
    assert 0 < int(checkpoint.name[5:]) < 8
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                "--master_port", "29573", str(HOOKS), "general", str(stopped), "--resume"],
                               cwd=tmp_path, text=True, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    assert_same_weights(tmp_path / "two_straight", tmp_path / "two_stopped")


def killed_run(teacher_dir: Path, tmp_path: Path, name: str) -> Path:
    """A run stopped by SIGTERM after its step-8 checkpoint (checkpoints at 4 and 8, keep 3)."""
    config = write_config(tmp_path, teacher_dir, name, keep_checkpoints=3)
    process = subprocess.Popen([sys.executable, str(HOOKS), "general", str(config)], cwd=tmp_path, text=True,
                               env=environment(step_sleep=0.3), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop_with(process, tmp_path / name / "train_log.jsonl", [signal.SIGTERM], after_step=9)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-2000:]
    checkpoints = list_checkpoints(tmp_path / name)
    assert [c.name for c in checkpoints][:2] == ["step_000004", "step_000008"] and len(checkpoints) == 3
    return config


def test_a_truncated_newest_checkpoint_is_passed_over_with_a_warning(teacher_dir, uninterrupted, tmp_path):
    config = killed_run(teacher_dir, tmp_path, "damaged")
    newest = list_checkpoints(tmp_path / "damaged")[-1]
    optimizer = newest / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    result = tinydistill("general", str(config), "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint {newest} is damaged (optimizer.bin has ")
    assert "bytes, the manifest says" in warnings[0] and warnings[0].endswith("; resuming from step_000008")
    assert_same_weights(uninterrupted["out"], tmp_path / "damaged")

    for checkpoint in list_checkpoints(tmp_path / "damaged"):  # every checkpoint damaged: one line, no traceback
        (checkpoint / "model.safetensors").write_bytes(b"")
    (tmp_path / "damaged" / "tinydistill_run.json").unlink()
    result = tinydistill("general", str(config), "--resume", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"tinydistill general: error: train.resume_from: no intact checkpoint in {tmp_path / 'damaged' / 'checkpoints'}: ")
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def stopped_run(teacher_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stopped_run")
    return {"config": killed_run(teacher_dir, root, "changed"), "out": root / "changed"}


@pytest.mark.parametrize(("override", "message"), [
    ("train.batch_size=2", "train.resume_from: batch_size 4 -> 2 since checkpoint step_0000"),
    ("train.grad_accum=2", "train.resume_from: grad_accum 1 -> 2 since checkpoint step_0000"),
    ("student.hidden_size=32", "holds another model shape (10,048 parameters, this run's model has 21,376)"),
    ("teacher=OTHER", "was trained with the teacher"),
])
def test_resume_under_changed_settings_is_refused_in_one_line(stopped_run, teacher_dir, tmp_path, override, message):
    out = tmp_path / "changed"
    shutil.copytree(stopped_run["out"], out)
    if override == "teacher=OTHER":  # the same weights in another folder: another teacher, as far as a run knows
        shutil.copytree(teacher_dir, tmp_path / "other_teacher")
        override = f"teacher={tmp_path / 'other_teacher'}"
    result = tinydistill("general", str(stopped_run["config"]), "--resume", override, f"output_dir={out}",
                         cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("tinydistill general: error: train.resume_from: ") and message in line, line
    assert "Traceback" not in result.stderr
    if "batch_size" in override:
        assert line.endswith("exact resume replays the same batches, so it needs the same batch size, accumulation "
                             "and number of processes (restore them, or start again with --overwrite)")


def test_a_damaged_checkpoint_named_by_path_and_an_unreadable_old_one_are_one_line_each(stopped_run, tmp_path):
    out = tmp_path / "changed"
    shutil.copytree(stopped_run["out"], out)
    newest = list_checkpoints(out)[-1]
    optimizer = newest / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    result = tinydistill("general", str(stopped_run["config"]), f"--resume={newest}", f"output_dir={out}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"tinydistill general: error: train.resume_from: checkpoint {newest} is damaged (optimizer.bin has 100 bytes, "
        "the manifest says ")
    (newest / "manifest.json").unlink()  # a checkpoint from before manifests: taken as it is, its bad file one line
    result = tinydistill("general", str(stopped_run["config"]), f"--resume={newest}", f"output_dir={out}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"tinydistill general: error: train.resume_from: checkpoint {newest} cannot be loaded (")
