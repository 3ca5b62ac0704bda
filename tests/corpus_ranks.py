"""Run under `torchrun --nproc_per_node 2`: each rank writes the sequences it reads, per epoch, to
OUT/rank{r}.json (or the one-line error it raised to OUT/rank{r}.error). Used by tests/test_corpus.py."""

import json
import sys
from pathlib import Path

from accelerate import Accelerator

from pipeline.config import from_dict
from pipeline.data.corpus import open_training_corpus
from pipeline.errors import DataError
from pipeline.models.loading import load_tokenizer
from pipeline.schema import CorpusConfig, TrainConfig
from pipeline.training.runtime import TrainState


def main(corpus_json: str, tokenizer: str, out: str, batches: int) -> None:
    accelerator = Accelerator(cpu=True)
    rank, out = accelerator.process_index, Path(out)
    cfg = from_dict(CorpusConfig, json.loads(corpus_json))
    train = TrainConfig(batch_size=2, max_steps=100, seed=3)
    try:
        corpus, _ = open_training_corpus(cfg, load_tokenizer(tokenizer), accelerator, train, "teacher")
    except DataError as err:
        (out / f"rank{rank}.error").write_text(str(err))
        accelerator.end_training()  # what the CLI's exit does: leave the process group cleanly
        return
    seen: dict[int, list] = {}
    iterator = corpus.batches_from(TrainState())
    for _ in range(batches):
        epoch, _, batch, *_ = next(iterator)
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
            seen.setdefault(epoch, []).append(ids[: sum(mask)])
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
