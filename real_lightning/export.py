"""``python -m real_lightning.export CHECKPOINT OUT_DIR [--pretrained PATH]``: a training checkpoint (a file, or a
directory of FSDP2 shards) as a Hugging Face model directory (:mod:`real_lightning.policy.export`)."""

from real_lightning.policy.export import main

if __name__ == "__main__":
    main()
