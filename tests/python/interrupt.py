"""A training process that dies between two epochs, for the exact-resume tests."""

import pytest

from train.trainer import Trainer


def crash_after_first_checkpoint(trainer: Trainer) -> None:
    """Run `trainer.fit()` until it has written its first checkpoint, then die there, as a
    killed process would (KeyboardInterrupt, right after the file is complete)."""
    save = trainer.save_checkpoint

    def save_then_crash():
        save()
        raise KeyboardInterrupt

    trainer.save_checkpoint = save_then_crash
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
