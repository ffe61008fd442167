"""``train.py`` as it is, plus a dump of this process's trainable weights at the end of training.

    [torchrun --nproc_per_node 2] python tests/distributed/train_with_weight_dump.py DUMP_DIR <train.py overrides…>

Runs train.py's own ``__main__`` (Hydra main, its checks, ``runner.run.run_experiment``) with one extra Trainer
callback that writes ``DUMP_DIR/rank<RANK>.safetensors`` ({parameter name: tensor} of every trainable parameter, as
this rank holds it after the last optimizer step), so that a test can compare the ranks with each other and with a
one-process run.
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    dump_dir = Path(sys.argv.pop(1))
    dump_dir.mkdir(parents=True, exist_ok=True)

    import runner.run as run_module
    from transformers import TrainerCallback

    class DumpTrainableWeights(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            from safetensors.torch import save_file

            tensors = {name: p.detach().cpu().float().contiguous()
                       for name, p in model.named_parameters() if p.requires_grad}
            save_file(tensors, str(dump_dir / f"rank{int(os.environ.get('RANK', '0'))}.safetensors"))

    original = run_module.run_experiment

    def run_with_dump(cfg, choices=None, extra_callbacks=(), **kwargs):
        return original(cfg, choices=choices, extra_callbacks=[*extra_callbacks, DumpTrainableWeights()], **kwargs)

    run_module.run_experiment = run_with_dump
    sys.argv[0] = str(REPO / "train.py")
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
