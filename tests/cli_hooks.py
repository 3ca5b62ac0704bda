"""`tinydistill` with test hooks, for the long-run tests: `python tests/cli_hooks.py general CONFIG ...` (or under
torchrun) runs the real CLI after wrapping each stage's loss terms:

    TD_TEST_NAN_AT=3,5      the loss and its `hidden` term are NaN at these calls (micro-batches, from 1)
    TD_TEST_STEP_SLEEP=0.2  every call sleeps this long, so a signal sent from outside lands mid-run
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stages.general
import stages.pretrain
from pipeline.training import train_loop


def with_hooks(train_model):
    def hooked(accelerator, model, batches_from, compute_terms, *args, **kwargs):
        nan_at = {int(call) for call in os.environ.get("TD_TEST_NAN_AT", "").split(",") if call}
        pause = float(os.environ.get("TD_TEST_STEP_SLEEP", "0"))
        calls = 0

        def terms(model, batch, progress):
            nonlocal calls
            calls += 1
            values = compute_terms(model, batch, progress)
            if pause:
                time.sleep(pause)
            if calls in nan_at:
                values = {**values, "loss": values["loss"] * math.nan}
                if "hidden" in values:
                    values["hidden"] = values["hidden"] * math.nan
            return values

        return train_model(accelerator, model, batches_from, terms, *args, **kwargs)

    return hooked


train_loop.train_model = stages.general.train_model = stages.pretrain.train_model = with_hooks(train_loop.train_model)

if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(sys.argv[1:]))
