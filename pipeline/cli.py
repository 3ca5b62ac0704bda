"""The `tinydistill` command line: parse, validate the config, call one stage function.

    tinydistill general configs/general_tinybert4_zh.yaml train.lr=1e-4 --resume
    tinydistill augment configs/augment_reviews_zh.yaml --shard 0/4
    tinydistill build-vocab runs/vocab_zh data/zh_corpus/*.txt --min-count 2

Stage commands take a YAML config plus dotted overrides. Problems a user can fix (`TinyDistillError`)
are printed as one line on stderr with exit code 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import TinyDistillError


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
    "general": StageCommand(
        "stages.general", "GeneralConfig", "run_general",
        "stage one: general distillation on a raw corpus", resume_key="train.resume_from",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinydistill", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in STAGE_COMMANDS.items():
        sub = commands.add_parser(name, help=spec.help, description=spec.help)
        sub.add_argument("config", type=Path, help="YAML config file")
        sub.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
        sub.add_argument("--overwrite", action="store_true", help="replace a finished output directory")
        if spec.resume_key:
            sub.add_argument(
                "--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                help="resume from the latest checkpoint in the output directory, or from CHECKPOINT",
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

    merge = commands.add_parser("merge-shards", help="join augmentation shards into one transfer set")
    merge.add_argument("shards", type=Path, nargs="+")
    merge.add_argument("output", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = _dispatch(args)
    except TinyDistillError as err:
        print(f"tinydistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(result)
    return 0


def _dispatch(args: argparse.Namespace):
    if args.command in STAGE_COMMANDS:
        return _run_stage(STAGE_COMMANDS[args.command], args)
    if args.command == "build-vocab":
        from pipeline.vocab import build_char_vocab

        return build_char_vocab(args.corpus, args.output_dir, min_count=args.min_count, max_size=args.max_size)
    if args.command == "pos-lexicon":
        from augment.lexicon import build_pos_lexicon

        return build_pos_lexicon(args.corpus, args.output, min_count=args.min_count)
    if args.command == "train-vectors":
        from augment.vectors import train_word_vectors

        return train_word_vectors(
            args.corpus, args.output, dim=args.dim, epochs=args.epochs,
            min_count=args.min_count, workers=args.workers,
        )
    if args.command == "merge-shards":
        from augment.shards import merge_shards

        return merge_shards(args.shards, args.output)
    raise AssertionError(f"unhandled command {args.command}")


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
