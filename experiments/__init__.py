"""Experiments: the replication of the paper's loss comparison (``replicate``) and its report (``replication_report``).

``results/`` holds their committed summaries, which docs/replication.md, docs/images and the notebook read.
Run as modules from the repository root: ``python -m experiments.replicate --out runs/replication``. Not part of
the installed package.
"""
